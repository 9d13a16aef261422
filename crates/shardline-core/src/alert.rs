//! The alert: one format for the fraud scorer and the window aggregator's threshold rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A decision record (an alert): written for every event the rules review or block, and
/// for window rules that fire. Stored in the alerts table (keyed by `alert_id`, so writing it twice is a
/// no-op) and put on the optional output stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique and deterministic: the event id for the scorer, `(rule, key, window)` for
    /// window rules, so a replay rewrites the same item.
    pub alert_id: String,
    /// `fraud-scorer` or `window-aggregator`.
    pub source: String,
    /// What the alert is about: `card:<token>`, `merchant:<id>` or `global`.
    pub subject: String,
    /// The card token, when the alert is about a card (the by-card index is sparse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_token: Option<String>,
    /// The merchant, when the alert is about one event's merchant (live scorer records)
    /// or a merchant window: what the by-merchant index reads (sparse, like by-card:
    /// shadow records leave it out). Passed through `event::pan_safe_id`, so a merchant
    /// id that reads as a card number is never stored in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    /// The event that raised it (scorer alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// 0 to 1000.
    pub score: u32,
    /// Reason codes that counted.
    pub reasons: Vec<String>,
    /// Reason codes of shadow rules that fired.
    #[serde(default)]
    pub shadow_reasons: Vec<String>,
    /// Version of the rule set that decided.
    pub ruleset_version: String,
    /// Content hash of that rule set (`sha256:...`), so a decision can be tied to the
    /// exact rules even when a version string is reused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ruleset_hash: String,
    /// The decision: `review` or `block` (an allowed event is not stored).
    #[serde(default = "review")]
    pub outcome: crate::fraud::rules::Outcome,
    /// The explanation: every rule that fired, its reason and the values it read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::fraud::rules::FiredRule>,
    /// Values of the features (or window metrics) behind the rules that fired.
    pub features: BTreeMap<String, f64>,
    /// Event time (scorer) or window end (window rules), epoch ms.
    pub event_time_ms: i64,
    /// UTC day of `event_time_ms` (`YYYY-MM-DD`): the by-time index's partition.
    pub alert_day: String,
}

fn review() -> crate::fraud::rules::Outcome {
    crate::fraud::rules::Outcome::Review
}

/// The UTC day (`YYYY-MM-DD`) of an epoch-ms time.
pub fn utc_day(ms: i64) -> String {
    let s = crate::event::format_rfc3339_ms(ms);
    s.get(..10).unwrap_or("1970-01-01").to_owned()
}
