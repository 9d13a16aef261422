//! Kinesis sequence numbers and record positions, compared as numbers.
//!
//! Kinesis sequence numbers are decimal strings of up to 128 digits
//! (<https://docs.aws.amazon.com/kinesis/latest/APIReference/API_Record.html>), far past
//! `u128` and past DynamoDB's 38-digit Number. They are kept here as their canonical digit
//! string (no leading zeros) and ordered by (length, digits), which is numeric order. For
//! storage they are rendered fixed-width and zero-padded so that DynamoDB's string order
//! (used by condition expressions) is numeric order too.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The widest sequence number Kinesis documents.
pub const SEQ_MAX_DIGITS: usize = 128;
/// Width of a sub-sequence number in the padded form (`u32::MAX` has 10 digits).
const SUB_DIGITS: usize = 10;
/// Width of [`RecordPos::to_padded`].
pub const POS_PADDED_WIDTH: usize = SEQ_MAX_DIGITS + SUB_DIGITS;

/// A Kinesis sequence number: 1 to 128 decimal digits, compared numerically.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SeqNo(Box<str>);

/// Why a string is not a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqNoError {
    /// The string was empty.
    #[error("sequence number is empty")]
    Empty,
    /// The string had a character other than an ASCII digit.
    #[error("sequence number has a non-digit character")]
    NotDecimal,
    /// The string had more than 128 significant digits.
    #[error("sequence number has {0} digits, more than the 128 Kinesis allows")]
    TooLong(usize),
}

impl Default for SeqNo {
    /// Zero, below every sequence number Kinesis issues.
    fn default() -> Self {
        Self("0".into())
    }
}

impl SeqNo {
    /// Parses a decimal sequence number; leading zeros are accepted and dropped.
    pub fn parse(s: &str) -> Result<Self, SeqNoError> {
        if s.is_empty() {
            return Err(SeqNoError::Empty);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SeqNoError::NotDecimal);
        }
        let trimmed = s.trim_start_matches('0');
        let canonical = if trimmed.is_empty() { "0" } else { trimmed };
        if canonical.len() > SEQ_MAX_DIGITS {
            return Err(SeqNoError::TooLong(canonical.len()));
        }
        Ok(Self(canonical.into()))
    }

    /// The canonical digits (no leading zeros), as Kinesis and Lambda print them.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Fixed-width (128 digits), zero-padded form: string order equals numeric order.
    pub fn to_padded(&self) -> String {
        let mut s = String::with_capacity(POS_PADDED_WIDTH);
        self.push_padded(&mut s);
        s
    }

    fn push_padded(&self, s: &mut String) {
        s.extend(std::iter::repeat_n('0', SEQ_MAX_DIGITS - self.0.len()));
        s.push_str(&self.0);
    }
}

impl Ord for SeqNo {
    fn cmp(&self, other: &Self) -> Ordering {
        // Canonical forms have no leading zeros, so a longer one is larger.
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for SeqNo {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for SeqNo {
    type Err = SeqNoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeqNo({})", self.0)
    }
}

impl Serialize for SeqNo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SeqNo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        SeqNo::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where one user record sits in a shard: the Kinesis sequence number of the record that
/// carried it plus, for a KPL aggregated record, its index inside the aggregate.
///
/// Plain records have `sub = 0`. Ordered by (seq, sub).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordPos {
    /// Sequence number of the Kinesis record (the parent, for a KPL user record).
    pub seq: SeqNo,
    /// Sub-sequence number inside a KPL aggregate; 0 for a plain record.
    pub sub: u32,
}

impl RecordPos {
    /// A plain (non-aggregated) record position.
    pub fn plain(seq: SeqNo) -> Self {
        Self { seq, sub: 0 }
    }

    /// Fixed-width string (138 characters) whose string order is (seq, sub) order; this
    /// is what replay guards store in DynamoDB and compare in condition expressions.
    pub fn to_padded(&self) -> String {
        let mut s = String::with_capacity(POS_PADDED_WIDTH);
        self.seq.push_padded(&mut s);
        let sub = self.sub.to_string();
        s.extend(std::iter::repeat_n('0', SUB_DIGITS - sub.len()));
        s.push_str(&sub);
        s
    }

    /// Compares this position with a padded one (as [`RecordPos::to_padded`] writes it)
    /// numerically, without allocating. A string of another form compares as text with
    /// this position's padded form.
    pub fn cmp_padded(&self, padded: &str) -> Ordering {
        let well_formed =
            padded.len() == POS_PADDED_WIDTH && padded.bytes().all(|b| b.is_ascii_digit());
        if !well_formed {
            return self.to_padded().as_str().cmp(padded);
        }
        let (seq, sub) = padded.split_at(SEQ_MAX_DIGITS);
        let digits = self.seq.as_str();
        let (zeros, tail) = seq.split_at(SEQ_MAX_DIGITS - digits.len());
        let by_seq = if zeros.bytes().any(|b| b != b'0') {
            Ordering::Less
        } else {
            // Same length, digits only: text order is numeric order.
            digits.cmp(tail)
        };
        by_seq.then_with(|| u64::from(self.sub).cmp(&sub.parse::<u64>().unwrap_or(u64::MAX)))
    }

    /// Parses the form written by [`RecordPos::to_padded`].
    pub fn from_padded(s: &str) -> Result<Self, SeqNoError> {
        if s.len() != POS_PADDED_WIDTH || !s.is_ascii() {
            return Err(SeqNoError::NotDecimal);
        }
        let (seq, sub) = s.split_at(SEQ_MAX_DIGITS);
        let sub = sub.parse::<u32>().map_err(|_| SeqNoError::NotDecimal)?;
        Ok(Self {
            seq: SeqNo::parse(seq)?,
            sub,
        })
    }
}

impl fmt::Display for RecordPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sub == 0 {
            write!(f, "{}", self.seq)
        } else {
            write!(f, "{}/{}", self.seq, self.sub)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: &str) -> SeqNo {
        SeqNo::parse(x).unwrap()
    }

    #[test]
    fn longer_than_twenty_digits_orders_numerically() {
        // As strings "9" > "10000000000000000000000"; as numbers it is the other way.
        assert!(s("9") < s("10000000000000000000000"));
        let a = s("49590338271490256608559692538361571095921575989136588898");
        let b = s("49590338271490256608559692540925702759324208523137515618");
        assert!(a < b);
        assert!(s("99999999999999999999999999999999999999999") < s(&"1".repeat(128)));
    }

    #[test]
    fn leading_zeros_do_not_change_value() {
        assert_eq!(s("000123"), s("123"));
        assert_eq!(s("0000").as_str(), "0");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(SeqNo::parse(""), Err(SeqNoError::Empty));
        assert_eq!(SeqNo::parse("12a"), Err(SeqNoError::NotDecimal));
        assert_eq!(SeqNo::parse("-1"), Err(SeqNoError::NotDecimal));
        assert_eq!(
            SeqNo::parse(&"1".repeat(129)),
            Err(SeqNoError::TooLong(129))
        );
    }

    #[test]
    fn padded_position_round_trips() {
        let p = RecordPos {
            seq: s("4959033827149025660855969253836157"),
            sub: 7,
        };
        let padded = p.to_padded();
        assert_eq!(padded.len(), POS_PADDED_WIDTH);
        assert_eq!(RecordPos::from_padded(&padded).unwrap(), p);
    }

    proptest! {
        #[test]
        fn padded_string_order_is_numeric_order(
            a in "[0-9]{1,128}", b in "[0-9]{1,128}", sa in any::<u32>(), sb in any::<u32>()
        ) {
            let pa = RecordPos { seq: s(&a), sub: sa };
            let pb = RecordPos { seq: s(&b), sub: sb };
            prop_assert_eq!(pa.cmp(&pb), pa.to_padded().cmp(&pb.to_padded()));
            prop_assert_eq!(pa.cmp_padded(&pb.to_padded()), pa.cmp(&pb));
            prop_assert_eq!(pa.cmp_padded(&pa.to_padded()), std::cmp::Ordering::Equal);
            prop_assert_eq!(RecordPos::from_padded(&pa.to_padded()).unwrap(), pa);
        }

        #[test]
        fn a_malformed_guard_compares_as_text(a in "[0-9]{1,40}", junk in "[0-9a-z]{0,140}") {
            let pa = RecordPos::plain(s(&a));
            prop_assert_eq!(pa.cmp_padded(&junk), pa.to_padded().as_str().cmp(junk.as_str()));
        }

        #[test]
        fn order_matches_u128_where_it_fits(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(s(&a.to_string()).cmp(&s(&b.to_string())), a.cmp(&b));
        }
    }
}
