//! Lambda's native tumbling windows (`TumblingWindowInSeconds`): Lambda groups records
//! into windows by arrival time and carries a string map of state from one invocation
//! of a window to the next (<https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-windows.html>).
//!
//! The state is typed ([`TumblingState`]) and serialised under one key. It must stay
//! under Lambda's 1 MB per shard; when it would not, the aggregates are spilled to the
//! windows table and the state starts afresh. Each spill is an item keyed by the position
//! the state started from, so a retried invocation (which Lambda runs with the previous
//! state) rewrites the same item with a superset instead of adding to it. The final
//! invocation of a window writes the rest, marked final. The response carries the state
//! and partial batch failures (the crate's response type has no such field, hence
//! [`TumblingResponse`]).
//!
//! A failed invocation returns the state it was given and reports the first record that
//! state does not hold. So whatever Lambda retries with (from the reported record with the
//! returned state, or the whole batch with the given state), every record after the state
//! is delivered again and folded once: nothing is lost, nothing counted twice. A panic
//! while folding, writing claims or spilling, and a spill that would start inside the
//! batch config's deadline margin, fail the same way: the invocation answers (a crash
//! or a timeout would retry the whole batch and count against the mapping's retries,
//! <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-errors.html>).

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;

use aws_lambda_events::event::streams::KinesisBatchItemFailure;
use aws_lambda_events::time_window::TimeWindowProperties;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use shardline_aws::kinesis::decode_event_json;
use shardline_core::ports::{AlertSink, Put, Quarantine, WindowStore};
use shardline_core::window::claims::Verdict;
use shardline_core::window::hll::stable_hash;
use shardline_core::window::{KeyKind, Metrics, WindowConfig, WindowId, WindowPartial, key_of};
use shardline_core::{Txn, seq::RecordPos};
use tokio::time::Instant;

use crate::handler::{Aggregator, HandlerError};

/// The state map key holding shardline's state.
pub const STATE_KEY: &str = "shardline.v1";
/// Lambda's limit on the state of one shard.
pub const LAMBDA_STATE_LIMIT: usize = 1024 * 1024;

/// State carried between the invocations of one window of one shard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TumblingState {
    /// Padded position of the last record folded in (replay guard).
    pub applied: String,
    /// Padded position the aggregates below start after (the spill item's key).
    pub since: String,
    /// Aggregates per key (`merchant:<id>`, `global`) since `since`.
    pub keys: BTreeMap<String, Metrics>,
    /// Spills written so far for this window.
    pub spills: u32,
}

/// The tumbling-window response: Lambda's state map plus partial batch failures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TumblingResponse {
    /// State for the next invocation of this window.
    pub state: HashMap<String, String>,
    /// The lowest failed record, if any.
    pub batch_item_failures: Vec<KinesisBatchItemFailure>,
}

/// The Lambda window an invocation belongs to.
#[derive(Clone, Copy, Debug)]
struct Span {
    start_ms: i64,
    width_ms: i64,
    /// The window's last invocation: what is spilled is final.
    is_final: bool,
}

/// True when an invocation payload is a tumbling-window event.
pub fn is_time_window_event(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        window: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(payload).is_ok_and(|p| p.window.is_some())
}

impl<W: WindowStore, A: AlertSink, Q: Quarantine> Aggregator<W, A, Q> {
    /// Handles one tumbling-window invocation.
    pub async fn handle_time_window(
        &self,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<TumblingResponse, HandlerError> {
        self.handle_time_window_limited(payload, deadline, LAMBDA_STATE_LIMIT * 9 / 10)
            .await
    }

    /// As [`Self::handle_time_window`], spilling when the state would exceed `max_state`.
    pub async fn handle_time_window_limited(
        &self,
        payload: &[u8],
        deadline: Option<Instant>,
        max_state: usize,
    ) -> Result<TumblingResponse, HandlerError> {
        let deadline = shardline_core::batch::live_deadline(deadline);
        let props: TimeWindowProperties =
            serde_json::from_slice(payload).map_err(shardline_aws::kinesis::EnvelopeError::Json)?;
        let records = decode_event_json(payload, &self.settings().limits)?;
        let state: TumblingState = props
            .state
            .get(STATE_KEY)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let shard = props
            .shard_id
            .clone()
            .or_else(|| records.first().map(|r| r.meta.shard_id.to_string()))
            .unwrap_or_default();
        let start_ms = props.window.start.timestamp_millis();
        let width_ms = props.window.end.timestamp_millis() - start_ms;

        // The first record whose effect the given state does not hold (a good record not
        // folded in, or a poison record not known to be quarantined): a failure is
        // reported there, with the given state, never at a later record.
        let given_applied = state.applied.clone();
        let first_open = records
            .iter()
            .map(|r| &r.meta.pos)
            .filter(|pos| given_applied.is_empty() || pos.to_padded() > given_applied)
            .min()
            .or_else(|| records.iter().map(|r| &r.meta.pos).min())
            .map(|pos| pos.seq.clone());
        let mut items: Vec<(&RecordPos, &Txn, i64)> = records
            .iter()
            .filter_map(|r| {
                r.body
                    .as_ref()
                    .ok()
                    .map(|t| (&r.meta.pos, t, r.meta.arrival_ms))
            })
            .collect();
        items.sort_by(|a, b| a.0.cmp(b.0));
        let window = Span {
            start_ms,
            width_ms,
            is_final: props.is_final_invoke_for_window,
        };
        // A panic here is outside the batch processor's per-record catch: it fails this
        // invocation's open records (below), not the invocation.
        let step = AssertUnwindSafe(
            self.fold_and_spill(&shard, items, state, window, max_state, deadline),
        );
        let (state, mut failed) = match step.catch_unwind().await {
            Ok(r) => r,
            Err(panic) => {
                tracing::error!(
                    shard,
                    panic = %panic_message(&panic),
                    "Tumbling window step panicked; its records are reported for retry."
                );
                (TumblingState::default(), true)
            }
        };
        // After a failed spill every record comes back: quarantining now would write the
        // poison records twice.
        let outcome = self
            .processor()
            .quarantine_only(
                &records,
                Vec::new(),
                deadline,
                failed.then(|| first_open.clone()).flatten(),
            )
            .await;
        failed |= outcome.lowest_failure.is_some();
        let mut resp = TumblingResponse::default();
        if !failed {
            resp.state.insert(
                STATE_KEY.to_owned(),
                serde_json::to_string(&state).unwrap_or_default(),
            );
        } else {
            // Keep the state Lambda gave us, and report the first record it does not hold
            // (not the record that failed: the good records before that one are not in
            // the returned state, and a retry from there would drop them).
            resp.state = props.state.clone();
        }
        if failed {
            let Some(id) = first_open else {
                // A final invoke has no record: only a function error makes Lambda retry
                // it (a success would close the window and drop the state).
                return Err(HandlerError::Incomplete(
                    "the window's final write failed; retry the invocation",
                ));
            };
            let mut f = KinesisBatchItemFailure::default();
            f.item_identifier = Some(id.to_string());
            resp.batch_item_failures.push(f);
        }
        Ok(resp)
    }

    /// Folds the records the state lacks into it, writes the claims they added, and
    /// spills the aggregates when the window closes or the state outgrows `max_state`.
    /// Returns the new state and whether anything failed (then the state is not to be
    /// returned: the caller keeps the given one).
    async fn fold_and_spill(
        &self,
        shard: &str,
        items: Vec<(&RecordPos, &Txn, i64)>,
        mut state: TumblingState,
        window: Span,
        max_state: usize,
        deadline: Option<Instant>,
    ) -> (TumblingState, bool) {
        // A producer's re-send of an event counted earlier, in this window or any other,
        // on this shard or an ancestor, is claimed by the original: it is skipped.
        let mut book = match self
            .claim_book(shard, items.iter().map(|(_, t, arrival)| (*t, *arrival)))
            .await
        {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "Event-id claims read failed.");
                None
            }
        };
        let mut failed = book.is_none();
        for (i, (pos, t, _)) in items.into_iter().enumerate() {
            let padded = pos.to_padded();
            if !state.applied.is_empty() && padded <= state.applied {
                continue;
            }
            let Some(book) = book.as_mut() else { break };
            if book.check(t.event_time_ms, stable_hash(&t.event_id), pos, i) == Verdict::Duplicate {
                state.applied = padded;
                continue;
            }
            for kind in [KeyKind::Merchant, KeyKind::Global] {
                state
                    .keys
                    .entry(key_of(kind, t))
                    .or_default()
                    .add_all([t], true);
            }
            state.applied = padded;
        }

        // The claims before the state that holds their effects is returned (there is no
        // later moment: the returned state is the commit).
        if let Some(book) = &book
            && let Err(e) = self.store_claims(book, usize::MAX).await
        {
            tracing::warn!(error = %e, "Event-id claims write failed.");
            failed = true;
        }
        let encoded = serde_json::to_string(&state).unwrap_or_default();
        let must_flush = window.is_final || encoded.len() > max_state;
        if !failed && must_flush && !state.keys.is_empty() {
            match self.spill(shard, window, &state, deadline).await {
                Ok(()) => {
                    state.spills += 1;
                    state.since = state.applied.clone();
                    state.keys.clear();
                }
                Err(()) => failed = true,
            }
        }
        (state, failed)
    }

    /// Writes the state's aggregates, one item per key. No item is started inside the
    /// deadline margin: a spill cut short is retried whole, as a failed one is (its items
    /// are keyed by `state.since`, so the retry overwrites them with a superset).
    async fn spill(
        &self,
        shard: &str,
        window: Span,
        state: &TumblingState,
        deadline: Option<Instant>,
    ) -> Result<(), ()> {
        let Span {
            start_ms,
            width_ms,
            is_final,
        } = window;
        let cfg: &WindowConfig = &self.settings().windows;
        let margin = self.settings().batch.deadline_margin;
        let mut writes = Vec::new();
        for (key, metrics) in &state.keys {
            let window = WindowId {
                key: key.clone(),
                width_ms,
                start_ms,
            };
            // One item per spill, keyed by where the spilled aggregates start.
            let mut p = WindowPartial::new(window, &format!("{shard}#t{}", state.since), cfg);
            p.metrics = metrics.clone();
            p.applied = state.applied.clone();
            p.is_final = is_final;
            p.version = 1;
            writes.push(p);
        }
        for (written, p) in writes.iter().enumerate() {
            if deadline.is_some_and(|d| Instant::now() + margin >= d) {
                tracing::warn!(
                    shard,
                    written,
                    items = writes.len(),
                    "Too close to the deadline to spill; reporting the records for retry."
                );
                return Err(());
            }
            // Overwrite: a retry of this spill carries a superset of the same records.
            let existing = self
                .windows()
                .get_partials(&[(p.pk.clone(), p.sk.clone())])
                .await
                .map_err(|_| ())?;
            let expected = existing.found.first().map(|e| e.version);
            let mut p = p.clone();
            p.version = expected.map_or(1, |v| v + 1);
            match self.windows().put_partial(&p, expected).await {
                Ok(Put::Written) => {}
                _ => return Err(()),
            }
        }
        Ok(())
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
