//! Validation of everything a caller controls: path, query and body.
//! Pure functions, so they are cheap to property-test.

use std::collections::HashSet;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::ApiError;

pub const MAX_USER_ID_CHARS: usize = 200;
pub const MAX_ABS_AMOUNT: i64 = 1_000_000_000;
pub const REASON_CHARS: std::ops::RangeInclusive<usize> = 3..=500;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;
pub const MAX_ACTOR_CHARS: usize = 200;
pub const DEFAULT_CURRENCY: &str = "CRD";
/// Bodies are a few hundred bytes; anything far larger is a mistake or an attack.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A Clerk user id that is safe to place in a RevenueCat URL path segment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let chars = raw.chars().count();
        let well_formed = (1..=MAX_USER_ID_CHARS).contains(&chars)
            && !raw.chars().any(|c| c.is_control() || c == '/')
            // "." and ".." survive percent-encoding and would be resolved as
            // path navigation by any URL library on the way to RevenueCat.
            && raw != "."
            && raw != "..";
        if well_formed {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ApiError::InvalidUserId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `include_empty` accepts exactly true/false/1/0; absent means false.
pub fn parse_include_empty(values: &[&str]) -> Result<bool, ApiError> {
    match values {
        [] => Ok(false),
        ["true" | "1"] => Ok(true),
        ["false" | "0"] => Ok(false),
        _ => Err(ApiError::InvalidIncludeEmpty),
    }
}

/// A validated `POST /admin/credits/adjust` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub user_id: UserId,
    pub amount: i64,
    /// Trimmed audit reason.
    pub reason: String,
    pub currency: String,
    pub idempotency_key: Option<String>,
    /// Who is acting (e.g. the staff member's email): recorded, not fingerprinted.
    pub actor: Option<String>,
}

impl Adjustment {
    /// Parses the body and reconciles the key with the `Idempotency-Key` header.
    /// Checks run in a fixed order so one request always gets the same detail.
    pub fn parse(body: &[u8], header_key: Option<&str>) -> Result<Self, ApiError> {
        let fields = parse_object(body)?;
        if let Some((unknown, _)) = fields.iter().find(|(name, _)| !KNOWN_FIELDS.contains(&name.as_str())) {
            return Err(ApiError::UnknownField(truncate(unknown, 64)));
        }
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);

        let user_id = match field("user_id") {
            Some(Value::String(raw)) => UserId::parse(raw)?,
            _ => return Err(ApiError::InvalidUserId),
        };
        let amount = parse_amount(field("amount"))?;
        let reason = match field("reason") {
            Some(Value::String(raw)) => parse_reason(raw)?,
            _ => return Err(ApiError::InvalidReason),
        };
        let currency = match field("currency") {
            None | Some(Value::Null) => DEFAULT_CURRENCY.to_owned(),
            Some(Value::String(code)) if is_currency_code(code) => code.clone(),
            Some(_) => return Err(ApiError::UnknownCurrency),
        };
        let body_key = match field("idempotency_key") {
            None | Some(Value::Null) => None,
            Some(Value::String(key)) => Some(parse_idempotency_key(key)?),
            Some(_) => return Err(ApiError::InvalidIdempotencyKey),
        };
        let header_key = header_key.map(parse_idempotency_key).transpose()?;
        let idempotency_key = match (body_key, header_key) {
            (Some(body), Some(header)) if body != header => return Err(ApiError::InvalidIdempotencyKey),
            (body, header) => body.or(header),
        };

        let actor = match field("actor") {
            None | Some(Value::Null) => None,
            Some(Value::String(actor)) => Some(parse_actor(actor)?),
            Some(_) => return Err(ApiError::InvalidActor),
        };

        Ok(Self { user_id, amount, reason, currency, idempotency_key, actor })
    }

    /// What makes two requests "the same adjustment" for idempotency: a key
    /// reused with a different fingerprint is a client bug, not a retry.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::json!([self.user_id.as_str(), self.amount, self.currency, self.reason]);
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

const KNOWN_FIELDS: [&str; 6] = ["user_id", "amount", "reason", "currency", "idempotency_key", "actor"];

/// `actor`: 1-200 characters, no control characters (it lands in CSV exports and log lines).
pub fn parse_actor(raw: &str) -> Result<String, ApiError> {
    let chars = raw.chars().count();
    if (1..=MAX_ACTOR_CHARS).contains(&chars) && !raw.chars().any(char::is_control) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::InvalidActor)
    }
}

fn parse_amount(value: Option<&Value>) -> Result<i64, ApiError> {
    let amount = value.and_then(Value::as_number).and_then(whole_number).ok_or(ApiError::InvalidAmount)?;
    if amount == 0 {
        Err(ApiError::AmountMustBeNonzero)
    } else if amount.unsigned_abs() > MAX_ABS_AMOUNT.unsigned_abs() {
        Err(ApiError::InvalidAmount)
    } else {
        Ok(amount)
    }
}

/// Only integer literals: a float that happens to be whole (`100.0`) is
/// refused, because for money-like amounts `0.99999999999999999` (which
/// parses as 1.0) must never become a grant of 1. Any zero (`-0` is an
/// integer literal the parser reads as a float) is reported as zero.
fn whole_number(number: &serde_json::Number) -> Option<i64> {
    number.as_i64().or_else(|| (number.as_f64() == Some(0.0)).then_some(0))
}

fn parse_reason(raw: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    if REASON_CHARS.contains(&trimmed.chars().count()) {
        Ok(trimmed.to_owned())
    } else {
        Err(ApiError::InvalidReason)
    }
}

/// Validates a client idempotency key (from the body or the header).
pub fn parse_idempotency_key(raw: &str) -> Result<String, ApiError> {
    let chars = raw.chars().count();
    // U+FFFD stands for bytes that were not text: such a key cannot be compared reliably.
    let garbled = |c: char| c.is_control() || c == char::REPLACEMENT_CHARACTER;
    if (1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&chars) && !raw.chars().any(garbled) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::InvalidIdempotencyKey)
    }
}

/// RevenueCat's own rule for currency codes: 1-10 of `[A-Za-z0-9_]`.
pub fn is_currency_code(code: &str) -> bool {
    (1..=10).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// A top-level JSON object as ordered fields, refusing duplicate names:
/// parsers disagree on which duplicate wins, so accepting one would let a
/// request mean different things to different readers.
fn parse_object(body: &[u8]) -> Result<Vec<(String, Value)>, ApiError> {
    struct Fields(Vec<(String, Value)>);

    impl<'de> Deserialize<'de> for Fields {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct FieldsVisitor;
            impl<'de> Visitor<'de> for FieldsVisitor {
                type Value = Fields;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                    let mut seen = HashSet::new();
                    let mut fields = Vec::new();
                    while let Some((name, value)) = map.next_entry::<String, Value>()? {
                        if !seen.insert(name.clone()) {
                            return Err(serde::de::Error::custom("duplicate field"));
                        }
                        fields.push((name, value));
                    }
                    Ok(Fields(fields))
                }
            }
            deserializer.deserialize_map(FieldsVisitor)
        }
    }

    serde_json::from_slice::<Fields>(body).map(|f| f.0).map_err(|_| ApiError::InvalidJson)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Adjustment, ApiError> {
        Adjustment::parse(body.as_bytes(), None)
    }

    #[test]
    fn user_id_rules() {
        assert!(UserId::parse("user_2abcXYZ").is_ok());
        assert!(UserId::parse(&"u".repeat(200)).is_ok());
        for bad in ["", "a/b", "tab\there", "nul\0", "..", ".", &"u".repeat(201)] {
            assert_eq!(UserId::parse(bad), Err(ApiError::InvalidUserId), "{bad:?}");
        }
    }

    #[test]
    fn include_empty_accepts_only_four_spellings() {
        assert_eq!(parse_include_empty(&[]), Ok(false));
        assert_eq!(parse_include_empty(&["1"]), Ok(true));
        assert_eq!(parse_include_empty(&["false"]), Ok(false));
        assert_eq!(parse_include_empty(&["yes"]), Err(ApiError::InvalidIncludeEmpty));
        assert_eq!(parse_include_empty(&["true", "false"]), Err(ApiError::InvalidIncludeEmpty));
    }

    #[test]
    fn body_validation_table() {
        let ok = r#"{"user_id":"user_1","amount":5,"reason":"  ZD-1 goodwill  "}"#;
        let adj = parse(ok).unwrap();
        assert_eq!((adj.amount, adj.reason.as_str(), adj.currency.as_str()), (5, "ZD-1 goodwill", "CRD"));
        let cases = [
            ("[]", ApiError::InvalidJson),
            ("nope", ApiError::InvalidJson),
            ("", ApiError::InvalidJson),
            (r#"{"user_id":"u","amount":1,"amount":2,"reason":"abc"}"#, ApiError::InvalidJson),
            (r#"{"user_id":"u","amount":1,"reason":"abc","x":1}"#, ApiError::UnknownField("x".into())),
            (r#"{"amount":1,"reason":"abc"}"#, ApiError::InvalidUserId),
            (r#"{"user_id":7,"amount":1,"reason":"abc"}"#, ApiError::InvalidUserId),
            (r#"{"user_id":"u","amount":0,"reason":"abc"}"#, ApiError::AmountMustBeNonzero),
            (r#"{"user_id":"u","amount":1.5,"reason":"abc"}"#, ApiError::InvalidAmount),
            (r#"{"user_id":"u","amount":-0,"reason":"abc"}"#, ApiError::AmountMustBeNonzero),
            (r#"{"user_id":"u","amount":0.0,"reason":"abc"}"#, ApiError::AmountMustBeNonzero),
            (r#"{"user_id":"u","amount":25.0,"reason":"abc"}"#, ApiError::InvalidAmount),
            (r#"{"user_id":"u","amount":0.99999999999999999,"reason":"abc"}"#, ApiError::InvalidAmount),
            (r#"{"user_id":"u","amount":"5","reason":"abc"}"#, ApiError::InvalidAmount),
            (r#"{"user_id":"u","reason":"abc"}"#, ApiError::InvalidAmount),
            (r#"{"user_id":"u","amount":1000000001,"reason":"abc"}"#, ApiError::InvalidAmount),
            (r#"{"user_id":"u","amount":-1000000001,"reason":"abc"}"#, ApiError::InvalidAmount),
            (r#"{"user_id":"u","amount":99999999999999999999999,"reason":"abc"}"#, ApiError::InvalidAmount),
            (r#"{"user_id":"u","amount":1,"reason":"  ab  "}"#, ApiError::InvalidReason),
            (r#"{"user_id":"u","amount":1}"#, ApiError::InvalidReason),
            (r#"{"user_id":"u","amount":1,"reason":"abc","currency":"no-dash"}"#, ApiError::UnknownCurrency),
            (r#"{"user_id":"u","amount":1,"reason":"abc","currency":5}"#, ApiError::UnknownCurrency),
            (
                r#"{"user_id":"u","amount":1,"reason":"abc","idempotency_key":""}"#,
                ApiError::InvalidIdempotencyKey,
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse(body), Err(expected), "{body}");
        }
        let long_reason = format!(r#"{{"user_id":"u","amount":1,"reason":"{}"}}"#, "é".repeat(500));
        assert!(parse(&long_reason).is_ok(), "500 scalar values is allowed");
        let too_long = format!(r#"{{"user_id":"u","amount":1,"reason":"{}"}}"#, "é".repeat(501));
        assert_eq!(parse(&too_long), Err(ApiError::InvalidReason));
    }

    #[test]
    fn header_and_body_keys_must_agree() {
        let body = br#"{"user_id":"u","amount":1,"reason":"abc","idempotency_key":"k1"}"#;
        assert_eq!(Adjustment::parse(body, Some("k1")).unwrap().idempotency_key.as_deref(), Some("k1"));
        assert_eq!(Adjustment::parse(body, Some("k2")), Err(ApiError::InvalidIdempotencyKey));
        let no_key = br#"{"user_id":"u","amount":1,"reason":"abc"}"#;
        assert_eq!(Adjustment::parse(no_key, Some("k3")).unwrap().idempotency_key.as_deref(), Some("k3"));
        assert_eq!(Adjustment::parse(no_key, Some(&"k".repeat(201))), Err(ApiError::InvalidIdempotencyKey));
    }

    #[test]
    fn fingerprint_ignores_the_key_but_not_the_reason() {
        let a = parse(r#"{"user_id":"u","amount":1,"reason":"abc","idempotency_key":"k"}"#).unwrap();
        let b = parse(r#"{"user_id":"u","amount":1,"reason":"abc"}"#).unwrap();
        let c = parse(r#"{"user_id":"u","amount":1,"reason":"abd"}"#).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
