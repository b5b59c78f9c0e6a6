//! Checking a request's fields into a value that cannot be invalid.
//!
//! Every service answers a bad body the same way: 400 in the errors shape,
//! one entry per bad field, each naming its field, all of them at once (not
//! only the first). [`Fields`] collects them while a handler's input is
//! turned into its domain type; a handler then only ever holds the checked
//! value.
//!
//! A handler takes the checked value with the [`Valid`] extractor: the
//! body's wire shape is read as JSON (its rejections in the errors shape),
//! then [`Checked::check`] turns it into the domain type.
//!
//! ```ignore
//! let mut fields = Fields::default();
//! let title = fields.check("title", title, "Title is required");
//! let price = fields.check("price", price, "Price must be greater than 0");
//! fields.finish(title.zip(price).map(|(title, price)| NewTicket { title, price }))
//! ```

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorItem, Json, Result};

/// A domain value checked from a request body.
pub trait Checked: Sized {
    /// The body as it comes on the wire, read loosely (fields as JSON
    /// values) so that a missing or mistyped field is an error on that field.
    type Body: DeserializeOwned;

    /// The value, or 400 with one error per bad field (see [`Fields`]).
    fn check(body: Self::Body) -> Result<Self>;
}

/// Extracts a [`Checked`] value from a JSON body: a handler that takes
/// `Valid(ticket): Valid<NewTicket>` holds a ticket that cannot be invalid.
#[derive(Debug, Clone)]
pub struct Valid<T>(pub T);

impl<T, S> FromRequest<S> for Valid<T>
where
    T: Checked,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let Json(body) = Json::<T::Body>::from_request(req, state).await?;
        T::check(body).map(Valid)
    }
}

/// The field errors found so far (see the module docs).
#[derive(Debug, Default)]
pub struct Fields {
    errors: Vec<ErrorItem>,
}

impl Fields {
    /// `value`; when it is `None`, `message` is recorded against `field`.
    pub fn check<T>(&mut self, field: &str, value: Option<T>, message: &str) -> Option<T> {
        if value.is_none() {
            self.reject(field, message);
        }
        value
    }

    /// `value`'s success; its error, already naming its field, is recorded.
    pub fn take<T>(&mut self, value: std::result::Result<T, ErrorItem>) -> Option<T> {
        value.map_err(|item| self.errors.push(item)).ok()
    }

    /// Records `message` against `field`.
    pub fn reject(&mut self, field: &str, message: &str) {
        self.errors.push(ErrorItem::field(field, message));
    }

    /// The checked `value` when no field was rejected; else 400 with every
    /// rejection, in the order recorded. A `None` with nothing rejected is a
    /// bug of the caller's, answered 500.
    pub fn finish<T>(self, value: Option<T>) -> Result<T> {
        if !self.errors.is_empty() {
            return Err(Error::Validation(self.errors));
        }
        value.ok_or_else(|| {
            Error::Unexpected(anyhow::anyhow!(
                "a field was missing, but none was rejected"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(err: Error) -> Vec<(Option<String>, String)> {
        match err {
            Error::Validation(items) => items.into_iter().map(|i| (i.field, i.message)).collect(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn reports_every_bad_field_in_order() {
        let mut fields = Fields::default();
        let a = fields.check("a", None::<u8>, "A is required");
        let b = fields.check("b", Some(2), "B is required");
        let c = fields.take::<u8>(Err(ErrorItem::field("c", "C is wrong")));
        let err = fields
            .finish(a.zip(b).zip(c).map(|((a, b), c)| a + b + c))
            .unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(
            fields_of(err),
            [
                (Some("a".into()), "A is required".into()),
                (Some("c".into()), "C is wrong".into())
            ]
        );
    }

    #[test]
    fn gives_the_value_when_all_is_well() {
        let mut fields = Fields::default();
        let a = fields.check("a", Some(1), "A is required");
        assert_eq!(fields.finish(a).unwrap(), 1);
        // A value missing with nothing rejected is the caller's bug: 500.
        let err = Fields::default().finish(None::<u8>).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    }
}
