//! Reading windows: merging the per-shard partials of each window, and building the
//! sliding window from 1-minute panes, as readers see them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{MINUTE_MS, Metrics, WindowPartial};

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
    /// True when every shard that wrote it has marked it final.
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

/// Merges partials into one (metrics, final) per window start.
pub fn merge_partials(partials: &[WindowPartial]) -> BTreeMap<i64, (Metrics, bool)> {
    let mut out: BTreeMap<i64, (Metrics, bool)> = BTreeMap::new();
    for p in partials {
        let e = out
            .entry(p.window.start_ms)
            .or_insert_with(|| (Metrics::default(), true));
        e.0.merge(&p.metrics);
        e.1 &= p.is_final;
    }
    out
}

/// Tumbling windows of one width as rows.
pub fn tumbling_rows(partials: &[WindowPartial], width_ms: i64) -> Vec<WindowRow> {
    merge_partials(partials)
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
    let merged = merge_partials(panes);
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
