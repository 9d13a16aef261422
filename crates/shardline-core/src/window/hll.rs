//! A small HyperLogLog for distinct cards per window: 2^10 one-byte registers (at most
//! 1 KiB, sparse while few are set; standard error about 3.25 %), mergeable by register-wise max, with a fixed hash so
//! that every process, replay and machine builds the same registers. (The crates we
//! looked at either hash with a per-process random seed or serialise the hasher with the
//! registers; a window item needs neither.)

use serde::{Deserialize, Serialize};

/// log2 of the register count.
pub const PRECISION: u32 = 10;
/// Register count.
pub const REGISTERS: usize = 1 << PRECISION;
/// Relative standard error, 1.04 / sqrt(m).
pub const STD_ERROR: f64 = 0.0325;

/// HyperLogLog registers, stored in one of two forms chosen only by how many registers
/// are set, so that equal registers always have equal bytes:
/// - **sparse** while at most [`SPARSE_MAX`] are set: `(index: u16 big-endian, rank: u8)`
///   triples sorted by index (a window with a handful of cards stores a few bytes, not
///   1 KiB, which keeps most window items within one DynamoDB write unit);
/// - **dense** beyond that: [`REGISTERS`] bytes, one per register.
///
/// Empty until the first item (a window that does not count distinct cards stores
/// nothing). The two lengths cannot be confused: a sparse form is a multiple of 3 bytes
/// below 1,024, the dense form is 1,024.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hll(#[serde(with = "serde_bytes")] Vec<u8>);

/// Registers set before the sparse form turns dense (768 bytes).
pub const SPARSE_MAX: usize = 256;

/// 64-bit FNV-1a followed by the SplitMix64 finaliser: stable across processes and
/// Rust versions, well mixed in the high bits HLL uses.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Hll {
    /// Adds an item.
    pub fn add(&mut self, item: &str) {
        self.add_hash(stable_hash(item));
    }

    /// Adds an item by its [`stable_hash`].
    pub fn add_hash(&mut self, h: u64) {
        let idx = (h >> (64 - PRECISION)) as usize;
        let rest = h << PRECISION;
        let rank = (rest.leading_zeros().min(64 - PRECISION) + 1) as u8;
        self.raise(idx, rank);
    }

    /// Merges another sketch into this one (register-wise max): associative,
    /// commutative, idempotent.
    pub fn merge(&mut self, other: &Hll) {
        for (idx, rank) in other.registers() {
            self.raise(idx, rank);
        }
    }

    /// True when no item was added.
    pub fn is_empty(&self) -> bool {
        self.registers().next().is_none()
    }

    /// Estimated number of distinct items.
    pub fn estimate(&self) -> f64 {
        let (mut set, mut sum) = (0usize, 0f64);
        for (_, r) in self.registers() {
            set += 1;
            sum += 2f64.powi(-i32::from(r));
        }
        if set == 0 {
            return 0.0;
        }
        let m = REGISTERS as f64;
        let zeros = REGISTERS - set;
        sum += zeros as f64; // 2^-0 for every unset register
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln() // linear counting for small cardinalities
        } else {
            raw
        }
    }

    /// The registers that are set, as (index, rank), in index order. Bytes of neither
    /// form (not written by this code) read as no registers.
    fn registers(&self) -> Box<dyn Iterator<Item = (usize, u8)> + '_> {
        match self.form() {
            Form::Dense => Box::new(self.0.iter().copied().enumerate().filter(|(_, r)| *r > 0)),
            Form::Sparse => Box::new(
                self.0
                    .chunks_exact(3)
                    .map(|c| (usize::from(u16::from_be_bytes([c[0], c[1]])), c[2]))
                    .filter(|&(i, r)| i < REGISTERS && r > 0),
            ),
            Form::Invalid => Box::new(std::iter::empty()),
        }
    }

    fn form(&self) -> Form {
        match self.0.len() {
            REGISTERS => Form::Dense,
            n if n % 3 == 0 && n / 3 <= SPARSE_MAX => Form::Sparse,
            _ => Form::Invalid,
        }
    }

    /// Register `idx` becomes at least `rank`.
    fn raise(&mut self, idx: usize, rank: u8) {
        match self.form() {
            Form::Dense => {
                self.0[idx] = self.0[idx].max(rank);
                return;
            }
            Form::Invalid => self.0.clear(),
            Form::Sparse => {}
        }
        let n = self.0.len() / 3;
        let at = partition(n, |k| {
            usize::from(u16::from_be_bytes([self.0[3 * k], self.0[3 * k + 1]])) < idx
        });
        if at < n && usize::from(u16::from_be_bytes([self.0[3 * at], self.0[3 * at + 1]])) == idx {
            self.0[3 * at + 2] = self.0[3 * at + 2].max(rank);
            return;
        }
        if n == SPARSE_MAX {
            let mut dense = vec![0u8; REGISTERS];
            for (i, r) in self.registers() {
                dense[i] = r;
            }
            dense[idx] = rank;
            self.0 = dense;
            return;
        }
        let [hi, lo] = (idx as u16).to_be_bytes();
        self.0.splice(3 * at..3 * at, [hi, lo, rank]);
    }
}

/// Most distinct items counted exactly: up to this many, a window keeps the items'
/// hashes (8 bytes each, at most 384 bytes) and its count is exact; past it, the
/// HyperLogLog.
pub const EXACT_MAX: usize = 48;

/// The distinct items of a small set, exactly: their [`stable_hash`]es, sorted and
/// unique, 8 bytes big-endian each, so equal sets have equal bytes whatever the order
/// they were added or merged in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExactSet(#[serde(with = "serde_bytes")] Vec<u8>);

impl ExactSet {
    /// Items held.
    pub fn len(&self) -> usize {
        self.0.len() / 8
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.len() < 8
    }

    /// The hashes, in order.
    pub fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_be_bytes(b)
        })
    }

    /// Adds a hash (once).
    pub fn insert(&mut self, h: u64) {
        let n = self.len();
        let at = partition(n, |k| self.hash_at(k) < h);
        if at < n && self.hash_at(at) == h {
            return;
        }
        self.0.splice(8 * at..8 * at, h.to_be_bytes());
    }

    fn hash_at(&self, k: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[8 * k..8 * k + 8]);
        u64::from_be_bytes(b)
    }

    /// Empties it.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Distinct items counted exactly up to [`EXACT_MAX`], estimated beyond: a pair of an
/// [`ExactSet`] and a [`Hll`], in exact mode while the sketch is empty. Items past the
/// limit move every hash into the sketch, so the sketch always holds the same registers
/// as if every item had gone straight into it: any split and merge order gives the same
/// bytes. A pair with an empty set and a non-empty sketch (written before the exact
/// mode existed, or past the limit) is a sketch.
#[derive(Debug)]
pub struct Distinct<'a> {
    /// The exact set.
    pub exact: &'a mut ExactSet,
    /// The sketch.
    pub sketch: &'a mut Hll,
}

impl Distinct<'_> {
    fn is_exact(&self) -> bool {
        self.sketch.is_empty()
    }

    fn spill_to_sketch(&mut self) {
        for h in self.exact.hashes() {
            self.sketch.add_hash(h);
        }
        self.exact.clear();
    }

    /// Adds an item.
    pub fn add(&mut self, item: &str) {
        let h = stable_hash(item);
        if self.is_exact() {
            self.exact.insert(h);
            if self.exact.len() > EXACT_MAX {
                self.spill_to_sketch();
            }
        } else {
            self.sketch.add_hash(h);
        }
    }

    /// Merges another pair in.
    pub fn merge(&mut self, exact: &ExactSet, sketch: &Hll) {
        if self.is_exact() && sketch.is_empty() {
            for h in exact.hashes() {
                self.exact.insert(h);
            }
            if self.exact.len() > EXACT_MAX {
                self.spill_to_sketch();
            }
            return;
        }
        self.spill_to_sketch();
        self.sketch.merge(sketch);
        for h in exact.hashes() {
            self.sketch.add_hash(h);
        }
    }
}

/// The count of a pair: exact in exact mode, else the sketch's estimate.
pub fn distinct_count(exact: &ExactSet, sketch: &Hll) -> f64 {
    if sketch.is_empty() {
        exact.len() as f64
    } else {
        sketch.estimate()
    }
}

enum Form {
    Dense,
    Sparse,
    Invalid,
}

/// The first `k` in `0..n` for which `before(k)` is false (`before` holds for a prefix).
pub(crate) fn partition(n: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_within_three_standard_errors() {
        for n in [10usize, 1_000, 50_000] {
            let mut h = Hll::default();
            for i in 0..n {
                h.add(&format!("tok_{i}"));
                h.add(&format!("tok_{i}")); // duplicates do not count
            }
            let err = (h.estimate() - n as f64).abs() / n as f64;
            assert!(err < 3.0 * STD_ERROR, "n={n} err={err}");
        }
    }

    #[test]
    fn merge_equals_union() {
        let (mut a, mut b, mut all) = (Hll::default(), Hll::default(), Hll::default());
        assert_eq!(a.estimate(), 0.0);
        for i in 0..3_000 {
            let k = format!("c{i}");
            if i % 2 == 0 {
                a.add(&k)
            } else {
                b.add(&k)
            }
            all.add(&k);
        }
        a.merge(&b);
        assert_eq!(a, all);
    }

    #[test]
    fn a_few_cards_take_a_few_bytes() {
        let mut h = Hll::default();
        for c in ["tok_a", "tok_b", "tok_c", "tok_a"] {
            h.add(c);
        }
        assert_eq!(h.0.len(), 9);
        assert!((h.estimate() - 3.0).abs() < 0.1);
    }

    #[test]
    fn the_dense_form_written_before_the_sparse_one_still_reads_and_merges() {
        let mut sparse = Hll::default();
        let mut dense = Hll(vec![0; REGISTERS]);
        for i in 0..40 {
            sparse.add(&format!("c{i}"));
            dense.add(&format!("c{i}"));
        }
        assert_eq!(dense.0.len(), REGISTERS);
        assert_eq!(sparse.estimate(), dense.estimate());
        let mut merged = Hll::default();
        merged.merge(&dense);
        assert_eq!(merged, sparse);
    }

    /// Two cards whose hashes share a register: the sketch reads 2 for 3 cards, the
    /// exact mode 3.
    #[test]
    fn three_cards_read_three_even_when_two_share_a_register() {
        let idx = |s: &str| stable_hash(s) >> (64 - PRECISION);
        let first = "tok_0".to_owned();
        let twin = (1..100_000)
            .map(|i| format!("tok_{i}"))
            .find(|t| idx(t) == idx(&first))
            .unwrap();
        let third = (1..100_000)
            .map(|i| format!("tok_{i}"))
            .find(|t| idx(t) != idx(&first))
            .unwrap();
        let mut sketch_only = Hll::default();
        let (mut exact, mut sketch) = (ExactSet::default(), Hll::default());
        for t in [&first, &twin, &third] {
            sketch_only.add(t);
            Distinct {
                exact: &mut exact,
                sketch: &mut sketch,
            }
            .add(t);
        }
        assert!(sketch_only.estimate() < 2.5, "the sketch alone undercounts");
        assert_eq!(distinct_count(&exact, &sketch), 3.0);
        assert!(sketch.is_empty());
        assert_eq!(exact.len(), 3);
    }

    /// Past the limit the pair is the sketch every item would have built; at the
    /// limit it is exact.
    #[test]
    fn exact_up_to_the_limit_then_the_sketch() {
        let (mut exact, mut sketch) = (ExactSet::default(), Hll::default());
        let mut whole = Hll::default();
        for i in 0..=EXACT_MAX {
            let t = format!("c{i}");
            let mut d = Distinct {
                exact: &mut exact,
                sketch: &mut sketch,
            };
            d.add(&t);
            d.add(&t);
            whole.add(&t);
            if i < EXACT_MAX {
                assert_eq!(distinct_count(&exact, &sketch), (i + 1) as f64);
            }
        }
        assert!(exact.is_empty());
        assert_eq!(sketch, whole);
    }

    proptest::proptest! {
        /// Any split of the items in two, merged either way, gives the bytes of the
        /// whole: exact while the union is small, the whole's sketch past it.
        #[test]
        fn exact_pairs_merge_canonically(
            cards in proptest::collection::vec(0u32..200, 0..120),
            cut in 0usize..120,
        ) {
            let cut = cut.min(cards.len());
            let build = |items: &[u32]| {
                let (mut e, mut s) = (ExactSet::default(), Hll::default());
                for c in items {
                    Distinct { exact: &mut e, sketch: &mut s }.add(&format!("c{c}"));
                }
                (e, s)
            };
            let whole = build(&cards);
            let (a, b) = (build(&cards[..cut]), build(&cards[cut..]));
            let (mut ab, mut ba) = (a.clone(), b.clone());
            Distinct { exact: &mut ab.0, sketch: &mut ab.1 }.merge(&b.0, &b.1);
            Distinct { exact: &mut ba.0, sketch: &mut ba.1 }.merge(&a.0, &a.1);
            proptest::prop_assert_eq!(&ab, &whole);
            proptest::prop_assert_eq!(&ba, &whole);
            let distinct = cards.iter().collect::<std::collections::BTreeSet<_>>().len();
            if distinct <= EXACT_MAX {
                proptest::prop_assert_eq!(distinct_count(&whole.0, &whole.1), distinct as f64);
            }
        }

        #[test]
        fn any_split_and_order_gives_the_same_bytes(
            cards in proptest::collection::vec(0u32..5_000, 0..1_500),
            cut in 0usize..1_500,
        ) {
            let cut = cut.min(cards.len());
            let mut whole = Hll::default();
            for c in &cards {
                whole.add(&format!("c{c}"));
            }
            let (mut a, mut b) = (Hll::default(), Hll::default());
            for c in cards[..cut].iter().rev() {
                a.add(&format!("c{c}"));
            }
            for c in &cards[cut..] {
                b.add(&format!("c{c}"));
            }
            let mut ba = b.clone();
            a.merge(&b);
            ba.merge(&a);
            proptest::prop_assert_eq!(&a, &whole);
            proptest::prop_assert_eq!(&ba, &whole);
            let set = whole.registers().count();
            proptest::prop_assert_eq!(whole.0.len(), if set > SPARSE_MAX { REGISTERS } else { 3 * set });
        }
    }
}
