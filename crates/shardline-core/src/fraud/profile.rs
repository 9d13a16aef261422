//! The per-card profile: everything the fraud features need, bounded in size, plus the
//! replay guard that makes applying a record idempotent.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::event::{AuthResult, Txn};
use crate::seq::RecordPos;
use crate::window::hll::stable_hash;

/// Longest horizon any feature looks back over (1 hour).
pub const HORIZON_MS: i64 = 3_600_000;
/// Recent transactions kept (within [`HORIZON_MS`]).
pub const MAX_RECENT: usize = 64;
/// Known merchants kept (most recent first).
pub const MAX_MERCHANTS: usize = 32;
/// Known countries kept (most recent first).
pub const MAX_COUNTRIES: usize = 16;
/// Event ids kept to drop a producer's duplicate send (same event, new sequence number).
pub const MAX_EVENT_IDS: usize = 32;
/// Shards whose replay guard is kept; the lowest shard ids (closed parents after a
/// reshard, which Lambda finishes before their children) are dropped first.
pub const MAX_GUARDS: usize = 8;

/// A recent transaction, as much of it as the features need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentTxn {
    /// Event time, epoch ms.
    pub t: i64,
    /// Amount, minor units.
    pub amt: i64,
    /// Merchant id.
    pub m: String,
}

/// One card's state. Stored as one DynamoDB item (a few KB at most).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CardProfile {
    /// The card token (the item's key).
    pub card_token: String,
    /// Incremented on every write; the conditional write expects the version it read.
    #[serde(default)]
    pub version: u64,
    /// Replay guard: shard id to the padded position of the last record applied from it.
    #[serde(default)]
    pub applied: BTreeMap<String, String>,
    /// First event time seen, epoch ms.
    #[serde(default)]
    pub first_seen_ms: i64,
    /// Transactions applied.
    #[serde(default)]
    pub txn_count: u64,
    /// Welford running mean of ln(1 + amount).
    #[serde(default)]
    pub amt_mean: f64,
    /// Welford running sum of squared deviations of ln(1 + amount).
    #[serde(default)]
    pub amt_m2: f64,
    /// Transactions within the last hour of event time, oldest first.
    #[serde(default)]
    pub recent: VecDeque<RecentTxn>,
    /// Time of the latest card-present event, epoch ms.
    #[serde(default)]
    pub last_time_ms: Option<i64>,
    /// Latitude of the latest card-present event.
    #[serde(default)]
    pub last_lat: f64,
    /// Longitude of the latest event.
    #[serde(default)]
    pub last_lon: f64,
    /// Merchants seen, most recent first.
    #[serde(default)]
    pub merchants: VecDeque<String>,
    /// Countries seen, most recent first.
    #[serde(default)]
    pub countries: VecDeque<String>,
    /// Consecutive declines up to the latest transaction.
    #[serde(default)]
    pub decline_streak: u32,
    /// Hashes of the latest event ids applied (little-endian u64s of
    /// [`stable_hash`], oldest first, at most [`MAX_EVENT_IDS`]): 8 bytes an event
    /// instead of the id itself, which keeps the item, and its write units, small.
    #[serde(default, with = "serde_bytes")]
    pub recent_ids: Vec<u8>,
}

/// Whether a record changes a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// New: apply it.
    New,
    /// This shard already applied this position (a Kinesis replay).
    Replayed,
    /// The same event id was already applied (a producer's duplicate send).
    DuplicateEvent,
}

impl CardProfile {
    /// An empty profile for a card.
    pub fn new(card_token: impl Into<String>) -> Self {
        Self {
            card_token: card_token.into(),
            ..Self::default()
        }
    }

    /// Decides whether the record at `pos` of `shard` with `event_id` is new to this
    /// profile. Positions are compared in their fixed-width form, so numerically.
    pub fn admit(&self, shard: &str, pos: &RecordPos, event_id: &str) -> Admission {
        if let Some(done) = self.applied.get(shard)
            && pos.cmp_padded(done) != std::cmp::Ordering::Greater
        {
            return Admission::Replayed;
        }
        let h = stable_hash(event_id);
        if self.recent_event_hashes().any(|e| e == h) {
            return Admission::DuplicateEvent;
        }
        Admission::New
    }

    /// Moves the shard's guard to `pos` (also for skipped duplicates, so they stay
    /// skipped cheaply on replay).
    pub fn mark_applied(&mut self, shard: &str, pos: &RecordPos) {
        match self.applied.get_mut(shard) {
            Some(done) => *done = pos.to_padded(),
            None => {
                self.applied.insert(shard.to_owned(), pos.to_padded());
            }
        }
        while self.applied.len() > MAX_GUARDS {
            let lowest = self.applied.keys().next().cloned();
            if let Some(k) = lowest {
                self.applied.remove(&k);
            }
        }
    }

    /// Sample standard deviation of ln(1 + amount), once there are two samples.
    pub fn amt_std(&self) -> Option<f64> {
        (self.txn_count >= 2).then(|| (self.amt_m2 / (self.txn_count - 1) as f64).sqrt())
    }

    /// Folds a transaction into the profile (after it was scored against it).
    pub fn update(&mut self, t: &Txn) {
        if self.txn_count == 0 || t.event_time_ms < self.first_seen_ms {
            self.first_seen_ms = t.event_time_ms;
        }
        self.txn_count += 1;
        let x = (t.amount_minor as f64).ln_1p();
        let delta = x - self.amt_mean;
        self.amt_mean += delta / self.txn_count as f64;
        self.amt_m2 += delta * (x - self.amt_mean);

        let at = self.recent.partition_point(|r| r.t <= t.event_time_ms);
        self.recent.insert(
            at,
            RecentTxn {
                t: t.event_time_ms,
                amt: t.amount_minor,
                m: t.merchant_id.clone(),
            },
        );
        let newest = self.recent.back().map_or(t.event_time_ms, |r| r.t);
        while self
            .recent
            .front()
            .is_some_and(|r| r.t <= newest - HORIZON_MS)
            || self.recent.len() > MAX_RECENT
        {
            self.recent.pop_front();
        }

        // The last *card-present* place and time: where the cardholder was.
        if crate::fraud::features::card_present(t)
            && self.last_time_ms.is_none_or(|last| t.event_time_ms >= last)
        {
            self.last_time_ms = Some(t.event_time_ms);
            self.last_lat = t.location.lat;
            self.last_lon = t.location.lon;
        }
        bump(&mut self.merchants, &t.merchant_id, MAX_MERCHANTS);
        bump(&mut self.countries, &t.location.country, MAX_COUNTRIES);
        self.decline_streak = match t.auth_result {
            AuthResult::Declined => self.decline_streak + 1,
            AuthResult::Approved => 0,
        };
        self.recent_ids
            .extend_from_slice(&stable_hash(&t.event_id).to_le_bytes());
        let keep = 8 * MAX_EVENT_IDS;
        if self.recent_ids.len() > keep {
            self.recent_ids.drain(..self.recent_ids.len() - keep);
        }
    }

    /// Hashes of the latest event ids applied, oldest first.
    pub fn recent_event_hashes(&self) -> impl Iterator<Item = u64> + '_ {
        self.recent_ids
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
    }
}

/// Moves `v` to the front of a bounded most-recent-first list.
fn bump(list: &mut VecDeque<String>, v: &str, cap: usize) {
    // A known value moves (its string is reused); a new one is copied once.
    let entry = match list.iter().position(|x| x == v) {
        Some(i) => list.remove(i).unwrap_or_default(),
        None => v.to_owned(),
    };
    list.push_front(entry);
    list.truncate(cap);
}
