//! Validated value types: money amounts, currencies and bounded text.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest amount a single movement may carry: 10^15 minor units.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// Input that fails validation before any rule is checked (HTTP 400, with the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidInput {
    /// A validation failure of `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// A positive amount of minor units, `0 < amount <= 10^15`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(try_from = "i64", into = "i64")]
#[schemars(extend("minimum" = 1, "maximum" = 1_000_000_000_000_000_i64))]
pub struct Amount(i64);

impl Amount {
    /// Validates an amount given for `field`.
    pub fn parse(field: &'static str, value: i64) -> Result<Self, InvalidInput> {
        if value <= 0 {
            return Err(InvalidInput::new(
                field,
                "must be a positive number of minor units",
            ));
        }
        if value > MAX_AMOUNT {
            return Err(InvalidInput::new(
                field,
                "must be at most 10^15 minor units",
            ));
        }
        Ok(Self(value))
    }

    /// The amount in minor units.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Amount {
    type Error = InvalidInput;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::parse("amount", value)
    }
}

impl From<Amount> for i64 {
    fn from(a: Amount) -> i64 {
        a.0
    }
}

/// Active ISO 4217 currency codes with their minor-unit exponent.
const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("UZS", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// An ISO 4217 currency code (three upper-case letters of an active currency).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("pattern" = "^[A-Z]{3}$"))]
pub struct Currency([u8; 3]);

impl Currency {
    /// Validates a currency code given for `field`.
    pub fn parse(field: &'static str, code: &str) -> Result<Self, InvalidInput> {
        match CURRENCIES.iter().find(|(c, _)| *c == code) {
            Some(_) => {
                let b = code.as_bytes();
                Ok(Self([b[0], b[1], b[2]]))
            }
            None => Err(InvalidInput::new(
                field,
                "must be an ISO 4217 currency code such as EUR",
            )),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// How many minor units make one major unit (100 for EUR, 1 for JPY, 1000 for KWD).
    pub fn minor_per_major(&self) -> i64 {
        let exp = CURRENCIES
            .iter()
            .find(|(c, _)| *c == self.as_str())
            .map_or(2, |(_, e)| *e);
        10_i64.pow(exp)
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("currency", &value)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a free-text field: trimmed length within `min..=max` characters, no control
/// characters. Returns the text as given.
pub fn bounded_text(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<String, InvalidInput> {
    let len = value.trim().chars().count();
    if len < min {
        return Err(InvalidInput::new(
            field,
            format!("must have at least {min} characters"),
        ));
    }
    if value.chars().count() > max {
        return Err(InvalidInput::new(
            field,
            format!("must have at most {max} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(InvalidInput::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Checks an e-mail address (shape only: one `@`, a dot in the domain, at most 254
/// characters) and returns it as given.
pub fn email(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    let v = bounded_text(field, value, 3, 254)?;
    let ok = match v.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !v.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if ok {
        Ok(v)
    } else {
        Err(InvalidInput::new(field, "must be an e-mail address"))
    }
}

/// Checks an ISO 3166-1 alpha-2 country code shape (two upper-case letters).
pub fn country(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    if value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value.to_owned())
    } else {
        Err(InvalidInput::new(
            field,
            "must be an ISO 3166-1 alpha-2 code such as DE",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_outside_the_range_are_refused() {
        assert!(Amount::parse("amount", 0).is_err());
        assert!(Amount::parse("amount", -5).is_err());
        assert!(Amount::parse("amount", MAX_AMOUNT + 1).is_err());
        assert_eq!(
            Amount::parse("amount", MAX_AMOUNT).map(Amount::get),
            Ok(MAX_AMOUNT)
        );
    }

    #[test]
    fn only_active_iso_currencies_parse() {
        assert!(Currency::parse("currency", "EUR").is_ok());
        assert!(Currency::parse("currency", "eur").is_err());
        assert!(Currency::parse("currency", "EURO").is_err());
        assert!(Currency::parse("currency", "ABC").is_err());
        assert_eq!(
            Currency::parse("c", "JPY").map(|c| c.minor_per_major()),
            Ok(1)
        );
        assert_eq!(
            Currency::parse("c", "KWD").map(|c| c.minor_per_major()),
            Ok(1000)
        );
    }

    #[test]
    fn emails_and_texts_are_checked() {
        assert!(email("email", "a@b.co").is_ok());
        assert!(email("email", "a b@c.de").is_err());
        assert!(email("email", "nobody").is_err());
        assert!(bounded_text("t", "  ", 1, 10).is_err());
        assert!(bounded_text("t", "x\u{0}", 1, 10).is_err());
        assert!(bounded_text("t", &"x".repeat(11), 1, 10).is_err());
    }
}
