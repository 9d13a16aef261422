//! Event-time windows: per merchant, per card and global tumbling windows aligned to the
//! epoch in UTC, mergeable metrics, and the per-shard state machine that applies a
//! shard's records to its window partials exactly once.
//!
//! State is split into **per-shard partial items**: one item per (key, width, window
//! start, shard). Each partial has a single writer (the shard's invocation; the template
//! keeps ParallelizationFactor at 1 for this function), so its replay guard is just "the
//! last position applied", and a hot merchant or the global window receives at most one
//! write per shard per batch. Readers merge partials, and the sliding 15-minute window is
//! merged from 1-minute panes at read time.

pub mod claims;
pub mod hll;
pub mod rules;
pub mod view;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::batch::Item;
use crate::event::{AuthResult, Txn};
use crate::seq::RecordPos;
use hll::{ExactSet, Hll};

/// One minute in ms.
pub const MINUTE_MS: i64 = 60_000;
/// Relative accuracy of the quantile sketch (DDSketch alpha).
pub const SKETCH_ALPHA: f64 = 0.01;

/// What a window is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Per merchant.
    Merchant,
    /// Per card.
    Card,
    /// One window for all traffic.
    Global,
}

/// Which windows are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Tumbling widths (ms) per key kind.
    pub widths: BTreeMap<KeyKind, Vec<i64>>,
    /// Allowed lateness: the watermark trails the largest event time seen by this much.
    pub lateness_ms: i64,
    /// Items expire this long after their window ends (DynamoDB TTL).
    pub retention_ms: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            widths: BTreeMap::from([
                (
                    KeyKind::Merchant,
                    vec![MINUTE_MS, 5 * MINUTE_MS, 15 * MINUTE_MS],
                ),
                (
                    KeyKind::Global,
                    vec![MINUTE_MS, 5 * MINUTE_MS, 15 * MINUTE_MS],
                ),
                // Per-card windows cost about one write per record (few records of one
                // card share a window) and repeat the scorer's per-card velocity and
                // spend features, so they are off unless configured (CARD_WINDOW_MINUTES).
                (KeyKind::Card, vec![]),
            ]),
            lateness_ms: 2 * MINUTE_MS,
            retention_ms: 7 * 24 * 60 * MINUTE_MS,
        }
    }
}

/// A window: key, width and start (aligned to the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowId {
    /// `merchant:<id>`, `card:<token>` or `global`.
    pub key: String,
    /// Width, ms.
    pub width_ms: i64,
    /// Start, epoch ms, a multiple of the width.
    pub start_ms: i64,
}

impl WindowId {
    /// End (exclusive), epoch ms.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.width_ms
    }

    /// The partition key of its items: `<key>#<width>m`.
    pub fn pk(&self) -> String {
        pk_for(&self.key, self.width_ms)
    }

    /// The sort key of one shard's partial: `<start, 13 digits>#<shard>`.
    pub fn sk(&self, shard: &str) -> String {
        format!("{:013}#{shard}", self.start_ms)
    }
}

/// Partition key of the items of one key and width.
pub fn pk_for(key: &str, width_ms: i64) -> String {
    format!("{key}#{}m", width_ms / MINUTE_MS)
}

/// The start of the window of `width_ms` holding `t_ms` (floor, also before 1970).
pub fn window_start(t_ms: i64, width_ms: i64) -> i64 {
    t_ms.div_euclid(width_ms) * width_ms
}

/// The key of an event for a kind.
pub fn key_of(kind: KeyKind, t: &Txn) -> String {
    match kind {
        KeyKind::Merchant => format!("merchant:{}", t.merchant_id),
        KeyKind::Card => format!("card:{}", t.card_token),
        KeyKind::Global => "global".to_owned(),
    }
}

/// Every window an event belongs to.
pub fn windows_of(t: &Txn, cfg: &WindowConfig) -> Vec<(KeyKind, WindowId)> {
    let mut out = Vec::new();
    for (kind, widths) in &cfg.widths {
        let key = key_of(*kind, t);
        for &w in widths {
            out.push((
                *kind,
                WindowId {
                    key: key.clone(),
                    width_ms: w,
                    start_ms: window_start(t.event_time_ms, w),
                },
            ));
        }
    }
    out
}

/// Count, sum, min and max of amounts in one currency (exact).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyAgg {
    /// Events.
    pub count: u64,
    /// Sum of amounts, minor units.
    pub sum: i64,
    /// Smallest amount.
    pub min: i64,
    /// Largest amount.
    pub max: i64,
}

impl CurrencyAgg {
    fn add(&mut self, amount: i64) {
        if self.count == 0 {
            self.min = amount;
            self.max = amount;
        } else {
            self.min = self.min.min(amount);
            self.max = self.max.max(amount);
        }
        self.count += 1;
        self.sum += amount;
    }

    fn merge(&mut self, o: &CurrencyAgg) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = o.clone();
            return;
        }
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Mergeable metrics of a window (or of one shard's part of it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Events.
    pub count: u64,
    /// Approved events.
    pub approved: u64,
    /// Declined events.
    pub declined: u64,
    /// Exact amount aggregates per currency.
    pub currencies: BTreeMap<String, CurrencyAgg>,
    /// Distinct cards beyond [`hll::EXACT_MAX`] (HyperLogLog; empty while `card_set`
    /// counts them exactly).
    pub cards: Hll,
    /// Distinct cards up to [`hll::EXACT_MAX`], exactly (their hashes).
    #[serde(default, skip_serializing_if = "ExactSet::is_empty")]
    pub card_set: ExactSet,
    /// Amount quantile sketch (DDSketch, 1 % relative accuracy), Java wire format.
    #[serde(with = "serde_bytes", default)]
    pub amounts: Vec<u8>,
    /// Events that arrived after the window was final: counted here, never merged.
    #[serde(default)]
    pub late: u64,
}

fn new_sketch() -> DDSketch {
    DDSketch::new(SketchConfig::new(SKETCH_ALPHA, 2048, 1e-9))
}

fn decode_sketch(bytes: &[u8]) -> DDSketch {
    if bytes.is_empty() {
        return new_sketch();
    }
    DDSketch::from_java_bytes(bytes).unwrap_or_else(|_| new_sketch())
}

impl Metrics {
    /// Folds events in (the sketch is decoded and encoded once for all of them).
    pub fn add_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Txn>, track_cards: bool) {
        let mut sketch = decode_sketch(&self.amounts);
        for t in events {
            self.count += 1;
            match t.auth_result {
                AuthResult::Approved => self.approved += 1,
                AuthResult::Declined => self.declined += 1,
            }
            match self.currencies.get_mut(&t.currency) {
                Some(agg) => agg.add(t.amount_minor),
                None => {
                    let mut agg = CurrencyAgg::default();
                    agg.add(t.amount_minor);
                    self.currencies.insert(t.currency.clone(), agg);
                }
            }
            if track_cards {
                hll::Distinct {
                    exact: &mut self.card_set,
                    sketch: &mut self.cards,
                }
                .add(&t.card_token);
            }
            sketch.add(t.amount_minor as f64);
        }
        self.amounts = sketch.to_java_bytes();
    }

    /// Merges another window part in: exact for counts, sums, min, max; within the
    /// sketches' error for distinct cards and quantiles.
    pub fn merge(&mut self, o: &Metrics) {
        self.count += o.count;
        self.approved += o.approved;
        self.declined += o.declined;
        self.late += o.late;
        for (c, agg) in &o.currencies {
            self.currencies.entry(c.clone()).or_default().merge(agg);
        }
        hll::Distinct {
            exact: &mut self.card_set,
            sketch: &mut self.cards,
        }
        .merge(&o.card_set, &o.cards);
        if !o.amounts.is_empty() {
            let mut mine = decode_sketch(&self.amounts);
            // Same configuration on both sides, so merge cannot fail.
            if mine.merge(&decode_sketch(&o.amounts)).is_ok() {
                self.amounts = mine.to_java_bytes();
            }
        }
    }

    /// Distinct cards: exact up to [`hll::EXACT_MAX`], estimated beyond.
    pub fn distinct_cards(&self) -> f64 {
        hll::distinct_count(&self.card_set, &self.cards)
    }

    /// Estimated amount quantile (`q` in 0..=1), minor units.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        decode_sketch(&self.amounts).quantile(q).ok().flatten()
    }

    /// Sum over all currencies (for rules that ignore currency).
    pub fn total_sum(&self) -> i64 {
        self.currencies.values().map(|c| c.sum).sum()
    }
}

/// One shard's partial of one window, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowPartial {
    /// `<key>#<width>m`.
    pub pk: String,
    /// `<start>#<shard>`.
    pub sk: String,
    /// The window.
    pub window: WindowId,
    /// The shard writing it.
    pub shard_id: String,
    /// Padded position of the last record applied: the replay guard.
    pub applied: String,
    /// The metrics.
    pub metrics: Metrics,
    /// True once the shard's watermark passed the window's end.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// DynamoDB TTL, epoch seconds.
    pub expires_at: i64,
    /// Write count (the conditional write expects the one read).
    pub version: u64,
}

impl WindowPartial {
    /// An empty partial.
    pub fn new(window: WindowId, shard: &str, cfg: &WindowConfig) -> Self {
        Self {
            pk: window.pk(),
            sk: window.sk(shard),
            expires_at: (window.end_ms() + cfg.retention_ms) / 1000,
            window,
            shard_id: shard.to_owned(),
            applied: String::new(),
            metrics: Metrics::default(),
            is_final: false,
            version: 0,
        }
    }
}

/// A shard's progress, stored beside the windows: the replay-safe watermark.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProgress {
    /// Largest [`watermark_time`] among applied records (event time, capped at arrival),
    /// epoch ms: the shard's watermark is this minus the allowed lateness.
    pub max_event_ms: Option<i64>,
    /// Padded position of the last record whose effects are all durable.
    pub applied: String,
}

/// A record that arrived after one of its windows was final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Late {
    /// Index of the record in the planned slice.
    pub index: usize,
    /// The final windows it missed.
    pub windows: Vec<WindowId>,
    /// The watermark it met.
    pub watermark_ms: i64,
}

/// A stored replay guard (a padded position), compared with records as numbers.
#[derive(Clone, Debug)]
enum Guard {
    /// Nothing applied yet.
    Empty,
    /// The last position applied.
    Pos(RecordPos),
    /// A guard that does not parse (never written by this code): compared as text.
    Text(String),
}

impl Guard {
    fn new(padded: &str) -> Self {
        if padded.is_empty() {
            return Guard::Empty;
        }
        RecordPos::from_padded(padded).map_or_else(|_| Guard::Text(padded.to_owned()), Guard::Pos)
    }

    /// True when the record at `pos` is already reflected.
    fn covers(&self, pos: &RecordPos) -> bool {
        match self {
            Guard::Empty => false,
            Guard::Pos(g) => pos <= g,
            Guard::Text(g) => pos.to_padded() <= *g,
        }
    }
}

/// What a batch does to a shard's windows, before any partial is read.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// For each touched window: its kind and the indexes of the records that belong to
    /// it (on time), in position order.
    pub on_time: BTreeMap<WindowId, (KeyKind, Vec<usize>)>,
    /// Per window, the indexes of records that missed it (late).
    pub late_in: BTreeMap<WindowId, (KeyKind, Vec<usize>)>,
    /// Late records, for the side output.
    pub late: Vec<Late>,
    /// Records skipped as producer duplicates (an event another record claimed).
    pub duplicates: Vec<usize>,
    /// The stored progress the plan started from.
    start: ShardProgress,
    /// Largest watermark time once records `..=i` are applied.
    max_event_after: Vec<Option<i64>>,
    /// The record whose position is the shard's `applied` once records `..=i` are
    /// applied (`None`: still the stored one).
    applied_after: Vec<Option<usize>>,
}

impl Plan {
    /// Largest [`watermark_time`] of the shard once the whole batch is applied (`None`
    /// for an empty batch): the watermark is this minus the lateness.
    pub fn max_event_ms(&self) -> Option<i64> {
        self.max_event_after.last().copied().flatten()
    }

    /// The shard's progress once records `..upto` of `items` (the planned slice) are
    /// applied, id ring included.
    pub fn progress_at(&self, items: &[Item<'_, Txn>], upto: usize) -> Option<ShardProgress> {
        let last = upto.checked_sub(1)?;
        let max_event_ms = *self.max_event_after.get(last)?;
        let applied = match self.applied_after[last] {
            Some(i) => items.get(i)?.meta.pos.to_padded(),
            None => self.start.applied.clone(),
        };
        Some(ShardProgress {
            max_event_ms,
            applied,
        })
    }
}

/// The time a record may move its shard's watermark to: its event time, but never past
/// its arrival in the stream (`ApproximateArrivalTimestamp`, the stream's clock).
///
/// Decoding accepts event times up to 5 minutes ahead of arrival (a producer's clock
/// running fast), and such a record counts in the windows of its event time. Were it to
/// move the watermark to its event time, one fast producer would push the shard's
/// watermark minutes ahead and every other producer's on-time events would go to the
/// late output (the lateness is 2 minutes). Capped at arrival, a record can only say "the
/// stream has reached this time", which is true. The cap allows no lead: a producer
/// slightly fast loses nothing (its records are on time); it only stops moving the
/// watermark ahead of the stream's clock. It is a property of the record alone, so the
/// watermark a record meets is still a function of the shard's records before it.
/// Records without an arrival time (`arrival_ms <= 0`: hand-made fixtures and tests)
/// use their event time, as before.
pub fn watermark_time(it: &Item<'_, Txn>) -> i64 {
    let t = it.body.event_time_ms;
    if it.meta.arrival_ms > 0 {
        t.min(it.meta.arrival_ms)
    } else {
        t
    }
}

/// A window while planning: kind, the key's raw text (merchant id, card token or ""),
/// width, start, and whether the records in it are late.
type Slot<'a> = (KeyKind, &'a str, i64, i64, bool);

fn raw_key(kind: KeyKind, t: &Txn) -> &str {
    match kind {
        KeyKind::Merchant => &t.merchant_id,
        KeyKind::Card => &t.card_token,
        KeyKind::Global => "",
    }
}

/// Plans one shard's records (sorted by position) against its stored progress. Records
/// at or before `progress.applied` are already reflected and are left out; each later
/// record meets the watermark of everything before it in the shard (the largest
/// [`watermark_time`] minus the lateness), so the verdict (on time or late) is the same
/// however the stream is split into batches or replayed.
pub fn plan(
    items: &[Item<'_, Txn>],
    progress: &ShardProgress,
    claims: &mut claims::ClaimBook,
    cfg: &WindowConfig,
) -> Plan {
    let mut p = Plan {
        start: progress.clone(),
        max_event_after: Vec::with_capacity(items.len()),
        applied_after: Vec::with_capacity(items.len()),
        ..Plan::default()
    };
    let guard = Guard::new(&progress.applied);
    let mut max_event = progress.max_event_ms;
    let mut applied = None;
    // Windows are interned per batch: a key string is built once per touched window,
    // not once per record.
    let mut slots: std::collections::HashMap<Slot<'_>, usize> = std::collections::HashMap::new();
    let mut windows: Vec<(Slot<'_>, Vec<usize>)> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        if guard.covers(&it.meta.pos) {
            p.max_event_after.push(max_event);
            p.applied_after.push(applied);
            continue;
        }
        applied = Some(i);
        let h = hll::stable_hash(&it.body.event_id);
        if claims.check(it.body.event_time_ms, h, &it.meta.pos, i) == claims::Verdict::Duplicate {
            // A producer sent this event twice: the first copy already counted.
            p.duplicates.push(i);
            p.max_event_after.push(max_event);
            p.applied_after.push(applied);
            continue;
        }
        let watermark = max_event.map(|m| m - cfg.lateness_ms);
        let t = it.body;
        let mut missed = Vec::new();
        for (kind, widths) in &cfg.widths {
            for &width in widths {
                let start = window_start(t.event_time_ms, width);
                let late = watermark.is_some_and(|wm| start + width <= wm);
                let slot = (*kind, raw_key(*kind, t), width, start, late);
                let n = *slots.entry(slot).or_insert_with(|| {
                    windows.push((slot, Vec::new()));
                    windows.len() - 1
                });
                windows[n].1.push(i);
                if late {
                    missed.push(n);
                }
            }
        }
        if !missed.is_empty() {
            p.late.push(Late {
                index: i,
                windows: missed
                    .iter()
                    .map(|&n| slot_window(windows[n].0, t))
                    .collect(),
                watermark_ms: watermark.unwrap_or_default(),
            });
        }
        let wt = watermark_time(it);
        max_event = Some(max_event.map_or(wt, |m| m.max(wt)));
        p.max_event_after.push(max_event);
        p.applied_after.push(applied);
    }
    for (slot, ix) in windows {
        let w = slot_window(slot, items[ix[0]].body);
        let to = if slot.4 {
            &mut p.late_in
        } else {
            &mut p.on_time
        };
        to.insert(w, (slot.0, ix));
    }
    p
}

fn slot_window(slot: Slot<'_>, t: &Txn) -> WindowId {
    WindowId {
        key: key_of(slot.0, t),
        width_ms: slot.2,
        start_ms: slot.3,
    }
}

/// Applies a window's records to its stored partial, skipping those it already has.
/// Returns true when the partial changed.
pub fn apply_to_partial(
    partial: &mut WindowPartial,
    kind: KeyKind,
    on_time: &[&Item<'_, Txn>],
    late: &[&Item<'_, Txn>],
    watermark_ms: Option<i64>,
) -> bool {
    let guard = Guard::new(&partial.applied);
    let fresh = |it: &&&Item<'_, Txn>| !guard.covers(&it.meta.pos);
    let new_on_time = on_time.iter().filter(fresh).map(|it| it.body);
    let new_late = late.iter().filter(fresh).count() as u64;
    let last = on_time
        .iter()
        .chain(late)
        .filter(fresh)
        .map(|it| &it.meta.pos)
        .max();
    let now_final = watermark_ms.is_some_and(|wm| partial.window.end_ms() <= wm);
    let Some(last) = last else {
        if now_final && !partial.is_final {
            partial.is_final = true;
            return true;
        }
        return false;
    };
    partial.applied = last.to_padded();
    partial.metrics.add_all(new_on_time, kind != KeyKind::Card);
    partial.metrics.late += new_late;
    partial.is_final |= now_final;
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Channel, Location};
    use crate::record::RecordMeta;
    use crate::seq::SeqNo;

    pub(crate) fn txn(i: usize, t: i64, amount: i64, merchant: &str, declined: bool) -> Txn {
        Txn {
            card_bin: None,
            event_id: format!("e{i}"),
            card_token: format!("tok_{}", i % 5),
            merchant_id: merchant.into(),
            mcc: 5411,
            amount_minor: amount,
            currency: "USD".into(),
            event_time_ms: t,
            location: Location {
                lat: 0.0,
                lon: 0.0,
                country: "US".into(),
            },
            channel: Channel::Pos,
            auth_result: if declined {
                AuthResult::Declined
            } else {
                AuthResult::Approved
            },
        }
    }

    fn meta(i: usize) -> RecordMeta {
        RecordMeta {
            shard_id: Arc::from("shardId-000000000000"),
            pos: RecordPos::plain(SeqNo::parse(&format!("4959{i:040}")).unwrap()),
            partition_key: "k".into(),
            lane_key: None,
            arrival_ms: 0,
        }
    }

    #[test]
    fn windows_align_to_the_epoch() {
        assert_eq!(
            window_start(1_795_000_123_456, MINUTE_MS),
            1_795_000_080_000
        );
        assert_eq!(window_start(-1, MINUTE_MS), -MINUTE_MS);
        let t = txn(0, 15 * MINUTE_MS + 5, 100, "m", false);
        let ws = windows_of(&t, &WindowConfig::default());
        assert_eq!(ws.len(), 6);
        assert!(ws.iter().all(|(_, w)| w.start_ms % w.width_ms == 0
            && w.start_ms <= t.event_time_ms
            && t.event_time_ms < w.end_ms()));
    }

    #[test]
    fn metrics_merge_exactly_and_sketches_within_error() {
        let events: Vec<Txn> = (0..1000)
            .map(|i| txn(i, 0, 100 + i as i64, "m", i % 10 == 0))
            .collect();
        let mut whole = Metrics::default();
        whole.add_all(&events, true);
        let (mut a, mut b) = (Metrics::default(), Metrics::default());
        a.add_all(&events[..400], true);
        b.add_all(&events[400..], true);
        a.merge(&b);
        assert_eq!((a.count, a.approved, a.declined), (1000, 900, 100));
        assert_eq!(a.currencies, whole.currencies);
        assert_eq!(a.currencies["USD"].min, 100);
        assert_eq!(a.currencies["USD"].max, 1099);
        let p50 = a.quantile(0.5).unwrap();
        assert!((p50 - 600.0).abs() / 600.0 < 0.02, "{p50}");
        assert!((a.distinct_cards() - 5.0).abs() < 0.5);
    }

    /// A merchant's three cards in a minute read 3, split over two shards or not, even
    /// when two of the cards' hashes share a HyperLogLog register (the sketch alone read
    /// 2); past 48 cards the count is the sketch's estimate.
    #[test]
    fn a_few_distinct_cards_are_counted_exactly() {
        let idx = |s: &str| hll::stable_hash(s) >> (64 - hll::PRECISION);
        let twin = (1..100_000)
            .map(|i| format!("tok_{i}"))
            .find(|t| idx(t) == idx("tok_0"))
            .unwrap();
        let third = (1..100_000)
            .map(|i| format!("tok_{i}"))
            .find(|t| idx(t) != idx("tok_0"))
            .unwrap();
        let events: Vec<Txn> = ["tok_0", twin.as_str(), third.as_str()]
            .iter()
            .enumerate()
            .map(|(i, card)| Txn {
                card_token: (*card).to_owned(),
                ..txn(i, 0, 100, "m", false)
            })
            .collect();
        let mut whole = Metrics::default();
        whole.add_all(&events, true);
        assert_eq!(whole.distinct_cards(), 3.0);
        let (mut a, mut b) = (Metrics::default(), Metrics::default());
        a.add_all(&events[..1], true);
        b.add_all(&events[1..], true);
        a.merge(&b);
        assert_eq!(a.distinct_cards(), 3.0);
        assert_eq!(a.card_set, whole.card_set, "canonical across the split");

        let many: Vec<Txn> = (0..200)
            .map(|i| Txn {
                card_token: format!("card-{i}"),
                ..txn(i, 0, 100, "m", false)
            })
            .collect();
        let mut big = Metrics::default();
        big.add_all(&many, true);
        assert!(big.card_set.is_empty());
        assert!((big.distinct_cards() - 200.0).abs() < 200.0 * 3.0 * hll::STD_ERROR);
    }

    #[test]
    fn late_records_are_separated_by_the_watermark_of_what_came_before() {
        let cfg = WindowConfig::default();
        let evs = [
            txn(0, 10 * MINUTE_MS, 100, "m", false),
            txn(1, 30 * MINUTE_MS, 100, "m", false), // watermark -> 28 min
            txn(2, 27 * MINUTE_MS + 1, 100, "m", false), // 1m window [27, 28) ended at 28: late for it, on time for 5m and 15m
            txn(3, 10 * MINUTE_MS + 1, 100, "m", false), // late everywhere but card 60m
        ];
        let metas: Vec<RecordMeta> = (0..4).map(meta).collect();
        let items: Vec<Item<'_, Txn>> = metas
            .iter()
            .zip(&evs)
            .map(|(meta, body)| Item { meta, body })
            .collect();
        let p = plan(
            &items,
            &ShardProgress::default(),
            &mut claims::ClaimBook::new("s", [], 0),
            &cfg,
        );
        assert_eq!(p.late.len(), 2);
        assert_eq!(p.late[0].index, 2);
        assert_eq!(
            p.late[0]
                .windows
                .iter()
                .map(|w| w.width_ms)
                .collect::<Vec<_>>(),
            vec![MINUTE_MS, MINUTE_MS]
        );
        assert_eq!(p.late[1].index, 3);
        assert_eq!(p.late[1].windows.len(), 6);
        // Every record is either on time or late in each of its 6 windows.
        let on: usize = p.on_time.values().map(|(_, v)| v.len()).sum();
        let late: usize = p.late_in.values().map(|(_, v)| v.len()).sum();
        assert_eq!(on + late, 4 * 6);
    }

    #[test]
    fn a_producer_with_a_fast_clock_does_not_make_other_producers_late() {
        let cfg = WindowConfig::default();
        let now = 1_795_000_000_000;
        // One producer's clock runs 4 minutes fast (decode accepts up to 5), then on-time
        // events of other producers, 10 s old when they arrive.
        let evs = [
            txn(0, now + 4 * MINUTE_MS, 100, "m", false),
            txn(1, now - 10_000, 100, "m", false),
            txn(2, now - 5_000, 100, "m", false),
        ];
        let metas: Vec<RecordMeta> = (0..3)
            .map(|i| RecordMeta {
                arrival_ms: now + i as i64 * 1000,
                ..meta(i)
            })
            .collect();
        let items: Vec<Item<'_, Txn>> = metas
            .iter()
            .zip(&evs)
            .map(|(meta, body)| Item { meta, body })
            .collect();
        let p = plan(
            &items,
            &ShardProgress::default(),
            &mut claims::ClaimBook::new("s", [], 0),
            &cfg,
        );
        assert!(p.late.is_empty(), "{:?}", p.late);
        // The future-stamped record still counts in its own windows.
        assert!(p.on_time.keys().any(|w| w.start_ms > now));
        // Any split gives the same verdict: the watermark is stored with the progress.
        let mut book = claims::ClaimBook::new("s", [], 0);
        let first = plan(&items[..1], &ShardProgress::default(), &mut book, &cfg);
        let rest = plan(
            &items,
            &first.progress_at(&items, 1).unwrap(),
            &mut book,
            &cfg,
        );
        assert!(rest.late.is_empty(), "{:?}", rest.late);
        assert_eq!(rest.progress_at(&items, 3), p.progress_at(&items, 3));
    }

    #[test]
    fn without_arrival_times_event_times_move_the_watermark() {
        let cfg = WindowConfig::default();
        // Fixtures and tests without arrival times (0): event time alone, as before.
        let evs = [
            txn(0, 30 * MINUTE_MS, 100, "m", false),
            txn(1, 10 * MINUTE_MS, 100, "m", false),
        ];
        let metas: Vec<RecordMeta> = (0..2).map(meta).collect();
        let items: Vec<Item<'_, Txn>> = metas
            .iter()
            .zip(&evs)
            .map(|(meta, body)| Item { meta, body })
            .collect();
        let p = plan(
            &items,
            &ShardProgress::default(),
            &mut claims::ClaimBook::new("s", [], 0),
            &cfg,
        );
        assert_eq!(p.late.len(), 1);
        assert_eq!(p.late[0].watermark_ms, 28 * MINUTE_MS);
    }

    #[test]
    fn planning_again_from_stored_progress_skips_applied_records() {
        let cfg = WindowConfig::default();
        let evs: Vec<Txn> = (0..6)
            .map(|i| txn(i, i as i64 * MINUTE_MS, 100, "m", false))
            .collect();
        let metas: Vec<RecordMeta> = (0..6).map(meta).collect();
        let items: Vec<Item<'_, Txn>> = metas
            .iter()
            .zip(&evs)
            .map(|(meta, body)| Item { meta, body })
            .collect();
        let full = plan(
            &items,
            &ShardProgress::default(),
            &mut claims::ClaimBook::new("s", [], 0),
            &cfg,
        );
        let mut book = claims::ClaimBook::new("s", [], 0);
        let first = plan(&items[..3], &ShardProgress::default(), &mut book, &cfg);
        let rest = plan(
            &items,
            &first.progress_at(&items, 3).unwrap(),
            &mut book,
            &cfg,
        );
        let count = |p: &Plan| p.on_time.values().map(|(_, v)| v.len()).sum::<usize>();
        assert_eq!(count(&first) + count(&rest), count(&full));
        assert_eq!(rest.progress_at(&items, 6), full.progress_at(&items, 6));
    }
}
