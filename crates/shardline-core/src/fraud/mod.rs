//! Fraud scoring: per-card profiles, features, rule sets, and the per-card state machine
//! that applies a card's records (idempotently) and yields its alerts.

pub mod backtest;
pub mod features;
pub mod profile;
pub mod rules;

use crate::alert::{Alert, utc_day};
use crate::batch::Item;
use crate::event::Txn;
use crate::seq::RecordPos;
use profile::{Admission, CardProfile};
use rules::{Outcome, Policies, Policy};

/// The source name written into scorer alerts.
pub const SOURCE: &str = "fraud-scorer";

/// What applying a card's records did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CardOutcome {
    /// The profile after the records.
    pub profile: CardProfile,
    /// True when the profile must be written.
    pub changed: bool,
    /// Decision records of the events reviewed or blocked.
    pub alerts: Vec<Alert>,
    /// The shadow rule set's decision records (stored apart, never acted on).
    pub shadow_alerts: Vec<Alert>,
    /// Events scored.
    pub scored: usize,
    /// Events allowed (counted, not stored).
    pub below_threshold: usize,
    /// Events the live rules blocked.
    pub blocked: usize,
    /// Events where the shadow rule set's outcome differs from the live one.
    pub shadow_disagreements: usize,
    /// Records skipped because this shard had applied them (Kinesis replays).
    pub replayed: usize,
    /// Records skipped because their event id was applied (producer duplicates).
    pub duplicates: usize,
}

/// The id of the alert raised on an event: unique per (card, event), since event ids
/// are the producer's and two cards' events may share one, and deterministic, so a
/// replay rewrites the same item.
pub fn alert_id(card_token: &str, event_id: &str) -> String {
    format!("{card_token}/{event_id}")
}

/// Prefix of the ids (and of the by-day index partition) of shadow decisions, which
/// share the alerts table with live ones but never their keys or index partitions.
pub const SHADOW_PREFIX: &str = "shadow:";
/// Most fired rules a decision record explains (the reasons list keeps them all).
pub const MAX_EXPLAINED_RULES: usize = 32;
/// The source of shadow decisions.
pub const SHADOW_SOURCE: &str = "fraud-scorer/shadow";

/// The decision record of an event.
fn record(policy: &Policy, d: rules::Decision, txn: &Txn, event_id: &str, shadow: bool) -> Alert {
    let rs = &policy.rules;
    let (id, day) = (
        alert_id(&txn.card_token, event_id),
        utc_day(txn.event_time_ms),
    );
    Alert {
        alert_id: if shadow {
            format!("{SHADOW_PREFIX}{id}")
        } else {
            id
        },
        source: if shadow { SHADOW_SOURCE } else { SOURCE }.to_owned(),
        subject: format!("card:{}", txn.card_token),
        // The by-card index is sparse: shadow records stay out of it.
        card_token: (!shadow).then(|| txn.card_token.clone()),
        // Likewise the by-merchant index; a merchant id that reads as a card number
        // never leaves the function.
        merchant_id: (!shadow).then(|| crate::event::pan_safe_id(&txn.merchant_id).into_owned()),
        event_id: Some(event_id.to_owned()),
        score: d.score,
        reasons: d.reasons(),
        shadow_reasons: d.shadow_reasons(),
        ruleset_version: rs.version.clone(),
        ruleset_hash: rs.hash.clone(),
        outcome: d.outcome,
        features: d.numeric_values(),
        // Bounded: a record stays far under DynamoDB's 400 KB item limit whatever fires.
        rules: d
            .fired
            .into_iter()
            .chain(d.shadow_fired)
            .take(MAX_EXPLAINED_RULES)
            .collect(),
        event_time_ms: txn.event_time_ms,
        alert_day: if shadow {
            format!("{SHADOW_PREFIX}{day}")
        } else {
            day
        },
    }
}

/// Applies one card's records, in position order, to its profile: each new record is
/// scored against the profile as it stood before it, then folded in. Records the profile
/// already reflects are skipped, so applying the same records twice changes nothing.
pub fn apply_card(
    profile: CardProfile,
    items: &[Item<'_, Txn>],
    policies: &Policies,
) -> CardOutcome {
    let mut out = CardOutcome {
        profile,
        ..CardOutcome::default()
    };
    // A guard moves once per run of records under one guard (one shard and lane), to
    // the highest position of the run; inside the run, a position at or below that is a
    // replay. Records come sorted by position, so a lane's run is in order.
    let mut run: Option<(std::borrow::Cow<'_, str>, &RecordPos, i64)> = None;
    for item in items {
        let (meta, txn) = (item.meta, item.body);
        let guard = profile::guard_name(&meta.shard_id, meta.lane_key(), &txn.card_token);
        if let Some((g, last, arrival)) = &run
            && *g != guard
        {
            out.profile.mark_applied(g, last, *arrival);
            run = None;
        }
        let admission = match &run {
            Some((_, last, _)) if meta.pos <= **last => Admission::Replayed,
            _ => out.profile.admit(&guard, &meta.pos, &txn.event_id),
        };
        match admission {
            Admission::Replayed => {
                out.replayed += 1;
                continue;
            }
            Admission::DuplicateEvent => out.duplicates += 1,
            Admission::New => {
                let f = features::compute(&out.profile, txn);
                out.scored += 1;
                // A re-send the id memory no longer holds, in the same batch, would give
                // a second alert with the same key: DynamoDB rejects a BatchWriteItem
                // that names a key twice, which would block the shard.
                let alerted = || {
                    let id = crate::event::pan_safe_id(&txn.event_id);
                    out.alerts
                        .iter()
                        .any(|a| a.event_id.as_deref() == Some(&*id))
                };
                let live = &policies.live;
                let vars = live.vars(&f, txn);
                let outcome = live.rules.outcome(&vars);
                // An event id that reads as a card number never leaves the function.
                let event_id = || crate::event::pan_safe_id(&txn.event_id);
                if outcome != Outcome::Allow && !alerted() {
                    let d = live.rules.decide(&vars);
                    if d.outcome == Outcome::Block {
                        out.blocked += 1;
                    }
                    out.alerts.push(record(live, d, txn, &event_id(), false));
                } else {
                    out.below_threshold += 1;
                }
                if let Some(shadow) = &policies.shadow {
                    let vars = shadow.vars(&f, txn);
                    let theirs = shadow.rules.outcome(&vars);
                    if theirs != outcome {
                        out.shadow_disagreements += 1;
                    }
                    if theirs != Outcome::Allow {
                        let event_id = event_id();
                        let id = format!("{SHADOW_PREFIX}{}", alert_id(&txn.card_token, &event_id));
                        if !out.shadow_alerts.iter().any(|a| a.alert_id == id) {
                            let d = shadow.rules.decide(&vars);
                            out.shadow_alerts
                                .push(record(shadow, d, txn, &event_id, true));
                        }
                    }
                }
                out.profile.update(txn);
            }
        }
        let arrival = run
            .as_ref()
            .map_or(meta.arrival_ms, |r| r.2.max(meta.arrival_ms));
        run = Some((guard, &meta.pos, arrival));
        out.changed = true;
    }
    if let Some((g, last, arrival)) = run {
        out.profile.mark_applied(&g, last, arrival);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{AuthResult, Channel, Location};
    use crate::record::RecordMeta;
    use crate::seq::{RecordPos, SeqNo};

    fn meta(shard: &str, seq: u64) -> RecordMeta {
        RecordMeta {
            shard_id: Arc::from(shard),
            pos: RecordPos::plain(SeqNo::parse(&format!("4959{seq:040}")).unwrap()),
            partition_key: "tok".into(),
            lane_key: None,
            arrival_ms: 0,
        }
    }

    fn txn(i: u32, lat: f64, country: &str) -> Txn {
        Txn {
            card_bin: None,
            event_id: format!("e{i}"),
            card_token: "tok".into(),
            merchant_id: format!("m{i}"),
            mcc: 5411,
            amount_minor: 1_000,
            currency: "USD".into(),
            event_time_ms: 1_764_140_400_000 + i64::from(i) * 600_000,
            location: Location {
                lat,
                lon: 0.0,
                country: country.into(),
            },
            channel: Channel::Pos,
            auth_result: AuthResult::Approved,
        }
    }

    #[test]
    fn replaying_the_same_records_changes_nothing() {
        let rules = Policies::from(rules::RuleSet::default_rules());
        let metas: Vec<RecordMeta> = (0..3).map(|i| meta("shardId-1", i)).collect();
        let txns = [txn(0, 0.0, "US"), txn(1, 0.0, "US"), txn(2, 60.0, "NO")];
        let items: Vec<Item<'_, Txn>> = metas
            .iter()
            .zip(&txns)
            .map(|(meta, body)| Item { meta, body })
            .collect();
        let first = apply_card(CardProfile::new("tok"), &items, &rules);
        assert_eq!(first.scored, 3);
        assert_eq!(
            first.alerts.len(),
            1,
            "60 degrees of latitude in 10 minutes"
        );
        assert_eq!(first.alerts[0].reasons, vec!["IMPOSSIBLE_TRAVEL"]);
        let again = apply_card(first.profile.clone(), &items, &rules);
        assert!(!again.changed);
        assert_eq!(again.replayed, 3);
        assert!(again.alerts.is_empty());
        assert_eq!(again.profile, first.profile);
    }

    /// A card whose records came under more outer keys (lanes) than guards were kept, an
    /// hour of its events ago: a replay of its first lane, past the event-id memory's 15
    /// minutes, is still a replay while Lambda can still send it.
    #[test]
    fn a_replay_of_an_old_lane_is_caught_after_many_lanes() {
        let rules = Policies::from(rules::RuleSet::default_rules());
        let lanes = 12u64;
        let metas: Vec<RecordMeta> = (0..lanes)
            .map(|i| RecordMeta {
                lane_key: Some(Arc::from(format!("other-card-{i}").as_str())),
                arrival_ms: 1_764_140_400_000 + i as i64 * 300_000,
                ..meta("shardId-1", i)
            })
            .collect();
        // Five minutes apart: the first lanes' events leave the id memory.
        let txns: Vec<Txn> = (0..lanes as u32)
            .map(|i| {
                let mut t = txn(i, 0.0, "US");
                t.event_time_ms = 1_764_140_400_000 + i64::from(i) * 300_000;
                t
            })
            .collect();
        let items: Vec<Item<'_, Txn>> = metas
            .iter()
            .zip(&txns)
            .map(|(meta, body)| Item { meta, body })
            .collect();
        let mut profile = CardProfile::new("tok");
        for it in &items {
            profile = apply_card(profile, std::slice::from_ref(it), &rules).profile;
        }
        assert_eq!(profile.txn_count, lanes);
        let again = apply_card(profile.clone(), &items[..1], &rules);
        assert_eq!(again.replayed, 1, "the first lane's record is a replay");
        assert_eq!(again.profile.txn_count, lanes);
    }

    /// An event id that reads as a card number never leaves in an alert.
    #[test]
    fn an_event_id_that_reads_as_a_card_number_is_not_in_the_alert() {
        let rules = Policies::from(rules::RuleSet::default_rules());
        let metas = [meta("shardId-1", 0), meta("shardId-1", 1)];
        let first = txn(0, 0.0, "US");
        let mut far = txn(1, 60.0, "NO");
        far.event_id = "4111111111111111".into();
        let items = [
            Item {
                meta: &metas[0],
                body: &first,
            },
            Item {
                meta: &metas[1],
                body: &far,
            },
        ];
        let out = apply_card(CardProfile::new("tok"), &items, &rules);
        assert_eq!(out.alerts.len(), 1, "impossible travel");
        let json = serde_json::to_string(&out.alerts).unwrap();
        assert!(!json.contains("4111111111111111"), "{json}");
    }

    /// Live records carry the merchant (the by-merchant index's key), made safe when it
    /// reads as a card number; shadow records leave it out, like the card token.
    #[test]
    fn live_records_carry_a_pan_safe_merchant_and_shadow_records_none() {
        let rules = Policies {
            live: Policy::of(rules::RuleSet::default_rules()),
            shadow: Some(Policy::of(rules::RuleSet::default_rules())),
        };
        let metas = [
            meta("shardId-1", 0),
            meta("shardId-1", 1),
            meta("shardId-1", 2),
        ];
        let first = txn(0, 0.0, "US");
        let far = txn(1, 60.0, "NO");
        let mut pan = txn(2, 0.0, "US");
        pan.merchant_id = "4111111111111111".into();
        let items: Vec<Item<'_, Txn>> = metas
            .iter()
            .zip([&first, &far, &pan])
            .map(|(meta, body)| Item { meta, body })
            .collect();
        let out = apply_card(CardProfile::new("tok"), &items, &rules);
        assert_eq!(out.alerts.len(), 2, "impossible travel both ways");
        assert_eq!(out.shadow_alerts.len(), 2);
        assert_eq!(out.alerts[0].merchant_id.as_deref(), Some("m1"));
        let safe = out.alerts[1].merchant_id.as_deref().unwrap();
        assert_eq!(safe, crate::event::pan_safe_id("4111111111111111"));
        assert!(!safe.contains("4111111111111111"), "{safe}");
        assert!(out.shadow_alerts.iter().all(|a| a.merchant_id.is_none()));
        let json = serde_json::to_string(&out.shadow_alerts).unwrap();
        assert!(!json.contains("merchant_id"), "{json}");
    }

    /// A record stored before the field existed still reads.
    #[test]
    fn an_alert_without_merchant_id_reads() {
        let rules = Policies::from(rules::RuleSet::default_rules());
        let metas = [meta("shardId-1", 0), meta("shardId-1", 1)];
        let (a, b) = (txn(0, 0.0, "US"), txn(1, 60.0, "NO"));
        let items: Vec<Item<'_, Txn>> = metas
            .iter()
            .zip([&a, &b])
            .map(|(meta, body)| Item { meta, body })
            .collect();
        let alert = apply_card(CardProfile::new("tok"), &items, &rules).alerts[0].clone();
        let mut v = serde_json::to_value(&alert).unwrap();
        v.as_object_mut().unwrap().remove("merchant_id").unwrap();
        let old: Alert = serde_json::from_value(v).unwrap();
        assert_eq!(old.merchant_id, None);
        assert_eq!(
            Alert {
                merchant_id: alert.merchant_id.clone(),
                ..old
            },
            alert
        );
    }

    #[test]
    fn producer_duplicate_is_skipped_but_guarded() {
        let rules = Policies::from(rules::RuleSet::default_rules());
        let metas = [meta("shardId-1", 0), meta("shardId-1", 1)];
        let t = txn(0, 0.0, "US");
        let items = [
            Item {
                meta: &metas[0],
                body: &t,
            },
            Item {
                meta: &metas[1],
                body: &t,
            },
        ];
        let out = apply_card(CardProfile::new("tok"), &items, &rules);
        assert_eq!((out.scored, out.duplicates), (1, 1));
        assert_eq!(out.profile.txn_count, 1);
    }
}
