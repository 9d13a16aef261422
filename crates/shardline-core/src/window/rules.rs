//! Window rules: conditions over a window's metrics (declines per merchant in 15
//! minutes, spend per card in an hour, distinct cards per merchant...), written in the
//! rule language of [`crate::expr`] over [`WINDOW_VARS`]:
//!
//! ```text
//! decline_rate >= 0.4 and count >= 20
//! declined / count >= 0.4 and count >= 20
//! sum >= 500_000
//! ```
//!
//! A rule watches one key kind and one window width, and raises an alert once per
//! (rule, key, window): the alert's id is derived from them, so a replay rewrites the
//! same item. Its action (`review` unless it says `block`) is the alert's outcome. The
//! v1 format (`metric op value`) loads unchanged: each v1 rule is translated to the
//! condition that means the same, as the scorer's are ([`WindowRuleSet::to_v2_json`]
//! shows it). Lists (`@name`) are not available to window rules.

use std::cell::OnceCell;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sketches_ddsketch::DDSketch;

use super::{KeyKind, MINUTE_MS, Metrics, WindowId};
use crate::alert::{Alert, utc_day};
use crate::expr::{Condition, Value, VarDef, Vars, read_var};
use crate::fraud::rules::{
    FiredRule, MAX_RULES, MAX_SCORE, Op, Outcome, RuleSetError, canonical, check_rule_names,
    check_version,
};
use crate::lists::ListValues;

/// The rule set shipped in the repository (`rules/window-default.json`).
pub const DEFAULT_WINDOW_RULES_JSON: &str = include_str!("../../../../rules/window-default.json");
/// Source name in window alerts.
pub const SOURCE: &str = "window-aggregator";
/// Widest window a rule may watch, minutes (a week: window items are kept that long).
pub const MAX_WIDTH_MIN: i64 = 7 * 24 * 60;

/// The variables a window rule may name: metrics of the window's total, merged across
/// shards. Slot = index.
pub const WINDOW_VARS: &[VarDef] = &[
    VarDef::number(
        "count",
        "events in the window (on time; late events are not counted)",
    ),
    VarDef::number(
        "sum",
        "sum of amounts, all currencies together, minor units",
    ),
    VarDef::number("approved", "approved events"),
    VarDef::number("declined", "declined events"),
    VarDef::number(
        "decline_rate",
        "declined / count, 0 to 1 (0 when the window is empty)",
    ),
    VarDef::number(
        "distinct_cards",
        "distinct cards: exact up to 48, then HyperLogLog (about 3 % error); 0 in per-card windows",
    ),
    VarDef::number(
        "min",
        "smallest amount, minor units, any currency (0 when the window is empty)",
    ),
    VarDef::number(
        "max",
        "largest amount, minor units, any currency (0 when the window is empty)",
    ),
    VarDef::number(
        "p50",
        "median amount, minor units, all currencies together (DDSketch, within 1 %; 0 when empty)",
    ),
    VarDef::number(
        "p95",
        "95th percentile amount, minor units, all currencies together (within 1 %; 0 when empty)",
    ),
    VarDef::number(
        "p99",
        "99th percentile amount, minor units, all currencies together (within 1 %; 0 when empty)",
    ),
    VarDef::number("width_min", "the window's width in minutes"),
];

/// Slots of [`WINDOW_VARS`].
mod slot {
    pub const COUNT: u16 = 0;
    pub const SUM: u16 = 1;
    pub const APPROVED: u16 = 2;
    pub const DECLINED: u16 = 3;
    pub const DECLINE_RATE: u16 = 4;
    pub const DISTINCT_CARDS: u16 = 5;
    pub const MIN: u16 = 6;
    pub const MAX: u16 = 7;
    pub const P50: u16 = 8;
    pub const P95: u16 = 9;
    pub const P99: u16 = 10;
    pub const WIDTH_MIN: u16 = 11;
}

/// A metric of a window: the v1 rule format's `metric`.
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
    /// Every v1 metric.
    pub const ALL: [Metric; 5] = [
        Self::Count,
        Self::Sum,
        Self::Approved,
        Self::Declined,
        Self::DistinctCards,
    ];

    /// The metric's value for a window total (as the v1 rules read it).
    pub fn value(self, m: &Metrics) -> f64 {
        match self {
            Self::Count => m.count as f64,
            Self::Sum => m.total_sum() as f64,
            Self::Approved => m.approved as f64,
            Self::Declined => m.declined as f64,
            Self::DistinctCards => m.distinct_cards(),
        }
    }

    /// The metric's name: in v1 rules, and the variable of [`WINDOW_VARS`] it is.
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::DistinctCards => "distinct_cards",
        }
    }
}

/// A window's metrics as a rule reads them ([`WINDOW_VARS`]). Quantiles decode the
/// amount sketch once, on first use.
pub struct WindowVars<'a> {
    metrics: &'a Metrics,
    width_ms: i64,
    /// Multiplies counts, sums and distinct cards (1 for a window total).
    scale: f64,
    quantiles: OnceCell<[f64; 3]>,
}

impl<'a> WindowVars<'a> {
    /// The variables of a window total of this width.
    pub fn new(metrics: &'a Metrics, width_ms: i64) -> Self {
        Self::scaled(metrics, width_ms, 1.0)
    }

    /// A part of a window extrapolated to the whole: counts, sums and distinct cards
    /// multiplied by `scale`; rates, amounts and quantiles as they are.
    fn scaled(metrics: &'a Metrics, width_ms: i64, scale: f64) -> Self {
        Self {
            metrics,
            width_ms,
            scale,
            quantiles: OnceCell::new(),
        }
    }

    fn quantile(&self, i: usize) -> f64 {
        let qs = self.quantiles.get_or_init(|| {
            let bytes = &self.metrics.amounts;
            // As `Metrics::quantile`: no sketch (or one that does not decode) has none.
            let sketch = (!bytes.is_empty())
                .then(|| DDSketch::from_java_bytes(bytes).ok())
                .flatten();
            let q = |q: f64| {
                sketch
                    .as_ref()
                    .and_then(|s| s.quantile(q).ok().flatten())
                    .unwrap_or(0.0)
            };
            [q(0.5), q(0.95), q(0.99)]
        });
        qs[i]
    }
}

impl Vars for WindowVars<'_> {
    fn number(&self, s: u16) -> f64 {
        let m = self.metrics;
        let amounts = || m.currencies.values().filter(|c| c.count > 0);
        match s {
            slot::COUNT => m.count as f64 * self.scale,
            slot::SUM => m.total_sum() as f64 * self.scale,
            slot::APPROVED => m.approved as f64 * self.scale,
            slot::DECLINED => m.declined as f64 * self.scale,
            slot::DECLINE_RATE if m.count == 0 => 0.0,
            slot::DECLINE_RATE => m.declined as f64 / m.count as f64,
            slot::DISTINCT_CARDS => m.distinct_cards() * self.scale,
            slot::MIN => amounts().map(|c| c.min).min().unwrap_or(0) as f64,
            slot::MAX => amounts().map(|c| c.max).max().unwrap_or(0) as f64,
            slot::P50 => self.quantile(0),
            slot::P95 => self.quantile(1),
            slot::P99 => self.quantile(2),
            slot::WIDTH_MIN => self.width_ms as f64 / MINUTE_MS as f64,
            _ => 0.0,
        }
    }

    fn boolean(&self, _: u16) -> bool {
        false
    }

    fn text(&self, _: u16) -> &str {
        ""
    }

    fn list(&self, _: u16) -> Option<&ListValues> {
        None
    }
}

/// One compiled window rule.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowRule {
    /// Stable id (part of the alert id).
    pub id: String,
    /// Key kind it watches.
    pub kind: KeyKind,
    /// Window width, minutes.
    pub width_min: i64,
    /// The condition's text (a v1 rule's translation).
    pub when: String,
    /// Alert score.
    pub score: u32,
    /// The alert's outcome: review (the default) or block.
    pub action: Outcome,
    /// Reason code.
    pub reason: String,
    /// One line for analysts.
    pub description: Option<String>,
    condition: Condition,
}

impl WindowRule {
    /// The width it watches, ms.
    pub fn width_ms(&self) -> i64 {
        self.width_min * MINUTE_MS
    }

    /// The compiled condition.
    pub fn condition(&self) -> &Condition {
        &self.condition
    }

    /// True when the rule fires on a window total.
    pub fn fires(&self, total: &Metrics) -> bool {
        self.condition
            .eval(&WindowVars::new(total, self.width_ms()))
    }

    /// Whether one shard's part of a window is worth reading the merged total for: the
    /// condition holds on the part as it is, or on the part extrapolated to the whole
    /// window as if it were `share` of it (counts, sums and distinct cards divided by
    /// `share`; the decline rate, amounts, quantiles and width as they are). A rule
    /// that needs at least N of something (`declined >= 20`) is read once the part
    /// reaches `share` x N, which with `share` = 1 / (shards writing the window) misses
    /// no alert; one that needs at most N, once the part is within N. A rule on a rate
    /// is read where this shard's part, scaled up, fires: a heuristic (a rate made by
    /// other shards' parts while this one's is low is read when theirs are). A `share`
    /// outside (0, 1] reads every window.
    pub fn may_fire(&self, part: &Metrics, share: f64) -> bool {
        if !(share > 0.0 && share <= 1.0) {
            return true;
        }
        let width = self.width_ms();
        let scale = 1.0 / share;
        // The part as it is, and scaled up. Rates are taken as the part's own: taking
        // them at their bounds (0 and 1) would make the gate exact for rate rules too,
        // but reads nearly every busy window every batch (one Query each), which costs
        // more than the rule is worth; see README on window rules.
        self.condition.eval(&WindowVars::new(part, width))
            || (share < 1.0 && self.condition.eval(&WindowVars::scaled(part, width, scale)))
    }
}

/// A loaded, checked and compiled set of window rules.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowRuleSet {
    /// Version written into alerts.
    pub version: String,
    /// Content hash of the set (`sha256:` and 16 hex digits of the canonical JSON).
    pub hash: String,
    /// One line about the set.
    pub description: Option<String>,
    /// The rules, in file order.
    pub rules: Vec<WindowRule>,
    /// The canonical JSON it was loaded from.
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    version: String,
    #[serde(default)]
    description: Option<String>,
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    kind: KeyKind,
    width_min: i64,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    op: Option<Op>,
    #[serde(default)]
    value: Option<f64>,
    score: u32,
    reason: String,
    #[serde(default)]
    action: Option<Outcome>,
    #[serde(default)]
    description: Option<String>,
}

fn rule_err(rule: &str, message: impl Into<String>) -> RuleSetError {
    RuleSetError::Rule {
        rule: rule.to_owned(),
        message: message.into(),
    }
}

impl WindowRuleSet {
    /// Parses, checks and compiles a window rule set (v1 or v2). Every condition is
    /// type-checked here, once; an error names the rule (and, for a condition, the line
    /// and column in it: [`RuleSetError::explain`] draws a caret under it).
    pub fn from_json(json: &str) -> Result<Self, RuleSetError> {
        let spec: FileSpec = serde_json::from_str(json)?;
        let (source, hash) = canonical(json)?;
        check_version(&spec.version)?;
        if spec.rules.len() > MAX_RULES {
            return Err(RuleSetError::Set(format!("more than {MAX_RULES} rules")));
        }
        let mut rules: Vec<WindowRule> = Vec::with_capacity(spec.rules.len());
        for r in spec.rules {
            check_rule_names(&r.id, &r.reason, rules.iter().any(|x| x.id == r.id))?;
            if r.score > MAX_SCORE {
                return Err(rule_err(&r.id, "a score is 0 to 1000"));
            }
            if !(1..=MAX_WIDTH_MIN).contains(&r.width_min) {
                return Err(rule_err(
                    &r.id,
                    format!("width_min is 1 to {MAX_WIDTH_MIN} minutes"),
                ));
            }
            let action = match r.action {
                None | Some(Outcome::Review) => Outcome::Review,
                Some(Outcome::Block) => Outcome::Block,
                Some(Outcome::Allow) => {
                    return Err(rule_err(
                        &r.id,
                        "a window rule's action is review (the default) or block",
                    ));
                }
            };
            let when = match (r.when, r.metric, r.op, r.value) {
                (Some(w), None, None, None) => w,
                (None, Some(metric), Some(op), Some(value)) => {
                    let Some(m) = Metric::ALL.iter().find(|m| m.name() == metric) else {
                        return Err(rule_err(
                            &r.id,
                            format!(
                                "unknown metric {metric:?}; known: {} (or write a condition: when)",
                                Metric::ALL.map(Metric::name).join(", ")
                            ),
                        ));
                    };
                    op.condition(m.name(), false, value)
                }
                (None, Some(_), _, _) | (None, None, Some(_), _) | (None, None, _, Some(_)) => {
                    return Err(rule_err(&r.id, "a v1 rule needs metric, op and value"));
                }
                (Some(_), _, _, _) => {
                    return Err(rule_err(
                        &r.id,
                        "give a condition (when) or metric/op/value (v1), not both",
                    ));
                }
                (None, None, None, None) => {
                    return Err(rule_err(&r.id, "a rule needs a condition: when"));
                }
            };
            let condition = Condition::compile(&when, WINDOW_VARS, &[]).map_err(|error| {
                RuleSetError::Condition {
                    rule: r.id.clone(),
                    when: when.clone(),
                    error,
                }
            })?;
            rules.push(WindowRule {
                id: r.id,
                kind: r.kind,
                width_min: r.width_min,
                when,
                score: r.score,
                action,
                reason: r.reason,
                description: r.description,
                condition,
            });
        }
        Ok(Self {
            version: spec.version,
            hash,
            description: spec.description,
            rules,
            source,
        })
    }

    /// The default set shipped in the repository.
    pub fn default_rules() -> Self {
        Self::from_json(DEFAULT_WINDOW_RULES_JSON)
            .expect("rules/window-default.json is checked by a unit test")
    }

    /// The canonical JSON of the set (what is hashed).
    pub fn to_json(&self) -> &str {
        &self.source
    }

    /// The set in the v2 format: every rule as a condition (v1 rules translated).
    pub fn to_v2_json(&self) -> String {
        let rules: Vec<serde_json::Value> = self
            .rules
            .iter()
            .map(|r| {
                let mut o = serde_json::json!({
                    "id": r.id, "kind": r.kind, "width_min": r.width_min, "when": r.when,
                    "score": r.score, "reason": r.reason,
                });
                if r.action != Outcome::Review {
                    o["action"] = serde_json::json!(r.action);
                }
                if let Some(d) = &r.description {
                    o["description"] = d.clone().into();
                }
                o
            })
            .collect();
        let mut v = serde_json::json!({"version": self.version, "rules": rules});
        if let Some(d) = &self.description {
            v["description"] = d.clone().into();
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// Rules that watch windows of this kind and width.
    pub fn for_window(&self, kind: KeyKind, width_ms: i64) -> impl Iterator<Item = &WindowRule> {
        self.rules
            .iter()
            .filter(move |r| r.kind == kind && r.width_ms() == width_ms)
    }

    /// The alert a rule raises on a window total, if it fires: the rule's action as its
    /// outcome, and the values its condition read as its explanation.
    pub fn evaluate(&self, rule: &WindowRule, window: &WindowId, total: &Metrics) -> Option<Alert> {
        let vars = WindowVars::new(total, window.width_ms);
        if !rule.condition.eval(&vars) {
            return None;
        }
        let values: BTreeMap<String, Value> = rule
            .condition
            .reads()
            .iter()
            .map(|&s| {
                (
                    WINDOW_VARS[usize::from(s)].name.to_owned(),
                    read_var(WINDOW_VARS, s, &vars),
                )
            })
            .collect();
        let features = values
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_number()?)))
            .collect();
        // A merchant id that reads as a card number never leaves the function.
        let key = crate::event::pan_safe_id(&window.key);
        Some(Alert {
            // Unchanged from v1: replays and stored alerts keep their ids.
            alert_id: format!(
                "win:{}:{}:{}m:{}",
                rule.id, key, rule.width_min, window.start_ms
            ),
            source: SOURCE.to_owned(),
            subject: key.clone().into_owned(),
            card_token: window.key.strip_prefix("card:").map(str::to_owned),
            // The raw id made safe on its own (not the subject's tail), so the scorer's
            // records and the window rules' of one merchant share a by-merchant partition.
            merchant_id: window
                .key
                .strip_prefix("merchant:")
                .map(|m| crate::event::pan_safe_id(m).into_owned()),
            event_id: None,
            score: rule.score,
            reasons: vec![rule.reason.clone()],
            shadow_reasons: Vec::new(),
            ruleset_version: self.version.clone(),
            ruleset_hash: self.hash.clone(),
            outcome: rule.action,
            rules: vec![FiredRule {
                id: rule.id.clone(),
                reason: rule.reason.clone(),
                action: Some(rule.action),
                score: rule.score,
                values,
            }],
            features,
            event_time_ms: window.end_ms(),
            alert_day: utc_day(window.end_ms()),
        })
    }
}

#[cfg(test)]
mod tests;
