//! The lists table (named allow and block lists): the scorer's [`ListSource`], and the
//! admin operations behind `shardline lists`. One item per (list, value):
//! `{list, value, kind, added_by, added_at_ms, note?}`, keys `list` (partition) and
//! `value` (sort) as `template.yaml` declares them. The function only queries (one Query
//! per list it uses); adding, removing and the Scan of every list are the CLI's.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, ReturnValue, Select, WriteRequest};
use serde::{Deserialize, Serialize};
use shardline_core::StoreError;
use shardline_core::lists::{ListEntry, ListKind, ListValues, Lists, check_list_name};
use shardline_core::ports::{ListSource, MAX_BATCH_WRITE};

use crate::dynamo::batch_write;
use crate::sdk::classify;

/// Partition key of the lists table: the list's name.
pub const LIST_KEY: &str = "list";
/// Sort key of the lists table: the (normalised) value.
pub const VALUE_KEY: &str = "value";
/// Attribute holding an entry's [`ListKind`].
pub const KIND_ATTR: &str = "kind";
/// Most values one list may hold: the scorer keeps every list it uses in memory and
/// reloads it every TTL, so a list past this is refused (naming it) rather than loaded.
pub const MAX_VALUES_PER_LIST: usize = 100_000;

/// A problem with a list operation.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The table could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The list already holds values of another kind.
    #[error(
        "list {list} holds {held} values, not {asked}: use another list name, or remove its values first"
    )]
    KindMismatch {
        /// The list.
        list: String,
        /// The kind its values have.
        held: ListKind,
        /// The kind asked for.
        asked: ListKind,
    },
    /// The list holds more values than a function will load.
    #[error("list {list} holds more than {max} values, more than a function loads")]
    TooLarge {
        /// The list.
        list: String,
        /// The bound ([`MAX_VALUES_PER_LIST`]).
        max: usize,
    },
    /// The list name is not a valid name.
    #[error("{0}")]
    InvalidName(String),
    /// A value is not a value of the list's kind, or not in its normalised form.
    #[error("list {list}: value {value:?}: {why}")]
    InvalidValue {
        /// The list.
        list: String,
        /// The value.
        value: String,
        /// Why.
        why: String,
    },
    /// A stored item is not a list entry.
    #[error("list {list}: stored item {value:?} is not a list entry: {why}")]
    BadItem {
        /// The list.
        list: String,
        /// The item's value (sort key).
        value: String,
        /// Why.
        why: String,
    },
}

impl From<ListError> for StoreError {
    fn from(e: ListError) -> Self {
        match e {
            ListError::Store(s) => s,
            other => StoreError::Fatal(Box::new(other)),
        }
    }
}

fn fatal(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Fatal(Box::new(e))
}

/// An item of the lists table.
#[derive(Serialize, Deserialize)]
struct ListItem {
    list: String,
    value: String,
    kind: ListKind,
    added_by: String,
    added_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

impl From<&ListEntry> for ListItem {
    fn from(e: &ListEntry) -> Self {
        Self {
            list: e.list.clone(),
            value: e.value.clone(),
            kind: e.kind,
            added_by: e.added_by.clone(),
            added_at_ms: e.added_at_ms,
            note: e.note.clone(),
        }
    }
}

impl From<ListItem> for ListEntry {
    fn from(i: ListItem) -> Self {
        Self {
            list: i.list,
            kind: i.kind,
            value: i.value,
            added_by: i.added_by,
            added_at_ms: i.added_at_ms,
            note: i.note,
        }
    }
}

fn str_attr<'a>(item: &'a HashMap<String, AttributeValue>, attr: &str) -> Option<&'a str> {
    item.get(attr)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// Checks an entry before it is written: a valid list name, and a value of the list's
/// kind in its normalised form.
fn check_entry(e: &ListEntry) -> Result<(), ListError> {
    check_list_name(&e.list).map_err(ListError::InvalidName)?;
    match e.kind.normalise(&e.value) {
        Ok(v) if v == e.value => Ok(()),
        Ok(v) => Err(ListError::InvalidValue {
            list: e.list.clone(),
            value: e.value.clone(),
            why: format!("not normalised (store {v:?})"),
        }),
        Err(why) => Err(ListError::InvalidValue {
            list: e.list.clone(),
            value: e.value.clone(),
            why,
        }),
    }
}

/// Named lists in DynamoDB: the functions' [`ListSource`] and the CLI's admin operations.
#[derive(Clone, Debug)]
pub struct DynamoListSource {
    client: Client,
    table: String,
    max_values: usize,
}

impl DynamoListSource {
    /// Lists in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            max_values: MAX_VALUES_PER_LIST,
        }
    }

    /// The same source with another bound on the values of one list than
    /// [`MAX_VALUES_PER_LIST`] (a test shows the bound with a small one).
    #[must_use]
    pub fn with_max_values(mut self, max_values: usize) -> Self {
        self.max_values = max_values;
        self
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// One list's values of `kind`, at most [`MAX_VALUES_PER_LIST`] items (more is
    /// [`ListError::TooLarge`]); entries of another kind, or whose value is not one of
    /// `kind`, are skipped with one warning for the list. Eventually consistent: the
    /// cache around it already serves values up to a TTL old.
    async fn load_one(&self, list: &str, kind: ListKind) -> Result<ListValues, ListError> {
        let mut values: Vec<String> = Vec::new();
        let mut seen = 0usize;
        let mut other_kind = 0usize;
        let mut invalid = 0usize;
        let mut start_key = None;
        loop {
            // https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Query.Pagination.html
            let page = self
                .list_query(list)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(classify)?;
            seen += page.items().len();
            if seen > self.max_values {
                return Err(ListError::TooLarge {
                    list: list.to_owned(),
                    max: self.max_values,
                });
            }
            for item in page.items() {
                if str_attr(item, KIND_ATTR).and_then(ListKind::parse) != Some(kind) {
                    other_kind += 1;
                    continue;
                }
                // Written by `shardline lists` already normalised; an item written by
                // hand is normalised here or skipped.
                match str_attr(item, VALUE_KEY).map(|v| kind.normalise(v)) {
                    Some(Ok(v)) => values.push(v),
                    _ => invalid += 1,
                }
            }
            start_key = page.last_evaluated_key().cloned();
            if start_key.is_none() {
                break;
            }
        }
        if other_kind > 0 || invalid > 0 {
            tracing::warn!(
                list,
                kind = %kind,
                other_kind,
                invalid,
                kept = values.len(),
                "List entries of another kind or with invalid values skipped."
            );
        }
        Ok(ListValues::new(values))
    }

    /// A Query of one list's values and kinds.
    fn list_query(
        &self,
        list: &str,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#l = :l")
            .projection_expression("#v, #k")
            .expression_attribute_names("#l", LIST_KEY)
            .expression_attribute_names("#v", VALUE_KEY)
            .expression_attribute_names("#k", KIND_ATTR)
            .expression_attribute_values(":l", AttributeValue::S(list.to_owned()))
    }

    /// The kind of a list's values, from its first item (strongly consistent); `None`
    /// for a list with no values.
    pub async fn kind_of(&self, list: &str) -> Result<Option<ListKind>, ListError> {
        let out = self
            .list_query(list)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        let Some(item) = out.items().first() else {
            return Ok(None);
        };
        let kind = str_attr(item, KIND_ATTR);
        kind.and_then(ListKind::parse)
            .map(Some)
            .ok_or_else(|| ListError::BadItem {
                list: list.to_owned(),
                value: str_attr(item, VALUE_KEY).unwrap_or_default().to_owned(),
                why: format!("kind {kind:?} is not one of card, merchant, country, mcc, bin"),
            })
    }

    /// Refuses `kind` for a list that already holds values of another kind.
    pub async fn check_kind(&self, list: &str, kind: ListKind) -> Result<(), ListError> {
        match self.kind_of(list).await? {
            Some(held) if held != kind => Err(ListError::KindMismatch {
                list: list.to_owned(),
                held,
                asked: kind,
            }),
            _ => Ok(()),
        }
    }

    /// Adds one value to a list (PutItem); adding a value already there overwrites who,
    /// when and the note. Refused when the value is not a normalised value of the
    /// entry's kind, or the list holds values of another kind.
    pub async fn add(&self, entry: &ListEntry) -> Result<(), ListError> {
        check_entry(entry)?;
        self.check_kind(&entry.list, entry.kind).await?;
        let item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(ListItem::from(entry)).map_err(fatal)?;
        // The same value stored with another kind is not overwritten either.
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#l) OR #k = :k")
            .expression_attribute_names("#l", LIST_KEY)
            .expression_attribute_names("#k", KIND_ATTR)
            .expression_attribute_values(":k", AttributeValue::S(entry.kind.name().to_owned()))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                let held = self.kind_of(&entry.list).await?.unwrap_or(entry.kind);
                Err(ListError::KindMismatch {
                    list: entry.list.clone(),
                    held,
                    asked: entry.kind,
                })
            }
            Err(e) => Err(classify(e).into()),
        }
    }

    /// Writes many entries of one list with BatchWriteItem, 25 at a time, unprocessed
    /// items retried (an import). Every entry is checked first; nothing is written when
    /// one is invalid, names another list than the first, or the list holds another kind.
    /// Duplicate values are written once.
    pub async fn put_entries(&self, entries: &[ListEntry]) -> Result<(), ListError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        for e in entries {
            check_entry(e)?;
            if e.list != first.list || e.kind != first.kind {
                return Err(ListError::InvalidValue {
                    list: e.list.clone(),
                    value: e.value.clone(),
                    why: format!(
                        "one batch writes one list of one kind ({} of {})",
                        first.list, first.kind
                    ),
                });
            }
        }
        self.check_kind(&first.list, first.kind).await?;
        // BatchWriteItem refuses a request that names one key twice.
        let mut seen = HashSet::new();
        let unique: Vec<&ListEntry> = entries
            .iter()
            .filter(|e| seen.insert(e.value.as_str()))
            .collect();
        for chunk in unique.chunks(MAX_BATCH_WRITE) {
            let mut writes = Vec::with_capacity(chunk.len());
            for e in chunk {
                writes.push(crate::dynamo::put_request(
                    serde_dynamo::to_item(ListItem::from(*e)).map_err(fatal)?,
                )?);
            }
            batch_write(&self.client, &self.table, writes).await?;
        }
        Ok(())
    }

    /// Removes one value from a list (DeleteItem); true when it was there.
    pub async fn remove(&self, list: &str, value: &str) -> Result<bool, ListError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(LIST_KEY, AttributeValue::S(list.to_owned()))
            .key(VALUE_KEY, AttributeValue::S(value.to_owned()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(classify)?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    /// Removes many values of one list with BatchWriteItem, 25 at a time (an import's
    /// `--replace`). Values not there are no error.
    pub async fn remove_values(&self, list: &str, values: &[String]) -> Result<(), ListError> {
        let mut seen = HashSet::new();
        let unique: Vec<&String> = values.iter().filter(|v| seen.insert(*v)).collect();
        for chunk in unique.chunks(MAX_BATCH_WRITE) {
            let mut writes = Vec::with_capacity(chunk.len());
            for v in chunk {
                writes.push(
                    WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .key(LIST_KEY, AttributeValue::S(list.to_owned()))
                                .key(VALUE_KEY, AttributeValue::S((*v).clone()))
                                .build()
                                .map_err(fatal)?,
                        )
                        .build(),
                );
            }
            batch_write(&self.client, &self.table, writes).await?;
        }
        Ok(())
    }

    /// Every entry of a list, sorted by value (strongly consistent).
    pub async fn entries(&self, list: &str) -> Result<Vec<ListEntry>, ListError> {
        let mut out: Vec<ListEntry> = Vec::new();
        let mut start_key = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#l = :l")
                .expression_attribute_names("#l", LIST_KEY)
                .expression_attribute_values(":l", AttributeValue::S(list.to_owned()))
                .consistent_read(true)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(classify)?;
            for item in page.items() {
                let entry: ListItem =
                    serde_dynamo::from_item(item.clone()).map_err(|e| ListError::BadItem {
                        list: list.to_owned(),
                        value: str_attr(item, VALUE_KEY).unwrap_or_default().to_owned(),
                        why: e.to_string(),
                    })?;
                out.push(entry.into());
            }
            start_key = page.last_evaluated_key().cloned();
            if start_key.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.value.cmp(&b.value));
        Ok(out)
    }

    /// Every list with the kind of its values and how many there are, sorted by name
    /// (a Scan of the whole table, projected to the name and kind: for the CLI only,
    /// the functions never scan). A list holding values of two kinds (written around
    /// the CLI) shows once per kind; items of an unknown kind are left out.
    pub async fn list_names(&self) -> Result<Vec<(String, ListKind, usize)>, ListError> {
        let mut counts: BTreeMap<(String, ListKind), usize> = BTreeMap::new();
        let mut start_key = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .select(Select::SpecificAttributes)
                .projection_expression("#l, #k")
                .expression_attribute_names("#l", LIST_KEY)
                .expression_attribute_names("#k", KIND_ATTR)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(classify)?;
            for item in page.items() {
                let (Some(list), Some(kind)) = (
                    str_attr(item, LIST_KEY),
                    str_attr(item, KIND_ATTR).and_then(ListKind::parse),
                ) else {
                    continue;
                };
                *counts.entry((list.to_owned(), kind)).or_default() += 1;
            }
            start_key = page.last_evaluated_key().cloned();
            if start_key.is_none() {
                break;
            }
        }
        Ok(counts
            .into_iter()
            .map(|((list, kind), n)| (list, kind, n))
            .collect())
    }
}

impl ListSource for DynamoListSource {
    async fn load_lists(&self, lists: &[(String, ListKind)]) -> Result<Lists, StoreError> {
        let loads = lists.iter().map(|(name, kind)| async move {
            self.load_one(name, *kind)
                .await
                .map(|values| (name.clone(), *kind, values))
        });
        let mut out = Lists::empty();
        for (name, kind, values) in futures::future::try_join_all(loads).await? {
            out.insert(name, kind, values);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(list: &str, kind: ListKind, value: &str) -> ListEntry {
        ListEntry {
            list: list.into(),
            kind,
            value: value.into(),
            added_by: "me".into(),
            added_at_ms: 1,
            note: None,
        }
    }

    #[test]
    fn entries_are_checked_before_they_are_written() {
        assert!(check_entry(&entry("home", ListKind::Country, "GB")).is_ok());
        assert!(matches!(
            check_entry(&entry("home", ListKind::Country, "gb")),
            Err(ListError::InvalidValue { why, .. }) if why.contains("\"GB\"")
        ));
        assert!(matches!(
            check_entry(&entry("home", ListKind::Country, "GBR")),
            Err(ListError::InvalidValue { .. })
        ));
        assert!(matches!(
            check_entry(&entry("1home", ListKind::Country, "GB")),
            Err(ListError::InvalidName(_))
        ));
    }

    #[test]
    fn an_item_round_trips_and_omits_an_absent_note() {
        let e = entry("risky", ListKind::Mcc, "7995");
        let item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(ListItem::from(&e)).unwrap();
        assert_eq!(item[KIND_ATTR], AttributeValue::S("mcc".into()));
        assert_eq!(item[LIST_KEY], AttributeValue::S("risky".into()));
        assert_eq!(item[VALUE_KEY], AttributeValue::S("7995".into()));
        assert!(!item.contains_key("note"));
        let back: ListItem = serde_dynamo::from_item(item).unwrap();
        assert_eq!(ListEntry::from(back), e);
    }

    #[test]
    fn a_list_error_keeps_its_class() {
        let s: StoreError = ListError::TooLarge {
            list: "big".into(),
            max: 1,
        }
        .into();
        assert!(matches!(s, StoreError::Fatal(_)));
        assert!(s.to_string().contains("big"));
        let s: StoreError = ListError::Store(StoreError::transient("slow")).into();
        assert!(matches!(s, StoreError::Transient(_)));
    }

    #[test]
    fn keys_match_the_template() {
        let t = crate::template::Template::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../template.yaml"
        ))
        .unwrap();
        let (_, props) = t
            .resources_of_type("AWS::DynamoDB::Table")
            .into_iter()
            .find(|(l, _)| l == "ListsTable")
            .unwrap();
        let keys: Vec<(String, String)> = props["KeySchema"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    crate::template::scalar(&k["AttributeName"]),
                    crate::template::scalar(&k["KeyType"]),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                (LIST_KEY.to_owned(), "HASH".to_owned()),
                (VALUE_KEY.to_owned(), "RANGE".to_owned())
            ]
        );
    }
}
