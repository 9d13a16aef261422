//! A small HyperLogLog for distinct cards per window: 2^10 one-byte registers (1 KiB,
//! standard error about 3.25 %), mergeable by register-wise max, with a fixed hash so
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

/// HyperLogLog registers; empty until the first item (a window that does not count
/// distinct cards stores nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hll(#[serde(with = "serde_bytes")] Vec<u8>);

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
        self.ensure();
        let h = stable_hash(item);
        let idx = (h >> (64 - PRECISION)) as usize;
        let rest = h << PRECISION;
        let rank = (rest.leading_zeros().min(64 - PRECISION) + 1) as u8;
        if self.0[idx] < rank {
            self.0[idx] = rank;
        }
    }

    /// Merges another sketch into this one (register-wise max): associative,
    /// commutative, idempotent.
    pub fn merge(&mut self, other: &Hll) {
        if other.0.len() != REGISTERS {
            return;
        }
        self.ensure();
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = (*a).max(*b);
        }
    }

    /// Estimated number of distinct items.
    pub fn estimate(&self) -> f64 {
        if self.0.len() != REGISTERS {
            return 0.0;
        }
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self.0.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
        let raw = alpha * m * m / sum;
        let zeros = self.0.iter().filter(|&&r| r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln() // linear counting for small cardinalities
        } else {
            raw
        }
    }

    fn ensure(&mut self) {
        if self.0.len() != REGISTERS {
            self.0 = vec![0; REGISTERS];
        }
    }
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
}
