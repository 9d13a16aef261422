//! The per-card profile: everything the fraud features need, bounded in size, plus the
//! replay guard that makes applying a record idempotent.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::event::{AuthResult, Txn};
use crate::seq::RecordPos;
use crate::window::hll::{partition, stable_hash};

/// Longest horizon any feature looks back over (1 hour).
pub const HORIZON_MS: i64 = 3_600_000;
/// Recent transactions kept (within [`HORIZON_MS`]).
pub const MAX_RECENT: usize = 64;
/// Known merchants kept (most recent first).
pub const MAX_MERCHANTS: usize = 32;
/// Known countries kept (most recent first).
pub const MAX_COUNTRIES: usize = 16;
/// How long, in the card's event time, a card remembers an event id to drop a
/// producer's re-send (same event, new sequence number, maybe another shard after a
/// reshard). A day: a re-send comes after the card's later events more often than
/// within minutes of the original (a producer retrying a batch whose answer it lost, after
/// the next batches went through), and the count bound [`MAX_SEEN_IDS`] keeps the memory
/// of a busy card at 2 KiB while a typical card holds a few ids.
pub const DEDUPE_HORIZON_MS: i64 = 24 * 3_600_000;
/// Event ids remembered at most, whatever the horizon: a card with more events than this
/// within [`DEDUPE_HORIZON_MS`] remembers its latest ones only (16 bytes each, so the
/// memory never passes 2 KiB).
pub const MAX_SEEN_IDS: usize = 128;
/// Replay guards kept at least, one per (shard, lane) the card's records came from. More
/// are kept while Lambda may still replay their records: a guard is dropped only once its
/// last record arrived [`REPLAY_HORIZON_MS`] before the card's latest (Lambda stops
/// delivering a record after MaximumRecordAgeInSeconds, 3,600 in the template), or past
/// [`MAX_GUARDS_HARD`], the item-size bound.
pub const MAX_GUARDS: usize = 8;
/// Guards kept at most, whatever their age (about 200 bytes each).
pub const MAX_GUARDS_HARD: usize = 48;
/// How long after a record's arrival a replay of it can still come: the template's
/// MaximumRecordAgeInSeconds (one hour), doubled.
pub const REPLAY_HORIZON_MS: i64 = 2 * 3_600_000;
/// Bytes of one remembered event id: its stable hash and the card clock when applied.
const SEEN_ENTRY: usize = 16;

/// A replay guard: the last position applied from one (shard, lane) of a card.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "GuardRepr")]
pub struct Guard {
    /// Padded position (see [`RecordPos::to_padded`]) of the last record applied.
    pub pos: String,
    /// The card's clock when the guard last moved.
    #[serde(default)]
    pub clock_ms: i64,
    /// Arrival time of the last record applied under it (for eviction), epoch ms.
    #[serde(default)]
    pub arrival_ms: i64,
}

/// A guard as stored: a map, or (profiles written before guards were per lane) the
/// padded position alone.
#[derive(Deserialize)]
#[serde(untagged)]
enum GuardRepr {
    Pos(String),
    Full {
        pos: String,
        #[serde(default)]
        clock_ms: i64,
        #[serde(default)]
        arrival_ms: i64,
    },
}

impl From<GuardRepr> for Guard {
    fn from(r: GuardRepr) -> Self {
        match r {
            GuardRepr::Pos(pos) => Guard {
                pos,
                ..Guard::default()
            },
            GuardRepr::Full {
                pos,
                clock_ms,
                arrival_ms,
            } => Guard {
                pos,
                clock_ms,
                arrival_ms,
            },
        }
    }
}

/// A recent transaction, as much of it as the features need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentTxn {
    /// Event time, epoch ms.
    pub t: i64,
    /// Amount, minor units.
    pub amt: i64,
    /// Merchant id.
    pub m: String,
    /// Country (ISO 3166 alpha-2); empty in profiles written before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub c: String,
}

/// One card's state. Stored as one DynamoDB item (a few KB at most).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CardProfile {
    /// The card token (the item's key).
    pub card_token: String,
    /// Incremented on every write; the conditional write expects the version it read.
    #[serde(default)]
    pub version: u64,
    /// Replay guards, by [`guard_name`]: the last position applied from each (shard,
    /// lane). Records of one lane arrive in order, so a position at or below its guard
    /// is a replay; lanes of one shard may commit in any order, so each has its own.
    #[serde(default)]
    pub applied: BTreeMap<String, Guard>,
    /// The card's clock: the latest event time applied, epoch ms. Event-id memory is
    /// kept for [`DEDUPE_HORIZON_MS`] of it.
    #[serde(default)]
    pub clock_ms: i64,
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
    /// Event ids applied within the last [`DEDUPE_HORIZON_MS`] of the card's clock (at
    /// most [`MAX_SEEN_IDS`]), oldest first: 16 bytes each, the little-endian u64
    /// [`stable_hash`] of the id and the little-endian i64 card clock when it was
    /// applied. A hash instead of the id keeps the item, and its write units, small.
    #[serde(default, with = "serde_bytes")]
    pub seen_ids: Vec<u8>,
    /// Largest amount applied, minor units.
    #[serde(default)]
    pub max_amt: i64,
    /// Whether the latest transaction applied was card present (`pos`, `atm`).
    #[serde(default)]
    pub last_cp: Option<bool>,
    /// The last [`DAY_HOURS`] clock hours of event time with transactions, oldest
    /// first, [`HOUR_ENTRY`] bytes each: the hour (epoch hours, i32), transactions
    /// (u16), declines (u16), amount (i64), little-endian. At most 384 bytes.
    #[serde(default, with = "serde_bytes")]
    pub hours: Vec<u8>,
}

/// Clock hours the day buckets keep.
pub const DAY_HOURS: i64 = 24;
/// Bytes of one hour bucket.
pub const HOUR_ENTRY: usize = 16;

/// One clock hour of a card's day: transactions, declines and amount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HourBucket {
    /// Epoch hour (event time / 1 h).
    pub hour: i64,
    /// Transactions.
    pub count: u32,
    /// Declined transactions.
    pub declined: u32,
    /// Amount, minor units.
    pub sum: i64,
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

    /// Decides whether the record at `pos` under replay guard `guard` (see
    /// [`guard_name`]) with `event_id` is new to this profile. Positions are compared in
    /// their fixed-width form, so numerically.
    pub fn admit(&self, guard: &str, pos: &RecordPos, event_id: &str) -> Admission {
        if let Some(done) = self.applied.get(guard)
            && pos.cmp_padded(&done.pos) != std::cmp::Ordering::Greater
        {
            return Admission::Replayed;
        }
        let h = stable_hash(event_id);
        if self.seen_event_hashes().any(|e| e == h) {
            return Admission::DuplicateEvent;
        }
        Admission::New
    }

    /// Moves guard `guard` to `pos`, a record that arrived at `arrival_ms` (also for
    /// skipped duplicates, so they stay skipped cheaply on replay). Past [`MAX_GUARDS`],
    /// drops guards whose records Lambda can no longer replay (arrived
    /// [`REPLAY_HORIZON_MS`] before the newest), oldest first; past [`MAX_GUARDS_HARD`],
    /// the oldest whatever its age.
    pub fn mark_applied(&mut self, guard: &str, pos: &RecordPos, arrival_ms: i64) {
        let clock_ms = self.clock_ms;
        match self.applied.get_mut(guard) {
            Some(done) => {
                done.pos = pos.to_padded();
                done.clock_ms = clock_ms;
                done.arrival_ms = done.arrival_ms.max(arrival_ms);
            }
            None => {
                self.applied.insert(
                    guard.to_owned(),
                    Guard {
                        pos: pos.to_padded(),
                        clock_ms,
                        arrival_ms,
                    },
                );
            }
        }
        let newest = self
            .applied
            .values()
            .map(|g| g.arrival_ms)
            .max()
            .unwrap_or_default();
        while self.applied.len() > MAX_GUARDS {
            let (oldest, arrived) = match self
                .applied
                .iter()
                .min_by_key(|(k, g)| (g.arrival_ms, g.clock_ms, *k))
            {
                Some((k, g)) => (k.clone(), g.arrival_ms),
                None => break,
            };
            let replayable = arrived > newest.saturating_sub(REPLAY_HORIZON_MS);
            if replayable && self.applied.len() <= MAX_GUARDS_HARD {
                break;
            }
            self.applied.remove(&oldest);
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
                c: t.location.country.clone(),
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
        self.max_amt = self.max_amt.max(t.amount_minor);
        // The channel of the latest transaction by event time (an older one arriving
        // late does not change what the next one follows).
        if t.event_time_ms >= self.clock_ms {
            self.last_cp = Some(crate::fraud::features::card_present(t));
        }
        self.add_to_hour(t);
        bump(&mut self.merchants, &t.merchant_id, MAX_MERCHANTS);
        bump(&mut self.countries, &t.location.country, MAX_COUNTRIES);
        self.decline_streak = match t.auth_result {
            AuthResult::Declined => self.decline_streak + 1,
            AuthResult::Approved => 0,
        };
        self.clock_ms = self.clock_ms.max(t.event_time_ms);
        self.remember(stable_hash(&t.event_id));
    }

    /// The hour buckets, oldest first.
    pub fn hour_buckets(&self) -> impl Iterator<Item = HourBucket> + '_ {
        self.hours.chunks_exact(HOUR_ENTRY).map(|c| {
            let hour = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let u16_at = |i: usize| u16::from_le_bytes([c[i], c[i + 1]]);
            let mut sum = [0u8; 8];
            sum.copy_from_slice(&c[8..16]);
            HourBucket {
                hour: i64::from(hour),
                count: u32::from(u16_at(4)),
                declined: u32::from(u16_at(6)),
                sum: i64::from_le_bytes(sum),
            }
        })
    }

    /// Counts a transaction in its clock hour, keeping the [`DAY_HOURS`] hours up to the
    /// latest (an event older than that is in no bucket). Counts saturate at u16. Edits
    /// the bytes in place: no allocation once the buckets have their room.
    fn add_to_hour(&mut self, t: &Txn) {
        let hour = t.event_time_ms.div_euclid(3_600_000);
        let h = &mut self.hours;
        let hour_at = |h: &[u8], k: usize| {
            let o = k * HOUR_ENTRY;
            i64::from(i32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]))
        };
        let n = h.len() / HOUR_ENTRY;
        let latest = if n > 0 {
            hour_at(h, n - 1).max(hour)
        } else {
            hour
        };
        if hour <= latest - DAY_HOURS {
            return;
        }
        let declined = u16::from(t.auth_result == AuthResult::Declined);
        let at = partition(n, |k| hour_at(h, k) < hour);
        if at < n && hour_at(h, at) == hour {
            let o = at * HOUR_ENTRY;
            let u16_at = |h: &[u8], i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
            let count = u16_at(h, o + 4).saturating_add(1);
            let decl = u16_at(h, o + 6).saturating_add(declined);
            let mut sum = [0u8; 8];
            sum.copy_from_slice(&h[o + 8..o + 16]);
            let sum = i64::from_le_bytes(sum).saturating_add(t.amount_minor);
            h[o + 4..o + 6].copy_from_slice(&count.to_le_bytes());
            h[o + 6..o + 8].copy_from_slice(&decl.to_le_bytes());
            h[o + 8..o + 16].copy_from_slice(&sum.to_le_bytes());
        } else {
            // Epoch hours fit an i32 for 245,000 years either side of 1970.
            let mut entry = [0u8; HOUR_ENTRY];
            entry[..4].copy_from_slice(&i32::try_from(hour).unwrap_or(i32::MIN).to_le_bytes());
            entry[4..6].copy_from_slice(&1u16.to_le_bytes());
            entry[6..8].copy_from_slice(&declined.to_le_bytes());
            entry[8..].copy_from_slice(&t.amount_minor.to_le_bytes());
            let o = at * HOUR_ENTRY;
            h.splice(o..o, entry);
        }
        let n = h.len() / HOUR_ENTRY;
        let old = partition(n, |k| hour_at(h, k) <= latest - DAY_HOURS);
        h.drain(..old * HOUR_ENTRY);
    }

    /// Remembers an applied event id at the card's clock, forgetting ids older than the
    /// horizon and the oldest past [`MAX_SEEN_IDS`].
    fn remember(&mut self, hash: u64) {
        self.seen_ids.extend_from_slice(&hash.to_le_bytes());
        self.seen_ids
            .extend_from_slice(&self.clock_ms.to_le_bytes());
        let horizon = self.clock_ms.saturating_sub(DEDUPE_HORIZON_MS);
        let expired = self
            .seen_entries()
            .take_while(|&(_, at)| at < horizon)
            .count();
        let over = (self.seen_ids.len() / SEEN_ENTRY).saturating_sub(MAX_SEEN_IDS);
        let drop = expired.max(over) * SEEN_ENTRY;
        if drop > 0 {
            self.seen_ids.drain(..drop);
        }
    }

    /// Remembered (event id hash, card clock when applied), oldest first.
    fn seen_entries(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.seen_ids.chunks_exact(SEEN_ENTRY).map(|c| {
            let (h, t) = c.split_at(8);
            let mut hb = [0u8; 8];
            let mut tb = [0u8; 8];
            hb.copy_from_slice(h);
            tb.copy_from_slice(t);
            (u64::from_le_bytes(hb), i64::from_le_bytes(tb))
        })
    }

    /// Hashes of the event ids remembered, oldest first.
    pub fn seen_event_hashes(&self) -> impl Iterator<Item = u64> + '_ {
        self.seen_entries().map(|(h, _)| h)
    }
}

/// The replay guard a record is checked against: its shard when it arrives under the
/// card's own partition key (one guard per shard, as ordered delivery allows), else
/// its shard and a hash of the lane key. Under ParallelizationFactor > 1 Lambda orders
/// records only per Kinesis partition key, so records of one card that came under
/// other keys (a KPL aggregate keyed by another card, a producer keying by terminal)
/// may commit before earlier ones: each such lane keeps its own guard, and none skips
/// another's records.
pub fn guard_name<'a>(shard: &'a str, lane_key: &str, card: &str) -> std::borrow::Cow<'a, str> {
    if lane_key == card {
        std::borrow::Cow::Borrowed(shard)
    } else {
        std::borrow::Cow::Owned(format!("{shard}/{:016x}", stable_hash(lane_key)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Profiles stored before guards were per lane hold each guard as a padded position
    /// string: they still read (an unreadable profile would fail every batch of its card).
    #[test]
    fn a_profile_stored_with_position_string_guards_still_reads() {
        let old = r#"{"card_token":"tok","version":3,"applied":{"shardId-000000000001":"0000000049590"},"txn_count":2,"recent_ids":[1,2,3,4,5,6,7,8]}"#;
        let p: CardProfile = serde_json::from_str(old).unwrap();
        assert_eq!(p.applied["shardId-000000000001"].pos, "0000000049590");
        assert_eq!(p.txn_count, 2);
    }
}
