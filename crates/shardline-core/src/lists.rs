//! Named value lists (allow and block lists of cards, merchants, countries, MCCs and card
//! BIN prefixes) that rules test with `in @name`. A rule set declares each list it uses
//! with its kind, so a rule is type-checked when the set loads; the values live in the
//! lists table and are reloaded by the functions every TTL, without a redeploy.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest list name.
pub const MAX_LIST_NAME: usize = 64;
/// Longest list value (a card token, a merchant id).
pub const MAX_LIST_VALUE: usize = 256;

/// What a list holds, which decides what its values may look like and what a rule may
/// test against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// Card tokens (tested against `card`).
    Card,
    /// Merchant ids (tested against `merchant`).
    Merchant,
    /// ISO 3166 alpha-2 country codes, upper case (tested against `country`).
    Country,
    /// Merchant category codes, four digits (tested against `mcc`, a number).
    Mcc,
    /// Card BIN prefixes, 1 to 8 digits: a value is in the list when one of them starts it
    /// (tested against `card_bin`).
    Bin,
}

impl ListKind {
    /// Every kind, as written in rule files and on the command line.
    pub const ALL: [ListKind; 5] = [
        ListKind::Card,
        ListKind::Merchant,
        ListKind::Country,
        ListKind::Mcc,
        ListKind::Bin,
    ];

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Merchant => "merchant",
            Self::Country => "country",
            Self::Mcc => "mcc",
            Self::Bin => "bin",
        }
    }

    /// Parses a kind's name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Normalises a value for this kind, or says why it cannot be one.
    pub fn normalise(self, value: &str) -> Result<String, String> {
        let v = value.trim();
        if v.is_empty() {
            return Err("empty value".into());
        }
        if v.len() > MAX_LIST_VALUE {
            return Err(format!("longer than {MAX_LIST_VALUE} bytes"));
        }
        if v.chars().any(char::is_control) {
            return Err("contains a control character".into());
        }
        match self {
            Self::Card | Self::Merchant => Ok(v.to_owned()),
            Self::Country => {
                let up = v.to_ascii_uppercase();
                if up.len() == 2 && up.bytes().all(|b| b.is_ascii_uppercase()) {
                    Ok(up)
                } else {
                    Err(format!("{v:?} is not a two-letter country code"))
                }
            }
            Self::Mcc => {
                if v.len() == 4 && v.bytes().all(|b| b.is_ascii_digit()) {
                    Ok(v.to_owned())
                } else {
                    Err(format!("{v:?} is not a four-digit MCC"))
                }
            }
            Self::Bin => {
                if (1..=8).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) {
                    Ok(v.to_owned())
                } else {
                    Err(format!("{v:?} is not a BIN prefix (1 to 8 digits)"))
                }
            }
        }
    }
}

impl std::fmt::Display for ListKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks a list name: letters, digits and `_`, starting with a letter, at most
/// [`MAX_LIST_NAME`] bytes.
pub fn check_list_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LIST_NAME
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "list name {name:?} must be letters, digits and _, start with a letter, at most {MAX_LIST_NAME} bytes"
        ))
    }
}

/// The values of one list, ready for lookups without allocating.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListValues {
    values: HashSet<Box<str>>,
    /// Longest value: a BIN lookup tries each prefix up to this length.
    longest: usize,
}

impl ListValues {
    /// A list of these (already normalised) values.
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Box<str>>,
    {
        let values: HashSet<Box<str>> = values.into_iter().map(Into::into).collect();
        let longest = values.iter().map(|v| v.len()).max().unwrap_or(0);
        Self { values, longest }
    }

    /// Values in the list.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// True when `v` is in the list.
    pub fn contains(&self, v: &str) -> bool {
        self.values.contains(v)
    }

    /// True when one of the list's values starts `v` (BIN prefixes).
    pub fn contains_prefix_of(&self, v: &str) -> bool {
        (1..=self.longest.min(v.len()))
            .filter(|&n| v.is_char_boundary(n))
            .any(|n| self.values.contains(&v[..n]))
    }

    /// True when the number `n` (an MCC) is in the list.
    pub fn contains_number(&self, n: f64) -> bool {
        if !(0.0..=9999.0).contains(&n) || n.fract() != 0.0 {
            return false;
        }
        // Four digits, as MCCs are stored, without allocating.
        let n = n as u16;
        let digits = [
            b'0' + (n / 1000) as u8,
            b'0' + (n / 100 % 10) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ];
        std::str::from_utf8(&digits).is_ok_and(|s| self.values.contains(s))
    }

    /// The values, sorted (for `shardline lists show`).
    pub fn sorted(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.values.iter().map(|s| &**s).collect();
        v.sort_unstable();
        v
    }
}

/// Lists as loaded from the lists table: (name, kind) to values. Keyed by kind too, so
/// that two rule sets declaring one name with different kinds (a live and a shadow set)
/// each get their own values. A list a rule set declares and the table does not hold is
/// empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lists {
    lists: BTreeMap<(String, ListKind), Arc<ListValues>>,
}

impl Lists {
    /// No lists.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds or replaces a list.
    pub fn insert(&mut self, name: impl Into<String>, kind: ListKind, values: ListValues) {
        self.lists.insert((name.into(), kind), Arc::new(values));
    }

    /// A list by name and kind.
    pub fn get(&self, name: &str, kind: ListKind) -> Option<&Arc<ListValues>> {
        self.lists.get(&(name.to_owned(), kind))
    }

    /// Lists held, with their kinds.
    pub fn names(&self) -> impl Iterator<Item = (&str, ListKind)> {
        self.lists.keys().map(|(n, k)| (n.as_str(), *k))
    }
}

/// A list a rule set uses, as the lists table stores its entries: one item per
/// (list, value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// List name.
    pub list: String,
    /// Kind of the list.
    pub kind: ListKind,
    /// Normalised value.
    pub value: String,
    /// Who added it (free text: a user name, a ticket).
    pub added_by: String,
    /// When, epoch ms.
    pub added_at_ms: i64,
    /// Why (optional).
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_normalised_or_refused_with_a_reason() {
        assert_eq!(ListKind::Country.normalise(" gb ").unwrap(), "GB");
        assert!(ListKind::Country.normalise("GBR").is_err());
        assert_eq!(ListKind::Mcc.normalise("7995").unwrap(), "7995");
        assert!(ListKind::Mcc.normalise("799").is_err());
        assert_eq!(ListKind::Bin.normalise("411111").unwrap(), "411111");
        assert!(ListKind::Bin.normalise("4111111111111111").is_err());
        assert!(ListKind::Card.normalise("").is_err());
        assert!(ListKind::Merchant.normalise("m\u{0}x").is_err());
        assert!(ListKind::Merchant.normalise(&"m".repeat(300)).is_err());
    }

    #[test]
    fn lookups() {
        let bins = ListValues::new(["4111", "52"]);
        assert!(bins.contains_prefix_of("41111111"));
        assert!(bins.contains_prefix_of("52"));
        assert!(!bins.contains_prefix_of("5"));
        assert!(!bins.contains_prefix_of("411"));
        assert!(!bins.contains_prefix_of(""));
        let mccs = ListValues::new(["7995", "0742"]);
        assert!(mccs.contains_number(7995.0));
        assert!(mccs.contains_number(742.0));
        assert!(!mccs.contains_number(7995.5));
        assert!(!mccs.contains_number(-1.0));
        assert!(!mccs.contains_number(f64::NAN));
        assert!(!mccs.contains_number(1e300));
    }

    #[test]
    fn list_names() {
        assert!(check_list_name("home_countries").is_ok());
        assert!(check_list_name("1x").is_err());
        assert!(check_list_name("a-b").is_err());
        assert!(check_list_name("").is_err());
    }
}
