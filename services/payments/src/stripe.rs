//! Charging cards through Stripe.
//!
//! A thin gateway over the `async-stripe` client: one operation, [`Stripe::charge`],
//! which creates a Charge of an exact amount in cents, in USD, from a card token,
//! with an idempotency key. The callers pass the order id as the key, so any
//! number of submits for one order — a double click, a retry after a timeout,
//! two replicas racing — is one charge at Stripe: a repeated key replays the
//! first answer instead of charging again. That also makes "charged, but the
//! payment could not be stored" recoverable: the next submit gets the same
//! charge back and stores it.
//!
//! Outcomes are sorted by who can do something about them ([`ChargeError`]):
//! the card was refused or the request named a bad token or amount (the buyer),
//! or Stripe could not be reached or failed (nobody right now: a 502).
//!
//! `STRIPE_API_BASE` points the client elsewhere (tests: the local
//! `stripe-stateful-mock`, over plain http).

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use common::money::Money;
use stripe::{
    ApiErrors, ApiErrorsType, Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError,
    StripeRequest as _,
};
use stripe_core::charge::CreateCharge;
use stripe_types::Currency;

/// How long one call to Stripe may take before it counts as unreachable.
const CHARGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A charge to create.
#[derive(Debug, Clone)]
pub struct ChargeRequest<'a> {
    /// The exact amount; sent as integer cents.
    pub amount: Money,
    /// The card token from the client (`tok_…`), Stripe's `source`.
    pub token: &'a str,
    /// The idempotency key: the same key never charges twice.
    pub idempotency_key: &'a str,
    /// Stored on the charge as `metadata[orderId]`, so a charge can be traced
    /// back to its order from Stripe's side.
    pub order_id: &'a str,
}

/// Why no charge id came back.
#[derive(Debug, thiserror::Error)]
pub enum ChargeError {
    /// The card was declined, or the token or the amount is not acceptable:
    /// Stripe's message is meant for the buyer.
    #[error("charge refused: {0}")]
    Refused(String),
    /// Another request with this idempotency key is still in progress at Stripe.
    #[error("a request with this idempotency key is in progress")]
    InProgress,
    /// This idempotency key was already used with other parameters (another
    /// card for the same order); Stripe's message is for us, not the buyer.
    #[error("idempotency key reused: {0}")]
    KeyReused(String),
    /// Stripe could not be reached, timed out, failed, or did not accept our
    /// credentials. Nothing the buyer can fix; whether a charge happened is
    /// unknown, which the idempotency key makes safe to retry.
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
        let mut builder = ClientBuilder::new(key).timeout(CHARGE_TIMEOUT);
        if let Some(base) = api_base {
            // The client appends `v1/charges` to the base as text.
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

    /// Creates the charge and returns its id (`ch_…`).
    #[tracing::instrument(skip_all, fields(order_id = request.order_id, amount = request.amount.cents()))]
    pub async fn charge(&self, request: ChargeRequest<'_>) -> Result<String, ChargeError> {
        let key = IdempotencyKey::new(request.idempotency_key).map_err(|err| {
            ChargeError::Unavailable(anyhow::anyhow!("unusable idempotency key: {err}"))
        })?;
        let charge = CreateCharge::new()
            .amount(request.amount.cents())
            .currency(Currency::USD)
            .source(request.token)
            .metadata(HashMap::from([(
                "orderId".to_owned(),
                request.order_id.to_owned(),
            )]))
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(&self.client)
            .await
            .map_err(classify)?;
        tracing::info!(charge_id = %charge.id, "charge created");
        Ok(charge.id.to_string())
    }
}

/// Sorts Stripe's failures by who can act on them.
fn classify(err: StripeError) -> ChargeError {
    match err {
        StripeError::Stripe(api, status) => classify_api_error(*api, status),
        other => ChargeError::Unavailable(anyhow::Error::new(other)),
    }
}

fn classify_api_error(api: ApiErrors, status: u16) -> ChargeError {
    let message = api
        .message
        .clone()
        .unwrap_or_else(|| "Your payment could not be processed".to_owned());
    match (&api.type_, status) {
        (ApiErrorsType::CardError, _) => ChargeError::Refused(message),
        (_, 409) => ChargeError::InProgress,
        (ApiErrorsType::IdempotencyError, _) => ChargeError::KeyReused(message),
        // A bad token, an amount Stripe does not take: about this request's data.
        (ApiErrorsType::InvalidRequestError, 400 | 402 | 404) => ChargeError::Refused(message),
        // 401/403 (our key), 429, 5xx, and anything unknown.
        (kind, status) => ChargeError::Unavailable(anyhow::anyhow!(
            "Stripe answered {status} ({}): {message}",
            kind.as_str()
        )),
    }
}
