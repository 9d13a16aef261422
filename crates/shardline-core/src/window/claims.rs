//! Event-id claims: which record first applied an event, so that a producer's re-send
//! (the same event under a new sequence number, seconds to hours later, maybe on a child
//! shard after a reshard) is counted once, in both aggregator modes.
//!
//! A claim is (hash of the event id, hash of the claiming record's position). Claims
//! live in items per (shard, minute of event time, chunk): a re-send carries the
//! original's event time, so it finds the original's claim in the one item its own event
//! time names, however late it comes, for as long as that item is kept
//! ([`CLAIM_RETENTION_MS`]). A record whose id is claimed by *its own* position is a
//! replay of itself (a retried batch), not a duplicate. The event-time aggregator writes
//! the claims of the records whose effects are durable, after those effects and before
//! the shard's progress moves past them: a record whose batch is given up leaves no claim,
//! so its re-send still counts. (Lambda's tumbling mode writes them before it returns the
//! state that holds the effects; see RELIABILITY.md.)
//!
//! Each shard writes only its own claim items (the aggregator's mapping has
//! ParallelizationFactor 1, so one writer per shard) and reads its ancestors' after a
//! reshard: Lambda finishes a parent shard before its children start, so a child sees
//! every claim its parents made.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::seq::RecordPos;
use crate::window::hll::stable_hash;

/// Event time one claim item covers.
pub const CLAIM_SLICE_MS: i64 = 60_000;
/// Items per (shard, slice), chosen by the event id's hash: spreads a busy minute so that
/// no item nears DynamoDB's 400 KB.
pub const CLAIM_CHUNKS: u64 = 4;
/// Claims one item holds at most (16 bytes each: 320 KB). With [`CLAIM_CHUNKS`] a shard
/// can claim 80,000 events per minute of event time (1,333 a second; a shard takes at most
/// 1,000 records a second unless a KPL aggregates several); past that, records are still
/// applied but their re-sends are not recognised (counted as overflow).
pub const MAX_CLAIMS_PER_ITEM: usize = 20_000;
/// How long claims are kept past their minute, or past the arrival of the batch that
/// wrote them if that is later (an event may arrive weeks after its event time).
pub const CLAIM_RETENTION_MS: i64 = 24 * 60 * 60_000;
/// A child shard reads its ancestors' claims for slices up to this long after its first
/// record's arrival: its parents' records all arrived before that, and an event time
/// more than 5 minutes past its arrival is poison, so no ancestor claimed a later slice.
pub const ANCESTOR_HORIZON_MS: i64 = 10 * 60_000;
/// Ancestors (parents, grandparents, ...) whose claims a shard reads, nearest first.
pub const MAX_ANCESTORS: usize = 6;
/// Bytes of one claim.
const CLAIM_BYTES: usize = 16;

/// The key of a claim item: the shard that wrote it, the slice's start, the chunk.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimKey {
    /// The writing shard.
    pub shard: String,
    /// Start of the slice of event time, epoch ms (a multiple of [`CLAIM_SLICE_MS`]).
    pub slice_ms: i64,
    /// Chunk, `0..CLAIM_CHUNKS`.
    pub chunk: u8,
}

impl ClaimKey {
    /// The item's partition key in the windows table.
    pub fn pk(&self) -> String {
        format!("claims#{}", self.shard)
    }

    /// The item's sort key in the windows table.
    pub fn sk(&self) -> String {
        format!("{:013}#{}", self.slice_ms, self.chunk)
    }
}

/// One claim item as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimItem {
    /// `claims#<shard>`.
    pub pk: String,
    /// `<slice start, 13 digits>#<chunk>`.
    pub sk: String,
    /// Claims, 16 bytes each: the little-endian u64 hash of the event id, then the
    /// little-endian u64 hash of the claiming record's position; in claiming order.
    #[serde(with = "serde_bytes", default)]
    pub claims: Vec<u8>,
    /// DynamoDB TTL, epoch seconds.
    pub expires_at: i64,
}

impl ClaimItem {
    /// An empty item for a key, written by a batch that arrived up to `now_ms`.
    pub fn new(key: &ClaimKey, now_ms: i64) -> Self {
        Self {
            pk: key.pk(),
            sk: key.sk(),
            claims: Vec::new(),
            expires_at: expiry(key, now_ms),
        }
    }

    /// The claims, as (event id hash, position hash).
    pub fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.claims.chunks_exact(CLAIM_BYTES).map(|c| {
            let (a, b) = c.split_at(8);
            let mut x = [0u8; 8];
            let mut y = [0u8; 8];
            x.copy_from_slice(a);
            y.copy_from_slice(b);
            (u64::from_le_bytes(x), u64::from_le_bytes(y))
        })
    }

    fn len(&self) -> usize {
        self.claims.len() / CLAIM_BYTES
    }
}

/// The TTL of a claim item of `key` written at `now_ms`: its minute's end or the write,
/// whichever is later, plus the retention.
fn expiry(key: &ClaimKey, now_ms: i64) -> i64 {
    ((key.slice_ms + CLAIM_SLICE_MS).max(now_ms) + CLAIM_RETENTION_MS) / 1000
}

/// A shard's ancestry for claims: the shards whose claims it reads, and since when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// Ancestors, nearest first, at most [`MAX_ANCESTORS`].
    pub ancestors: Vec<String>,
    /// The arrival time of the shard's first records (their event time when the records
    /// carry no arrival): ancestors are read for slices up to [`ANCESTOR_HORIZON_MS`]
    /// after it.
    pub since_ms: i64,
}

impl Lineage {
    /// Whether the ancestors' claims matter for a slice.
    pub fn covers(&self, slice_ms: i64) -> bool {
        !self.ancestors.is_empty() && slice_ms <= self.since_ms.saturating_add(ANCESTOR_HORIZON_MS)
    }
}

/// The hash a claim stores for a record's position (sequence and sub-sequence number).
pub fn pos_hash(pos: &RecordPos) -> u64 {
    stable_hash(pos.seq.as_str()) ^ u64::from(pos.sub).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The claim key of an event of `shard` with event time `t_ms` and id hash `id_hash`.
pub fn key_for(shard: &str, t_ms: i64, id_hash: u64) -> ClaimKey {
    ClaimKey {
        shard: shard.to_owned(),
        slice_ms: t_ms.div_euclid(CLAIM_SLICE_MS) * CLAIM_SLICE_MS,
        chunk: u8::try_from(id_hash % CLAIM_CHUNKS).unwrap_or(0),
    }
}

/// Every claim key a batch must read: for each (event time, id hash), the shard's own
/// item and, where the lineage covers the slice, each ancestor's.
pub fn keys_to_read(
    shard: &str,
    lineage: &Lineage,
    events: impl IntoIterator<Item = (i64, u64)>,
) -> Vec<ClaimKey> {
    let mut keys: Vec<ClaimKey> = Vec::new();
    for (t, h) in events {
        let own = key_for(shard, t, h);
        if lineage.covers(own.slice_ms) {
            for a in &lineage.ancestors {
                keys.push(ClaimKey {
                    shard: a.clone(),
                    ..own.clone()
                });
            }
        }
        keys.push(own);
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// What the claims say of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody claimed the event: this record claims it now.
    New,
    /// This record claimed it before (a replay of itself).
    Own,
    /// Another record claimed it: a producer's duplicate.
    Duplicate,
}

/// The claims a batch read, and the claims it adds, in memory.
#[derive(Debug, Default)]
pub struct ClaimBook {
    shard: String,
    now_ms: i64,
    /// (slice, id hash) to the claiming position's hash.
    known: HashMap<(i64, u64), u64>,
    /// The shard's own items as read, by key.
    own: BTreeMap<ClaimKey, ClaimItem>,
    /// Claims made by this batch: key, id hash, position hash, the record's index.
    pending: Vec<(ClaimKey, u64, u64, usize)>,
    /// Claims per own key, stored and pending (to keep items under the cap).
    sizes: HashMap<ClaimKey, usize>,
    /// Claims not stored because their item was full.
    pub overflow: usize,
}

impl ClaimBook {
    /// A book over the items read for `shard` (its own and its ancestors'), for a batch
    /// whose records arrived up to `now_ms`.
    pub fn new(
        shard: &str,
        read: impl IntoIterator<Item = (ClaimKey, ClaimItem)>,
        now_ms: i64,
    ) -> Self {
        let mut book = Self {
            shard: shard.to_owned(),
            now_ms,
            ..Self::default()
        };
        for (key, item) in read {
            for (id, pos) in item.entries() {
                book.known.entry((key.slice_ms, id)).or_insert(pos);
            }
            if key.shard == shard {
                book.sizes.insert(key.clone(), item.len());
                book.own.insert(key, item);
            }
        }
        book
    }

    /// Checks record `index` of the batch, at `pos` with event time `t_ms` and event id
    /// hash `id_hash`, claiming the event when nobody has.
    pub fn check(&mut self, t_ms: i64, id_hash: u64, pos: &RecordPos, index: usize) -> Verdict {
        let key = key_for(&self.shard, t_ms, id_hash);
        let mine = pos_hash(pos);
        match self.known.get(&(key.slice_ms, id_hash)) {
            Some(&owner) if owner == mine => return Verdict::Own,
            Some(_) => return Verdict::Duplicate,
            None => {}
        }
        self.known.insert((key.slice_ms, id_hash), mine);
        let size = self.sizes.entry(key.clone()).or_default();
        if *size >= MAX_CLAIMS_PER_ITEM {
            self.overflow += 1;
            return Verdict::New;
        }
        *size += 1;
        self.pending.push((key, id_hash, mine, index));
        Verdict::New
    }

    /// The own items with the claims of records before `upto` (the records whose effects
    /// are durable), to be written before the shard's progress moves past them.
    pub fn dirty_items(&self, upto: usize) -> Vec<ClaimItem> {
        let mut out: BTreeMap<&ClaimKey, ClaimItem> = BTreeMap::new();
        for (key, id, pos, _) in self.pending.iter().filter(|c| c.3 < upto) {
            let item = out.entry(key).or_insert_with(|| {
                let mut item = self
                    .own
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| ClaimItem::new(key, self.now_ms));
                item.expires_at = item.expires_at.max(expiry(key, self.now_ms));
                item
            });
            item.claims.extend_from_slice(&id.to_le_bytes());
            item.claims.extend_from_slice(&pos.to_le_bytes());
        }
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq::SeqNo;

    fn pos(n: u64) -> RecordPos {
        RecordPos::plain(SeqNo::parse(&format!("4959{n:040}")).unwrap())
    }

    const T: i64 = 1_795_000_000_000;

    #[test]
    fn a_record_is_new_then_its_own_replay_then_a_resend_is_a_duplicate() {
        let mut book = ClaimBook::new("shard-0", [], T);
        assert_eq!(book.check(T, 7, &pos(1), 0), Verdict::New);
        assert_eq!(book.check(T, 7, &pos(1), 0), Verdict::Own);
        assert_eq!(book.check(T, 7, &pos(9), 0), Verdict::Duplicate);
        // The same id at another minute is another event.
        assert_eq!(book.check(T + CLAIM_SLICE_MS, 7, &pos(10), 0), Verdict::New);
        let items = book.dirty_items(usize::MAX);
        assert_eq!(items.len(), 2);
        // Stored and read back (a later batch): same verdicts.
        let read: Vec<(ClaimKey, ClaimItem)> = items
            .into_iter()
            .map(|i| {
                let slice: i64 = i.sk[..13].parse().unwrap();
                let chunk: u8 = i.sk[14..].parse().unwrap();
                (
                    ClaimKey {
                        shard: "shard-0".into(),
                        slice_ms: slice,
                        chunk,
                    },
                    i,
                )
            })
            .collect();
        let mut later = ClaimBook::new("shard-0", read, T);
        assert_eq!(later.check(T, 7, &pos(1), 0), Verdict::Own);
        assert_eq!(later.check(T, 7, &pos(30), 0), Verdict::Duplicate);
        assert!(
            later.dirty_items(usize::MAX).is_empty(),
            "nothing new to write"
        );
    }

    #[test]
    fn a_child_sees_its_parents_claims_and_writes_only_its_own() {
        let mut parent = ClaimBook::new("shardId-0", [], T);
        assert_eq!(parent.check(T, 42, &pos(1), 0), Verdict::New);
        let key = key_for("shardId-0", T, 42);
        let parent_item = parent.dirty_items(usize::MAX).remove(0);
        let mut child = ClaimBook::new("shardId-1", [(key, parent_item)], T);
        assert_eq!(child.check(T, 42, &pos(5), 0), Verdict::Duplicate);
        assert_eq!(child.check(T, 43, &pos(6), 0), Verdict::New);
        let written = child.dirty_items(usize::MAX);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].pk, "claims#shardId-1");
    }

    #[test]
    fn ancestors_are_read_only_early_in_a_childs_life() {
        let lineage = Lineage {
            ancestors: vec!["p0".into(), "p1".into()],
            since_ms: T,
        };
        let early = keys_to_read("c", &lineage, [(T + 5_000, 1)]);
        assert_eq!(early.len(), 3, "own item and both parents'");
        let late = keys_to_read(
            "c",
            &lineage,
            [(T + ANCESTOR_HORIZON_MS + CLAIM_SLICE_MS, 1)],
        );
        assert_eq!(late.len(), 1);
        let none = keys_to_read("c", &Lineage::default(), [(T, 1), (T + 1, 1)]);
        assert_eq!(none.len(), 1, "one key per slice and chunk");
    }

    #[test]
    fn a_full_item_takes_no_more_claims_and_counts_the_overflow() {
        let mut book = ClaimBook::new("s", [], T);
        // Every id in one chunk: multiples of CLAIM_CHUNKS.
        for i in 0..=MAX_CLAIMS_PER_ITEM as u64 {
            assert_eq!(book.check(T, i * CLAIM_CHUNKS, &pos(i), 0), Verdict::New);
        }
        assert_eq!(book.overflow, 1);
        let items = book.dirty_items(usize::MAX);
        assert_eq!(items[0].claims.len(), MAX_CLAIMS_PER_ITEM * CLAIM_BYTES);
        assert!(
            items[0].claims.len() < 400_000 - 1_000,
            "under DynamoDB's item limit"
        );
    }

    #[test]
    fn positions_hash_apart_by_sub_sequence_number() {
        let a = RecordPos {
            seq: SeqNo::parse("49590").unwrap(),
            sub: 0,
        };
        let b = RecordPos {
            sub: 1,
            ..a.clone()
        };
        assert_ne!(pos_hash(&a), pos_hash(&b));
    }

    #[test]
    fn only_the_claims_of_durable_records_are_written() {
        let mut book = ClaimBook::new("s", [], T);
        assert_eq!(book.check(T, 1, &pos(1), 0), Verdict::New);
        assert_eq!(book.check(T, 2, &pos(2), 1), Verdict::New);
        assert_eq!(book.check(T, 3, &pos(3), 2), Verdict::New);
        let claimed =
            |items: Vec<ClaimItem>| -> usize { items.iter().map(|i| i.entries().count()).sum() };
        assert_eq!(
            claimed(book.dirty_items(1)),
            1,
            "record 1 failed: no claim from it on"
        );
        assert_eq!(claimed(book.dirty_items(usize::MAX)), 3);
        assert!(
            book.dirty_items(usize::MAX)
                .iter()
                .all(|i| i.expires_at * 1000 >= T + CLAIM_RETENTION_MS)
        );
    }
}
