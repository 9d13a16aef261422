//! `shardline query alerts`: decision records read back from the alerts table, newest
//! first, a page at a time, always through the table's indexes (never a Scan):
//! `by-card` for `--card`, `by-merchant` for `--merchant`, otherwise the `by-day`
//! partitions of the range, newest day first. The time range is the index's range key
//! condition; the other filters are a FilterExpression, so pages stay exact.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, bail};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use shardline_core::alert::{Alert, utc_day};
use shardline_core::event::{format_rfc3339_ms, looks_like_pan, pan_safe_id};
use shardline_core::fraud::SHADOW_PREFIX;
use shardline_core::fraud::rules::Outcome;

use crate::common::{TemplateArgs, check_endpoint, now_ms, table_name};
use crate::query::parse_duration_ms;

/// One UTC day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;
/// How far back a by-day walk goes when neither `--since` nor `--last` is given.
pub const DEFAULT_DAYS_BACK: i64 = 7;
/// Most day partitions one by-day walk may visit (one Query or more each).
pub const MAX_DAYS: i64 = 366;
/// The earliest time a query names: 0000-01-01T00:00:00Z, the earliest RFC 3339 time.
pub const EARLIEST_MS: i64 = -62_167_219_200_000;
/// Rows a page prints unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest `--limit`.
pub const MAX_LIMIT: usize = 1000;
/// The table's hash key.
const TABLE_KEY: &str = "alert_id";
/// The indexes' range key.
const TIME_KEY: &str = "event_time_ms";

/// A decision that is stored (an allowed event is not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoredOutcome {
    /// Held for an analyst.
    Review,
    /// Declined.
    Block,
}

impl From<StoredOutcome> for Outcome {
    fn from(o: StoredOutcome) -> Self {
        match o {
            StoredOutcome::Review => Outcome::Review,
            StoredOutcome::Block => Outcome::Block,
        }
    }
}

/// What to look for. Times are epoch ms; `since` is inclusive, `until` exclusive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// A card token (the by-card index; with `shadow`, a filter on the subject).
    pub card: Option<String>,
    /// A merchant id as the producer sends it (looked up in its stored, PAN-safe form).
    pub merchant: Option<String>,
    /// Only this decision.
    pub outcome: Option<StoredOutcome>,
    /// Only records whose reasons include this code.
    pub reason: Option<String>,
    /// Only records decided by this rule-set version or content hash (`sha256:...`).
    pub ruleset: Option<String>,
    /// From (inclusive).
    pub since_ms: Option<i64>,
    /// To (exclusive).
    pub until_ms: Option<i64>,
    /// The last this long before `until` (or now); instead of `since`.
    pub last_ms: Option<i64>,
    /// The shadow rule set's records (`shadow:<day>` partitions) instead of the live ones.
    pub shadow: bool,
}

/// One page of a query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertPage {
    /// Newest first.
    pub alerts: Vec<Alert>,
    /// Pass as `after` (the command line's `--after`) for the next page; `None` when
    /// nothing more matches.
    pub next: Option<String>,
    /// The index read.
    pub index: &'static str,
    /// DynamoDB Query requests made.
    pub requests: usize,
}

/// Where to continue: the index key of the last row a page printed (its partition, its
/// time, its `alert_id`: the `ExclusiveStartKey` of the next Query), and the time range
/// of the first page (a relative range such as `--last 24h` stays where it was).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// The index.
    i: String,
    /// The partition (card token, merchant id or day partition).
    p: String,
    /// The last row's `alert_id`.
    a: String,
    /// The last row's `event_time_ms`.
    t: i64,
    /// The range's start, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lo: Option<i64>,
    /// The range's end, exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hi: Option<i64>,
}

impl Cursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(s: &str) -> anyhow::Result<Self> {
        let bad =
            || format!("--after {s:?} is not a cursor this command printed (copy the whole token)");
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).with_context(bad)?;
        let c: Self = serde_json::from_slice(&bytes).with_context(bad)?;
        c.check().map_err(|why| {
            anyhow::anyhow!(
                "--after: the cursor has been altered ({why}): pass the whole token a page printed, unchanged"
            )
        })?;
        Ok(c)
    }

    /// What every cursor [`query_alerts`] prints satisfies: a known index, a partition
    /// and a row, a by-day range with its start, a range no earlier than
    /// [`EARLIEST_MS`] and not empty, the row's time within it.
    fn check(&self) -> Result<(), String> {
        if !["by-card", "by-merchant", "by-day"].contains(&self.i.as_str()) {
            return Err(format!("no index {:?}", self.i));
        }
        if self.p.is_empty() || self.a.is_empty() {
            return Err("no partition or row".into());
        }
        if self.i == "by-day" && self.lo.is_none() {
            return Err("a by-day range without its start".into());
        }
        if [self.lo, self.hi]
            .into_iter()
            .flatten()
            .any(|x| x < EARLIEST_MS)
        {
            return Err("a range before 0000-01-01".into());
        }
        if let (Some(lo), Some(hi)) = (self.lo, self.hi)
            && lo >= hi
        {
            return Err("an empty range".into());
        }
        if self.lo.is_some_and(|lo| self.t < lo) || self.hi.is_some_and(|hi| self.t >= hi) {
            return Err("a row outside its range".into());
        }
        Ok(())
    }

    /// The `ExclusiveStartKey` in an index whose hash key is `hash_attr`.
    fn start_key(&self, hash_attr: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (TABLE_KEY.to_owned(), AttributeValue::S(self.a.clone())),
            (hash_attr.to_owned(), AttributeValue::S(self.p.clone())),
            (TIME_KEY.to_owned(), AttributeValue::N(self.t.to_string())),
        ])
    }
}

/// Which index answers, and for what partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// One card's partition of by-card.
    Card(String),
    /// One merchant's partition of by-merchant.
    Merchant(String),
    /// by-day partitions, newest first (`shadow:<day>` ones for shadow records).
    Days {
        /// Shadow partitions.
        shadow: bool,
        /// Newest day, epoch days.
        newest: i64,
        /// Oldest day, epoch days.
        oldest: i64,
    },
}

impl Route {
    fn index(&self) -> &'static str {
        match self {
            Route::Card(_) => "by-card",
            Route::Merchant(_) => "by-merchant",
            Route::Days { .. } => "by-day",
        }
    }

    fn hash_attr(&self) -> &'static str {
        match self {
            Route::Card(_) => "card_token",
            Route::Merchant(_) => "merchant_id",
            Route::Days { .. } => "alert_day",
        }
    }

    /// The partitions to read, newest first.
    fn partitions(&self) -> Vec<String> {
        match self {
            Route::Card(v) | Route::Merchant(v) => vec![v.clone()],
            Route::Days {
                shadow,
                newest,
                oldest,
            } => (*oldest..=*newest)
                .rev()
                .map(|d| {
                    let day = utc_day(d * DAY_MS);
                    if *shadow {
                        format!("{SHADOW_PREFIX}{day}")
                    } else {
                        day
                    }
                })
                .collect(),
        }
    }
}

/// A FilterExpression with its names and values.
#[derive(Default)]
struct Expr {
    parts: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, alias: &str, attr: &str) -> String {
        self.names.insert(alias.to_owned(), attr.to_owned());
        alias.to_owned()
    }

    fn value(&mut self, alias: &str, v: &str) -> String {
        self.values
            .insert(alias.to_owned(), AttributeValue::S(v.to_owned()));
        alias.to_owned()
    }
}

/// The query planned from a filter: the route, the time range, the filter expression.
struct Plan {
    route: Route,
    lo: Option<i64>,
    hi: Option<i64>,
    filter: Expr,
}

fn plan(
    f: &AlertFilter,
    cursor: Option<&Cursor>,
    now_ms: i64,
) -> anyhow::Result<(Plan, Option<usize>)> {
    let card = f.card.as_deref().map(str::trim).filter(|c| !c.is_empty());
    let merchant = f
        .merchant
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    if f.card.is_some() && card.is_none() {
        bail!("--card is empty");
    }
    if f.merchant.is_some() && merchant.is_none() {
        bail!("--merchant is empty");
    }
    if let Some(c) = card
        && looks_like_pan(c)
    {
        bail!(
            "--card takes a card token, and that reads as a card number: shardline never stores card numbers (events carrying one are quarantined)"
        );
    }
    if f.shadow && merchant.is_some() {
        bail!(
            "shadow records carry no merchant (they stay out of the by-merchant index): use --card, or no key, with --shadow"
        );
    }
    if f.last_ms.is_some() && f.since_ms.is_some() {
        bail!("give --since or --last, not both");
    }
    if let Some(l) = f.last_ms
        && l <= 0
    {
        bail!("--last must be longer than zero");
    }
    for (flag, t) in [("--since", f.since_ms), ("--until", f.until_ms)] {
        if t.is_some_and(|t| t < EARLIEST_MS) {
            bail!("{flag} is before 0000-01-01, the earliest time there is");
        }
    }
    // The range: given, relative to --until (or now), or pinned by the cursor. A start
    // before the earliest time is the earliest time (so it always has an RFC 3339 form).
    let last_start = match f.last_ms {
        None => None,
        Some(l) => Some(
            f.until_ms
                .unwrap_or(now_ms)
                .checked_sub(l)
                .with_context(|| {
                    format!("--last {l}ms reaches past the earliest time there is: shorten it")
                })?
                .max(EARLIEST_MS),
        ),
    };
    let (mut lo, mut hi) = (f.since_ms.or(last_start), f.until_ms);
    let by_day = card.is_none() && merchant.is_none() || f.shadow;
    if by_day && lo.is_none() {
        lo = Some(
            hi.unwrap_or(now_ms)
                .saturating_sub(DEFAULT_DAYS_BACK * DAY_MS)
                .max(EARLIEST_MS),
        );
    }
    let another_query = |c: &Cursor| {
        anyhow::anyhow!(
            "--after: the cursor continues a query of {} {:?}, not this one: run it with the first page's filters",
            c.i,
            c.p
        )
    };
    if let Some(c) = cursor {
        let index = match (card, merchant) {
            (Some(_), _) if !f.shadow => "by-card",
            (None, Some(_)) => "by-merchant",
            _ => "by-day",
        };
        if c.i != index {
            return Err(another_query(c));
        }
        let differs = |given: Option<i64>, pinned: Option<i64>| given.is_some() && given != pinned;
        if differs(f.since_ms, c.lo) || differs(f.until_ms, c.hi) {
            bail!(
                "--since/--until differ from the first page's: a cursor continues the query it came from"
            );
        }
        (lo, hi) = (c.lo, c.hi);
    }
    if let (Some(l), Some(h)) = (lo, hi)
        && l >= h
    {
        bail!(
            "the range is empty: --since {} is not before --until {}",
            format_rfc3339_ms(l),
            format_rfc3339_ms(h)
        );
    }
    let mut filter = Expr::default();
    let route = match (card, merchant) {
        (Some(c), _) if f.shadow => {
            let (n, v) = (
                filter.name("#subject", "subject"),
                filter.value(":subject", &format!("card:{c}")),
            );
            filter.parts.push(format!("{n} = {v}"));
            None
        }
        (Some(c), m) => {
            if let Some(m) = m {
                let (n, v) = (
                    filter.name("#merchant", "merchant_id"),
                    filter.value(":merchant", &pan_safe_id(m)),
                );
                filter.parts.push(format!("{n} = {v}"));
            }
            Some(Route::Card(c.to_owned()))
        }
        (None, Some(m)) => Some(Route::Merchant(pan_safe_id(m).into_owned())),
        (None, None) => None,
    };
    let route = match route {
        Some(r) => r,
        None => {
            // A window alert's time is its window's end, which may lie a little past
            // now: an open range starts a day later.
            let newest = hi
                .map_or(now_ms.saturating_add(DAY_MS), |h| h.saturating_sub(1))
                .div_euclid(DAY_MS);
            let oldest = lo.unwrap_or(0).div_euclid(DAY_MS);
            if newest - oldest + 1 > MAX_DAYS {
                bail!(
                    "the range spans {} days: a query without --card or --merchant reads one by-day partition per day, at most {MAX_DAYS}; narrow --since/--until",
                    newest - oldest + 1
                );
            }
            Route::Days {
                shadow: f.shadow,
                newest,
                oldest,
            }
        }
    };
    if let Some(o) = f.outcome {
        let (n, v) = (
            filter.name("#outcome", "outcome"),
            filter.value(":outcome", Outcome::from(o).name()),
        );
        // Records written before the outcome was stored were reviews.
        filter.parts.push(match o {
            StoredOutcome::Review => format!("({n} = {v} OR attribute_not_exists({n}))"),
            StoredOutcome::Block => format!("{n} = {v}"),
        });
    }
    if let Some(r) = f.reason.as_deref() {
        let (n, v) = (
            filter.name("#reasons", "reasons"),
            filter.value(":reason", r.trim()),
        );
        filter.parts.push(format!("contains({n}, {v})"));
    }
    if let Some(rs) = f.ruleset.as_deref() {
        let (nv, nh, v) = (
            filter.name("#rs_version", "ruleset_version"),
            filter.name("#rs_hash", "ruleset_hash"),
            filter.value(":ruleset", rs.trim()),
        );
        filter.parts.push(format!("({nv} = {v} OR {nh} = {v})"));
    }
    // Where a cursor resumes: its partition must be one this query reads.
    let resume = match cursor {
        None => None,
        Some(c) => {
            let pos = (c.i == route.index())
                .then(|| route.partitions().iter().position(|p| *p == c.p))
                .flatten();
            Some(pos.ok_or_else(|| another_query(c))?)
        }
    };
    Ok((
        Plan {
            route,
            lo,
            hi,
            filter,
        },
        resume,
    ))
}

/// One page of alerts matching `filter`, newest first: at most `limit` rows, read
/// through an index (Query only), continuing after `after` (a cursor an earlier page
/// returned). `now_ms` places relative and default ranges.
pub async fn query_alerts(
    ddb: &Client,
    table: &str,
    filter: &AlertFilter,
    limit: usize,
    after: Option<&str>,
    now_ms: i64,
) -> anyhow::Result<AlertPage> {
    if !(1..=MAX_LIMIT).contains(&limit) {
        bail!("--limit must be 1 to {MAX_LIMIT}");
    }
    let cursor = after.map(Cursor::decode).transpose()?;
    let (plan, resume) = plan(filter, cursor.as_ref(), now_ms)?;
    let route = &plan.route;
    let partitions = route.partitions();
    // One row past the page tells whether more remain (so a cursor is printed only then).
    let want = limit + 1;
    let mut rows: Vec<(Alert, usize)> = Vec::new();
    let mut requests = 0;
    let mut start_key = cursor.as_ref().map(|c| c.start_key(route.hash_attr()));
    'partitions: for (pi, partition) in partitions.iter().enumerate().skip(resume.unwrap_or(0)) {
        let mut esk = start_key.take();
        loop {
            let need = want - rows.len();
            let mut names = plan.filter.names.clone();
            let mut values = plan.filter.values.clone();
            names.insert("#pk".into(), route.hash_attr().into());
            if plan.lo.is_some() || plan.hi.is_some() {
                names.insert("#t".into(), TIME_KEY.into());
            }
            values.insert(":pk".into(), AttributeValue::S(partition.clone()));
            let mut key = "#pk = :pk".to_owned();
            match (plan.lo, plan.hi) {
                (Some(lo), Some(hi)) => {
                    key.push_str(" AND #t BETWEEN :lo AND :hi");
                    values.insert(":lo".into(), AttributeValue::N(lo.to_string()));
                    values.insert(
                        ":hi".into(),
                        AttributeValue::N(hi.saturating_sub(1).to_string()),
                    );
                }
                (Some(lo), None) => {
                    key.push_str(" AND #t >= :lo");
                    values.insert(":lo".into(), AttributeValue::N(lo.to_string()));
                }
                (None, Some(hi)) => {
                    key.push_str(" AND #t < :hi");
                    values.insert(":hi".into(), AttributeValue::N(hi.to_string()));
                }
                (None, None) => {}
            }
            // Without a filter every row read is kept: read only what the page needs.
            // With one, read more at a time, so a selective filter costs few requests.
            let page_size = if plan.filter.parts.is_empty() {
                need
            } else {
                need.max(100)
            };
            let out = ddb
                .query()
                .table_name(table)
                .index_name(route.index())
                .key_condition_expression(key)
                .set_filter_expression(
                    (!plan.filter.parts.is_empty()).then(|| plan.filter.parts.join(" AND ")),
                )
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .scan_index_forward(false)
                .limit(i32::try_from(page_size.min(MAX_LIMIT)).unwrap_or(1000))
                .set_exclusive_start_key(esk)
                .send()
                .await
                .map_err(|e| {
                    let text = aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string();
                    let missing = text.contains("ResourceNotFound") || text.contains("index");
                    anyhow::anyhow!(
                        "querying {table} through index {}: {text}{}",
                        route.index(),
                        if missing {
                            " (does the table exist, with that index? One deployed before the by-merchant index needs it added: sam deploy, or locally a fresh `shardline bootstrap`)"
                        } else {
                            ""
                        }
                    )
                })?;
            requests += 1;
            for item in out.items() {
                let alert: Alert = serde_dynamo::from_item(item.clone()).with_context(|| {
                    format!(
                        "alert {:?} does not read as a decision record",
                        item.get(TABLE_KEY).and_then(|v| v.as_s().ok())
                    )
                })?;
                rows.push((alert, pi));
                if rows.len() == want {
                    break 'partitions;
                }
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => esk = Some(k.clone()),
                _ => break,
            }
        }
    }
    let next = if rows.len() == want {
        rows.pop();
        let (last, pi) = rows.last().context("a page holds at least one row")?;
        Some(
            Cursor {
                i: route.index().to_owned(),
                p: partitions[*pi].clone(),
                a: last.alert_id.clone(),
                t: last.event_time_ms,
                lo: plan.lo,
                hi: plan.hi,
            }
            .encode(),
        )
    } else {
        None
    };
    Ok(AlertPage {
        alerts: rows.into_iter().map(|(a, _)| a).collect(),
        next,
        index: route.index(),
        requests,
    })
}

/// Parses `--limit`: 1 to [`MAX_LIMIT`].
pub fn parse_limit(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: rows per page, 1 to {MAX_LIMIT}")),
    }
}

/// Parses epoch milliseconds (digits) or an RFC 3339 time (`2025-11-26T10:00:00Z`,
/// `...+01:00`, fractions of a second allowed); a date alone (`2025-11-26`) is its UTC
/// midnight.
pub fn parse_time_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let ms: i64 = s.parse().map_err(|_| format!("{s:?}: out of range"))?;
        // 1973-03-03 in ms; any epoch-seconds time after 1973 is below it.
        if ms < 100_000_000_000 {
            return Err(format!(
                "{s:?} reads as epoch seconds (or a time before 1973): give epoch milliseconds, or an RFC 3339 time such as 2025-11-26T10:00:00Z"
            ));
        }
        return Ok(ms);
    }
    let bad = |why: &str| {
        format!("{s:?}: {why}; expected epoch ms or RFC 3339, like 2025-11-26T10:00:00Z")
    };
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = s.get(from..from + len).ok_or_else(|| {
            bad(if s.len() < from + len {
                "too short"
            } else {
                "not a date and time"
            })
        })?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad("not a date and time"));
        }
        part.parse().map_err(|_| bad("not a number"))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad("not a date"));
    }
    let (y, m, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return Err(bad("no such day"));
    }
    let days = days_from_civil(y, m, d);
    if b.len() == 10 {
        return Ok(days * DAY_MS);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return Err(bad("not a time of day"));
    }
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if h > 23 || mi > 59 || sec > 60 {
        return Err(bad("no such time of day"));
    }
    let mut i = 19;
    let mut frac_ms = 0;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad("a '.' without fraction digits"));
        }
        let first3: String = s[i + 1..i + 1 + digits.min(3)].to_owned();
        frac_ms = format!("{first3:0<3}")
            .parse()
            .map_err(|_| bad("fraction"))?;
        i += 1 + digits;
    }
    let offset_min = match &s[i..] {
        "Z" | "z" => 0,
        "" => return Err(bad("no UTC offset (add Z for UTC, or +HH:MM)")),
        o if o.len() == 6
            && (o.starts_with('+') || o.starts_with('-'))
            && o.as_bytes().get(3) == Some(&b':') =>
        {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err(bad("no such UTC offset"));
            }
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return Err(bad("a UTC offset is Z or +HH:MM")),
    };
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset_min * 60;
    Ok(secs * 1000 + frac_ms)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Writes a page: NDJSON (one alert per line) or a table. The cursor for the next page
/// goes to `note` (stderr) with `--json`, so the NDJSON stays only alerts.
pub fn print_page(
    out: &mut impl Write,
    note: &mut impl Write,
    page: &AlertPage,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        for a in &page.alerts {
            writeln!(out, "{}", serde_json::to_string(a)?)?;
        }
        if let Some(next) = &page.next {
            writeln!(note, "more: add --after {next}")?;
        }
        return Ok(());
    }
    let card = |a: &Alert| {
        a.card_token
            .clone()
            .or_else(|| a.subject.strip_prefix("card:").map(str::to_owned))
            .unwrap_or_else(|| "-".into())
    };
    let merchant = |a: &Alert| {
        a.merchant_id
            .clone()
            .or_else(|| a.subject.strip_prefix("merchant:").map(str::to_owned))
            .unwrap_or_else(|| {
                if a.subject == "global" {
                    "(global)"
                } else {
                    "-"
                }
                .into()
            })
    };
    let (wc, wm, wr) = page.alerts.iter().fold((4, 8, 7), |(c, m, r), a| {
        (
            c.max(card(a).len()),
            m.max(merchant(a).len()),
            r.max(a.ruleset_version.len()),
        )
    });
    writeln!(
        out,
        "{:<24}  {:<7} {:>5}  {:<wc$}  {:<wm$}  {:<wr$}  reasons",
        "time (UTC)", "outcome", "score", "card", "merchant", "ruleset"
    )?;
    for a in &page.alerts {
        writeln!(
            out,
            "{:<24}  {:<7} {:>5}  {:<wc$}  {:<wm$}  {:<wr$}  {}",
            format_rfc3339_ms(a.event_time_ms),
            a.outcome.name(),
            a.score,
            card(a),
            merchant(a),
            a.ruleset_version,
            a.reasons.join(",")
        )?;
    }
    let n = page.alerts.len();
    let counted = format!(
        "{n} alert{} (index {})",
        if n == 1 { "" } else { "s" },
        page.index
    );
    match &page.next {
        Some(next) => writeln!(out, "{counted}; more: add --after {next}")?,
        None => writeln!(out, "{counted}; no more")?,
    }
    Ok(())
}

/// `shardline query alerts` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct AlertsArgs {
    /// One card's decisions (the by-card index). With --merchant, that card's at that merchant.
    #[arg(long, value_name = "TOKEN")]
    pub card: Option<String>,
    /// One merchant's decisions (the by-merchant index): the scorer's live records and
    /// the merchant's window alerts.
    #[arg(long, value_name = "ID")]
    pub merchant: Option<String>,
    /// Only this decision.
    #[arg(long, value_enum)]
    pub outcome: Option<StoredOutcome>,
    /// Only decisions with this reason code among their reasons (e.g. VELOCITY_1M).
    #[arg(long, value_name = "CODE")]
    pub reason: Option<String>,
    /// Only decisions of this rule-set version or content hash (sha256:...).
    #[arg(long, value_name = "VERSION_OR_HASH")]
    pub ruleset: Option<String>,
    /// From this time, inclusive: RFC 3339 (2025-11-26T10:00:00Z, or a date) or epoch ms.
    /// Without --card or --merchant the default is 7 days before --until (or now).
    #[arg(long, value_parser = parse_time_ms, conflicts_with = "last")]
    pub since: Option<i64>,
    /// Up to this time, exclusive: RFC 3339 or epoch ms. Default: open.
    #[arg(long, value_parser = parse_time_ms)]
    pub until: Option<i64>,
    /// The last this long before --until (or now): 90m, 24h, 7d.
    #[arg(long, value_parser = parse_duration_ms)]
    pub last: Option<i64>,
    /// The shadow rule set's decisions (stored apart, never acted on) instead of the live ones.
    #[arg(long)]
    pub shadow: bool,
    /// Rows per page.
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = parse_limit)]
    pub limit: usize,
    /// Continue after a page: the token the previous page printed (same filters).
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
    /// One decision record per line as JSON (NDJSON) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The alerts table (a deployed stack's is its `AlertsTableName` output). Default:
    /// the template's AlertsTable in the local emulators.
    #[arg(long, env = "ALERTS_TABLE")]
    pub table: Option<String>,
    /// The template, for the local default table name.
    #[command(flatten)]
    pub template: TemplateArgs,
}

impl AlertsArgs {
    /// The filter the arguments describe.
    pub fn filter(&self) -> AlertFilter {
        AlertFilter {
            card: self.card.clone(),
            merchant: self.merchant.clone(),
            outcome: self.outcome,
            reason: self.reason.clone(),
            ruleset: self.ruleset.clone(),
            since_ms: self.since,
            until_ms: self.until,
            last_ms: self.last,
            shadow: self.shadow,
        }
    }

    fn table(&self) -> anyhow::Result<String> {
        match &self.table {
            Some(t) if !t.is_empty() => Ok(t.clone()),
            _ => {
                check_endpoint().context(
                    "no --table or ALERTS_TABLE given, so the local emulators' table is used",
                )?;
                table_name(&self.template.load()?, "AlertsTable")
            }
        }
    }
}

/// `shardline query alerts`.
pub async fn run(args: &AlertsArgs) -> anyhow::Result<()> {
    let table = args.table()?;
    let sdk = shardline_aws::sdk::load_sdk_config().await;
    let ddb = Client::new(&sdk);
    let page = query_alerts(
        &ddb,
        &table,
        &args.filter(),
        args.limit,
        args.after.as_deref(),
        now_ms(),
    )
    .await?;
    print_page(
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
        &page,
        args.json,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_dates_or_epoch_ms() {
        let t = 1_764_151_200_123; // 2025-11-26T10:00:00.123Z
        assert_eq!(format_rfc3339_ms(t), "2025-11-26T10:00:00.123Z");
        assert_eq!(parse_time_ms("2025-11-26T10:00:00.123Z"), Ok(t));
        assert_eq!(parse_time_ms("2025-11-26T10:00:00.123456Z"), Ok(t));
        assert_eq!(parse_time_ms("2025-11-26t10:00:00.1z"), Ok(t - 23));
        assert_eq!(parse_time_ms("2025-11-26T11:30:00.123+01:30"), Ok(t));
        assert_eq!(parse_time_ms("2025-11-26T05:00:00.123-05:00"), Ok(t));
        assert_eq!(parse_time_ms("2025-11-26"), Ok(t - 36_000_123));
        assert_eq!(parse_time_ms("1764151200123"), Ok(t));
        assert_eq!(parse_time_ms("2024-02-29"), Ok(1_709_164_800_000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time_ms("1969-12-31T23:59:59Z"), Ok(-1000));
        for bad in [
            "",
            "yesterday",
            "1764151200",
            "2025-02-29",
            "2025-13-01",
            "2025-11-26T10:00:00",
            "2025-11-26T25:00:00Z",
            "2025-11-26T10:00Z",
            "2025-11-26T10:00:00.Z",
            "2025-11-26T10:00:00+0100",
        ] {
            assert!(parse_time_ms(bad).is_err(), "{bad:?}");
        }
        assert!(parse_time_ms("1764151200").unwrap_err().contains("seconds"));
        for ms in [0, 951_782_400_000, 1_764_151_200_123, 4_102_444_799_999] {
            assert_eq!(parse_time_ms(&format_rfc3339_ms(ms)), Ok(ms));
        }
    }

    #[test]
    fn a_cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            i: "by-day".into(),
            p: "2025-11-26".into(),
            a: "tok/e1".into(),
            t: 1_764_151_200_123,
            lo: Some(1),
            hi: None,
        };
        let s = c.encode();
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Cursor::decode(&s).unwrap(), c);
        assert!(Cursor::decode("not a cursor").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("{}")).is_err());
    }

    #[test]
    fn a_time_with_a_multibyte_character_is_an_error_not_a_panic() {
        for bad in [
            "2025-11-26T10:00:00+0\u{e9}:0",
            "2025-11-26T10:00:00-\u{e9}\u{e9}0",
            "2025-11-26T10:00:00.5+0\u{e9}:0",
            "2025-11-2\u{e9}T10:00:00Z",
            "2025-11-26T1\u{e9}:00:00Z",
            "2025-11-26T10:00:0\u{e9}Z",
            "\u{e9}025-11-26",
        ] {
            let e = parse_time_ms(bad).unwrap_err();
            assert!(e.contains("expected epoch ms or RFC 3339"), "{bad:?}: {e}");
        }
    }

    /// A cursor as anyone can craft one: URL-safe base64 of any JSON.
    fn tampered(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn a_tampered_cursor_is_an_error_not_a_panic() {
        let now = 1_764_151_200_000;
        let run = |after: &str, f: &AlertFilter| {
            Cursor::decode(after).and_then(|c| plan(f, Some(&c), now).map(|_| ()))
        };
        let card = AlertFilter {
            card: Some("tok_1".into()),
            ..filter()
        };
        for (json, f) in [
            (
                r#"{"i":"by-day","p":"2025-11-26","a":"x","t":0,"hi":-9223372036854775808}"#,
                filter(),
            ),
            (
                r#"{"i":"by-day","p":"2025-11-26","a":"x","t":0,"lo":-9223372036854775808,"hi":-9223372036854775000}"#,
                filter(),
            ),
            (
                r#"{"i":"by-day","p":"2025-11-26","a":"x","t":1764115200000,"lo":1764115200000,"hi":-9223372036854775808}"#,
                filter(),
            ),
            (
                r#"{"i":"by-card","p":"tok_1","a":"x","t":0,"hi":-9223372036854775808}"#,
                card.clone(),
            ),
            (
                r#"{"i":"by-card","p":"tok_1","a":"x","t":5,"lo":10,"hi":20}"#,
                card.clone(),
            ),
            (
                r#"{"i":"by-card","p":"tok_1","a":"","t":15,"lo":10,"hi":20}"#,
                card.clone(),
            ),
            (
                r#"{"i":"by-nothing","p":"tok_1","a":"x","t":15}"#,
                card.clone(),
            ),
        ] {
            let e = format!("{:#}", run(&tampered(json), &f).unwrap_err());
            assert!(e.contains("--after"), "{json}: {e}");
        }
        // A cursor the command printed still continues its query.
        let page_one = Cursor {
            i: "by-card".into(),
            p: "tok_1".into(),
            a: "tok_1/e9".into(),
            t: 15,
            lo: Some(10),
            hi: Some(20),
        };
        assert!(run(&page_one.encode(), &card).is_ok());
    }

    #[test]
    fn a_last_reaching_past_the_earliest_time_is_an_error_not_a_panic() {
        let now = 1_764_151_200_000;
        let until = parse_time_ms("0000-01-01").unwrap();
        let last = crate::query::parse_duration_ms("153722867280912m").unwrap();
        for f in [
            AlertFilter {
                until_ms: Some(until),
                last_ms: Some(last),
                ..filter()
            },
            AlertFilter {
                card: Some("tok_1".into()),
                until_ms: Some(until),
                last_ms: Some(last),
                ..filter()
            },
        ] {
            let e = plan(&f, None, now).err().expect("an error").to_string();
            assert!(e.contains("--last"), "{e}");
        }
        // A long --last on one card reads its whole history from the earliest time.
        let (p, _) = plan(
            &AlertFilter {
                card: Some("tok_1".into()),
                last_ms: Some(i64::MAX / 2),
                ..filter()
            },
            None,
            now,
        )
        .unwrap();
        assert_eq!(p.lo, Some(EARLIEST_MS));
    }

    fn filter() -> AlertFilter {
        AlertFilter::default()
    }

    #[test]
    fn keys_choose_the_index_and_bad_combinations_say_why() {
        let now = 1_764_151_200_000;
        let route = |f: AlertFilter| plan(&f, None, now).map(|(p, _)| p.route);
        let card = AlertFilter {
            card: Some("tok_1".into()),
            ..filter()
        };
        assert_eq!(route(card.clone()).unwrap(), Route::Card("tok_1".into()));
        let both = AlertFilter {
            merchant: Some("m-1".into()),
            ..card.clone()
        };
        let (p, _) = plan(&both, None, now).unwrap();
        assert_eq!(p.route, Route::Card("tok_1".into()));
        assert_eq!(p.filter.parts, ["#merchant = :merchant"]);
        assert_eq!(
            route(AlertFilter {
                merchant: Some("4111111111111111".into()),
                ..filter()
            })
            .unwrap(),
            Route::Merchant(pan_safe_id("4111111111111111").into_owned())
        );
        let Route::Days {
            shadow,
            newest,
            oldest,
        } = route(filter()).unwrap()
        else {
            panic!("by-day")
        };
        assert!(!shadow);
        assert_eq!(newest - oldest, DEFAULT_DAYS_BACK + 1);
        assert!(matches!(
            route(AlertFilter {
                shadow: true,
                ..card.clone()
            })
            .unwrap(),
            Route::Days { shadow: true, .. }
        ));
        for (f, says) in [
            (
                AlertFilter {
                    shadow: true,
                    ..both
                },
                "shadow records carry no merchant",
            ),
            (
                AlertFilter {
                    card: Some("4111 1111 1111 1111".into()),
                    ..filter()
                },
                "card number",
            ),
            (
                AlertFilter {
                    since_ms: Some(now),
                    until_ms: Some(now),
                    ..filter()
                },
                "range is empty",
            ),
            (
                AlertFilter {
                    since_ms: Some(0),
                    ..filter()
                },
                "at most 366",
            ),
            (
                AlertFilter {
                    card: Some(" ".into()),
                    ..filter()
                },
                "--card is empty",
            ),
        ] {
            let e = route(f).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        // A card or merchant needs no range: its whole history is one partition.
        assert_eq!(
            route(AlertFilter {
                since_ms: Some(0),
                ..card
            })
            .unwrap(),
            Route::Card("tok_1".into())
        );
    }
}
