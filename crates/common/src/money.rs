//! Money: integer cents inside, a JSON number with at most two decimals outside.
//!
//! Inside a service every amount is a [`Money`], an `i64` count of cents, so sums and
//! the Stripe `amount` are exact. On the wire (HTTP bodies and events) the original
//! Node app sent prices as plain JSON numbers (`10`, `12.5`, `0.99`), so that is what
//! [`Money`]'s `Serialize`/`Deserialize` produce and accept.
//!
//! # Exactness
//!
//! Without serde_json's `arbitrary_precision` feature (which would change
//! `serde_json::Value` for the whole workspace), a JSON number with a fraction reaches
//! us as the `f64` nearest to its text. We never do float arithmetic on it: we take the
//! shortest decimal text that round-trips to that `f64` (what Rust's `Display` prints)
//! and parse *that* as a decimal. For any amount with at most 15 significant digits
//! that text is exactly the digits that were sent (`12.5` → `"12.5"`, `12.345` →
//! `"12.345"`, rejected), so "at most two decimals" is checked on the decimals, not on
//! a float. Serialising goes the other way: whole amounts are written as integers
//! (`10`, never `10.0`) and the others as the `f64` nearest to `cents / 100`, whose
//! shortest text is again exactly the two-decimal amount. Both directions are exact
//! for amounts below [`Money::MAX_EXACT`] (about 90 trillion), far above any price.
//!
//! Trailing zeros are fine (`12.50` and `"12.50"` are 1250 cents): the rule is about
//! the amount's precision, not about how many zeros a client typed.
//!
//! # User input
//!
//! [`Money::parse_user_input`] is the HTTP validation rule for prices: a JSON number or
//! a numeric string, greater than zero, at most two decimals, at most
//! [`Money::MAX_USER_INPUT`].
//!
//! # Storage
//!
//! A document that stores an amount should store the integer cents; use
//! `#[serde(with = "common::money::as_cents")]` on the field.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An amount of money in integer cents (USD: the fleet has one currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

impl Money {
    /// No money.
    pub const ZERO: Money = Money(0);

    /// The largest price a user may enter: 1e12 cents (ten billion dollars). Anything
    /// above it is a typo or an attack, and it keeps every amount far inside
    /// [`Money::MAX_EXACT`].
    pub const MAX_USER_INPUT: Money = Money(1_000_000_000_000);

    /// The largest magnitude (in cents) that goes through JSON exactly: 2^53 − 1, the
    /// largest integer an `f64` holds exactly.
    pub const MAX_EXACT: Money = Money((1 << 53) - 1);

    /// An amount of `cents` cents.
    pub const fn from_cents(cents: i64) -> Money {
        Money(cents)
    }

    /// The amount in cents (what Stripe calls `amount`).
    pub const fn cents(self) -> i64 {
        self.0
    }

    /// Whether the amount is greater than zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// `self − other`, or `None` on overflow.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    /// Validates a price as a client sent it: a JSON number (`10`, `12.5`) or a numeric
    /// string (`"10"`, `"12.50"`, surrounding spaces ignored), greater than zero, with at
    /// most two decimals and at most [`Money::MAX_USER_INPUT`].
    ///
    /// Returns `None` for everything else: negative or zero amounts, three decimals,
    /// `"abc"`, `""`, `"NaN"`, `"Infinity"`, exponents in strings, booleans, `null`.
    pub fn parse_user_input(value: &serde_json::Value) -> Option<Money> {
        let money = match value {
            serde_json::Value::Number(number) => {
                if let Some(whole) = number.as_i64() {
                    Money::from_whole(whole)?
                } else if number.is_u64() {
                    return None; // above i64::MAX: far too large
                } else {
                    Money::from_f64(number.as_f64()?)?
                }
            }
            serde_json::Value::String(text) => text.trim().parse().ok()?,
            _ => return None,
        };
        (money.is_positive() && money <= Money::MAX_USER_INPUT).then_some(money)
    }

    /// A whole number of dollars.
    fn from_whole(units: i64) -> Option<Money> {
        units.checked_mul(100).map(Money)
    }

    /// The exact amount an `f64` from a JSON number stands for (see the module docs).
    fn from_f64(value: f64) -> Option<Money> {
        if !value.is_finite() || value.abs() * 100.0 > Money::MAX_EXACT.0 as f64 {
            return None;
        }
        // `Display` for f64 prints the shortest round-tripping decimal, never an exponent.
        parse_decimal(&value.to_string())
    }
}

/// Parses `-?digits(.digits)?` (also `.5`) into cents; digits past the second decimal
/// must be zeros. No exponent, no sign other than a leading minus, no spaces.
fn parse_decimal(text: &str) -> Option<Money> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || (whole.is_empty() && fraction.is_none()) {
        return None;
    }
    let mut cents: i64 = 0;
    for digit in whole.bytes() {
        cents = cents
            .checked_mul(10)?
            .checked_add(i64::from(digit - b'0'))?;
    }
    cents = cents.checked_mul(100)?;
    if let Some(fraction) = fraction {
        if fraction.is_empty() || !all_digits(fraction) {
            return None;
        }
        let (kept, rest) = fraction.split_at(fraction.len().min(2));
        if rest.bytes().any(|b| b != b'0') {
            return None; // a third non-zero decimal
        }
        let mut scale = 10;
        for digit in kept.bytes() {
            cents = cents.checked_add(i64::from(digit - b'0') * scale)?;
            scale /= 10;
        }
    }
    Some(Money(if negative { -cents } else { cents }))
}

/// Parses a decimal amount with at most two (non-zero) decimals: `10`, `-3.5`, `0.99`.
impl FromStr for Money {
    type Err = ParseMoneyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_decimal(text).ok_or(ParseMoneyError)
    }
}

/// The text is not a decimal amount with at most two decimals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an amount with at most two decimals")]
pub struct ParseMoneyError;

/// `12.50`, `-0.99`, `10.00`: always two decimals, for logs and people. (The wire form
/// is the shortest number instead, see [`Serialize`].)
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// A JSON number: `10` for 1000 cents, `12.5` for 1250, `0.99` for 99.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % 100 == 0 {
            serializer.serialize_i64(self.0 / 100)
        } else {
            // Exact for |cents| < 2^53, see the module docs.
            serializer.serialize_f64(self.0 as f64 / 100.0)
        }
    }
}

/// Accepts a JSON number with at most two decimals, exactly (see the module docs).
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MoneyVisitor;

        impl Visitor<'_> for MoneyVisitor {
            type Value = Money;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount of money: a number with at most two decimals")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
                Money::from_whole(v).ok_or_else(|| E::custom("amount of money is too large"))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(Money::from_whole)
                    .ok_or_else(|| E::custom("amount of money is too large"))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
                Money::from_f64(v).ok_or_else(|| {
                    E::custom(format_args!(
                        "invalid amount of money {v}: expected at most two decimals"
                    ))
                })
            }
        }

        deserializer.deserialize_any(MoneyVisitor)
    }
}

/// In OpenAPI documents: a JSON number with at most two decimals.
impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Number)
            .description(Some("An amount in dollars with at most two decimals"))
            .examples([serde_json::json!(12.5)])
            .into()
    }
}

impl utoipa::ToSchema for Money {}

/// Serde helpers storing a [`Money`] as its integer cents, for database documents:
/// `#[serde(with = "common::money::as_cents")] price: Money`.
pub mod as_cents {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Money;

    /// Writes the integer cents.
    pub fn serialize<S: Serializer>(money: &Money, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(money.cents())
    }

    /// Reads integer cents.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        i64::deserialize(deserializer).map(Money::from_cents)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn wire(cents: i64) -> String {
        serde_json::to_string(&Money::from_cents(cents)).unwrap()
    }

    fn from_wire(text: &str) -> Option<Money> {
        serde_json::from_str(text).ok()
    }

    #[test]
    fn serialises_as_the_shortest_number() {
        assert_eq!(wire(1000), "10");
        assert_eq!(wire(1250), "12.5");
        assert_eq!(wire(99), "0.99");
        assert_eq!(wire(1), "0.01");
        assert_eq!(wire(0), "0");
        assert_eq!(wire(-250), "-2.5");
        assert_eq!(wire(123_456_789_012), "1234567890.12");
        assert_eq!(wire(Money::MAX_USER_INPUT.cents() - 1), "9999999999.99");
    }

    #[test]
    fn deserialises_numbers_exactly() {
        assert_eq!(from_wire("10"), Some(Money::from_cents(1000)));
        assert_eq!(from_wire("12.5"), Some(Money::from_cents(1250)));
        assert_eq!(from_wire("12.50"), Some(Money::from_cents(1250)));
        assert_eq!(from_wire("0.99"), Some(Money::from_cents(99)));
        assert_eq!(from_wire("0.1"), Some(Money::from_cents(10)));
        assert_eq!(from_wire("1.005e2"), Some(Money::from_cents(10050)));
        assert_eq!(from_wire("-3.5"), Some(Money::from_cents(-350)));
        assert_eq!(
            from_wire("9999999999.99"),
            Some(Money::from_cents(999_999_999_999))
        );
    }

    #[test]
    fn rejects_more_than_two_decimals_and_non_numbers() {
        for text in [
            "12.345", "0.001", "1e-3", "\"10\"", "null", "true", "1e300", "[1]",
        ] {
            assert_eq!(from_wire(text), None, "{text}");
        }
    }

    #[test]
    fn every_amount_round_trips_through_json_text() {
        let mut amounts: Vec<i64> = (-20_000..=200_000).collect();
        // Large amounts, including ones whose cents are not a power-of-two fraction.
        for base in [
            100_000_000,
            98_765_432_100,
            1_000_000_000_000,
            90_000_000_000_000,
        ] {
            amounts.extend((0..1000).map(|i| base + i * 7 + 1));
        }
        for cents in amounts {
            let text = wire(cents);
            let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(decimals <= 2, "{cents} → {text}");
            assert_eq!(
                from_wire(&text),
                Some(Money::from_cents(cents)),
                "{cents} → {text}"
            );
        }
    }

    #[test]
    fn user_input_accepts_positive_numbers_and_numeric_strings() {
        let cases: [(Value, i64); 9] = [
            (json!(10), 1000),
            (json!(12.5), 1250),
            (json!(0.99), 99),
            (json!(0.01), 1),
            (json!("10"), 1000),
            (json!("12.50"), 1250),
            (json!(" 7.25 "), 725),
            (json!(".5"), 50),
            (json!(10_000_000_000_i64), 1_000_000_000_000),
        ];
        for (value, cents) in cases {
            assert_eq!(
                Money::parse_user_input(&value),
                Some(Money::from_cents(cents)),
                "{value}"
            );
        }
    }

    #[test]
    fn user_input_rejects_everything_else() {
        let cases = [
            json!(0),
            json!(-10),
            json!(-0.5),
            json!(12.345),
            json!(0.001),
            json!(10_000_000_000.01),
            json!(u64::MAX),
            json!(1e300),
            json!("abc"),
            json!(""),
            json!("   "),
            json!("-5"),
            json!("+5"),
            json!("5."),
            json!("."),
            json!("1e3"),
            json!("12.345"),
            json!("NaN"),
            json!("Infinity"),
            json!("1 000"),
            json!("0"),
            json!("99999999999999999999999"),
            json!(null),
            json!(true),
            json!([10]),
            json!({"amount": 10}),
        ];
        for value in cases {
            assert_eq!(Money::parse_user_input(&value), None, "{value}");
        }
    }

    #[test]
    fn displays_two_decimals() {
        assert_eq!(Money::from_cents(1250).to_string(), "12.50");
        assert_eq!(Money::from_cents(-99).to_string(), "-0.99");
        assert_eq!(Money::from_cents(1000).to_string(), "10.00");
    }

    #[test]
    fn parses_strings_with_at_most_two_decimals() {
        assert_eq!("-3.5".parse(), Ok(Money::from_cents(-350)));
        assert_eq!("12.500".parse(), Ok(Money::from_cents(1250)));
        assert_eq!("12.501".parse::<Money>(), Err(ParseMoneyError));
        assert_eq!("--1".parse::<Money>(), Err(ParseMoneyError));
        assert_eq!("-".parse::<Money>(), Err(ParseMoneyError));
    }

    #[test]
    fn as_cents_stores_integer_cents() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Doc {
            #[serde(with = "as_cents")]
            price: Money,
        }
        let doc = Doc {
            price: Money::from_cents(1250),
        };
        assert_eq!(serde_json::to_value(&doc).unwrap(), json!({"price": 1250}));
        assert_eq!(
            serde_json::from_value::<Doc>(json!({"price": 1250})).unwrap(),
            doc
        );
    }
}
