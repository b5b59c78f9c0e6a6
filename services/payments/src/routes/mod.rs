//! HTTP routes, one module per resource.
//!
//! - [`payments`]: `POST /api/payments` (the order's PaymentIntent; the legacy
//!   `{token}` body confirms it server-side), `GET /api/payments?orderId=`.
//! - [`webhook`]: `POST /api/payments/webhook`, Stripe's signed events.

pub mod payments;
pub mod webhook;
