//! Where the money of an order ends: paid and complete, or cancelled and
//! refunded — never anything else.
//!
//! [`Settle`] holds the three moves every path shares (the routes, the
//! webhook, the `order.cancelled` listener, the periodic [`Settle::sweep`]):
//!
//! - [`Settle::succeeded`]: Stripe says the intent succeeded. If the order is
//!   still open, the payment becomes `succeeded` with its `payment.created`
//!   (the order completes); if the order is cancelled (the window ran out
//!   during 3-D Secure, the buyer cancelled in another tab) the money is
//!   refunded.
//! - [`Settle::close`]: the order is cancelled. An open intent is cancelled at
//!   Stripe so it can no longer be paid; if Stripe says it already succeeded,
//!   or the payment had, the money is refunded.
//! - [`Settle::refund`]: a full refund through the Refunds API, with a key
//!   derived from the order, so it happens once however often it is asked.
//!
//! The orders service ignores `payment.created` for a cancelled order and
//! never cancels a complete one, so the two services agree: whichever of
//! "paid" and "cancelled" the orders service saw first stands, and the other
//! side follows (a succeeded payment of an order cancelled first is refunded
//! when its `order.cancelled` arrives here).
//!
//! Each Stripe call is preceded by a durable `refunding` / `cancelling`
//! status; a failure or a crash leaves it there and the next webhook, event
//! or sweep finishes the call with the same key. The sweep leaves alone a
//! payment this process is closing or refunding right now ([`InFlight`]):
//! its cancel may be slow to reach Stripe, and a second one sent past it
//! would cancel an intent whose buyer is authenticating — money that should
//! land (and be refunded) would be refused instead.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context as _;
use common::events::OrderStatus;
use mongodb::bson::{doc, oid::ObjectId};
use tokio_util::sync::CancellationToken;

use crate::{
    store::{Orders, Payment, PaymentStatus, Payments},
    stripe::{Stripe, StripeError},
};

/// How often the sweep finishes what was left half-way.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The moves that settle a payment. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Settle {
    pub payments: Payments,
    pub orders: Orders,
    pub stripe: Stripe,
    /// The payments a close or a refund of this process is working on.
    pub in_flight: InFlight,
}

/// The payments being closed or refunded by this process, each counted once
/// per call working on it (a close may refund inside).
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<Mutex<HashMap<ObjectId, usize>>>);

impl InFlight {
    /// Marks `id` worked on until the guard is dropped.
    fn enter(&self, id: ObjectId) -> Working {
        *self.lock().entry(id).or_default() += 1;
        Working {
            in_flight: self.clone(),
            id,
        }
    }

    /// Whether a call of this process is working on `id`.
    pub fn contains(&self, id: ObjectId) -> bool {
        self.lock().contains_key(&id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A call working on a payment (see [`InFlight::enter`]).
struct Working {
    in_flight: InFlight,
    id: ObjectId,
}

impl Drop for Working {
    fn drop(&mut self) {
        let mut working = self.in_flight.lock();
        if let Some(count) = working.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                working.remove(&self.id);
            }
        }
    }
}

/// What [`Settle::succeeded`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Succeeded {
    /// This call recorded the success (the order completes).
    Recorded(Payment),
    /// It was recorded before (a duplicate, or a concurrent caller).
    Already(Payment),
    /// The order is cancelled: the money is being or has been refunded.
    Refunded(Payment),
}

impl Settle {
    /// The intent `intent_id` of `payment` has succeeded at Stripe.
    #[tracing::instrument(skip_all, fields(order_id = %payment.order_id, payment_intent = intent_id))]
    pub async fn succeeded(&self, payment: &Payment, intent_id: &str) -> anyhow::Result<Succeeded> {
        let order = self
            .orders
            .find(payment.order_id)
            .await
            .context("failed to read an order")?;
        let order_open = order.is_none_or(|order| order.status != OrderStatus::Cancelled);
        if order_open && let Some(paid) = self.payments.mark_succeeded(payment, intent_id).await? {
            tracing::info!(payment_id = %paid.id, "payment succeeded");
            return Ok(Succeeded::Recorded(paid));
        }
        let current = self.reload(payment).await?;
        match current.status {
            PaymentStatus::Succeeded if order_open => Ok(Succeeded::Already(current)),
            PaymentStatus::Pending if order_open => {
                // Lost a race with a cancel that has since been undone? Not
                // possible: a pending payment of an open order is recorded above.
                anyhow::bail!("payment {} stayed pending", current.id)
            }
            _ => {
                tracing::warn!("money arrived for a cancelled order; refunding it");
                let refunded = self.refund(&current, intent_id).await?;
                Ok(Succeeded::Refunded(refunded))
            }
        }
    }

    /// Refunds the payment's money in full (idempotent); the payment after.
    /// Stripe being unavailable leaves it `refunding` for the sweep.
    pub async fn refund(&self, payment: &Payment, intent_id: &str) -> anyhow::Result<Payment> {
        use PaymentStatus::*;
        let _working = self.in_flight.enter(payment.id);
        let refunding = match self
            .payments
            .transition(
                payment.id,
                &[Pending, Succeeded, Cancelling, Cancelled, Refunding],
                Refunding,
                doc! { "paymentIntentId": intent_id, "clientSecret": mongodb::bson::Bson::Null },
            )
            .await?
        {
            Some(refunding) => refunding,
            // Already refunded.
            None => return self.reload(payment).await,
        };
        let order_hex = payment.order_id.to_hex();
        let refund_id = match self.stripe.refund(&order_hex, intent_id).await {
            Ok(refund_id) => Some(refund_id),
            // Refunded before (by us, under the same key's expiry, or by hand).
            Err(StripeError::UnexpectedState { code, .. })
                if code.as_deref() == Some("charge_already_refunded") =>
            {
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, order_id = %order_hex, "refund not done yet; the sweep retries it");
                return Ok(refunding);
            }
        };
        let done = self
            .payments
            .transition(
                payment.id,
                &[Refunding],
                Refunded,
                doc! { "refundId": refund_id.clone() },
            )
            .await?;
        tracing::info!(order_id = %order_hex, refund = ?refund_id, "late payment refunded");
        match done {
            Some(done) => Ok(done),
            None => self.reload(payment).await,
        }
    }

    /// The payment's order is cancelled: closes the intent at Stripe, or
    /// refunds money that made it through.
    #[tracing::instrument(skip_all, fields(order_id = %payment.order_id))]
    pub async fn close(&self, payment: &Payment) -> anyhow::Result<Payment> {
        use PaymentStatus::*;
        let _working = self.in_flight.enter(payment.id);
        let mut payment = payment.clone();
        if payment.status == Pending && payment.payment_intent_id.is_none() {
            if self.payments.cancel_without_intent(payment.id).await? {
                tracing::info!("payment closed before it had an intent");
                return self.reload(&payment).await;
            }
            // An intent was stored meanwhile: close that.
            payment = self.reload(&payment).await?;
        }
        let Some(intent_id) = payment.payment_intent_id.clone() else {
            return Ok(payment);
        };
        match payment.status {
            Pending | Cancelling => {}
            Succeeded | Refunding => return self.refund(&payment, &intent_id).await,
            Refunded | Cancelled => return Ok(payment),
        }
        let Some(cancelling) = self
            .payments
            .transition(payment.id, &[Pending, Cancelling], Cancelling, doc! {})
            .await?
        else {
            // Succeeded meanwhile: `succeeded` refunds it, seeing the order cancelled.
            return self.reload(&payment).await;
        };
        let order_hex = payment.order_id.to_hex();
        let outcome = match self.stripe.cancel_intent(&order_hex, &intent_id).await {
            Ok(intent) => intent,
            Err(StripeError::UnexpectedState { .. }) => {
                match self.stripe.retrieve_intent(&intent_id).await {
                    Ok(intent) => intent,
                    Err(err) => {
                        tracing::warn!(error = %err, "intent state unknown; the sweep retries");
                        return Ok(cancelling);
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "intent not cancelled yet; the sweep retries");
                return Ok(cancelling);
            }
        };
        if outcome.succeeded() {
            tracing::warn!("the intent succeeded before it could be cancelled; refunding");
            return self.refund(&cancelling, &intent_id).await;
        }
        if outcome.status == "canceled" {
            let closed = self
                .payments
                .transition(
                    payment.id,
                    &[Cancelling],
                    Cancelled,
                    doc! { "clientSecret": mongodb::bson::Bson::Null },
                )
                .await?;
            tracing::info!(payment_intent = %intent_id, "intent cancelled");
            return match closed {
                Some(closed) => Ok(closed),
                None => self.reload(&payment).await,
            };
        }
        tracing::warn!(status = %outcome.status, "intent neither cancelled nor succeeded; the sweep retries");
        Ok(cancelling)
    }

    /// Finishes every payment left `refunding` or `cancelling`, but those a
    /// call of this process is still working on.
    pub async fn sweep_once(&self) -> anyhow::Result<()> {
        for payment in self.payments.unfinished().await? {
            if self.in_flight.contains(payment.id) {
                continue;
            }
            let result = match (&payment.status, payment.payment_intent_id.as_deref()) {
                (PaymentStatus::Refunding, Some(intent)) => self.refund(&payment, intent).await,
                _ => self.close(&payment).await,
            };
            if let Err(err) = result {
                tracing::warn!(order_id = %payment.order_id, error = format!("{err:#}"), "sweep failed; will retry");
            }
        }
        Ok(())
    }

    /// Runs [`Settle::sweep_once`] now and every [`SWEEP_EVERY`] until `shutdown`.
    pub async fn sweep(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = every.tick() => {
                    if let Err(err) = self.sweep_once().await {
                        tracing::warn!(error = format!("{err:#}"), "payment sweep failed; will retry");
                    }
                }
            }
        }
    }

    async fn reload(&self, payment: &Payment) -> anyhow::Result<Payment> {
        self.payments
            .find(payment.id)
            .await
            .context("failed to read a payment")?
            .context("a payment vanished")
    }
}
