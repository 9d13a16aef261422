//! Reading windows: merging the per-shard partials of each window, and building the
//! sliding window from 1-minute panes, as readers see them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{MINUTE_MS, Metrics, ShardProgress, WindowPartial};

/// One window as a reader sees it (all shards merged).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowRow {
    /// Start, epoch ms.
    pub start_ms: i64,
    /// End (exclusive), epoch ms.
    pub end_ms: i64,
    /// Events.
    pub count: u64,
    /// Approved events.
    pub approved: u64,
    /// Declined events.
    pub declined: u64,
    /// Sum per currency, minor units.
    pub sum: BTreeMap<String, i64>,
    /// Smallest amount (any currency).
    pub min: Option<i64>,
    /// Largest amount (any currency).
    pub max: Option<i64>,
    /// Estimated distinct cards.
    pub distinct_cards: f64,
    /// Amount quantiles (p50, p95, p99), within 1 %.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Late events counted against it.
    pub late: u64,
    /// True when no shard that wrote it can still add an on-time event: each one's
    /// watermark passed its end, or the shard ended (see [`ShardClocks`]).
    pub is_final: bool,
}

impl WindowRow {
    /// A row from merged metrics.
    pub fn from_metrics(start_ms: i64, end_ms: i64, m: &Metrics, is_final: bool) -> Self {
        Self {
            start_ms,
            end_ms,
            count: m.count,
            approved: m.approved,
            declined: m.declined,
            sum: m
                .currencies
                .iter()
                .map(|(c, a)| (c.clone(), a.sum))
                .collect(),
            min: m
                .currencies
                .values()
                .filter(|c| c.count > 0)
                .map(|c| c.min)
                .min(),
            max: m
                .currencies
                .values()
                .filter(|c| c.count > 0)
                .map(|c| c.max)
                .max(),
            distinct_cards: m.distinct_cards(),
            p50: m.quantile(0.5),
            p95: m.quantile(0.95),
            p99: m.quantile(0.99),
            late: m.late,
            is_final,
        }
    }
}

/// A shard as a reader sees it: its lineage, whether it is closed, its progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardInfo {
    /// Shard id.
    pub id: String,
    /// Its parent and adjacent parent, if any.
    pub parents: Vec<String>,
    /// Closed (a reshard ended it: it has an ending sequence number).
    pub closed: bool,
    /// Its stored progress, if it has processed anything.
    pub progress: Option<ShardProgress>,
}

/// What a shard's clock says of finality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardClock {
    /// Open, or not known to be finished, with its watermark (`None`: none yet).
    Open(Option<i64>),
    /// Ended and fully processed: it never writes again.
    Finished,
}

/// The clocks of a stream's shards, for deciding finality on read.
///
/// A window is final when no shard that wrote it can still add an on-time record: each
/// such shard has either passed the window's end with its watermark (its progress now,
/// not when it last wrote the partial: the stored flag is only refreshed when the shard
/// touches the window again) or ended. As in Flink, where a finished input emits the
/// maximum watermark and no longer holds back the combined one, an ended shard counts as
/// a watermark at +infinity. Without that, a reshard leaves every window the parent wrote
/// near its end unfinal forever: the parent's watermark stops at its last record.
///
/// A handler cannot see that its shard ended, but a reader can: Kinesis lists the shard
/// as closed (it has an ending sequence number), and Lambda (like `shardline run`)
/// processes a child only after its parents are done, so a closed shard with a child that
/// has progress is finished (<https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html>).
/// A shard the stream no longer lists was trimmed after it closed, so it is finished too.
/// A closed shard whose children have not started yet is still waited for.
///
/// Like the stored flag, this waits only for the shards that wrote the window: a shard
/// that has not written it yet (a lagging one) may still add to a window read as final.
#[derive(Clone, Debug, Default)]
pub struct ShardClocks {
    shards: std::collections::HashMap<String, ShardClock>,
    /// The shards came from a listing of the stream: an unlisted one has been trimmed.
    listed: bool,
}

impl ShardClocks {
    /// Clocks from a listing of the stream's shards and the windows' allowed lateness.
    pub fn from_shards(shards: &[ShardInfo], lateness_ms: i64) -> Self {
        let started = |id: &str| {
            shards
                .iter()
                .any(|c| c.parents.iter().any(|p| p == id) && c.progress.is_some())
        };
        let clocks = shards
            .iter()
            .map(|s| {
                let clock = if s.closed && started(&s.id) {
                    ShardClock::Finished
                } else {
                    ShardClock::Open(
                        s.progress
                            .as_ref()
                            .and_then(|p| p.max_event_ms)
                            .map(|m| m - lateness_ms),
                    )
                };
                (s.id.clone(), clock)
            })
            .collect();
        Self {
            shards: clocks,
            listed: true,
        }
    }

    /// The clock of a shard, if known.
    pub fn get(&self, shard: &str) -> Option<ShardClock> {
        match self.shards.get(shard) {
            Some(c) => Some(*c),
            None if self.listed => Some(ShardClock::Finished),
            None => None,
        }
    }

    /// True when the partial's shard can no longer add an on-time record to its window.
    pub fn partial_is_final(&self, p: &WindowPartial) -> bool {
        // Lambda tumbling-mode spills are keyed `<shard>#t<position>`.
        let shard = p.shard_id.split('#').next().unwrap_or_default();
        p.is_final
            || match self.get(shard) {
                Some(ShardClock::Finished) => true,
                Some(ShardClock::Open(wm)) => wm.is_some_and(|wm| p.window.end_ms() <= wm),
                None => false,
            }
    }
}

/// Merges partials into one (metrics, final) per window start, finality as
/// [`ShardClocks`] says.
pub fn merge_partials_with(
    partials: &[WindowPartial],
    clocks: &ShardClocks,
) -> BTreeMap<i64, (Metrics, bool)> {
    let mut out: BTreeMap<i64, (Metrics, bool)> = BTreeMap::new();
    for p in partials {
        let e = out
            .entry(p.window.start_ms)
            .or_insert_with(|| (Metrics::default(), true));
        e.0.merge(&p.metrics);
        e.1 &= clocks.partial_is_final(p);
    }
    out
}

/// Merges partials into one (metrics, final) per window start, final as the stored
/// flags say (no shard information: see [`merge_partials_with`]).
pub fn merge_partials(partials: &[WindowPartial]) -> BTreeMap<i64, (Metrics, bool)> {
    merge_partials_with(partials, &ShardClocks::default())
}

/// Tumbling windows of one width as rows (final as the stored flags say).
pub fn tumbling_rows(partials: &[WindowPartial], width_ms: i64) -> Vec<WindowRow> {
    tumbling_rows_with(partials, width_ms, &ShardClocks::default())
}

/// Tumbling windows of one width as rows, final as the shards' clocks say.
pub fn tumbling_rows_with(
    partials: &[WindowPartial],
    width_ms: i64,
    clocks: &ShardClocks,
) -> Vec<WindowRow> {
    merge_partials_with(partials, clocks)
        .iter()
        .map(|(s, (m, f))| WindowRow::from_metrics(*s, s + width_ms, m, *f))
        .collect()
}

/// Sliding windows of `width_ms` advancing every minute, merged from 1-minute panes:
/// one row per minute `m` in `[from_ms, to_ms)` for the window `[m + 1 min - width, m + 1 min)`.
/// Minutes with no event in the whole window are left out.
pub fn sliding_rows(
    panes: &[WindowPartial],
    width_ms: i64,
    from_ms: i64,
    to_ms: i64,
) -> Vec<WindowRow> {
    sliding_rows_with(panes, width_ms, from_ms, to_ms, &ShardClocks::default())
}

/// As [`sliding_rows`], final as the shards' clocks say.
pub fn sliding_rows_with(
    panes: &[WindowPartial],
    width_ms: i64,
    from_ms: i64,
    to_ms: i64,
    clocks: &ShardClocks,
) -> Vec<WindowRow> {
    let merged = merge_partials_with(panes, clocks);
    let mut rows = Vec::new();
    let mut m = super::window_start(from_ms, MINUTE_MS);
    while m < to_ms {
        let end = m + MINUTE_MS;
        let start = end - width_ms;
        let mut total = Metrics::default();
        let mut is_final = true;
        for (_, (pm, f)) in merged.range(start..end) {
            total.merge(pm);
            is_final &= *f;
        }
        if total.count > 0 || total.late > 0 {
            rows.push(WindowRow::from_metrics(start, end, &total, is_final));
        }
        m = end;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::tests::txn;
    use crate::window::{WindowConfig, WindowId};

    fn pane(start: i64, shard: &str, amounts: &[i64]) -> WindowPartial {
        let w = WindowId {
            key: "merchant:m".into(),
            width_ms: MINUTE_MS,
            start_ms: start,
        };
        let mut p = WindowPartial::new(w, shard, &WindowConfig::default());
        let evs: Vec<_> = amounts
            .iter()
            .enumerate()
            .map(|(i, a)| txn(i, start, *a, "m", false))
            .collect();
        p.metrics.add_all(&evs, true);
        p
    }

    #[test]
    fn sliding_window_sums_the_last_fifteen_panes_of_every_shard() {
        let mut panes = Vec::new();
        for minute in 0..20 {
            panes.push(pane(minute * MINUTE_MS, "s0", &[100]));
            panes.push(pane(minute * MINUTE_MS, "s1", &[10, 10]));
        }
        let rows = sliding_rows(&panes, 15 * MINUTE_MS, 14 * MINUTE_MS, 20 * MINUTE_MS);
        assert_eq!(rows.len(), 6);
        for r in &rows {
            assert_eq!(r.count, 45, "15 panes x 3 events");
            assert_eq!(r.sum["USD"], 15 * 120);
            assert_eq!(r.end_ms - r.start_ms, 15 * MINUTE_MS);
        }
        // Early minutes have fewer panes in their window.
        let early = sliding_rows(&panes, 15 * MINUTE_MS, 0, MINUTE_MS);
        assert_eq!(early[0].count, 3);
    }

    fn progress(max_event_ms: i64) -> Option<ShardProgress> {
        Some(ShardProgress {
            max_event_ms: Some(max_event_ms),
            ..ShardProgress::default()
        })
    }

    #[test]
    fn a_finished_parent_does_not_hold_back_a_window_its_child_has_passed() {
        let lateness = WindowConfig::default().lateness_ms;
        // The window [10 min, 11 min): the parent wrote part of it, then was split; its
        // watermark stopped at its last record (10 min 30 s - lateness), before the end.
        // The child wrote the rest and its watermark is far past the end. Neither stored
        // partial says final (each was last written before its shard's watermark passed).
        let start = 10 * MINUTE_MS;
        let partials = [pane(start, "parent", &[5]), pane(start, "child", &[7])];
        assert!(partials.iter().all(|p| !p.is_final));
        let shards = |parent_closed: bool| {
            vec![
                ShardInfo {
                    id: "parent".into(),
                    parents: vec![],
                    closed: parent_closed,
                    progress: progress(start + 30_000),
                },
                ShardInfo {
                    id: "child".into(),
                    parents: vec!["parent".into()],
                    closed: false,
                    progress: progress(start + 20 * MINUTE_MS),
                },
            ]
        };
        let merged = merge_partials_with(
            &partials,
            &ShardClocks::from_shards(&shards(true), lateness),
        );
        assert_eq!(merged[&start].0.count, 2);
        assert!(
            merged[&start].1,
            "the parent ended and the child passed the end"
        );
        assert_eq!(
            ShardClocks::from_shards(&shards(true), lateness).get("parent"),
            Some(ShardClock::Finished)
        );
        // A parent still open (a stream being read again, or a child started early) is
        // waited for: its watermark has not passed the end.
        let open = merge_partials_with(
            &partials,
            &ShardClocks::from_shards(&shards(false), lateness),
        );
        assert!(!open[&start].1);
        // A closed shard whose children have not started may still have records to
        // process: it is not finished yet.
        let mut unstarted = shards(true);
        unstarted[1].progress = None;
        let merged =
            merge_partials_with(&partials, &ShardClocks::from_shards(&unstarted, lateness));
        assert!(!merged[&start].1);
    }

    #[test]
    fn an_open_shards_current_watermark_makes_its_old_partials_final() {
        let lateness = WindowConfig::default().lateness_ms;
        // The stored flag is written only when the shard touches the window; the shard's
        // progress says where its watermark is now.
        let partials = [pane(0, "s0", &[5]), pane(0, "s1", &[7])];
        let info = |id: &str, max_event_ms: i64| ShardInfo {
            id: id.into(),
            progress: progress(max_event_ms),
            ..ShardInfo::default()
        };
        let clocks = ShardClocks::from_shards(
            &[info("s0", 5 * MINUTE_MS), info("s1", 3 * MINUTE_MS)],
            lateness,
        );
        assert!(merge_partials_with(&partials, &clocks)[&0].1);
        // One shard's watermark (2 min 59 s - 2 min) short of the end holds it back.
        let clocks = ShardClocks::from_shards(
            &[info("s0", 5 * MINUTE_MS), info("s1", 3 * MINUTE_MS - 1000)],
            lateness,
        );
        assert!(!merge_partials_with(&partials, &clocks)[&0].1);
        // A shard the stream no longer lists was trimmed after it closed: finished.
        let clocks = ShardClocks::from_shards(&[info("s0", 5 * MINUTE_MS)], lateness);
        assert!(merge_partials_with(&partials, &clocks)[&0].1);
        // Without any shard information, the stored flags decide, as before.
        assert!(!merge_partials(&partials)[&0].1);
    }

    #[test]
    fn tumbling_rows_merge_shards() {
        let rows = tumbling_rows(&[pane(0, "s0", &[5]), pane(0, "s1", &[7, 9])], MINUTE_MS);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].count, rows[0].min, rows[0].max),
            (3, Some(5), Some(9))
        );
    }
}
