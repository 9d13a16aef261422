//! Rule sets: a versioned JSON file of rules whose conditions are expressions (see
//! [`crate::expr`]) over the card's features and the event's fields. Each rule has an
//! action (`allow`, `review`, `block`) and/or a score; the set decides an outcome:
//!
//! 1. an `allow` rule that fires ends evaluation: the event is allowed;
//! 2. otherwise a `block` rule that fires blocks it;
//! 3. otherwise the outcome is the stronger of any `review` rule that fired and what the
//!    total score (counted rules' scores, capped at 1000) reaches: `thresholds.block`,
//!    then `thresholds.review`.
//!
//! A rule marked `shadow` is evaluated and recorded but never counts. The v1 format (one
//! `feature op value` per rule and an `alert_threshold`) loads unchanged: each v1 rule is
//! translated to the condition that means the same (`RuleSet::to_v2_json` shows it), and
//! `alert_threshold` is the review threshold.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::features::Features;
use crate::event::{AuthResult, Channel, Txn};
use crate::expr::{Condition, ExprError, Value, VarDef, Vars, read_var};
use crate::lists::{ListKind, ListValues, Lists, check_list_name};

/// The rule set shipped in the repository (`rules/fraud-default.json`), used until a
/// rule set is stored in the config table.
pub const DEFAULT_RULES_JSON: &str = include_str!("../../../../rules/fraud-default.json");
/// Highest score.
pub const MAX_SCORE: u32 = 1000;
/// Most rules in a set.
pub const MAX_RULES: usize = 500;
/// Most lists a set declares.
pub const MAX_LISTS: usize = 64;
/// Most `regex_match` calls in a set (each compiles to at most 32 KiB).
pub const MAX_REGEXES: usize = 64;

/// A v1 comparison (`feature op value`); also the window rules' v1 form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// >
    Gt,
    /// >=
    Gte,
    /// <
    Lt,
    /// <=
    Lte,
    /// == (for 0/1 features)
    Eq,
}

impl Op {
    /// The condition a v1 rule `feature op value` means, over a number variable. v1
    /// compared booleans as 0 / 1 and `eq` within f64::EPSILON; the translation keeps
    /// both, so a v1 set and its translation score every event alike.
    pub fn condition(self, var: &str, is_bool: bool, value: f64) -> String {
        let x = if is_bool {
            format!("num({var})")
        } else {
            var.to_owned()
        };
        match self {
            Self::Gt => format!("{x} > {value:?}"),
            Self::Gte => format!("{x} >= {value:?}"),
            Self::Lt => format!("{x} < {value:?}"),
            Self::Lte => format!("{x} <= {value:?}"),
            Self::Eq if is_bool && (value == 1.0 || value == 0.0) => {
                if value == 1.0 {
                    var.to_owned()
                } else {
                    format!("not {var}")
                }
            }
            Self::Eq => format!("abs({x} - {value:?}) < {:?}", f64::EPSILON),
        }
    }
}

/// What a rule asks for, and the outcome of a decision. Ordered: a block is stronger
/// than a review, which is stronger than an allow.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Let it through (an allow rule also ends evaluation).
    #[default]
    Allow,
    /// Hold for an analyst.
    Review,
    /// Decline.
    Block,
}

impl Outcome {
    /// The outcome's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Review => "review",
            Self::Block => "block",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Scores at which the total becomes a review or a block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Total at or above which the event is reviewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<u32>,
    /// Total at or above which the event is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<u32>,
}

impl Thresholds {
    /// The outcome a total score reaches.
    pub fn outcome(&self, total: u32) -> Outcome {
        if self.block.is_some_and(|b| total >= b) {
            Outcome::Block
        } else if self.review.is_some_and(|r| total >= r) {
            Outcome::Review
        } else {
            Outcome::Allow
        }
    }
}

/// The variables a scorer rule may name: the card's features (computed before the
/// event is folded into the profile), then the event's own fields. Slot = index.
pub const SCORER_VARS: &[VarDef] = &[
    VarDef::number(
        "count_1m",
        "transactions on the card in the last minute, this one included",
    ),
    VarDef::number(
        "sum_1m",
        "amount in the last minute, this one included (minor units)",
    ),
    VarDef::number(
        "count_1h",
        "transactions in the last hour, this one included",
    ),
    VarDef::number(
        "sum_1h",
        "amount in the last hour, this one included (minor units)",
    ),
    VarDef::number(
        "amount_z",
        "z-score of ln(1 + amount) against the card's history (0 under 5 events)",
    ),
    VarDef::number(
        "travel_kmh",
        "speed from the last card-present place, km/h (0 under 50 km)",
    ),
    VarDef::boolean(
        "new_merchant",
        "merchant not seen before on a card with 3+ events",
    ),
    VarDef::boolean(
        "new_country",
        "country not seen before on a card with 3+ events",
    ),
    VarDef::number(
        "tiny_merchants_10m",
        "distinct merchants taking amounts <= 500 in 10 minutes",
    ),
    VarDef::boolean(
        "high_risk_mcc",
        "MCC is wire transfer, quasi-cash, securities, betting or direct marketing",
    ),
    VarDef::number("decline_streak", "consecutive declines, this one included"),
    VarDef::number(
        "new_card_burst",
        "transactions in the last hour while the card is under an hour old, else 0",
    ),
    VarDef::number(
        "count_5m",
        "transactions in the last 5 minutes, this one included",
    ),
    VarDef::number("sum_5m", "amount in the last 5 minutes, this one included"),
    VarDef::number(
        "count_15m",
        "transactions in the last 15 minutes, this one included",
    ),
    VarDef::number(
        "sum_15m",
        "amount in the last 15 minutes, this one included",
    ),
    VarDef::number(
        "count_24h",
        "transactions in this clock hour and the 23 before, this one included",
    ),
    VarDef::number(
        "sum_24h",
        "amount in this clock hour and the 23 before, this one included",
    ),
    VarDef::number(
        "decline_rate_24h",
        "declined / transactions over the same 24 clock hours, 0 to 1",
    ),
    VarDef::number(
        "merchants_1h",
        "distinct merchants in the last hour, this one included",
    ),
    VarDef::number(
        "countries_1h",
        "distinct countries in the last hour, this one included",
    ),
    VarDef::number("prev_txns", "transactions the card made before this one"),
    VarDef::number(
        "mins_since_last",
        "minutes since the card's previous transaction (0 without one): dormancy",
    ),
    VarDef::number(
        "days_since_first",
        "days since the card was first seen (0 on its first transaction): a new card",
    ),
    VarDef::number(
        "amount_vs_typical",
        "(1 + amount) over the card's typical (geometric mean), 1 without history",
    ),
    VarDef::number(
        "amount_vs_max",
        "amount over the largest the card made before, 1 without history",
    ),
    VarDef::boolean(
        "channel_change",
        "the previous transaction was card present (pos, atm), this one is not",
    ),
    VarDef::number(
        "mcc_risk",
        "merchant category risk tier: 3 money out (4829 6051 6211 6540 7995), 2 scheme high-risk (5962 5966 5967 5993 7273), 1 resellable (4814 5732 5815-5818 5944), else 0",
    ),
    VarDef::number(
        "tiny_merchants_1h",
        "distinct merchants taking amounts <= 500 in the last hour",
    ),
    VarDef::number("amount_minor", "the event's amount in minor units"),
    VarDef::text("currency", "ISO 4217 currency code, upper case"),
    VarDef::number("mcc", "merchant category code (a number: mcc == 7995)"),
    VarDef::text("country", "ISO 3166 alpha-2 country of the event"),
    VarDef::one_of(
        "channel",
        "how it was made",
        &["pos", "ecom", "atm", "moto"],
    ),
    VarDef::text("merchant", "merchant id"),
    VarDef::text("card", "card token"),
    VarDef::one_of(
        "auth_result",
        "the issuer's answer",
        &["approved", "declined"],
    ),
    VarDef::number("hour_utc", "hour of the event time, UTC, 0-23"),
    VarDef::text(
        "card_bin",
        "the card's BIN (6 to 8 digits) when the producer sends it, else \"\"",
    ),
];

/// A card's features and its event, as a rule reads them.
pub struct TxnVars<'a> {
    /// Features before the event.
    pub features: &'a Features,
    /// The event.
    pub txn: &'a Txn,
    /// The rule set's declared lists, resolved (slot order).
    pub lists: &'a [Arc<ListValues>],
}

impl Vars for TxnVars<'_> {
    fn number(&self, slot: u16) -> f64 {
        let f = self.features;
        match slot {
            0 => f64::from(f.count_1m),
            1 => f.sum_1m as f64,
            2 => f64::from(f.count_1h),
            3 => f.sum_1h as f64,
            4 => f.amount_z,
            5 => f.travel_kmh,
            8 => f64::from(f.tiny_merchants_10m),
            10 => f64::from(f.decline_streak),
            11 => f64::from(f.new_card_burst),
            12 => f64::from(f.count_5m),
            13 => f.sum_5m as f64,
            14 => f64::from(f.count_15m),
            15 => f.sum_15m as f64,
            16 => f64::from(f.count_24h),
            17 => f.sum_24h as f64,
            18 => f.decline_rate_24h,
            19 => f64::from(f.merchants_1h),
            20 => f64::from(f.countries_1h),
            21 => f.prev_txns as f64,
            22 => f.mins_since_last,
            23 => f.days_since_first,
            24 => f.amount_vs_typical,
            25 => f.amount_vs_max,
            27 => f64::from(f.mcc_risk),
            28 => f64::from(f.tiny_merchants_1h),
            29 => self.txn.amount_minor as f64,
            31 => f64::from(self.txn.mcc),
            37 => (self.txn.event_time_ms.rem_euclid(86_400_000) / 3_600_000) as f64,
            _ => 0.0,
        }
    }

    fn boolean(&self, slot: u16) -> bool {
        match slot {
            6 => self.features.new_merchant,
            7 => self.features.new_country,
            9 => self.features.high_risk_mcc,
            26 => self.features.channel_change,
            _ => false,
        }
    }

    fn text(&self, slot: u16) -> &str {
        let t = self.txn;
        match slot {
            30 => &t.currency,
            32 => &t.location.country,
            33 => match t.channel {
                Channel::Pos => "pos",
                Channel::Ecom => "ecom",
                Channel::Atm => "atm",
                Channel::Moto => "moto",
            },
            34 => &t.merchant_id,
            35 => &t.card_token,
            36 => match t.auth_result {
                AuthResult::Approved => "approved",
                AuthResult::Declined => "declined",
            },
            38 => t.card_bin.as_deref().unwrap_or(""),
            _ => "",
        }
    }

    fn list(&self, slot: u16) -> Option<&ListValues> {
        self.lists.get(usize::from(slot)).map(|l| &**l)
    }
}

/// One compiled rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Stable id.
    pub id: String,
    /// The condition's text (a v1 rule's translation).
    pub when: String,
    /// Points added when it fires.
    pub score: u32,
    /// Outcome it asks for when it fires, if any.
    pub action: Option<Outcome>,
    /// Reason code reported when it fires.
    pub reason: String,
    /// Evaluated and recorded, never counted.
    pub shadow: bool,
    /// One line for analysts.
    pub description: Option<String>,
    condition: Condition,
}

/// A list a rule set declares: its kind, and values the file itself gives (the lists
/// table adds to them).
#[derive(Clone, Debug, PartialEq)]
pub struct ListDecl {
    /// Name (`@name` in conditions).
    pub name: String,
    /// Kind.
    pub kind: ListKind,
    /// Values in the rule file.
    pub values: Arc<ListValues>,
}

/// A loaded, checked and compiled rule set.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    /// Version written into every decision.
    pub version: String,
    /// Content hash of the rule set (`sha256:` and 16 hex digits of the canonical JSON).
    pub hash: String,
    /// Score thresholds.
    pub thresholds: Thresholds,
    /// Declared lists (slot order).
    pub lists: Vec<ListDecl>,
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// The canonical JSON it was loaded from.
    source: String,
    allow: Vec<usize>,
    block: Vec<usize>,
    rest: Vec<usize>,
}

/// Why a rule set was refused. Every message names the rule (and, for a condition, the
/// line and column in it).
#[derive(Debug, thiserror::Error)]
pub enum RuleSetError {
    /// Not valid JSON for a rule set.
    #[error("rule set is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A condition that does not parse or type-check.
    #[error("rule {rule:?}, condition {error}")]
    Condition {
        /// The rule.
        rule: String,
        /// The condition's text.
        when: String,
        /// Where and why.
        error: ExprError,
    },
    /// A rule that is not well formed.
    #[error("rule {rule:?}: {message}")]
    Rule {
        /// The rule.
        rule: String,
        /// What is wrong.
        message: String,
    },
    /// A list declaration that is not well formed.
    #[error("list {list:?}: {message}")]
    List {
        /// The list.
        list: String,
        /// What is wrong.
        message: String,
    },
    /// Anything else about the set.
    #[error("rule set: {0}")]
    Set(String),
}

impl RuleSetError {
    /// The error with, for a condition, the condition and a caret under the position.
    pub fn explain(&self) -> String {
        match self {
            Self::Condition { when, error, .. } => {
                let line = when.lines().nth(error.line - 1).unwrap_or("");
                format!(
                    "{self}\n    {line}\n    {}^",
                    " ".repeat(error.col.saturating_sub(1))
                )
            }
            other => other.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    version: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    alert_threshold: Option<u32>,
    #[serde(default)]
    thresholds: Option<Thresholds>,
    #[serde(default)]
    lists: BTreeMap<String, ListSpec>,
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ListSpec {
    Kind(ListKind),
    Full(ListFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFull {
    kind: ListKind,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    feature: Option<String>,
    #[serde(default)]
    op: Option<Op>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    score: Option<u32>,
    #[serde(default)]
    action: Option<Outcome>,
    reason: String,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    description: Option<String>,
}

/// The canonical JSON of a rule file (keys sorted, no spaces) and its content hash
/// (`sha256:` and 16 hex digits): what is stored and written into decisions.
pub(crate) fn canonical(json: &str) -> Result<(String, String), RuleSetError> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    let source = serde_json::to_string(&value)?;
    let digest = sha2::Sha256::digest(source.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok((source, format!("sha256:{hex}")))
}

/// A rule set's version: 1 to 128 characters.
pub(crate) fn check_version(version: &str) -> Result<(), RuleSetError> {
    if version.trim().is_empty() || version.len() > 128 {
        return Err(RuleSetError::Set(
            "version must be 1 to 128 characters".into(),
        ));
    }
    Ok(())
}

/// A rule's id and reason: 1 to 128 characters each, the id unique in its set.
pub(crate) fn check_rule_names(id: &str, reason: &str, taken: bool) -> Result<(), RuleSetError> {
    if id.is_empty() || id.len() > 128 {
        return Err(rule_err(id, "an id is 1 to 128 characters"));
    }
    if taken {
        return Err(rule_err(id, "the id is used twice"));
    }
    if reason.is_empty() || reason.len() > 128 {
        return Err(rule_err(id, "a reason is 1 to 128 characters"));
    }
    Ok(())
}

fn rule_err(rule: &str, message: impl Into<String>) -> RuleSetError {
    RuleSetError::Rule {
        rule: rule.to_owned(),
        message: message.into(),
    }
}

/// A rule that fired, with what it read: the explanation of a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FiredRule {
    /// Rule id.
    pub id: String,
    /// Reason code.
    pub reason: String,
    /// The outcome it asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Outcome>,
    /// Points it added (0 for shadow rules, which never count).
    pub score: u32,
    /// The values of the variables its condition reads.
    pub values: BTreeMap<String, Value>,
}

/// The decision on one event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Allow, review or block.
    pub outcome: Outcome,
    /// Total of the counted rules' scores, 0 to 1000.
    pub score: u32,
    /// Counted rules that fired, in rule order.
    pub fired: Vec<FiredRule>,
    /// Shadow rules that fired.
    pub shadow_fired: Vec<FiredRule>,
}

impl Decision {
    /// Reason codes of the counted rules that fired.
    pub fn reasons(&self) -> Vec<String> {
        self.fired.iter().map(|r| r.reason.clone()).collect()
    }

    /// Reason codes of the shadow rules that fired.
    pub fn shadow_reasons(&self) -> Vec<String> {
        self.shadow_fired.iter().map(|r| r.reason.clone()).collect()
    }

    /// The numeric values every fired rule read (booleans as 0 / 1).
    pub fn numeric_values(&self) -> BTreeMap<String, f64> {
        self.fired
            .iter()
            .chain(&self.shadow_fired)
            .flat_map(|r| r.values.iter())
            .filter_map(|(k, v)| Some((k.clone(), v.as_number()?)))
            .collect()
    }
}

impl RuleSet {
    /// Parses, checks and compiles a rule set (v1 or v2).
    pub fn from_json(json: &str) -> Result<Self, RuleSetError> {
        let spec: FileSpec = serde_json::from_str(json)?;
        let (source, hash) = canonical(json)?;
        let _ = spec.description;
        check_version(&spec.version)?;
        let thresholds = match (spec.alert_threshold, spec.thresholds) {
            (Some(_), Some(_)) => {
                return Err(RuleSetError::Set(
                    "give thresholds (v2) or alert_threshold (v1), not both".into(),
                ));
            }
            (Some(t), None) => Thresholds {
                review: Some(t),
                block: None,
            },
            (None, Some(t)) => t,
            (None, None) => Thresholds::default(),
        };
        for t in [thresholds.review, thresholds.block].into_iter().flatten() {
            if !(1..=MAX_SCORE).contains(&t) {
                return Err(RuleSetError::Set(format!(
                    "threshold {t} is outside 1..=1000"
                )));
            }
        }
        if let (Some(r), Some(b)) = (thresholds.review, thresholds.block)
            && b < r
        {
            return Err(RuleSetError::Set(format!(
                "the block threshold ({b}) is below the review threshold ({r})"
            )));
        }
        if spec.lists.len() > MAX_LISTS {
            return Err(RuleSetError::Set(format!("more than {MAX_LISTS} lists")));
        }
        let mut lists = Vec::with_capacity(spec.lists.len());
        for (name, l) in spec.lists {
            let err = |message: String| RuleSetError::List {
                list: name.clone(),
                message,
            };
            check_list_name(&name).map_err(err)?;
            let (kind, raw) = match l {
                ListSpec::Kind(k) => (k, Vec::new()),
                ListSpec::Full(ListFull { kind, values }) => (kind, values),
            };
            let mut values = Vec::with_capacity(raw.len());
            for v in &raw {
                values.push(kind.normalise(v).map_err(err)?);
            }
            lists.push(ListDecl {
                name,
                kind,
                values: Arc::new(ListValues::new(values)),
            });
        }
        let decls: Vec<(String, ListKind)> =
            lists.iter().map(|l| (l.name.clone(), l.kind)).collect();
        if spec.rules.len() > MAX_RULES {
            return Err(RuleSetError::Set(format!("more than {MAX_RULES} rules")));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(spec.rules.len());
        for r in spec.rules {
            check_rule_names(&r.id, &r.reason, rules.iter().any(|x| x.id == r.id))?;
            let score = r.score.unwrap_or(0);
            if score > MAX_SCORE {
                return Err(rule_err(&r.id, "a score is 0 to 1000"));
            }
            // A rule may score 0 if it says so (v1 rules always do): it is recorded.
            if r.score.is_none() && r.action.is_none() {
                return Err(rule_err(&r.id, "give it a score, an action, or both"));
            }
            let when = match (r.when, r.feature, r.op, r.value) {
                (Some(w), None, None, None) => w,
                (None, Some(feature), Some(op), Some(value)) => {
                    if !Features::NAMES.contains(&feature.as_str()) {
                        return Err(rule_err(
                            &r.id,
                            format!(
                                "unknown feature {feature:?}; known: {}",
                                Features::NAMES.join(", ")
                            ),
                        ));
                    }
                    let is_bool = SCORER_VARS
                        .iter()
                        .any(|d| d.name == feature && d.ty == crate::expr::Type::Bool);
                    op.condition(&feature, is_bool, value)
                }
                (None, Some(_), _, _) => {
                    return Err(rule_err(&r.id, "a v1 rule needs feature, op and value"));
                }
                (Some(_), _, _, _) => {
                    return Err(rule_err(
                        &r.id,
                        "give a condition (when) or feature/op/value (v1), not both",
                    ));
                }
                (None, None, _, _) => {
                    return Err(rule_err(&r.id, "a rule needs a condition: when"));
                }
            };
            let condition = Condition::compile(&when, SCORER_VARS, &decls).map_err(|error| {
                RuleSetError::Condition {
                    rule: r.id.clone(),
                    when: when.clone(),
                    error,
                }
            })?;
            rules.push(Rule {
                id: r.id,
                when,
                score,
                action: r.action,
                reason: r.reason,
                shadow: r.shadow,
                description: r.description,
                condition,
            });
        }
        let regexes: usize = rules.iter().map(|r| r.condition.regexes()).sum();
        if regexes > MAX_REGEXES {
            return Err(RuleSetError::Set(format!(
                "{regexes} regex_match calls; at most {MAX_REGEXES} in a set"
            )));
        }
        if thresholds == Thresholds::default()
            && let Some(r) = rules.iter().find(|r| !r.shadow && r.score > 0)
        {
            return Err(rule_err(
                &r.id,
                "it has a score but the set has no thresholds: give thresholds.review and/or thresholds.block",
            ));
        }
        let pick = |f: &dyn Fn(&Rule) -> bool| -> Vec<usize> {
            (0..rules.len())
                .filter(|&i| !rules[i].shadow && f(&rules[i]))
                .collect()
        };
        let allow = pick(&|r| r.action == Some(Outcome::Allow));
        let block = pick(&|r| r.action == Some(Outcome::Block));
        let rest = pick(&|r| !matches!(r.action, Some(Outcome::Allow | Outcome::Block)));
        Ok(Self {
            version: spec.version,
            hash,
            thresholds,
            lists,
            rules,
            source,
            allow,
            block,
            rest,
        })
    }

    /// The default rule set shipped in the repository.
    pub fn default_rules() -> Self {
        Self::from_json(DEFAULT_RULES_JSON)
            .expect("rules/fraud-default.json is checked by a unit test")
    }

    /// The canonical JSON of the set (what is stored and hashed).
    pub fn to_json(&self) -> &str {
        &self.source
    }

    /// The set in the v2 format: every rule as a condition (v1 rules translated).
    pub fn to_v2_json(&self) -> String {
        let mut lists = serde_json::Map::new();
        for l in &self.lists {
            lists.insert(
                l.name.clone(),
                serde_json::json!({"kind": l.kind, "values": l.values.sorted()}),
            );
        }
        let rules: Vec<serde_json::Value> = self
            .rules
            .iter()
            .map(|r| {
                let mut o = serde_json::json!({"id": r.id, "when": r.when, "reason": r.reason});
                if r.score > 0 || r.action.is_none() {
                    o["score"] = r.score.into();
                }
                if let Some(a) = r.action {
                    o["action"] = serde_json::json!(a);
                }
                if r.shadow {
                    o["shadow"] = true.into();
                }
                if let Some(d) = &r.description {
                    o["description"] = d.clone().into();
                }
                o
            })
            .collect();
        let v = serde_json::json!({
            "version": self.version,
            "thresholds": self.thresholds,
            "lists": lists,
            "rules": rules,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// The declared lists' names and kinds (what a list source is asked for).
    pub fn list_kinds(&self) -> Vec<(String, ListKind)> {
        self.lists
            .iter()
            .map(|l| (l.name.clone(), l.kind))
            .collect()
    }

    /// The declared lists' values: the file's own, plus the store's.
    pub fn resolve_lists(&self, stored: &Lists) -> Vec<Arc<ListValues>> {
        self.lists
            .iter()
            .map(|d| match stored.get(&d.name, d.kind) {
                Some(s) if d.values.is_empty() => Arc::clone(s),
                Some(s) if !s.is_empty() => {
                    let mut all: Vec<&str> = d.values.sorted();
                    all.extend(s.sorted());
                    Arc::new(ListValues::new(all))
                }
                _ => Arc::clone(&d.values),
            })
            .collect()
    }

    /// The outcome alone, evaluating as few rules as it can (most events are allowed
    /// and need no explanation). Always equal to [`RuleSet::decide`]'s outcome.
    pub fn outcome(&self, v: &impl Vars) -> Outcome {
        if self.allow.iter().any(|&i| self.rules[i].condition.eval(v)) {
            return Outcome::Allow;
        }
        if self.block.iter().any(|&i| self.rules[i].condition.eval(v)) {
            return Outcome::Block;
        }
        let mut asked = Outcome::Allow;
        let mut total = 0u32;
        for &i in &self.rest {
            let r = &self.rules[i];
            if r.condition.eval(v) {
                total = total.saturating_add(r.score);
                asked = asked.max(r.action.unwrap_or_default());
            }
        }
        asked.max(self.thresholds.outcome(total.min(MAX_SCORE)))
    }

    /// Every rule evaluated, the outcome and its explanation.
    pub fn decide(&self, v: &impl Vars) -> Decision {
        let mut d = Decision::default();
        let mut total = 0u32;
        let mut allowed = false;
        let mut asked = Outcome::Allow;
        for r in &self.rules {
            if !r.condition.eval(v) {
                continue;
            }
            let values = r
                .condition
                .reads()
                .iter()
                .map(|&s| {
                    // A merchant id that reads as a card number never leaves in a record.
                    let value = match read_var(SCORER_VARS, s, v) {
                        Value::Text(t) => Value::Text(crate::event::pan_safe_id(&t).into_owned()),
                        other => other,
                    };
                    (SCORER_VARS[usize::from(s)].name.to_owned(), value)
                })
                .collect();
            let fired = FiredRule {
                id: r.id.clone(),
                reason: r.reason.clone(),
                action: r.action,
                score: if r.shadow { 0 } else { r.score },
                values,
            };
            if r.shadow {
                d.shadow_fired.push(fired);
                continue;
            }
            total = total.saturating_add(r.score);
            match r.action {
                Some(Outcome::Allow) => allowed = true,
                Some(a) => asked = asked.max(a),
                None => {}
            }
            d.fired.push(fired);
        }
        d.score = total.min(MAX_SCORE);
        d.outcome = if allowed {
            Outcome::Allow
        } else {
            asked.max(self.thresholds.outcome(d.score))
        };
        d
    }
}

/// A rule set with its lists resolved: what decides an event.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The rule set.
    pub rules: Arc<RuleSet>,
    /// Its declared lists' values, slot order.
    pub lists: Vec<Arc<ListValues>>,
}

impl Policy {
    /// A rule set with the stored lists.
    pub fn new(rules: Arc<RuleSet>, stored: &Lists) -> Self {
        let lists = rules.resolve_lists(stored);
        Self { rules, lists }
    }

    /// A rule set with only its file's own list values.
    pub fn of(rules: RuleSet) -> Self {
        Self::new(Arc::new(rules), &Lists::empty())
    }

    /// The variables of an event for this policy.
    pub fn vars<'a>(&'a self, features: &'a Features, txn: &'a Txn) -> TxnVars<'a> {
        TxnVars {
            features,
            txn,
            lists: &self.lists,
        }
    }
}

/// The live policy and an optional shadow one, whose decisions are recorded apart and
/// never acted on.
#[derive(Clone, Debug)]
pub struct Policies {
    /// In force.
    pub live: Policy,
    /// Evaluated beside it, if published.
    pub shadow: Option<Policy>,
}

impl From<RuleSet> for Policies {
    fn from(rules: RuleSet) -> Self {
        Self {
            live: Policy::of(rules),
            shadow: None,
        }
    }
}

/// A value held for a short time, then reloaded (so a new rule set or list takes effect
/// without a redeploy). Time is passed in: no clock inside.
#[derive(Debug)]
pub struct Cached<T> {
    current: T,
    loaded_at: Option<Instant>,
    ttl: Duration,
}

impl<T> Cached<T> {
    /// A cache starting from `initial`, to be refreshed every `ttl`.
    pub fn new(initial: T, ttl: Duration) -> Self {
        Self {
            current: initial,
            loaded_at: None,
            ttl,
        }
    }

    /// True when the cached value should be reloaded at `now`.
    pub fn stale(&self, now: Instant) -> bool {
        self.loaded_at
            .is_none_or(|at| now.duration_since(at) >= self.ttl)
    }

    /// Records a reload at `now`; `Some` replaces the value, `None` keeps it.
    pub fn refreshed(&mut self, now: Instant, loaded: Option<T>) {
        if let Some(v) = loaded {
            self.current = v;
        }
        self.loaded_at = Some(now);
    }

    /// The value in force.
    pub fn current(&self) -> &T {
        &self.current
    }
}

/// The rule set cache of the scorer.
pub type RuleCache = Cached<RuleSet>;

#[cfg(test)]
mod tests;
