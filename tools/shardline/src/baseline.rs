//! The naive shape of the fraud scorer, for comparison only (benchmarks): the same decode,
//! features and rules, but one GetItem and one PutItem per record, one record at a time
//! — what a handler written without batch semantics does. Never deployed.

use shardline_core::batch::Item;
use shardline_core::event::DecodeLimits;
use shardline_core::fraud::apply_card;
use shardline_core::fraud::profile::CardProfile;
use shardline_core::fraud::rules::{Policies, RuleSet};
use shardline_core::ports::{AlertSink, ProfileStore};

/// One read and one write per record, serial.
pub struct NaiveScorer<'a, P, A> {
    /// Profiles.
    pub profiles: &'a P,
    /// Alerts.
    pub alerts: &'a A,
    /// Decode limits.
    pub limits: DecodeLimits,
}

impl<P: ProfileStore, A: AlertSink> NaiveScorer<'_, P, A> {
    /// Handles a raw Kinesis event; returns records processed.
    pub async fn handle(&self, payload: &[u8]) -> usize {
        let rules = Policies::from(RuleSet::default_rules());
        let Ok(records) = shardline_aws::decode_event_json(payload, &self.limits) else {
            return 0;
        };
        let mut n = 0;
        for r in &records {
            let Ok(body) = &r.body else { continue };
            let stored = self
                .profiles
                .get_profile(&body.card_token)
                .await
                .ok()
                .flatten();
            let expected = stored.as_ref().map(|p| p.version);
            let profile = stored.unwrap_or_else(|| CardProfile::new(body.card_token.clone()));
            let out = apply_card(
                profile,
                &[Item {
                    meta: &r.meta,
                    body,
                }],
                &rules,
            );
            if !out.alerts.is_empty() {
                let _ = self.alerts.put_alerts(&out.alerts).await;
            }
            let mut next = out.profile;
            next.version = expected.map_or(1, |v| v + 1);
            let _ = self.profiles.put_profile(&next, expected).await;
            n += 1;
        }
        n
    }
}
