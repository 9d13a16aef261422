//! `shardline lists`: named allow and block lists (cards, merchants, countries, MCCs, BIN
//! prefixes) in the lists table, which the scorer reloads every `LISTS_TTL_SECONDS`.
//! Values are normalised and checked before anything is written; an import writes
//! nothing unless every line of its file is valid.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use shardline_aws::lists::{DynamoListSource, ListError, MAX_VALUES_PER_LIST};
use shardline_core::event::{format_rfc3339_ms, looks_like_pan};
use shardline_core::lists::{ListEntry, ListKind, check_list_name};

use crate::common::{TemplateArgs, check_endpoint, now_ms, table_name};

/// Invalid lines an import prints before "... and N more".
const SHOWN_ERRORS: usize = 20;

/// Where the lists are.
#[derive(clap::Args, Clone, Debug)]
pub struct ListsTableArgs {
    /// The lists table (a deployed stack's is its `ListsTableName` output). Default: the
    /// template's ListsTable in the local emulators.
    #[arg(long, env = "LISTS_TABLE")]
    pub table: Option<String>,
    /// The template, for the local default table name.
    #[command(flatten)]
    pub template: TemplateArgs,
}

impl ListsTableArgs {
    /// The table's name: `--table` / `LISTS_TABLE`, else the template's ListsTable (local:
    /// the emulators must be configured).
    pub fn resolve(&self) -> anyhow::Result<String> {
        match &self.table {
            Some(t) if !t.is_empty() => Ok(t.clone()),
            _ => {
                check_endpoint().context(
                    "no --table or LISTS_TABLE given, so the local emulators' table is used",
                )?;
                table_name(&self.template.load()?, "ListsTable")
            }
        }
    }
}

/// `shardline lists` subcommands.
#[derive(Subcommand)]
pub enum Lists {
    /// Add values to a list (re-adding a value updates who, when and the note).
    Add {
        /// The list (letters, digits and _, starting with a letter).
        name: String,
        /// The values.
        #[arg(required = true)]
        values: Vec<String>,
        /// What the list holds: card, merchant, country, mcc or bin.
        #[arg(long, value_parser = parse_kind)]
        kind: ListKind,
        /// Why (kept with each value).
        #[arg(long)]
        note: Option<String>,
        /// Who (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// The lists table.
        #[command(flatten)]
        table: ListsTableArgs,
    },
    /// Remove values from a list.
    Remove {
        /// The list.
        name: String,
        /// The values.
        #[arg(required = true)]
        values: Vec<String>,
        /// The lists table.
        #[command(flatten)]
        table: ListsTableArgs,
    },
    /// Every list with its kind and size; with NAME, that list's values.
    Show {
        /// The list.
        name: Option<String>,
        /// The lists table.
        #[command(flatten)]
        table: ListsTableArgs,
    },
    /// Load a list from a file; every line is checked before anything is written.
    ///
    /// The file holds one value per line (`#` comment lines and blank lines ignored), or
    /// is CSV with a header line naming a `value` column and optionally a `note` column
    /// (a `.csv` file, or a first line with a comma and a `value` field).
    Import {
        /// The file.
        file: PathBuf,
        /// The list.
        #[arg(long)]
        name: String,
        /// What the list holds: card, merchant, country, mcc or bin.
        #[arg(long, value_parser = parse_kind)]
        kind: ListKind,
        /// Also remove the list's values that are not in the file.
        #[arg(long)]
        replace: bool,
        /// Why (for lines without a CSV `note`).
        #[arg(long)]
        note: Option<String>,
        /// Who (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// The lists table.
        #[command(flatten)]
        table: ListsTableArgs,
    },
}

/// Parses a list kind's name.
pub fn parse_kind(s: &str) -> Result<ListKind, String> {
    ListKind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = ListKind::ALL.iter().map(|k| k.name()).collect();
        format!("{s:?} is not a list kind: one of {}", names.join(", "))
    })
}

/// `value` normalised for `kind`, or why not. A card number in clear is refused without
/// being repeated: lists hold card tokens.
pub fn normalise(kind: ListKind, value: &str) -> Result<String, String> {
    if looks_like_pan(value) {
        return Err("looks like a card number in clear (not shown): lists hold card tokens".into());
    }
    kind.normalise(value)
}

/// One value of an import file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportLine {
    /// Its line number (from 1).
    pub line: usize,
    /// The normalised value.
    pub value: String,
    /// Its CSV `note`, if any.
    pub note: Option<String>,
}

/// An import file read: its values (first of each duplicate kept) and the lines that
/// repeated one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Import {
    /// Values in file order.
    pub lines: Vec<ImportLine>,
    /// Lines whose value (once normalised) an earlier line already had.
    pub duplicates: usize,
}

/// The fields of one CSV line (RFC 4180 quoting; a quoted field cannot span lines).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => quoted = false,
                _ => cur.push(c),
            }
        } else {
            match c {
                ',' => fields.push(std::mem::take(&mut cur)),
                '"' if cur.trim().is_empty() => {
                    cur.clear();
                    quoted = true;
                }
                _ => cur.push(c),
            }
        }
    }
    if quoted {
        return Err("unterminated quote (a quoted field cannot span lines)".into());
    }
    fields.push(cur);
    Ok(fields)
}

/// True for a line an import skips: blank, or a `#` comment.
fn skipped(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Reads an import file's text: one value per line, or CSV when its first line (after
/// comments and blank lines) has a `value` field and a comma, or `csv` is set (a `.csv`
/// file). Every line is checked; the errors are "line N: why", in line order.
pub fn parse_import(text: &str, csv: bool, kind: ListKind) -> Result<Import, Vec<String>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !skipped(l));
    let mut errors = Vec::new();
    // CSV: which column holds the value, which the note.
    let mut columns: Option<(usize, Option<usize>)> = None;
    let mut first = lines.next();
    if let Some((n, header)) = first {
        let fields = split_csv(header).unwrap_or_default();
        let find = |name: &str| {
            fields
                .iter()
                .position(|f| f.trim().eq_ignore_ascii_case(name))
        };
        match find("value") {
            Some(v) if csv || fields.len() > 1 => {
                columns = Some((v, find("note")));
                first = None;
            }
            _ if csv => {
                errors.push(format!(
                    "line {n}: a CSV file needs a header line naming a `value` column"
                ));
                first = None;
            }
            _ => {}
        }
    }
    let mut out = Import::default();
    let mut seen = HashSet::new();
    for (n, line) in first.into_iter().chain(lines) {
        let (raw, note) = match columns {
            None => (line.to_owned(), None),
            Some((v, note)) => {
                let fields = match split_csv(line) {
                    Ok(f) => f,
                    Err(why) => {
                        errors.push(format!("line {n}: {why}"));
                        continue;
                    }
                };
                let Some(raw) = fields.get(v) else {
                    errors.push(format!("line {n}: no value column (field {})", v + 1));
                    continue;
                };
                let note = note
                    .and_then(|i| fields.get(i))
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty());
                (raw.clone(), note)
            }
        };
        match normalise(kind, &raw) {
            Ok(value) => {
                if seen.insert(value.clone()) {
                    out.lines.push(ImportLine {
                        line: n,
                        value,
                        note,
                    });
                } else {
                    out.duplicates += 1;
                }
            }
            Err(why) => errors.push(format!("line {n}: {why}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The errors of an import, at most [`SHOWN_ERRORS`] of them, one per line.
fn error_report(errors: &[String]) -> String {
    let mut s: Vec<&str> = errors
        .iter()
        .take(SHOWN_ERRORS)
        .map(String::as_str)
        .collect();
    let more = errors.len().saturating_sub(SHOWN_ERRORS);
    let tail = format!("... and {more} more");
    if more > 0 {
        s.push(&tail);
    }
    s.join("\n")
}

/// Text for a terminal: control characters (an escape sequence in a note) replaced.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn who(by: Option<String>) -> String {
    by.filter(|b| !b.is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A list error for the command line: a failed request says what to check.
fn in_table(table: &str) -> impl Fn(ListError) -> anyhow::Error + '_ {
    move |e| {
        match e {
        ListError::Store(_) => anyhow::Error::new(e).context(format!(
            "lists table {table}: does it exist, and are the credentials and region (or AWS_ENDPOINT_URL) right? Locally, `shardline bootstrap` creates it"
        )),
        other => other.into(),
    }
    }
}

async fn source(table: &ListsTableArgs) -> anyhow::Result<DynamoListSource> {
    let name = table.resolve()?;
    let sdk = shardline_aws::sdk::load_sdk_config().await;
    Ok(DynamoListSource::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        name,
    ))
}

/// `shardline lists ...`.
pub async fn run(cmd: Lists) -> anyhow::Result<()> {
    match cmd {
        Lists::Add {
            name,
            values,
            kind,
            note,
            by,
            table,
        } => add(&name, &values, kind, note, who(by), &table).await,
        Lists::Remove {
            name,
            values,
            table,
        } => remove(&name, &values, &table).await,
        Lists::Show { name, table } => show(name.as_deref(), &table).await,
        Lists::Import {
            file,
            name,
            kind,
            replace,
            note,
            by,
            table,
        } => import(&file, &name, kind, replace, (note, who(by)), &table).await,
    }
}

async fn add(
    name: &str,
    values: &[String],
    kind: ListKind,
    note: Option<String>,
    by: String,
    table: &ListsTableArgs,
) -> anyhow::Result<()> {
    check_list_name(name).map_err(anyhow::Error::msg)?;
    let mut normalised = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match normalise(kind, v) {
            Ok(n) => normalised.push(n),
            Err(why) => errors.push(format!("value {}: {why}", i + 1)),
        }
    }
    if !errors.is_empty() {
        bail!(
            "not a {kind} value, nothing written:\n{}",
            error_report(&errors)
        );
    }
    let lists = source(table).await?;
    lists
        .check_kind(name, kind)
        .await
        .map_err(in_table(lists.table()))?;
    let at = now_ms();
    let mut added = 0;
    let mut seen = HashSet::new();
    for value in normalised {
        if !seen.insert(value.clone()) {
            continue;
        }
        let entry = ListEntry {
            list: name.to_owned(),
            kind,
            value,
            added_by: by.clone(),
            added_at_ms: at,
            note: note.clone(),
        };
        lists.add(&entry).await.with_context(|| {
            format!(
                "adding to list {name} in {} ({added} value(s) added before this one)",
                lists.table()
            )
        })?;
        added += 1;
    }
    println!("list {name} ({kind}): {added} value(s) added or updated");
    Ok(())
}

async fn remove(name: &str, values: &[String], table: &ListsTableArgs) -> anyhow::Result<()> {
    check_list_name(name).map_err(anyhow::Error::msg)?;
    let lists = source(table).await?;
    // Normalised as the list's values are, so `remove home gb` removes "GB".
    let kind = lists.kind_of(name).await.map_err(in_table(lists.table()))?;
    let mut removed = 0;
    let mut absent = Vec::new();
    for v in values {
        let value = kind
            .and_then(|k| normalise(k, v).ok())
            .unwrap_or_else(|| v.trim().to_owned());
        if lists
            .remove(name, &value)
            .await
            .with_context(|| format!("removing from list {name} in {}", lists.table()))?
        {
            removed += 1;
        } else if looks_like_pan(&value) {
            absent.push("(a card number, not shown)".to_owned());
        } else {
            absent.push(format!("{:?}", printable(&value)));
        }
    }
    println!("list {name}: {removed} value(s) removed");
    if !absent.is_empty() {
        println!("not in list {name}: {}", absent.join(", "));
    }
    Ok(())
}

async fn show(name: Option<&str>, table: &ListsTableArgs) -> anyhow::Result<()> {
    let lists = source(table).await?;
    let Some(name) = name else {
        let all = lists.list_names().await.map_err(in_table(lists.table()))?;
        if all.is_empty() {
            println!("no lists in {}", lists.table());
            return Ok(());
        }
        let w = all
            .iter()
            .map(|(n, _, _)| n.len())
            .max()
            .unwrap_or(0)
            .max(4);
        println!("{:<w$}  {:<8}  {:>7}", "LIST", "KIND", "VALUES");
        for (n, kind, count) in all {
            println!("{n:<w$}  {:<8}  {count:>7}", kind.name());
        }
        return Ok(());
    };
    check_list_name(name).map_err(anyhow::Error::msg)?;
    let entries = lists.entries(name).await.map_err(in_table(lists.table()))?;
    let Some(first) = entries.first() else {
        println!(
            "list {name} is empty (or does not exist) in {}",
            lists.table()
        );
        return Ok(());
    };
    println!("list {name} ({}): {} value(s)", first.kind, entries.len());
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            [
                printable(&e.value),
                printable(&e.added_by),
                format_rfc3339_ms(e.added_at_ms),
                e.note.as_deref().map(printable).unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["VALUE", "ADDED BY", "ADDED AT (UTC)", "NOTE"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    println!(
        "{:<w0$}  {:<w1$}  {:<w2$}  {}",
        header[0], header[1], header[2], header[3]
    );
    for r in rows {
        println!("{:<w0$}  {:<w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3]);
    }
    Ok(())
}

async fn import(
    file: &Path,
    name: &str,
    kind: ListKind,
    replace: bool,
    (note, by): (Option<String>, String),
    table: &ListsTableArgs,
) -> anyhow::Result<()> {
    check_list_name(name).map_err(anyhow::Error::msg)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let csv = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let parsed = match parse_import(&text, csv, kind) {
        Ok(p) => p,
        Err(errors) => bail!(
            "{}: {} invalid line(s) for a {kind} list, nothing written:\n{}",
            file.display(),
            errors.len(),
            error_report(&errors)
        ),
    };
    if parsed.lines.is_empty() {
        bail!(
            "{}: no values, nothing written (to empty a list, `shardline lists remove` its values)",
            file.display()
        );
    }
    if parsed.lines.len() > MAX_VALUES_PER_LIST {
        bail!(
            "{}: {} values, more than a list may hold ({MAX_VALUES_PER_LIST}); nothing written",
            file.display(),
            parsed.lines.len()
        );
    }
    let lists = source(table).await?;
    lists
        .check_kind(name, kind)
        .await
        .map_err(in_table(lists.table()))?;
    let existing: HashSet<String> = lists
        .entries(name)
        .await
        .map_err(in_table(lists.table()))?
        .into_iter()
        .map(|e| e.value)
        .collect();
    let at = now_ms();
    let entries: Vec<ListEntry> = parsed
        .lines
        .iter()
        .map(|l| ListEntry {
            list: name.to_owned(),
            kind,
            value: l.value.clone(),
            added_by: by.clone(),
            added_at_ms: at,
            note: l.note.clone().or_else(|| note.clone()),
        })
        .collect();
    // New values first, stale ones after: a function reloading in between sees the old
    // and the new values together, never an emptied list.
    lists
        .put_entries(&entries)
        .await
        .with_context(|| format!("writing list {name} to {}", lists.table()))?;
    let new = entries
        .iter()
        .filter(|e| !existing.contains(&e.value))
        .count();
    let mut removed = 0;
    if replace {
        let keep: HashSet<&str> = entries.iter().map(|e| e.value.as_str()).collect();
        let stale: Vec<String> = existing
            .iter()
            .filter(|v| !keep.contains(v.as_str()))
            .cloned()
            .collect();
        lists
            .remove_values(name, &stale)
            .await
            .with_context(|| format!("removing stale values of list {name}"))?;
        removed = stale.len();
    }
    println!(
        "list {name} ({kind}): {} value(s) written ({new} new, {} updated){}{}",
        entries.len(),
        entries.len() - new,
        if replace {
            format!(", {removed} removed")
        } else {
            String::new()
        },
        if parsed.duplicates > 0 {
            format!(", {} duplicate line(s) ignored", parsed.duplicates)
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(i: &Import) -> Vec<(usize, &str)> {
        i.lines.iter().map(|l| (l.line, l.value.as_str())).collect()
    }

    #[test]
    fn plain_file_skips_comments_and_blanks_and_normalises() {
        let text = "# home countries\n\ngb\n  fr  \r\n# done\nGB\n";
        let i = parse_import(text, false, ListKind::Country).unwrap();
        assert_eq!(values(&i), [(3, "GB"), (4, "FR")]);
        assert_eq!(i.duplicates, 1);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = "GB\nGBR\n# ok\nF\nFR\n";
        let errors = parse_import(text, false, ListKind::Country).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("line 2: "), "{errors:?}");
        assert!(errors[1].starts_with("line 4: "), "{errors:?}");
    }

    #[test]
    fn csv_with_a_value_header_reads_value_and_note_columns() {
        let text = "\u{feff}note,value\n\"chargebacks, 2024\",m_1\n,m_2\n\"say \"\"hi\"\"\",m_3\n";
        let i = parse_import(text, false, ListKind::Merchant).unwrap();
        assert_eq!(values(&i), [(2, "m_1"), (3, "m_2"), (4, "m_3")]);
        assert_eq!(i.lines[0].note.as_deref(), Some("chargebacks, 2024"));
        assert_eq!(i.lines[1].note, None);
        assert_eq!(i.lines[2].note.as_deref(), Some("say \"hi\""));
    }

    #[test]
    fn csv_errors_name_their_lines() {
        let text = "value,note\n7995,\n\"7995\n,x\n799,short\n";
        let errors = parse_import(text, false, ListKind::Mcc).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("line 3: unterminated quote"),
            "{errors:?}"
        );
        assert!(errors[1].starts_with("line 4: empty value"), "{errors:?}");
        assert!(errors[2].starts_with("line 5: "), "{errors:?}");
    }

    #[test]
    fn a_csv_file_needs_its_header_and_a_lone_value_line_is_a_value() {
        let errors = parse_import("4111\n52\n", true, ListKind::Bin).unwrap_err();
        assert!(errors[0].contains("header"), "{errors:?}");
        // One column named `value` in a .csv file is a header...
        let i = parse_import("value\n4111\n", true, ListKind::Bin).unwrap();
        assert_eq!(values(&i), [(2, "4111")]);
        // ... and in a plain file a merchant called "value".
        let i = parse_import("value\nm_2\n", false, ListKind::Merchant).unwrap();
        assert_eq!(values(&i), [(1, "value"), (2, "m_2")]);
    }

    #[test]
    fn a_card_number_is_refused_without_being_repeated() {
        let errors =
            parse_import("tok_1\n4111 1111 1111 1111\n", false, ListKind::Card).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("line 2: looks like a card number"));
        assert!(!errors[0].contains("4111"), "{errors:?}");
    }

    #[test]
    fn an_empty_file_has_no_values() {
        assert!(
            parse_import("# nothing\n\n", false, ListKind::Card)
                .unwrap()
                .lines
                .is_empty()
        );
        assert!(
            parse_import("", false, ListKind::Card)
                .unwrap()
                .lines
                .is_empty()
        );
    }

    #[test]
    fn long_error_lists_are_cut() {
        let errors: Vec<String> = (1..=25).map(|n| format!("line {n}: bad")).collect();
        let r = error_report(&errors);
        assert_eq!(r.lines().count(), SHOWN_ERRORS + 1);
        assert!(r.ends_with("... and 5 more"));
    }

    #[test]
    fn kinds_parse_by_name() {
        assert_eq!(parse_kind("bin"), Ok(ListKind::Bin));
        assert!(parse_kind("bins").unwrap_err().contains("card, merchant"));
    }
}
