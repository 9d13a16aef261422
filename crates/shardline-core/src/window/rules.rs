//! Threshold rules on window metrics (declines per merchant in 15 minutes, spend per
//! card in an hour, distinct cards per merchant...). An alert is raised once per
//! (rule, key, window): its id is derived from them, so a replay rewrites the same item.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{KeyKind, MINUTE_MS, Metrics, WindowId};
use crate::alert::{Alert, utc_day};
use crate::fraud::rules::Op;

/// The rule set shipped in the repository (`rules/window-default.json`).
pub const DEFAULT_WINDOW_RULES_JSON: &str = include_str!("../../../../rules/window-default.json");
/// Source name in window alerts.
pub const SOURCE: &str = "window-aggregator";

/// A metric of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Events.
    Count,
    /// Sum of amounts (all currencies, minor units).
    Sum,
    /// Approved events.
    Approved,
    /// Declined events.
    Declined,
    /// Estimated distinct cards.
    DistinctCards,
}

impl Metric {
    /// The metric's value for a window total.
    pub fn value(self, m: &Metrics) -> f64 {
        match self {
            Self::Count => m.count as f64,
            Self::Sum => m.total_sum() as f64,
            Self::Approved => m.approved as f64,
            Self::Declined => m.declined as f64,
            Self::DistinctCards => m.distinct_cards(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::DistinctCards => "distinct_cards",
        }
    }
}

/// One threshold rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowRule {
    /// Stable id.
    pub id: String,
    /// Key kind it watches.
    pub kind: KeyKind,
    /// Window width, minutes.
    pub width_min: i64,
    /// Metric.
    pub metric: Metric,
    /// Comparison.
    pub op: Op,
    /// Threshold.
    pub value: f64,
    /// Alert score.
    pub score: u32,
    /// Reason code.
    pub reason: String,
}

/// A versioned set of window rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowRuleSet {
    /// Version written into alerts.
    pub version: String,
    /// The rules.
    pub rules: Vec<WindowRule>,
}

impl WindowRuleSet {
    /// The default set shipped in the repository.
    pub fn default_rules() -> Self {
        serde_json::from_str(DEFAULT_WINDOW_RULES_JSON)
            .expect("rules/window-default.json is checked by a unit test")
    }

    /// Rules that watch windows of this kind and width.
    pub fn for_window(&self, kind: KeyKind, width_ms: i64) -> impl Iterator<Item = &WindowRule> {
        self.rules
            .iter()
            .filter(move |r| r.kind == kind && r.width_min * MINUTE_MS == width_ms)
    }

    /// The alert a rule raises on a window total, if it fires.
    pub fn evaluate(&self, rule: &WindowRule, window: &WindowId, total: &Metrics) -> Option<Alert> {
        let v = rule.metric.value(total);
        let fires = match rule.op {
            Op::Gt => v > rule.value,
            Op::Gte => v >= rule.value,
            Op::Lt => v < rule.value,
            Op::Lte => v <= rule.value,
            Op::Eq => (v - rule.value).abs() < f64::EPSILON,
        };
        // A merchant id that reads as a card number never leaves the function.
        let key = crate::event::pan_safe_id(&window.key);
        fires.then(|| Alert {
            alert_id: format!(
                "win:{}:{}:{}m:{}",
                rule.id, key, rule.width_min, window.start_ms
            ),
            source: SOURCE.to_owned(),
            subject: key.clone().into_owned(),
            card_token: window.key.strip_prefix("card:").map(str::to_owned),
            event_id: None,
            score: rule.score,
            reasons: vec![rule.reason.clone()],
            shadow_reasons: Vec::new(),
            ruleset_version: self.version.clone(),
            ruleset_hash: String::new(),
            outcome: crate::fraud::rules::Outcome::Review,
            rules: Vec::new(),
            features: BTreeMap::from([(rule.metric.name().to_owned(), v)]),
            event_time_ms: window.end_ms(),
            alert_day: utc_day(window.end_ms()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::tests::txn;

    #[test]
    fn default_rules_parse_and_decline_spike_fires_once_per_window() {
        let rs = WindowRuleSet::default_rules();
        let rule = rs
            .for_window(KeyKind::Merchant, 15 * MINUTE_MS)
            .next()
            .unwrap();
        let w = WindowId {
            key: "merchant:m-1".into(),
            width_ms: 15 * MINUTE_MS,
            start_ms: 0,
        };
        let mut m = Metrics::default();
        let evs: Vec<_> = (0..25).map(|i| txn(i, 0, 100, "m-1", i < 20)).collect();
        m.add_all(&evs[..19], true);
        assert!(rs.evaluate(rule, &w, &m).is_none());
        m.add_all(&evs[19..], true);
        let a = rs.evaluate(rule, &w, &m).unwrap();
        assert_eq!(a.alert_id, "win:merchant_decline_spike:merchant:m-1:15m:0");
        assert_eq!(a.reasons, vec!["MERCHANT_DECLINE_SPIKE"]);
        assert_eq!(a.event_time_ms, 15 * MINUTE_MS);
        assert!(a.card_token.is_none());
    }

    #[test]
    fn card_spend_alert_carries_the_card() {
        let rs = WindowRuleSet::default_rules();
        let rule = rs.for_window(KeyKind::Card, 60 * MINUTE_MS).next().unwrap();
        let w = WindowId {
            key: "card:tok_1".into(),
            width_ms: 60 * MINUTE_MS,
            start_ms: 0,
        };
        let mut m = Metrics::default();
        m.add_all(&[txn(1, 0, 600_000, "m", false)], false);
        assert_eq!(
            rs.evaluate(rule, &w, &m).unwrap().card_token.as_deref(),
            Some("tok_1")
        );
    }

    /// A merchant id that reads as a card number (10 % of numeric 15-digit ids pass Luhn)
    /// never leaves in an alert; two such merchants keep distinct alert ids.
    #[test]
    fn a_merchant_id_that_reads_as_a_card_number_is_not_in_the_alert() {
        let rs = WindowRuleSet::default_rules();
        let rule = rs
            .for_window(KeyKind::Merchant, 15 * MINUTE_MS)
            .next()
            .unwrap();
        let mut m = Metrics::default();
        let evs: Vec<_> = (0..25).map(|i| txn(i, 0, 100, "m", true)).collect();
        m.add_all(&evs, true);
        let alert = |merchant: &str| {
            let w = WindowId {
                key: format!("merchant:{merchant}"),
                width_ms: 15 * MINUTE_MS,
                start_ms: 0,
            };
            rs.evaluate(rule, &w, &m).unwrap()
        };
        let (a, b) = (alert("4111111111111111"), alert("5500005555555559"));
        for x in [&a, &b] {
            let json = serde_json::to_string(x).unwrap();
            assert!(
                !json.contains("4111111111111111") && !json.contains("5500005555555559"),
                "{json}"
            );
        }
        assert_ne!(a.alert_id, b.alert_id);
        assert_eq!(
            a.alert_id,
            alert("4111111111111111").alert_id,
            "deterministic"
        );
    }
}
