//! Backtesting: a candidate rule set and a baseline run over recorded events, in order,
//! with each card's profile built as it goes, through the scorer's own code (the
//! profile's duplicate check, [`features::compute`], [`RuleSet::decide`],
//! [`CardProfile::update`]), then scored against labels.
//!
//! Memory is one profile per distinct card plus a bounded sample; figures are integer
//! counts, so the same events in the same order give the same report.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::features;
use super::profile::{Admission, CardProfile};
use super::rules::{Decision, Outcome, Policy};
use crate::event::{Txn, pan_safe_id};
use crate::seq::{RecordPos, SeqNo};

/// The replay guard of a backtest (one ordered input, never replayed).
const GUARD: &str = "backtest";

/// What is known about an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Truth {
    /// Labelled fraud.
    Fraud,
    /// Labelled genuine.
    Legit,
    /// No label.
    Unlabelled,
}

/// Per-card state of a backtest: the scorer's profiles, one per card seen.
#[derive(Debug, Default)]
pub struct Replay {
    profiles: HashMap<String, CardProfile>,
}

impl Replay {
    /// An empty replay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cards seen.
    pub fn cards(&self) -> usize {
        self.profiles.len()
    }

    /// Scores one event against the card's profile as it stands, with each policy,
    /// then folds it in; `None` when the card's profile already holds its event id (a
    /// producer's duplicate, which the function skips the same way).
    pub fn step(&mut self, txn: &Txn, policies: &[&Policy]) -> Option<Vec<Decision>> {
        let profile = match self.profiles.get_mut(&txn.card_token) {
            Some(p) => p,
            None => self
                .profiles
                .entry(txn.card_token.clone())
                .or_insert_with(|| CardProfile::new(txn.card_token.as_str())),
        };
        // The backtest's guard is never moved (its input is read once, in order), so
        // only the profile's event-id memory can say "seen", as for a producer's re-send
        // in the function.
        let pos = RecordPos::plain(SeqNo::default());
        match profile.admit(GUARD, &pos, &txn.event_id) {
            Admission::New => {}
            Admission::Replayed | Admission::DuplicateEvent => return None,
        }
        let f = features::compute(profile, txn);
        let decisions = policies
            .iter()
            .map(|p| p.rules.decide(&p.vars(&f, txn)))
            .collect();
        profile.update(txn);
        Some(decisions)
    }
}

/// Counts of one rule over a backtest.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RuleStats {
    /// The rule's id.
    pub id: String,
    /// Its reason code.
    pub reason: String,
    /// A shadow rule (recorded, never counted).
    pub shadow: bool,
    /// Events it fired on.
    pub fired: u64,
    /// Of those, labelled fraud.
    pub fired_fraud: u64,
    /// Of those, counted as legit (labelled legit, and unlabelled when they count).
    pub fired_legit: u64,
    /// Fired events' share of all events scored.
    pub share: f64,
    /// Fired fraud / fired (labelled or counted).
    pub precision: Option<f64>,
    /// Fired fraud / fraud events.
    pub recall: Option<f64>,
    /// Harmonic mean of the two.
    pub f1: Option<f64>,
}

/// The confusion matrix of a rule set: flagged = reviewed or blocked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// Flagged fraud.
    pub true_positives: u64,
    /// Flagged legit.
    pub false_positives: u64,
    /// Allowed fraud.
    pub false_negatives: u64,
    /// Allowed legit.
    pub true_negatives: u64,
}

/// What a rule set did over a backtest.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SetStats {
    /// The rule set's version.
    pub version: String,
    /// Its content hash.
    pub hash: String,
    /// Events per outcome.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Against the labels.
    pub confusion: Confusion,
    /// Of flagged events with a verdict, the share that is fraud.
    pub precision: Option<f64>,
    /// Of fraud events, the share flagged.
    pub recall: Option<f64>,
    /// Harmonic mean of the two.
    pub f1: Option<f64>,
    /// Flagged (reviewed or blocked) per 1,000 events.
    pub alerts_per_1000: f64,
    /// Blocked per 1,000 events.
    pub blocks_per_1000: f64,
    /// Per rule, in the set's order.
    pub rules: Vec<RuleStats>,
}

/// Events whose outcome changed, one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The baseline's outcome.
    pub from: Outcome,
    /// The candidate's.
    pub to: Outcome,
    /// Events.
    pub events: u64,
    /// Of those, labelled fraud.
    pub fraud: u64,
    /// Labelled legit.
    pub legit: u64,
    /// Unlabelled.
    pub unlabelled: u64,
}

/// One changed event, for the sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChangedEvent {
    /// The event (PAN-safe).
    pub event_id: String,
    /// The card token.
    pub card_token: String,
    /// Event time, epoch ms.
    pub event_time_ms: i64,
    /// Baseline outcome.
    pub from: Outcome,
    /// Candidate outcome.
    pub to: Outcome,
    /// The label.
    pub label: Truth,
    /// Reasons of the candidate's rules that fired.
    pub candidate_reasons: Vec<String>,
    /// Reasons of the baseline's rules that fired.
    pub baseline_reasons: Vec<String>,
}

/// The difference between candidate and baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Diff {
    /// Events whose outcome changed.
    pub changed: u64,
    /// By direction, in (from, to) order.
    pub changes: Vec<Change>,
    /// The first changed events, in event order.
    pub sample: Vec<ChangedEvent>,
}

/// How unlabelled events count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlabelled {
    /// As legit: no chargeback, no report (the usual reading of fraud labels).
    Legit,
    /// Not at all: precision, recall and F1 over labelled events only.
    Ignore,
}

/// Accumulates a backtest's figures, event by event.
#[derive(Clone, Debug)]
pub struct Tally {
    unlabelled: Unlabelled,
    sample_size: usize,
    events: u64,
    truths: BTreeMap<Truth, u64>,
    sets: Vec<SetTally>,
    changes: BTreeMap<(Outcome, Outcome), Change>,
    sample: Vec<ChangedEvent>,
}

#[derive(Clone, Debug)]
struct SetTally {
    version: String,
    hash: String,
    outcomes: BTreeMap<Outcome, u64>,
    confusion: Confusion,
    index: HashMap<String, usize>,
    rules: Vec<RuleStats>,
}

/// The figures of a backtest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figures {
    /// Events scored.
    pub events: u64,
    /// Events per label.
    pub labels: BTreeMap<Truth, u64>,
    /// How unlabelled events counted.
    pub unlabelled_count_as: Unlabelled,
    /// The candidate's figures, then the baseline's (when there is one).
    pub sets: Vec<SetStats>,
    /// Candidate against baseline (when there is one).
    pub diff: Option<Diff>,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn f1(p: Option<f64>, r: Option<f64>) -> Option<f64> {
    match (p, r) {
        (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    }
}

impl Tally {
    /// A tally of the given policies (candidate first, then an optional baseline).
    pub fn new(policies: &[&Policy], unlabelled: Unlabelled, sample_size: usize) -> Self {
        let sets = policies
            .iter()
            .map(|p| {
                let rs = &p.rules;
                SetTally {
                    version: rs.version.clone(),
                    hash: rs.hash.clone(),
                    outcomes: [Outcome::Allow, Outcome::Review, Outcome::Block]
                        .into_iter()
                        .map(|o| (o, 0))
                        .collect(),
                    confusion: Confusion::default(),
                    index: rs
                        .rules
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (r.id.clone(), i))
                        .collect(),
                    rules: rs
                        .rules
                        .iter()
                        .map(|r| RuleStats {
                            id: r.id.clone(),
                            reason: r.reason.clone(),
                            shadow: r.shadow,
                            ..RuleStats::default()
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            unlabelled,
            sample_size,
            events: 0,
            truths: BTreeMap::new(),
            sets,
            changes: BTreeMap::new(),
            sample: Vec::new(),
        }
    }

    /// Counts one scored event: its decisions (one per policy, in [`Tally::new`]'s
    /// order) and its label.
    pub fn add(&mut self, txn: &Txn, decisions: &[Decision], truth: Truth) {
        self.events += 1;
        *self.truths.entry(truth).or_default() += 1;
        // What the label counts as: fraud, legit, or nothing.
        let counted = match (truth, self.unlabelled) {
            (Truth::Fraud, _) => Some(true),
            (Truth::Legit, _) | (Truth::Unlabelled, Unlabelled::Legit) => Some(false),
            (Truth::Unlabelled, Unlabelled::Ignore) => None,
        };
        for (set, d) in self.sets.iter_mut().zip(decisions) {
            *set.outcomes.entry(d.outcome).or_default() += 1;
            let flagged = d.outcome != Outcome::Allow;
            let c = &mut set.confusion;
            match (counted, flagged) {
                (Some(true), true) => c.true_positives += 1,
                (Some(true), false) => c.false_negatives += 1,
                (Some(false), true) => c.false_positives += 1,
                (Some(false), false) => c.true_negatives += 1,
                (None, _) => {}
            }
            for fired in d.fired.iter().chain(&d.shadow_fired) {
                if let Some(&i) = set.index.get(&fired.id) {
                    let r = &mut set.rules[i];
                    r.fired += 1;
                    match counted {
                        Some(true) => r.fired_fraud += 1,
                        Some(false) => r.fired_legit += 1,
                        None => {}
                    }
                }
            }
        }
        if let [candidate, baseline] = decisions
            && candidate.outcome != baseline.outcome
        {
            let (from, to) = (baseline.outcome, candidate.outcome);
            let ch = self.changes.entry((from, to)).or_insert_with(|| Change {
                from,
                to,
                ..Change::default()
            });
            ch.events += 1;
            match truth {
                Truth::Fraud => ch.fraud += 1,
                Truth::Legit => ch.legit += 1,
                Truth::Unlabelled => ch.unlabelled += 1,
            }
            if self.sample.len() < self.sample_size {
                self.sample.push(ChangedEvent {
                    event_id: pan_safe_id(&txn.event_id).into_owned(),
                    card_token: txn.card_token.clone(),
                    event_time_ms: txn.event_time_ms,
                    from,
                    to,
                    label: truth,
                    candidate_reasons: candidate.reasons(),
                    baseline_reasons: baseline.reasons(),
                });
            }
        }
    }

    /// Events counted so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The figures so far.
    pub fn figures(&self) -> Figures {
        let fraud_total = *self.truths.get(&Truth::Fraud).unwrap_or(&0);
        let per_1000 = |n: u64| {
            if self.events == 0 {
                0.0
            } else {
                n as f64 * 1000.0 / self.events as f64
            }
        };
        let sets = self
            .sets
            .iter()
            .map(|s| {
                let c = s.confusion;
                let precision = ratio(c.true_positives, c.true_positives + c.false_positives);
                let recall = ratio(c.true_positives, c.true_positives + c.false_negatives);
                let flagged = s.outcomes.get(&Outcome::Review).unwrap_or(&0)
                    + s.outcomes.get(&Outcome::Block).unwrap_or(&0);
                SetStats {
                    version: s.version.clone(),
                    hash: s.hash.clone(),
                    outcomes: s.outcomes.clone(),
                    confusion: c,
                    precision,
                    recall,
                    f1: f1(precision, recall),
                    alerts_per_1000: per_1000(flagged),
                    blocks_per_1000: per_1000(*s.outcomes.get(&Outcome::Block).unwrap_or(&0)),
                    rules: s
                        .rules
                        .iter()
                        .map(|r| {
                            let precision = ratio(r.fired_fraud, r.fired_fraud + r.fired_legit);
                            let recall = ratio(r.fired_fraud, fraud_total);
                            RuleStats {
                                share: ratio(r.fired, self.events).unwrap_or(0.0),
                                precision,
                                recall,
                                f1: f1(precision, recall),
                                ..r.clone()
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let diff = (self.sets.len() == 2).then(|| Diff {
            changed: self.changes.values().map(|c| c.events).sum(),
            changes: self.changes.values().cloned().collect(),
            sample: self.sample.clone(),
        });
        Figures {
            events: self.events,
            labels: self.truths.clone(),
            unlabelled_count_as: self.unlabelled,
            sets,
            diff,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::event::{AuthResult, Channel, Location};
    use crate::fraud::rules::RuleSet;

    fn txn(id: &str, card: &str, minute: i64, amount: i64) -> Txn {
        Txn {
            card_bin: None,
            event_id: id.into(),
            card_token: card.into(),
            merchant_id: "m".into(),
            mcc: 5411,
            amount_minor: amount,
            currency: "USD".into(),
            event_time_ms: 1_764_140_400_000 + minute * 60_000,
            location: Location {
                lat: 0.0,
                lon: 0.0,
                country: "US".into(),
            },
            channel: Channel::Pos,
            auth_result: AuthResult::Approved,
        }
    }

    fn set(json: &str) -> Policy {
        Policy::of(RuleSet::from_json(json).unwrap())
    }

    /// Figures computed by hand: five events of two cards, two rule sets.
    #[test]
    fn figures_match_the_hand_count() {
        let candidate = set(r#"{"version":"c","rules":[
            {"id":"big","when":"amount_minor >= 50000","action":"block","reason":"BIG"},
            {"id":"second","when":"count_1h >= 2","action":"review","reason":"SECOND"}]}"#);
        let baseline = set(r#"{"version":"b","rules":[
            {"id":"big","when":"amount_minor >= 90000","action":"review","reason":"BIG"}]}"#);
        let events = [
            // (event, card, minute, amount, label)
            ("e1", "a", 0, 1_000, Truth::Legit), // c allow, b allow
            ("e2", "a", 1, 60_000, Truth::Fraud), // c block (big+second), b allow
            ("e3", "b", 2, 95_000, Truth::Fraud), // c block, b review
            ("e4", "b", 3, 100, Truth::Unlabelled), // c review (second), b allow
            ("e2", "a", 4, 60_000, Truth::Fraud), // duplicate: skipped
            ("e5", "c", 5, 2_000, Truth::Legit), // c allow, b allow
        ];
        let policies = [&candidate, &baseline];
        let mut replay = Replay::new();
        let mut tally = Tally::new(&policies, Unlabelled::Legit, 10);
        let mut skipped = 0;
        for (id, card, minute, amount, truth) in events {
            let t = txn(id, card, minute, amount);
            match replay.step(&t, &policies) {
                Some(d) => tally.add(&t, &d, truth),
                None => skipped += 1,
            }
        }
        assert_eq!((skipped, replay.cards()), (1, 3));
        let f = tally.figures();
        assert_eq!(f.events, 5);
        let c = &f.sets[0];
        assert_eq!(
            c.outcomes.values().copied().collect::<Vec<_>>(),
            vec![2, 1, 2],
            "allow, review, block"
        );
        // Flagged: e2 (fraud), e3 (fraud), e4 (unlabelled = legit).
        assert_eq!(
            c.confusion,
            Confusion {
                true_positives: 2,
                false_positives: 1,
                false_negatives: 0,
                true_negatives: 2
            }
        );
        assert_eq!(c.precision, Some(2.0 / 3.0));
        assert_eq!(c.recall, Some(1.0));
        assert_eq!(c.f1, Some(0.8));
        assert_eq!(c.alerts_per_1000, 600.0);
        assert_eq!(c.blocks_per_1000, 400.0);
        // "second" fired on e2 (fraud) and e4 (unlabelled = legit).
        let second = &c.rules[1];
        assert_eq!(
            (second.fired, second.fired_fraud, second.fired_legit),
            (2, 1, 1)
        );
        assert_eq!((second.precision, second.recall), (Some(0.5), Some(0.5)));
        assert_eq!(second.share, 0.4);
        let b = &f.sets[1];
        assert_eq!(b.confusion.true_positives, 1);
        assert_eq!(b.recall, Some(0.5));
        assert_eq!(b.precision, Some(1.0));
        let diff = f.diff.unwrap();
        assert_eq!(diff.changed, 3);
        let dirs: Vec<_> = diff
            .changes
            .iter()
            .map(|c| (c.from, c.to, c.events, c.fraud, c.unlabelled))
            .collect();
        assert_eq!(
            dirs,
            vec![
                (Outcome::Allow, Outcome::Review, 1, 0, 1),
                (Outcome::Allow, Outcome::Block, 1, 1, 0),
                (Outcome::Review, Outcome::Block, 1, 1, 0),
            ]
        );
        let ids: Vec<_> = diff.sample.iter().map(|s| s.event_id.as_str()).collect();
        assert_eq!(ids, ["e2", "e3", "e4"]);

        // Unlabelled events ignored: e4 leaves the matrix.
        let mut replay = Replay::new();
        let mut tally = Tally::new(&policies[..1], Unlabelled::Ignore, 0);
        for (id, card, minute, amount, truth) in events {
            let t = txn(id, card, minute, amount);
            if let Some(d) = replay.step(&t, &policies[..1]) {
                tally.add(&t, &d, truth);
            }
        }
        let f = tally.figures();
        assert_eq!(f.sets[0].precision, Some(1.0));
        assert!(f.diff.is_none());
    }
}
