//! Rule sets: versioned JSON that turns features into a score 0-1000 with reason codes.
//! A rule in shadow mode is evaluated and recorded but does not count in the score.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::features::Features;

/// The rule set shipped in the repository (`rules/fraud-default.json`), used until a
/// rule set is stored in the config table.
pub const DEFAULT_RULES_JSON: &str = include_str!("../../../../rules/fraud-default.json");
/// Highest score.
pub const MAX_SCORE: u32 = 1000;

/// A comparison.
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

/// One rule: `feature op value` adds `score` and `reason`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Stable id.
    pub id: String,
    /// Feature name (see [`Features::NAMES`]).
    pub feature: String,
    /// Comparison.
    pub op: Op,
    /// Threshold.
    pub value: f64,
    /// Points added when it fires.
    pub score: u32,
    /// Reason code reported when it fires.
    pub reason: String,
    /// Evaluated and recorded, not counted.
    #[serde(default)]
    pub shadow: bool,
}

/// A versioned rule set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleSet {
    /// Version written into every alert.
    pub version: String,
    /// Score at or above which an alert is raised.
    pub alert_threshold: u32,
    /// The rules.
    pub rules: Vec<Rule>,
}

/// Why a rule set was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleSetError {
    /// Not valid JSON for a rule set.
    #[error("rule set is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A rule names a feature that does not exist.
    #[error("rule {rule} names unknown feature {feature:?}")]
    UnknownFeature {
        /// The rule.
        rule: String,
        /// The feature it named.
        feature: String,
    },
    /// Threshold outside 1..=1000.
    #[error("alert_threshold {0} is outside 1..=1000")]
    BadThreshold(u32),
}

/// The result of scoring one event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// 0 to 1000.
    pub score: u32,
    /// Reason codes of the counted rules that fired, in rule order.
    pub reasons: Vec<String>,
    /// Reason codes of the shadow rules that fired.
    pub shadow_reasons: Vec<String>,
    /// Values of the features behind every rule that fired (shadow included).
    pub fired: BTreeMap<String, f64>,
}

impl RuleSet {
    /// Parses and checks a rule set.
    pub fn from_json(json: &str) -> Result<Self, RuleSetError> {
        let rs: RuleSet = serde_json::from_str(json)?;
        rs.check()?;
        Ok(rs)
    }

    /// The default rule set shipped in the repository.
    pub fn default_rules() -> Self {
        Self::from_json(DEFAULT_RULES_JSON)
            .expect("rules/fraud-default.json is checked by a unit test")
    }

    /// Checks every rule names a known feature and the threshold is in range.
    pub fn check(&self) -> Result<(), RuleSetError> {
        if !(1..=MAX_SCORE).contains(&self.alert_threshold) {
            return Err(RuleSetError::BadThreshold(self.alert_threshold));
        }
        for r in &self.rules {
            if !Features::NAMES.contains(&r.feature.as_str()) {
                return Err(RuleSetError::UnknownFeature {
                    rule: r.id.clone(),
                    feature: r.feature.clone(),
                });
            }
        }
        Ok(())
    }

    /// The rules that fire on these features, with the feature value each saw.
    fn firing<'a>(&'a self, f: &'a Features) -> impl Iterator<Item = (&'a Rule, f64)> + 'a {
        self.rules.iter().filter_map(|r| {
            let v = f.get(&r.feature)?;
            let fires = match r.op {
                Op::Gt => v > r.value,
                Op::Gte => v >= r.value,
                Op::Lt => v < r.value,
                Op::Lte => v <= r.value,
                Op::Eq => (v - r.value).abs() < f64::EPSILON,
            };
            fires.then_some((r, v))
        })
    }

    /// True when these features score at or above the alert threshold: the same total
    /// as [`RuleSet::score`], without building reasons (most events raise nothing).
    pub fn alerts_on(&self, f: &Features) -> bool {
        let total = self
            .firing(f)
            .filter(|(r, _)| !r.shadow)
            .fold(0u32, |t, (r, _)| t.saturating_add(r.score));
        total.min(MAX_SCORE) >= self.alert_threshold
    }

    /// Scores features.
    pub fn score(&self, f: &Features) -> Score {
        let mut s = Score::default();
        let mut total = 0u32;
        for (r, v) in self.firing(f) {
            s.fired.insert(r.feature.clone(), v);
            if r.shadow {
                s.shadow_reasons.push(r.reason.clone());
            } else {
                total = total.saturating_add(r.score);
                s.reasons.push(r.reason.clone());
            }
        }
        s.score = total.min(MAX_SCORE);
        s
    }

    /// True when a score raises an alert.
    pub fn alerts(&self, s: &Score) -> bool {
        s.score >= self.alert_threshold
    }
}

/// A rule set held for a short time, then reloaded (so a new rule set takes effect
/// without a redeploy). Time is passed in: no clock inside.
#[derive(Debug)]
pub struct RuleCache {
    current: RuleSet,
    loaded_at: Option<Instant>,
    ttl: Duration,
}

impl RuleCache {
    /// A cache starting from `initial`, to be refreshed every `ttl`.
    pub fn new(initial: RuleSet, ttl: Duration) -> Self {
        Self {
            current: initial,
            loaded_at: None,
            ttl,
        }
    }

    /// True when the cached set should be reloaded at `now`.
    pub fn stale(&self, now: Instant) -> bool {
        self.loaded_at
            .is_none_or(|at| now.duration_since(at) >= self.ttl)
    }

    /// Records a reload at `now`; `Some` replaces the set, `None` (nothing stored) keeps it.
    pub fn refreshed(&mut self, now: Instant, loaded: Option<RuleSet>) {
        if let Some(rs) = loaded {
            self.current = rs;
        }
        self.loaded_at = Some(now);
    }

    /// The rule set in force.
    pub fn current(&self) -> &RuleSet {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        RuleSet::default_rules()
    }

    fn fired(f: Features) -> Score {
        rules().score(&f)
    }

    #[test]
    fn default_rule_set_is_valid() {
        let rs = rules();
        assert!(rs.rules.len() >= 10);
        assert!(rs.rules.iter().any(|r| r.shadow));
    }

    #[test]
    fn velocity_rule_fires_at_six_a_minute() {
        let s = fired(Features {
            count_1m: 6,
            ..Default::default()
        });
        assert_eq!(
            (s.score, s.reasons.clone()),
            (400, vec!["VELOCITY_1M".to_string()])
        );
        assert_eq!(s.fired["count_1m"], 6.0);
        assert_eq!(
            fired(Features {
                count_1m: 5,
                ..Default::default()
            })
            .score,
            0
        );
        assert_eq!(
            fired(Features {
                count_1m: 10,
                ..Default::default()
            })
            .score,
            700
        );
    }

    #[test]
    fn impossible_travel_alone_alerts() {
        let s = fired(Features {
            travel_kmh: 5_000.0,
            ..Default::default()
        });
        assert!(rules().alerts(&s));
        assert_eq!(s.reasons, vec!["IMPOSSIBLE_TRAVEL"]);
    }

    #[test]
    fn card_testing_alone_alerts() {
        assert!(rules().alerts(&fired(Features {
            tiny_merchants_10m: 4,
            ..Default::default()
        })));
        assert!(!rules().alerts(&fired(Features {
            tiny_merchants_10m: 3,
            ..Default::default()
        })));
    }

    #[test]
    fn account_takeover_shape_alerts_but_one_signal_does_not() {
        let ato = Features {
            new_country: true,
            new_merchant: true,
            amount_z: 4.0,
            ..Default::default()
        };
        let s = fired(ato);
        assert_eq!(s.score, 610);
        assert_eq!(
            s.reasons,
            vec!["AMOUNT_SPIKE", "NEW_COUNTRY", "NEW_MERCHANT"]
        );
        assert!(!rules().alerts(&fired(Features {
            new_country: true,
            ..Default::default()
        })));
    }

    #[test]
    fn decline_streak_high_risk_and_spend_rules() {
        assert_eq!(
            fired(Features {
                decline_streak: 3,
                ..Default::default()
            })
            .reasons,
            vec!["DECLINE_STREAK"]
        );
        assert_eq!(
            fired(Features {
                high_risk_mcc: true,
                ..Default::default()
            })
            .score,
            150
        );
        assert_eq!(
            fired(Features {
                sum_1h: 500_000,
                ..Default::default()
            })
            .reasons,
            vec!["SPEND_1H"]
        );
        assert_eq!(
            fired(Features {
                new_card_burst: 12,
                ..Default::default()
            })
            .reasons,
            vec!["NEW_CARD_BURST"]
        );
    }

    #[test]
    fn shadow_rule_is_recorded_not_counted() {
        let s = fired(Features {
            count_1h: 25,
            ..Default::default()
        });
        assert_eq!(s.score, 0);
        assert_eq!(s.shadow_reasons, vec!["VELOCITY_1H"]);
        assert_eq!(s.fired["count_1h"], 25.0);
    }

    proptest::proptest! {
        #[test]
        fn the_quick_alert_test_agrees_with_the_full_score(
            c1m in 0u32..30, s1m in 0i64..2_000_000, c1h in 0u32..40, z in -5.0f64..10.0,
            kmh in 0.0f64..5_000.0, nm: bool, nc: bool, tiny in 0u32..10, mcc: bool,
            streak in 0u32..10, burst in 0u32..20, threshold in 0u32..1200,
        ) {
            let mut rs = rules();
            rs.alert_threshold = threshold;
            let f = Features {
                count_1m: c1m, sum_1m: s1m, count_1h: c1h, sum_1h: s1m * 3, amount_z: z,
                travel_kmh: kmh, new_merchant: nm, new_country: nc, tiny_merchants_10m: tiny,
                high_risk_mcc: mcc, decline_streak: streak, new_card_burst: burst,
            };
            proptest::prop_assert_eq!(rs.alerts_on(&f), rs.alerts(&rs.score(&f)));
        }
    }

    #[test]
    fn score_is_capped_at_1000() {
        let all = Features {
            count_1m: 20,
            travel_kmh: 9e3,
            tiny_merchants_10m: 9,
            decline_streak: 9,
            ..Default::default()
        };
        assert_eq!(fired(all).score, 1000);
    }

    #[test]
    fn bad_rule_sets_are_refused() {
        let unknown = r#"{"version":"x","alert_threshold":500,"rules":[{"id":"r","feature":"nope","op":"gt","value":1,"score":1,"reason":"R"}]}"#;
        assert!(matches!(
            RuleSet::from_json(unknown),
            Err(RuleSetError::UnknownFeature { .. })
        ));
        assert!(matches!(
            RuleSet::from_json(r#"{"version":"x","alert_threshold":0,"rules":[]}"#),
            Err(RuleSetError::BadThreshold(0))
        ));
        assert!(matches!(
            RuleSet::from_json("{"),
            Err(RuleSetError::Json(_))
        ));
    }

    #[test]
    fn cache_reloads_after_its_ttl_and_keeps_the_set_when_nothing_is_stored() {
        let t0 = Instant::now();
        let mut c = RuleCache::new(rules(), Duration::from_secs(30));
        assert!(c.stale(t0));
        c.refreshed(t0, None);
        assert!(!c.stale(t0 + Duration::from_secs(29)));
        assert!(c.stale(t0 + Duration::from_secs(30)));
        let mut v2 = rules();
        v2.version = "v2".into();
        c.refreshed(t0 + Duration::from_secs(30), Some(v2));
        assert_eq!(c.current().version, "v2");
    }
}
