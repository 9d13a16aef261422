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
        let h = stable_hash(item);
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

enum Form {
    Dense,
    Sparse,
    Invalid,
}

/// The first `k` in `0..n` for which `before(k)` is false (`before` holds for a prefix).
fn partition(n: usize, before: impl Fn(usize) -> bool) -> usize {
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

    proptest::proptest! {
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
