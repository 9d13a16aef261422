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
/// Oldest accepted event time, behind its arrival: 30 days keeps a terminal's
/// store-and-forward upload weeks late, and keeps every item's TTL (window end plus
/// retention) recent enough for DynamoDB to act on (it skips expiries more than five
/// years past: <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/howitworks-ttl.html>).
pub const DEFAULT_MAX_EVENT_AGE_MS: i64 = 30 * 24 * 3_600_000;

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
    /// The card's BIN (its first 6 to 8 digits, which name the issuer), when the
    /// producer sends it: what `bin` lists match. Never a whole card number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_bin: Option<String>,
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
            card_bin: self.card_bin.as_deref(),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    card_bin: Option<&'a str>,
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
    /// The event time is further in the past than any delayed upload explains.
    #[error("event time is {behind_ms} ms behind the record's arrival")]
    StaleEventTime {
        /// How far behind.
        behind_ms: i64,
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
    /// A KPL aggregated record could not be de-aggregated. In JSON
    /// `{"kind":"kpl","message":...}`: an internally tagged enum cannot hold a bare
    /// string, and serde refused to serialise the reason (the quarantine write failed).
    #[error("KPL aggregate: {0}")]
    #[serde(
        serialize_with = "kpl_message::serialize",
        deserialize_with = "kpl_message::deserialize"
    )]
    Kpl(String),
    /// A KPL aggregate is over one of the bounds de-aggregation holds it to (user
    /// records, partition keys, key length): the whole aggregate is this one record.
    #[error("KPL aggregate has {found} {what}, over the limit of {limit}")]
    KplOverLimit {
        /// What is counted (`user records`, `partition keys`, ...).
        what: String,
        /// How many the aggregate has.
        found: u64,
        /// The bound.
        limit: u64,
    },
    /// `currency` is three upper-case letters but not an active ISO 4217 code.
    #[error("unknown currency {currency:?}: not an active ISO 4217 code")]
    UnknownCurrency {
        /// The code given.
        currency: String,
    },
}

/// Longest text a reason keeps from the input, per field.
const REASON_TEXT_CHARS: usize = 256;

/// [`PoisonReason::Kpl`]'s message as a `{"message": ...}` object, which an internally
/// tagged enum can carry beside its `kind`.
mod kpl_message {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    struct Out<'a> {
        message: &'a str,
    }

    #[derive(Deserialize)]
    struct In {
        message: String,
    }

    #[allow(clippy::ptr_arg)] // serde hands over the variant's field as declared
    pub(super) fn serialize<S: Serializer>(message: &String, s: S) -> Result<S::Ok, S::Error> {
        Out { message }.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        In::deserialize(d).map(|w| w.message)
    }
}

impl PoisonReason {
    /// The reason's kind, as its JSON `kind` tag (`bad_json`, `missing_field`, ...).
    pub fn kind(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "invalid".to_owned())
    }

    /// The reason with every text it copied from the input redacted of card numbers and
    /// cut to a bounded length, and every input number that would read as a card number
    /// withheld. Quarantine entries, logs and metrics only ever see this form.
    #[must_use]
    pub fn redacted(self) -> Self {
        use PoisonReason as R;
        let text = |s: String| bounded_text(&s, REASON_TEXT_CHARS);
        let withheld = |field: &str, why: &str| R::InvalidField {
            field: field.to_owned(),
            why: format!("{why} (the value is withheld: it reads as a card number)"),
        };
        match self {
            R::BadJson { message } => R::BadJson {
                message: text(message),
            },
            R::UnknownSchema { found } => R::UnknownSchema {
                found: bounded_text(&found, 64),
            },
            R::MissingField { field } => R::MissingField { field: text(field) },
            R::InvalidField { field, why } => R::InvalidField {
                field: text(field),
                why: text(why),
            },
            R::UnknownCurrency { currency } => R::UnknownCurrency {
                currency: text(currency),
            },
            R::Kpl(message) => R::Kpl(text(message)),
            R::KplOverLimit { what, found, limit } => R::KplOverLimit {
                what: text(what),
                found,
                limit,
            },
            // Window starts are computed here (multiples of the width), not copied from
            // the input; only the keys are.
            R::LateEvent {
                windows,
                watermark_ms,
            } => R::LateEvent {
                windows: truncate(
                    &windows
                        .split(',')
                        .map(|w| match w.rsplit_once('@') {
                            Some((key, start)) => format!("{}@{start}", redact_pans_str(key)),
                            None => redact_pans_str(w).into_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    4 * REASON_TEXT_CHARS,
                ),
                watermark_ms,
            },
            R::NegativeAmount { amount_minor } if number_may_hold_pan(amount_minor) => {
                withheld("amount_minor", "negative")
            }
            R::AbsurdAmount { amount_minor, max } if number_may_hold_pan(amount_minor) => {
                withheld("amount_minor", &format!("over the {max} cap"))
            }
            R::FutureEventTime { ahead_ms } if number_may_hold_pan(ahead_ms) => {
                withheld("event_time", "ahead of the record's arrival")
            }
            R::StaleEventTime { behind_ms } if number_may_hold_pan(behind_ms) => {
                withheld("event_time", "behind the record's arrival")
            }
            other => other,
        }
    }

    /// True for the reasons that mean a field holds a card number: the payload is then
    /// withheld from the quarantine entirely, not just redacted.
    pub fn withholds_payload(&self) -> bool {
        matches!(self, Self::ClearCardNumber)
    }
}

/// Limits applied by [`decode_txn`].
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest accepted payload.
    pub max_payload_bytes: usize,
    /// Largest accepted lead of event time over arrival time.
    pub max_future_skew_ms: i64,
    /// Largest accepted lag of event time behind arrival time.
    pub max_event_age_ms: i64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
            max_event_age_ms: DEFAULT_MAX_EVENT_AGE_MS,
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
    #[serde(borrow, default)]
    card_bin: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct LocationIn<'a> {
    lat: Option<Coord>,
    lon: Option<Coord>,
    #[serde(borrow)]
    country: Option<Cow<'a, str>>,
}

/// A coordinate parsed from the number's own digits with Rust's correctly rounded
/// parser: serde_json's default one (without its `float_roundtrip` feature) can be a unit
/// in the last place off for 17 significant digits, so an event written by
/// [`Txn::to_json`] did not always decode to the same coordinates.
struct Coord(f64);

impl<'de> Deserialize<'de> for Coord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&serde_json::value::RawValue>::deserialize(d)?;
        // Only a JSON number parses: anything else keeps its quotes or brackets.
        raw.get()
            .parse()
            .map(Coord)
            .map_err(|_| serde::de::Error::custom("invalid type: expected a number"))
    }
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

/// How many digits a card number has (ISO/IEC 7812 PANs in use: 12 to 19).
pub const PAN_DIGITS: std::ops::RangeInclusive<usize> = 12..=19;

/// What a redacted card number is replaced by in quarantined bytes and reason texts.
pub const PAN_MARKER: &str = "[PAN redacted]";

/// True when `s` is 12 to 19 digits passing the Luhn check: a card number in clear.
pub fn looks_like_pan(s: &str) -> bool {
    let digits: Vec<u8> = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_digit(10).map(|d| d as u8))
        .collect::<Option<_>>()
        .unwrap_or_default();
    PAN_DIGITS.contains(&digits.len()) && luhn_ok(&digits)
}

/// The Luhn check over digit values (0-9).
fn luhn_ok(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
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

/// One piece of [`redact_pans`]'s output, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes whose digit runs are too short to be a card number.
    Text(&'a [u8]),
    /// A run of 12 to 19 digits (with the spaces and dashes between them) that passed:
    /// keep it whole or not at all, so that a cut never leaves a piece of a number.
    Digits(&'a [u8]),
    /// A run that may hold a card number, replaced by [`PAN_MARKER`].
    Redacted,
}

/// True when a run of digit values may hold a card number: longer than any PAN, or any
/// stretch of 12 to 19 of its digits passes the Luhn check. Checking every stretch, not
/// only the whole run, catches a card number glued to other digits (an EMV TLV
/// `5A08<PAN>`, a length prefix), at the price of redacting some other numbers too.
fn run_may_hold_pan(d: &[u8]) -> bool {
    if d.len() > *PAN_DIGITS.end() {
        return true;
    }
    (0..d.len()).any(|start| {
        PAN_DIGITS
            .clone()
            .take_while(|len| start + len <= d.len())
            .any(|len| luhn_ok(&d[start..start + len]))
    })
}

/// Finds every run of digits in `data` (digits joined by spaces or dashes count as one
/// run, as card numbers are written "4111 1111 1111 1111" or "4111-1111-...") and hands
/// `emit` the bytes in order, runs that may hold a card number replaced by
/// [`Piece::Redacted`]. One pass, no allocation. Returns true when something was redacted.
pub fn redact_pans(data: &[u8], mut emit: impl FnMut(Piece<'_>)) -> bool {
    let mut redacted = false;
    let mut text_start = 0;
    let mut i = 0;
    while i < data.len() {
        if !data[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        // At most 20 digit values are kept: a 20th means "longer than any PAN".
        let mut digits = [0u8; 20];
        let mut n = 0usize;
        let mut end = i;
        let mut j = i;
        while j < data.len() {
            let c = data[j];
            if c.is_ascii_digit() {
                if n < digits.len() {
                    digits[n] = c - b'0';
                }
                n += 1;
                j += 1;
                end = j;
            } else if matches!(c, b' ' | b'-') {
                let mut k = j;
                while k < data.len() && matches!(data[k], b' ' | b'-') {
                    k += 1;
                }
                if k < data.len() && data[k].is_ascii_digit() {
                    j = k;
                } else {
                    break;
                }
            } else {
                break;
            }
        }
        if n >= *PAN_DIGITS.start() {
            if text_start < start {
                emit(Piece::Text(&data[text_start..start]));
            }
            if run_may_hold_pan(&digits[..n.min(digits.len())]) {
                emit(Piece::Redacted);
                redacted = true;
            } else {
                emit(Piece::Digits(&data[start..end]));
            }
            text_start = end;
        }
        // A shorter run stays in the text: no part of it can be a card number.
        i = end;
    }
    if text_start < data.len() {
        emit(Piece::Text(&data[text_start..]));
    }
    redacted
}

/// `data` with every run that may hold a card number replaced by [`PAN_MARKER`]
/// (borrowed when nothing was redacted).
pub fn redact_pans_bytes(data: &[u8]) -> Cow<'_, [u8]> {
    let mut out = Vec::new();
    let redacted = redact_pans(data, |p| match p {
        Piece::Text(b) | Piece::Digits(b) => out.extend_from_slice(b),
        Piece::Redacted => out.extend_from_slice(PAN_MARKER.as_bytes()),
    });
    if redacted {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(data)
    }
}

/// `s` with every run that may hold a card number replaced by [`PAN_MARKER`].
pub fn redact_pans_str(s: &str) -> Cow<'_, str> {
    match redact_pans_bytes(s.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(s),
        // Runs start and end at ASCII digits, so the pieces around them stay UTF-8.
        Cow::Owned(v) => Cow::Owned(String::from_utf8_lossy(&v).into_owned()),
    }
}

/// An identifier made safe to leave a function (alert ids, subjects, logs): unchanged
/// unless it holds a run that reads as a card number; then that run is redacted and a
/// 16-bit hash of the original is appended, so two such ids almost always stay apart
/// (alert ids are keys) and the same id always maps to the same text. 16 bits cannot give
/// a card number back: even with its issuer's 6-digit BIN known, some 15,000 valid card
/// numbers share each value (an unkeyed hash wide enough to tell them apart could be
/// reversed by trying them all). Writers drop a colliding alert id rather than send it
/// twice in one batch.
pub fn pan_safe_id(s: &str) -> Cow<'_, str> {
    match redact_pans_str(s) {
        Cow::Borrowed(b) => Cow::Borrowed(b),
        Cow::Owned(r) => Cow::Owned(format!(
            "{r}#{:04x}",
            crate::window::hll::stable_hash(s) >> 48
        )),
    }
}

/// Redacts then truncates to `max_chars`: redacting first means a cut never leaves part
/// of a card number behind.
fn bounded_text(s: &str, max_chars: usize) -> String {
    truncate(&redact_pans_str(s), max_chars)
}

/// True when the decimal form of a number from the input may hold a card number.
fn number_may_hold_pan(n: i64) -> bool {
    redact_pans_str(&n.to_string()).contains(PAN_MARKER)
}

/// The active ISO 4217 alphabetic codes (List One, the currency and funds codes, as
/// published by SIX, the maintenance agency, on 2026-01-01:
/// <https://www.six-group.com/en/products-services/financial-information/data-standards.html#scrollTo=iso-4217>),
/// sorted for binary search. Withdrawn codes (BGN, HRK, ANG, CUC, SLL, ZWL, ...) are
/// not in it. Besides catching producer bugs, the list bounds the per-currency map a
/// window item keeps (every three upper-case letters would be 17,576 entries, past
/// DynamoDB's 400 KB item limit).
pub const ISO_4217_CODES: [&str; 178] = [
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BHD",
    "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DJF",
    "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP",
    "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR",
    "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT",
    "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP",
    "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR",
    "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB",
    "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN",
    "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH",
    "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAD",
    "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR", "XOF", "XPD", "XPF",
    "XPT", "XSU", "XTS", "XUA", "XXX", "YER", "ZAR", "ZMW", "ZWG",
];

/// True when `code` is an active ISO 4217 alphabetic code.
pub fn is_iso_4217(code: &str) -> bool {
    ISO_4217_CODES.binary_search(&code).is_ok()
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
    decode_unredacted(payload, arrival_ms, limits).map_err(PoisonReason::redacted)
}

fn decode_unredacted(
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
    // Texts copied from the input are redacted before they are cut (a cut first could
    // leave part of a card number that no longer reads as one).
    let w: WireIn<'_> = serde_json::from_slice(payload).map_err(|e| PoisonReason::BadJson {
        message: bounded_text(&e.to_string(), 200),
    })?;
    let schema = w.schema.ok_or_else(|| missing("schema"))?;
    if schema != SCHEMA_V1 {
        return Err(PoisonReason::UnknownSchema {
            found: bounded_text(&schema, 64),
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
    if !is_iso_4217(&currency) {
        return Err(PoisonReason::UnknownCurrency { currency });
    }
    let event_time_ms = parse_event_time(w.event_time)?;
    let ahead_ms = event_time_ms.saturating_sub(arrival_ms);
    if ahead_ms > limits.max_future_skew_ms {
        return Err(PoisonReason::FutureEventTime { ahead_ms });
    }
    let behind_ms = arrival_ms.saturating_sub(event_time_ms);
    if behind_ms > limits.max_event_age_ms {
        return Err(PoisonReason::StaleEventTime { behind_ms });
    }
    let loc = w.location.ok_or_else(|| missing("location"))?;
    let lat = loc.lat.ok_or_else(|| missing("location.lat"))?.0;
    let lon = loc.lon.ok_or_else(|| missing("location.lon"))?.0;
    if !lat.is_finite() || !lon.is_finite() || lat.abs() > 90.0 || lon.abs() > 180.0 {
        return Err(PoisonReason::InvalidCoordinates);
    }
    let country = upper_code("location.country", loc.country, 2)?;
    let channel = w.channel.ok_or_else(|| missing("channel"))?;
    let auth_result = w.auth_result.ok_or_else(|| missing("auth_result"))?;
    let card_bin = match w.card_bin {
        None => None,
        Some(b) if (6..=8).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_digit()) => {
            Some(b.into_owned())
        }
        Some(_) => return Err(invalid("card_bin", "must be 6 to 8 digits")),
    };
    Ok(Txn {
        card_bin,
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
pub(crate) mod tests {
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
    fn an_optional_card_bin_is_six_to_eight_digits_and_never_a_card_number() {
        assert_eq!(decode(&good()).unwrap().card_bin, None);
        for ok in ["411111", "41111111"] {
            let mut v = good();
            v["card_bin"] = ok.into();
            let t = decode(&v).unwrap();
            assert_eq!(t.card_bin.as_deref(), Some(ok));
            let again =
                decode_txn(t.to_json().as_bytes(), ARRIVAL, &DecodeLimits::default()).unwrap();
            assert_eq!(again, t);
        }
        for bad in ["41111", "411111111", "4111111111111111", "4111a1", ""] {
            let mut v = good();
            v["card_bin"] = bad.into();
            let e = decode(&v).unwrap_err();
            assert_eq!(e, invalid("card_bin", "must be 6 to 8 digits"), "{bad}");
            assert!(!e.to_string().contains("4111111111111111"));
        }
        let mut v = good();
        v["card_bin"] = 411111.into();
        assert!(decode(&v).is_err(), "a number, not a string");
    }

    /// A window item's TTL is its window's end plus the retention: an event time years in
    /// the past gives an item DynamoDB's TTL never deletes (it skips items whose expiry is
    /// more than five years past), so event time is bounded below as well as above.
    #[test]
    fn an_event_time_far_before_arrival_is_poison() {
        let day = 24 * 3_600_000;
        let at = |behind: i64| {
            let mut v = good();
            v["event_time"] = format_rfc3339_ms(ARRIVAL - behind).into();
            decode(&v)
        };
        assert!(
            at(29 * day).is_ok(),
            "a store-and-forward upload weeks late"
        );
        assert_eq!(
            at(6 * 365 * day),
            Err(PoisonReason::StaleEventTime {
                behind_ms: 6 * 365 * day
            })
        );
        assert!(matches!(
            at(31 * day),
            Err(PoisonReason::StaleEventTime { .. })
        ));
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

    /// An independent check: any run of 13 to 19 digits (spaces and dashes between digits
    /// ignored) anywhere in `s`, at any offset, that passes the Luhn check.
    pub(crate) fn has_pan_candidate(s: &str) -> bool {
        let b = s.as_bytes();
        let mut digits = Vec::new();
        let mut i = 0;
        while i <= b.len() {
            let c = b.get(i).copied();
            match c {
                Some(d) if d.is_ascii_digit() => digits.push(u32::from(d - b'0')),
                Some(b' ' | b'-') if !digits.is_empty() => {}
                _ => {
                    for start in 0..digits.len() {
                        for len in 13..=19 {
                            if start + len <= digits.len() {
                                let run: String = digits[start..start + len]
                                    .iter()
                                    .map(|d| char::from_digit(*d, 10).unwrap())
                                    .collect();
                                if looks_like_pan(&run) {
                                    return true;
                                }
                            }
                        }
                    }
                    digits.clear();
                }
            }
            i += 1;
        }
        false
    }

    #[test]
    fn unknown_currency_is_poison() {
        let mut v = good();
        for code in ["XQZ", "AAA", "HRK", "ZWL"] {
            v["currency"] = code.into();
            let r = decode(&v).unwrap_err();
            assert!(r.to_string().contains("unknown currency"), "{code}: {r}");
        }
        for code in [
            "USD", "EUR", "JPY", "GBP", "CHF", "XCG", "ZWG", "SLE", "VED",
        ] {
            v["currency"] = code.into();
            assert!(decode(&v).is_ok(), "{code} is an active ISO 4217 code");
        }
    }

    #[test]
    fn reasons_never_echo_a_card_number_whatever_the_check() {
        let pan = "4111111111111111";
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Wrong JSON type: serde_json's message quotes the value.
        let mut v = good();
        v["amount_minor"] = pan.into();
        cases.push(v.to_string().into_bytes());
        // Unknown enum variant: quoted too.
        let mut v = good();
        v["channel"] = "4111 1111 1111 1111".into();
        cases.push(v.to_string().into_bytes());
        // Unknown schema: `found` echoes the schema.
        let mut v = good();
        v["schema"] = format!("txn.{pan}").into();
        cases.push(v.to_string().into_bytes());
        // A PAN split by the 64-character cut of `found`.
        let mut v = good();
        v["schema"] = format!("{}{pan}", "x".repeat(56)).into();
        cases.push(v.to_string().into_bytes());
        for payload in cases {
            let r = decode_txn(&payload, ARRIVAL, &DecodeLimits::default()).unwrap_err();
            let text = r.to_string();
            let json = serde_json::to_string(&r).unwrap();
            assert!(!has_pan_candidate(&text), "{text}");
            assert!(!has_pan_candidate(&json), "{json}");
            assert!(!text.contains("11111111"), "{text}");
        }
    }

    fn redacted(s: &str) -> String {
        redact_pans_str(s).into_owned()
    }

    #[test]
    fn card_numbers_are_redacted_however_written() {
        for (input, want) in [
            ("pan 4111111111111111.", "pan [PAN redacted]."),
            ("4111 1111 1111 1111", "[PAN redacted]"),
            (
                "4111-1111-1111-1111 and 5555 5555 5555 4444",
                "[PAN redacted] and [PAN redacted]",
            ),
            ("a\"4111 - 1111 - 1111 - 1111\"", "a\"[PAN redacted]\""),
            // Glued to other digits (an EMV TLV: tag 5A, length 08, then the PAN).
            ("5A084111111111111111", "5A[PAN redacted]"),
            // Longer than any PAN: may hide one.
            ("12345678901234567890123", "[PAN redacted]"),
            // Kept: too short, or no stretch of 12 to 19 digits passes Luhn.
            ("2025-11-26T06:59:58.250Z", "2025-11-26T06:59:58.250Z"),
            (
                "amount 1299, id 6820341768487870",
                "amount 1299, id 6820341768487870",
            ),
            ("start 1764140400000", "start 1764140400000"),
            ("4111 1111", "4111 1111"),
            ("", ""),
        ] {
            assert_eq!(redacted(input), want, "{input}");
            assert!(!has_pan_candidate(&redacted(input)), "{input}");
        }
        // Nothing to redact: borrowed, not copied.
        assert!(matches!(redact_pans_str("tok_abc 1299"), Cow::Borrowed(_)));
    }

    #[test]
    fn kept_digit_runs_and_the_marker_come_whole() {
        let mut pieces = Vec::new();
        let any = redact_pans(b"x 4111111111111111 y 6820341768487870 z 12", |p| {
            pieces.push(match p {
                Piece::Text(b) => format!("T:{}", String::from_utf8_lossy(b)),
                Piece::Digits(b) => format!("D:{}", String::from_utf8_lossy(b)),
                Piece::Redacted => "R".to_owned(),
            })
        });
        assert!(any);
        assert_eq!(
            pieces,
            ["T:x ", "R", "T: y ", "D:6820341768487870", "T: z 12"]
        );
    }

    #[test]
    fn input_numbers_that_read_as_card_numbers_are_withheld_from_reasons() {
        for r in [
            PoisonReason::AbsurdAmount {
                amount_minor: 4_111_111_111_111_111,
                max: MAX_AMOUNT_MINOR,
            },
            PoisonReason::NegativeAmount {
                amount_minor: -4_111_111_111_111_111,
            },
            PoisonReason::FutureEventTime {
                ahead_ms: 4_111_111_111_111_111,
            },
        ] {
            let r = r.redacted();
            assert!(matches!(r, PoisonReason::InvalidField { .. }), "{r:?}");
            assert!(!has_pan_candidate(&r.to_string()), "{r}");
            assert!(!has_pan_candidate(&serde_json::to_string(&r).unwrap()));
        }
        // Other numbers are kept as they are.
        let r = PoisonReason::NegativeAmount { amount_minor: -500 };
        assert_eq!(r.clone().redacted(), r);
        // Late events: keys redacted, window starts (computed, not input) kept.
        let r = PoisonReason::LateEvent {
            windows: "merchant:4111111111111111#1m@1764140400000,global#1m@1764140400000".into(),
            watermark_ms: 1,
        }
        .redacted();
        assert_eq!(
            r.to_string(),
            "late event: windows merchant:[PAN redacted]#1m@1764140400000,global#1m@1764140400000 were final at watermark 1"
        );
    }

    #[test]
    fn reason_texts_from_the_input_are_bounded() {
        let r = PoisonReason::BadJson {
            message: "x".repeat(100_000),
        }
        .redacted();
        assert!(r.to_string().len() < 300, "{}", r.to_string().len());
        let r = PoisonReason::Kpl("y".repeat(100_000)).redacted();
        assert!(r.to_string().len() < 300);
    }

    #[test]
    fn currency_list_is_sorted_unique_and_upper_case() {
        assert!(ISO_4217_CODES.windows(2).all(|w| w[0] < w[1]));
        assert!(
            ISO_4217_CODES
                .iter()
                .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
        );
        assert!(ISO_4217_CODES.iter().all(|c| is_iso_4217(c)));
        assert!(!is_iso_4217("BGN") && !is_iso_4217("usd") && !is_iso_4217(""));
    }

    /// Found by the `kpl` fuzz target (fuzz/): a corrupt KPL aggregate's reason did not
    /// serialise, so its quarantine entry could not be written and the record was
    /// reported for retry instead of set aside.
    #[test]
    fn kpl_reason_serialises_to_json_and_back() {
        let r = PoisonReason::Kpl("truncated: 12 bytes is shorter than magic and digest".into());
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"kpl","message":"truncated: 12 bytes is shorter than magic and digest"}"#
        );
        assert_eq!(serde_json::from_str::<PoisonReason>(&json).unwrap(), r);
    }

    /// Found by the `txn` fuzz target (fuzz/): 24.718446744073706 decoded one unit in the
    /// last place low (serde_json's default float parser), so the event `to_json` wrote
    /// did not decode to itself. Both values here decoded off before the fix.
    #[test]
    fn coordinates_decode_exactly_and_round_trip() {
        let mut v = good();
        v["location"]["lat"] = 24.718446744073706.into();
        v["location"]["lon"] = 7.7690000903000005.into();
        let t = decode(&v).unwrap();
        assert_eq!(
            (t.location.lat, t.location.lon),
            (24.718446744073706, 7.7690000903000005)
        );
        let again = decode_txn(t.to_json().as_bytes(), ARRIVAL, &DecodeLimits::default());
        assert_eq!(again, Ok(t));
        for bad in [
            serde_json::json!("48.85"),
            serde_json::json!(null),
            serde_json::json!([1]),
        ] {
            v["location"]["lat"] = bad.clone();
            assert!(decode(&v).is_err(), "{bad}");
        }
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
        fn redaction_leaves_no_card_number(s in "[0-9 a-]{0,80}") {
            let r = redacted(&s);
            prop_assert!(!has_pan_candidate(&r), "{} -> {}", s, r);
            // Idempotent: the marker holds no digits.
            prop_assert_eq!(redacted(&r), r.clone());
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
