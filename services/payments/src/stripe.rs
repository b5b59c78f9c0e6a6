//! The Stripe gateway: PaymentIntents, PaymentMethods from legacy tokens, and
//! Refunds, each write with an idempotency key.
//!
//! A thin layer over the `async-stripe` client (only its `payment_intent` and
//! `refund` requests are compiled in). The callers derive every key from the
//! order ([`keys`]), so any number of calls for one purpose — a double click,
//! a retry after a timeout, two replicas racing, a replica that died between
//! Stripe's answer and our write — are one operation at Stripe: a repeated
//! key replays the first answer instead of doing it again.
//!
//! Outcomes are sorted by who can do something about them ([`StripeError`]):
//! the card was refused or the request is not acceptable (the buyer, with
//! Stripe's message), the object is in a state that does not allow it (the
//! caller decides: a succeeded intent cannot be cancelled, so it is refunded),
//! or Stripe could not be reached or failed (nobody right now: a 502 or a
//! retry later).
//!
//! `STRIPE_API_BASE` points the client elsewhere (tests and `make dev`: the
//! devstack Stripe fake, over plain http).

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use common::money::Money;
use stripe::{
    ApiErrors, ApiErrorsType, Client, ClientBuilder, IdempotencyKey, RequestStrategy,
    StripeError as ClientError, StripeRequest as _,
};
use stripe_client_core::{CustomizableStripeRequest, RequestBuilder, StripeMethod};
use stripe_core::{
    payment_intent::{
        CancelPaymentIntent, ConfirmPaymentIntent, CreatePaymentIntent,
        CreatePaymentIntentAutomaticPaymentMethods,
        CreatePaymentIntentAutomaticPaymentMethodsAllowRedirects, RetrievePaymentIntent,
    },
    refund::CreateRefund,
};
use stripe_shared::{PaymentIntent, PaymentMethod};
use stripe_types::Currency;

/// How long one call to Stripe may take before it counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a request whose key is in use by a concurrent one is retried.
const IN_PROGRESS_RETRIES: u32 = 5;

/// The idempotency keys of the calls for one order. Stable across replicas
/// and restarts: they are made from the order id (and the attempt for a
/// legacy card, so a new card after a decline is a new attempt).
pub mod keys {
    pub fn create_intent(order_id: &str) -> String {
        format!("ticketing-{order_id}-intent")
    }
    pub fn payment_method(order_id: &str, attempt: i64) -> String {
        format!("ticketing-{order_id}-pm-{attempt}")
    }
    pub fn confirm(order_id: &str, attempt: i64) -> String {
        format!("ticketing-{order_id}-confirm-{attempt}")
    }
    pub fn cancel(order_id: &str) -> String {
        format!("ticketing-{order_id}-cancel")
    }
    pub fn refund(order_id: &str) -> String {
        format!("ticketing-{order_id}-refund")
    }
}

/// What payments needs of a PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// `pi_…`.
    pub id: String,
    /// Stripe's status (`requires_payment_method`, `requires_action`,
    /// `succeeded`, `canceled`, …).
    pub status: String,
    pub client_secret: Option<String>,
    pub amount: i64,
    /// The reason of the last failed attempt, for the buyer.
    pub last_error: Option<String>,
}

impl Intent {
    pub fn succeeded(&self) -> bool {
        self.status == "succeeded"
    }
}

impl From<PaymentIntent> for Intent {
    fn from(intent: PaymentIntent) -> Self {
        Self {
            id: intent.id.to_string(),
            status: intent.status.as_str().to_owned(),
            client_secret: intent.client_secret,
            amount: intent.amount,
            last_error: intent.last_payment_error.and_then(|e| e.message),
        }
    }
}

/// Why a Stripe call did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The card was declined, or the request is not acceptable (an amount
    /// Stripe does not take, an unknown token): Stripe's message is meant
    /// for the buyer.
    #[error("refused: {message}")]
    Refused {
        message: String,
        code: Option<String>,
    },
    /// The object is in a state that does not allow this (cancel a succeeded
    /// intent, refund twice).
    #[error("unexpected state: {message}")]
    UnexpectedState {
        message: String,
        code: Option<String>,
    },
    /// This idempotency key was already used with other parameters; Stripe's
    /// message is for us, not the buyer.
    #[error("idempotency key reused: {0}")]
    KeyReused(String),
    /// Stripe could not be reached, timed out, failed, kept the key locked,
    /// or did not accept our credentials. Whether it acted is unknown, which
    /// the idempotency key makes safe to retry.
    #[error("Stripe is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

/// The Stripe API client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Stripe {
    client: Client,
}

impl Stripe {
    /// A client with the secret `key`, talking to `api_base` (default: Stripe's
    /// real API). `api_base` may be plain http, e.g. `http://127.0.0.1:12111`.
    pub fn new(key: &str, api_base: Option<&str>) -> anyhow::Result<Self> {
        let mut builder = ClientBuilder::new(key).timeout(CALL_TIMEOUT);
        if let Some(base) = api_base {
            // The client appends `v1/…` to the base as text.
            let base = if base.ends_with('/') {
                base.to_owned()
            } else {
                format!("{base}/")
            };
            builder = builder.url(base);
        }
        let client = builder
            .build()
            .context("invalid Stripe client configuration")?;
        Ok(Self { client })
    }

    /// Creates the order's PaymentIntent (card, USD, `metadata[orderId]`).
    #[tracing::instrument(skip_all, fields(order_id, amount = amount.cents()))]
    pub async fn create_intent(
        &self,
        order_id: &str,
        amount: Money,
    ) -> Result<Intent, StripeError> {
        let key = keys::create_intent(order_id);
        // Cards (3-D Secure included) without redirect-based methods, so
        // the legacy server-side confirm needs no return URL.
        let mut methods = CreatePaymentIntentAutomaticPaymentMethods::new(true);
        methods.allow_redirects =
            Some(CreatePaymentIntentAutomaticPaymentMethodsAllowRedirects::Never);
        let request = CreatePaymentIntent::new(amount.cents(), Currency::USD)
            .automatic_payment_methods(methods)
            .metadata(HashMap::from([("orderId".to_owned(), order_id.to_owned())]));
        let intent: PaymentIntent = self.send(|| request.customize(), &key).await?;
        tracing::info!(payment_intent = %intent.id, "payment intent ready");
        Ok(intent.into())
    }

    /// The intent as Stripe has it now.
    pub async fn retrieve_intent(&self, id: &str) -> Result<Intent, StripeError> {
        let intent: PaymentIntent = retry_in_progress(|| async {
            RetrievePaymentIntent::new(id)
                .customize()
                .send(&self.client)
                .await
                .map_err(classify)
        })
        .await?;
        Ok(intent.into())
    }

    /// Confirms the intent server-side with a payment method made from a
    /// legacy card `token` (`tok_…`); attempt `attempt` of the order.
    #[tracing::instrument(skip_all, fields(order_id, payment_intent = intent_id, attempt))]
    pub async fn confirm_with_token(
        &self,
        order_id: &str,
        intent_id: &str,
        token: &str,
        attempt: i64,
    ) -> Result<Intent, StripeError> {
        let form = NewCardMethod {
            kind: "card",
            card: CardToken { token },
        };
        let method: PaymentMethod = self
            .send(
                || {
                    RequestBuilder::new(StripeMethod::Post, "/payment_methods")
                        .form(&form)
                        .customize()
                },
                &keys::payment_method(order_id, attempt),
            )
            .await?;
        let request = ConfirmPaymentIntent::new(intent_id).payment_method(method.id.to_string());
        let intent: PaymentIntent = self
            .send(|| request.customize(), &keys::confirm(order_id, attempt))
            .await?;
        Ok(intent.into())
    }

    /// Cancels the intent so it can no longer be paid.
    #[tracing::instrument(skip_all, fields(order_id, payment_intent = intent_id))]
    pub async fn cancel_intent(
        &self,
        order_id: &str,
        intent_id: &str,
    ) -> Result<Intent, StripeError> {
        let request = CancelPaymentIntent::new(intent_id);
        let intent: PaymentIntent = self
            .send(|| request.customize(), &keys::cancel(order_id))
            .await?;
        Ok(intent.into())
    }

    /// Refunds the intent in full; returns the refund id (`re_…`).
    #[tracing::instrument(skip_all, fields(order_id, payment_intent = intent_id))]
    pub async fn refund(&self, order_id: &str, intent_id: &str) -> Result<String, StripeError> {
        let request = CreateRefund::new()
            .payment_intent(intent_id)
            .metadata(HashMap::from([("orderId".to_owned(), order_id.to_owned())]));
        let refund: stripe_shared::Refund = self
            .send(|| request.customize(), &keys::refund(order_id))
            .await?;
        tracing::info!(refund = %refund.id, "refunded");
        Ok(refund.id.to_string())
    }

    /// Sends a write with `key`, retrying while Stripe reports the key in use
    /// by a concurrent request (the retry then gets that request's answer).
    async fn send<T: miniserde::Deserialize>(
        &self,
        request: impl Fn() -> CustomizableStripeRequest<T>,
        key: &str,
    ) -> Result<T, StripeError> {
        let key = IdempotencyKey::new(key).map_err(|err| {
            StripeError::Unavailable(anyhow::anyhow!("unusable idempotency key: {err}"))
        })?;
        retry_in_progress(|| async {
            request()
                .request_strategy(RequestStrategy::Idempotent(key.clone()))
                .send(&self.client)
                .await
                .map_err(classify)
        })
        .await
    }
}

/// `POST /v1/payment_methods` of a card from a legacy token:
/// `type=card&card[token]=tok_…`.
#[derive(serde::Serialize)]
struct NewCardMethod<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    card: CardToken<'a>,
}

#[derive(serde::Serialize)]
struct CardToken<'a> {
    token: &'a str,
}

/// Runs `call` again (a few times, briefly) while it fails with a 409.
async fn retry_in_progress<T, F, Fut>(call: F) -> Result<T, StripeError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Classified>>,
{
    let mut delay = Duration::from_millis(100);
    for _ in 0..IN_PROGRESS_RETRIES {
        match call().await {
            Ok(value) => return Ok(value),
            Err(Classified::InProgress) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(Classified::Other(err)) => return Err(err),
        }
    }
    Err(StripeError::Unavailable(anyhow::anyhow!(
        "Stripe kept the idempotency key locked by a concurrent request"
    )))
}

enum Classified {
    InProgress,
    Other(StripeError),
}

/// Sorts Stripe's failures by who can act on them.
fn classify(err: ClientError) -> Classified {
    match err {
        ClientError::Stripe(api, status) => classify_api_error(*api, status),
        other => Classified::Other(StripeError::Unavailable(anyhow::Error::new(other))),
    }
}

fn classify_api_error(api: ApiErrors, status: u16) -> Classified {
    let message = api
        .message
        .clone()
        .unwrap_or_else(|| "Your payment could not be processed".to_owned());
    let code = api.code.as_ref().map(|code| code.as_str().to_owned());
    Classified::Other(match (&api.type_, status, code.as_deref()) {
        (_, 409, _) => return Classified::InProgress,
        (ApiErrorsType::CardError, _, _) => StripeError::Refused { message, code },
        (ApiErrorsType::IdempotencyError, _, _) => StripeError::KeyReused(message),
        (
            ApiErrorsType::InvalidRequestError,
            400,
            Some("payment_intent_unexpected_state" | "charge_already_refunded"),
        ) => StripeError::UnexpectedState { message, code },
        // An amount Stripe does not take, an unknown token: about this request's data.
        (ApiErrorsType::InvalidRequestError, 400 | 402 | 404, _) => {
            StripeError::Refused { message, code }
        }
        // 401/403 (our key), 429, 5xx, and anything unknown.
        (kind, status, _) => StripeError::Unavailable(anyhow::anyhow!(
            "Stripe answered {status} ({}): {message}",
            kind.as_str()
        )),
    })
}
