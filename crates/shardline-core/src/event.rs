//! The versioned transaction event (`"schema": "txn.v1"`) and its validation.
//!
//! Decoding is tolerant of unknown fields (producers may add fields before consumers
//! know them) and strict about required ones: every bad input becomes a typed
//! [`PoisonReason`], never a panic. Decoding borrows from the payload; only the fields
//! kept in [`Txn`] are copied.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The schema this code understands.
pub const SCHEMA_V1: &str = "txn.v1";
/// Default cap on one transaction payload; Kinesis allows 1 MiB, a transaction needs < 1 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Largest plausible amount in minor units (10^11 = one billion major units).
pub const MAX_AMOUNT_MINOR: i64 = 100_000_000_000;
/// How far an event time may run ahead of the record's arrival time (clock skew).
pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

/// Channel through which a transaction was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Card present at a point of sale.
    Pos,
    /// E-commerce, card not present.
    Ecom,
    /// Cash machine.
    Atm,
    /// Mail or telephone order.
    Moto,
}

/// The issuer's answer to the authorisation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthResult {
    /// Authorised.
    Approved,
    /// Declined.
    Declined,
}

/// Where a transaction happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Latitude in degrees, -90 to 90.
    pub lat: f64,
    /// Longitude in degrees, -180 to 180.
    pub lon: f64,
    /// ISO 3166-1 alpha-2 country code, upper case.
    pub country: String,
}

/// A validated transaction event. Never carries a card number in clear: `card_token` is
/// an opaque token (or a producer-side hash of the PAN).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    /// Producer-assigned unique id of the event.
    pub event_id: String,
    /// Opaque card token; the partition key of the input stream.
    pub card_token: String,
    /// Merchant id.
    pub merchant_id: String,
    /// ISO 18245 merchant category code, four digits.
    pub mcc: u16,
    /// Amount in minor units of `currency` (cents for USD).
    pub amount_minor: i64,
    /// ISO 4217 currency code, upper case.
    pub currency: String,
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub event_time_ms: i64,
    /// Where it happened.
    pub location: Location,
    /// How it was made.
    pub channel: Channel,
    /// Approved or declined.
    pub auth_result: AuthResult,
}

impl Txn {
    /// Renders the event as `txn.v1` JSON, the wire form producers put on the stream.
    pub fn to_json(&self) -> String {
        let wire = WireOut {
            schema: SCHEMA_V1,
            event_id: &self.event_id,
            card_token: &self.card_token,
            merchant_id: &self.merchant_id,
            mcc: format!("{:04}", self.mcc),
            amount_minor: self.amount_minor,
            currency: &self.currency,
            event_time: format_rfc3339_ms(self.event_time_ms),
            location: &self.location,
            channel: self.channel,
            auth_result: self.auth_result,
        };
        serde_json::to_string(&wire).expect("a Txn always serialises")
    }
}

#[derive(Serialize)]
struct WireOut<'a> {
    schema: &'static str,
    event_id: &'a str,
    card_token: &'a str,
    merchant_id: &'a str,
    mcc: String,
    amount_minor: i64,
    currency: &'a str,
    event_time: String,
    location: &'a Location,
    channel: Channel,
    auth_result: AuthResult,
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

/// Why a record can never be processed. Poison records are quarantined with this reason
/// and never retried. The `Display` form is what goes into the quarantine; it never
/// contains a card number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PoisonReason {
    /// The payload is larger than the configured cap.
    #[error("payload is {size} bytes, over the {cap}-byte cap")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// The record's data is not valid base64.
    #[error("record data is not valid base64")]
    BadBase64,
    /// The payload is not JSON, or a field has the wrong JSON type.
    #[error("invalid JSON: {message}")]
    BadJson {
        /// serde_json's description, with line and column.
        message: String,
    },
    /// `schema` names a version this code does not understand.
    #[error("unknown schema version {found:?}, expected \"txn.v1\"")]
    UnknownSchema {
        /// What the record said (truncated to 64 characters).
        found: String,
    },
    /// A required field is absent or null.
    #[error("missing required field `{field}`")]
    MissingField {
        /// The field's name.
        field: String,
    },
    /// A field is present but its value is not allowed.
    #[error("invalid `{field}`: {why}")]
    InvalidField {
        /// The field's name.
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// The amount is below zero.
    #[error("negative amount {amount_minor}")]
    NegativeAmount {
        /// The amount given.
        amount_minor: i64,
    },
    /// The amount is implausibly large.
    #[error("amount {amount_minor} is over the {max} cap")]
    AbsurdAmount {
        /// The amount given.
        amount_minor: i64,
        /// The cap.
        max: i64,
    },
    /// Latitude or longitude out of range, or not finite.
    #[error("invalid coordinates")]
    InvalidCoordinates,
    /// The event time is further in the future than clock skew explains.
    #[error("event time is {ahead_ms} ms ahead of the record's arrival")]
    FutureEventTime {
        /// How far ahead.
        ahead_ms: i64,
    },
    /// `card_token` looks like a card number in clear (digits passing the Luhn check).
    #[error("card_token looks like a clear card number; producers must send a token")]
    ClearCardNumber,
    /// The event arrived after some of its windows were final (the late side output).
    #[error("late event: windows {windows} were final at watermark {watermark_ms}")]
    LateEvent {
        /// The windows it missed (`key#width@start`, comma-separated).
        windows: String,
        /// The watermark it met, epoch ms.
        watermark_ms: i64,
    },
    /// A KPL aggregated record could not be de-aggregated.
    #[error("KPL aggregate: {0}")]
    Kpl(String),
}

/// Limits applied by [`decode_txn`].
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest accepted payload.
    pub max_payload_bytes: usize,
    /// Largest accepted lead of event time over arrival time.
    pub max_future_skew_ms: i64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
        }
    }
}

/// Every field optional and borrowed: presence and values are checked after parsing so
/// each problem gets its own reason. Unknown fields are ignored.
#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(borrow)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    card_token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    merchant_id: Option<Cow<'a, str>>,
    mcc: Option<Mcc>,
    amount_minor: Option<i64>,
    #[serde(borrow)]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    location: Option<LocationIn<'a>>,
    channel: Option<Channel>,
    auth_result: Option<AuthResult>,
}

#[derive(Deserialize)]
struct LocationIn<'a> {
    lat: Option<f64>,
    lon: Option<f64>,
    #[serde(borrow)]
    country: Option<Cow<'a, str>>,
}

/// MCC arrives as "5411" (ISO form) or 5411; both are accepted.
#[derive(Deserialize)]
#[serde(untagged)]
enum Mcc {
    Num(u64),
    Text(String),
}

fn missing(field: &str) -> PoisonReason {
    PoisonReason::MissingField {
        field: field.to_owned(),
    }
}

fn invalid(field: &str, why: impl fmt::Display) -> PoisonReason {
    PoisonReason::InvalidField {
        field: field.to_owned(),
        why: why.to_string(),
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

fn non_empty_id<'a>(field: &str, v: Option<Cow<'a, str>>) -> Result<Cow<'a, str>, PoisonReason> {
    let v = v.ok_or_else(|| missing(field))?;
    if v.is_empty() || v.len() > 128 {
        return Err(invalid(field, "must be 1 to 128 characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(v)
}

fn upper_code(field: &str, v: Option<Cow<'_, str>>, len: usize) -> Result<String, PoisonReason> {
    let v = v.ok_or_else(|| missing(field))?;
    if v.len() != len || !v.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(field, format!("must be {len} upper-case letters")));
    }
    Ok(v.into_owned())
}

/// True when `s` is 12 to 19 digits passing the Luhn check: a card number in clear.
pub fn looks_like_pan(s: &str) -> bool {
    let digits: Vec<u32> = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()
        .unwrap_or_default();
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

fn parse_event_time(v: Option<Cow<'_, str>>) -> Result<i64, PoisonReason> {
    let v = v.ok_or_else(|| missing("event_time"))?;
    let t = OffsetDateTime::parse(&v, &Rfc3339)
        .map_err(|e| invalid("event_time", format!("not RFC 3339: {e}")))?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms).map_err(|_| invalid("event_time", "out of range"))
}

/// Decodes and validates one `txn.v1` payload. `arrival_ms` (the record's approximate
/// arrival time) is the clock that event times are checked against, so the same record
/// always gets the same verdict, however late it is replayed.
pub fn decode_txn(
    payload: &[u8],
    arrival_ms: i64,
    limits: &DecodeLimits,
) -> Result<Txn, PoisonReason> {
    if payload.len() > limits.max_payload_bytes {
        return Err(PoisonReason::TooLarge {
            size: payload.len(),
            cap: limits.max_payload_bytes,
        });
    }
    let w: WireIn<'_> = serde_json::from_slice(payload).map_err(|e| PoisonReason::BadJson {
        message: truncate(&e.to_string(), 200),
    })?;
    let schema = w.schema.ok_or_else(|| missing("schema"))?;
    if schema != SCHEMA_V1 {
        return Err(PoisonReason::UnknownSchema {
            found: truncate(&schema, 64),
        });
    }
    let event_id = non_empty_id("event_id", w.event_id)?;
    let card_token = non_empty_id("card_token", w.card_token)?;
    if looks_like_pan(&card_token) {
        return Err(PoisonReason::ClearCardNumber);
    }
    let merchant_id = non_empty_id("merchant_id", w.merchant_id)?;
    let mcc = match w.mcc.ok_or_else(|| missing("mcc"))? {
        Mcc::Num(n) if n <= 9999 => n as u16,
        Mcc::Text(t) if t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit()) => {
            t.parse::<u16>().map_err(|e| invalid("mcc", e))?
        }
        _ => return Err(invalid("mcc", "must be four digits")),
    };
    let amount_minor = w.amount_minor.ok_or_else(|| missing("amount_minor"))?;
    if amount_minor < 0 {
        return Err(PoisonReason::NegativeAmount { amount_minor });
    }
    if amount_minor > MAX_AMOUNT_MINOR {
        return Err(PoisonReason::AbsurdAmount {
            amount_minor,
            max: MAX_AMOUNT_MINOR,
        });
    }
    let currency = upper_code("currency", w.currency, 3)?;
    let event_time_ms = parse_event_time(w.event_time)?;
    let ahead_ms = event_time_ms.saturating_sub(arrival_ms);
    if ahead_ms > limits.max_future_skew_ms {
        return Err(PoisonReason::FutureEventTime { ahead_ms });
    }
    let loc = w.location.ok_or_else(|| missing("location"))?;
    let lat = loc.lat.ok_or_else(|| missing("location.lat"))?;
    let lon = loc.lon.ok_or_else(|| missing("location.lon"))?;
    if !lat.is_finite() || !lon.is_finite() || lat.abs() > 90.0 || lon.abs() > 180.0 {
        return Err(PoisonReason::InvalidCoordinates);
    }
    let country = upper_code("location.country", loc.country, 2)?;
    let channel = w.channel.ok_or_else(|| missing("channel"))?;
    let auth_result = w.auth_result.ok_or_else(|| missing("auth_result"))?;
    Ok(Txn {
        event_id: event_id.into_owned(),
        card_token: card_token.into_owned(),
        merchant_id: merchant_id.into_owned(),
        mcc,
        amount_minor,
        currency,
        event_time_ms,
        location: Location { lat, lon, country },
        channel,
        auth_result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ARRIVAL: i64 = 1_764_140_400_000; // 2025-11-26T07:00:00Z

    fn good() -> serde_json::Value {
        serde_json::json!({
            "schema": "txn.v1",
            "event_id": "evt-1",
            "card_token": "tok_abc",
            "merchant_id": "m-42",
            "mcc": "5411",
            "amount_minor": 1299,
            "currency": "EUR",
            "event_time": "2025-11-26T06:59:58.250Z",
            "location": {"lat": 48.85, "lon": 2.35, "country": "FR"},
            "channel": "pos",
            "auth_result": "approved"
        })
    }

    fn decode(v: &serde_json::Value) -> Result<Txn, PoisonReason> {
        decode_txn(v.to_string().as_bytes(), ARRIVAL, &DecodeLimits::default())
    }

    #[test]
    fn decodes_a_valid_event_and_round_trips() {
        let t = decode(&good()).unwrap();
        assert_eq!(t.mcc, 5411);
        assert_eq!(t.event_time_ms, ARRIVAL - 1750);
        let again = decode_txn(t.to_json().as_bytes(), ARRIVAL, &DecodeLimits::default()).unwrap();
        assert_eq!(again, t);
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let mut v = good();
        v["loyalty_tier"] = serde_json::json!({"nested": [1, 2]});
        v["location"]["city"] = "Paris".into();
        assert!(decode(&v).is_ok());
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        type Mutation = fn(&mut serde_json::Value);
        let cases: Vec<(Mutation, PoisonReason)> = vec![
            (
                |v| v["schema"] = "txn.v9".into(),
                PoisonReason::UnknownSchema {
                    found: "txn.v9".into(),
                },
            ),
            (
                |v| {
                    v.as_object_mut().unwrap().remove("amount_minor");
                },
                missing("amount_minor"),
            ),
            (
                |v| v["card_token"] = serde_json::Value::Null,
                missing("card_token"),
            ),
            (
                |v| v["amount_minor"] = (-5).into(),
                PoisonReason::NegativeAmount { amount_minor: -5 },
            ),
            (
                |v| v["amount_minor"] = 100_000_000_001_i64.into(),
                PoisonReason::AbsurdAmount {
                    amount_minor: 100_000_000_001,
                    max: MAX_AMOUNT_MINOR,
                },
            ),
            (
                |v| v["location"]["lat"] = 91.0.into(),
                PoisonReason::InvalidCoordinates,
            ),
            (
                |v| v["event_time"] = "2025-11-26T08:00:00Z".into(),
                PoisonReason::FutureEventTime {
                    ahead_ms: 3_600_000,
                },
            ),
            (
                |v| v["card_token"] = "4111111111111111".into(),
                PoisonReason::ClearCardNumber,
            ),
            (
                |v| v["currency"] = "eur".into(),
                invalid("currency", "must be 3 upper-case letters"),
            ),
            (
                |v| v["mcc"] = "54".into(),
                invalid("mcc", "must be four digits"),
            ),
        ];
        for (mutate, want) in cases {
            let mut v = good();
            mutate(&mut v);
            assert_eq!(decode(&v).unwrap_err(), want);
        }
    }

    #[test]
    fn ill_typed_field_and_garbage_are_bad_json() {
        let mut v = good();
        v["amount_minor"] = "12.99".into();
        assert!(matches!(decode(&v), Err(PoisonReason::BadJson { .. })));
        let r = decode_txn(b"{not json", ARRIVAL, &DecodeLimits::default());
        assert!(matches!(r, Err(PoisonReason::BadJson { .. })));
    }

    #[test]
    fn oversized_payload_is_rejected_before_parsing() {
        let big = vec![b' '; DEFAULT_MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            decode_txn(&big, ARRIVAL, &DecodeLimits::default()),
            Err(PoisonReason::TooLarge {
                size: DEFAULT_MAX_PAYLOAD_BYTES + 1,
                cap: DEFAULT_MAX_PAYLOAD_BYTES
            })
        );
    }

    #[test]
    fn reasons_never_echo_a_card_number() {
        let mut v = good();
        v["card_token"] = "4111 1111 1111 1111".into();
        let reason = decode(&v).unwrap_err().to_string();
        assert!(!reason.contains("4111"), "{reason}");
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z0-9.:-]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 32, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("schema".to_string()),
                        Just("amount_minor".to_string()),
                        Just("location".to_string()),
                        Just("lat".to_string()),
                        Just("event_time".to_string()),
                        "[a-z_]{1,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_txn(&bytes, ARRIVAL, &DecodeLimits::default());
        }

        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            let _ = decode(&v);
        }

        #[test]
        fn mutated_valid_event_is_ok_or_typed_reason(field in 0usize..11, junk in arb_json()) {
            let mut v = good();
            let key = v.as_object().unwrap().keys().nth(field).unwrap().clone();
            v[key.as_str()] = junk;
            match decode(&v) {
                Ok(t) => prop_assert!(t.amount_minor >= 0),
                Err(r) => prop_assert!(!r.to_string().is_empty()),
            }
        }
    }
}
