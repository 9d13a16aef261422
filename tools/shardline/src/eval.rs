//! `shardline eval`: detection measured across attack *families*, not attack points.
//!
//! Each family has parameters drawn over realistic ranges (a burst of 5-30 purchases over
//! 1-15 minutes, card testing with 3-40 attempts, account takeover after 2-42 days of
//! dormancy, impossible travel over 1,000-18,500 km, merchant decline spikes of 10-60
//! declines over 3-15 minutes), and each has benign look-alikes (a real traveller, a big
//! purchase at a regular merchant, a shopping trip across many stores, a merchant's rush
//! hour). They are injected into clean background traffic for several seeds and scored
//! through the scorer's own per-event code (the backtest's [`Replay`]) and the window
//! rules over each merchant's 15-minute windows. The report: recall per family and per
//! parameter bucket, the false-positive rate of each look-alike, precision of alerts on
//! attack events, and alerts per 1,000 background events.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use serde::Serialize;
use shardline_core::event::{AuthResult, Channel, Location, Txn};
use shardline_core::fraud::backtest::Replay;
use shardline_core::fraud::features::haversine_km;
use shardline_core::fraud::rules::{Outcome, Policy};
use shardline_core::window::rules::WindowRuleSet;
use shardline_core::window::{KeyKind, Metrics, window_start};

use crate::traffic::{CITIES, GenConfig, generate, merchant_of};

/// Attack families.
pub const FAMILIES: &[&str] = &[
    "velocity_burst",
    "card_testing",
    "account_takeover",
    "impossible_travel",
    "merchant_decline_spike",
];
/// Benign look-alikes.
pub const LOOK_ALIKES: &[&str] = &[
    "traveller",
    "big_regular",
    "big_after_quiet",
    "shopping_trip",
    "rush_hour",
];

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// Merchant windows the eval reads (the default merchant rules' width).
const MERCHANT_WINDOW_MS: i64 = 15 * MINUTE;

/// Eval settings.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// Seeds: one traffic set each.
    pub seeds: Vec<u64>,
    /// Background events per seed.
    pub background: usize,
    /// Instances of each family and look-alike per seed.
    pub instances: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            seeds: vec![1, 2, 3, 4, 5],
            background: 20_000,
            instances: 30,
        }
    }
}

/// One injected instance.
#[derive(Clone, Debug)]
struct Instance {
    family: &'static str,
    attack: bool,
    bucket: String,
    /// The merchant, for merchant-level instances.
    merchant: Option<String>,
    /// The time range, for merchant-level instances.
    range: (i64, i64),
}

/// A family's or look-alike's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Row {
    /// Instances injected.
    pub instances: u64,
    /// With at least one alert.
    pub flagged: u64,
    /// flagged / instances.
    pub rate: f64,
}

/// What `shardline eval` measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EvalReport {
    /// Seeds run.
    pub seeds: Vec<u64>,
    /// Rule set version.
    pub rules: String,
    /// Recall per family (all buckets).
    pub families: BTreeMap<String, Row>,
    /// Recall per family and parameter bucket.
    pub buckets: BTreeMap<String, BTreeMap<String, Row>>,
    /// Lowest recall of a family over the seeds.
    pub worst_seed_recall: BTreeMap<String, f64>,
    /// False-positive rate per look-alike (instances with any alert).
    pub look_alikes: BTreeMap<String, Row>,
    /// Card alerts (events reviewed or blocked), all seeds.
    pub alerts: u64,
    /// Of those, on attack events.
    pub alerts_on_attacks: u64,
    /// alerts_on_attacks / alerts.
    pub precision: f64,
    /// Background events, all seeds.
    pub background_events: u64,
    /// Card alerts on background events.
    pub background_alerts: u64,
    /// Per 1,000 background events.
    pub background_alerts_per_1000: f64,
    /// Merchant windows with traffic, all seeds.
    pub merchant_windows: u64,
    /// Of those, fired by a window rule with no decline spike in them.
    pub merchant_window_false_alerts: u64,
}

struct Card {
    token: String,
    city: usize,
    mean: f64,
}

struct Fam {
    rng: StdRng,
    seed: u64,
    next: u64,
    events: Vec<Txn>,
    /// Event id -> instance.
    owner: HashMap<String, usize>,
    instances: Vec<Instance>,
    merchants: usize,
}

impl Fam {
    fn card(&mut self) -> Card {
        self.next += 1;
        Card {
            token: format!("tok_fam{}_{:06}", self.seed, self.next),
            city: self.rng.random_range(0..CITIES.len()),
            mean: [1_500.0, 3_000.0, 6_000.0, 12_000.0][self.rng.random_range(0..4)]
                * (0.5 + self.rng.random::<f64>()),
        }
    }

    /// Online with probability `p_ecom`, else in person.
    fn channel(&mut self, p_ecom: f64) -> Channel {
        if self.rng.random::<f64>() < p_ecom {
            Channel::Ecom
        } else {
            Channel::Pos
        }
    }

    fn amount(&mut self, c: &Card) -> i64 {
        let d = LogNormal::new(c.mean.ln(), 0.6)
            .unwrap_or_else(|_| LogNormal::new(7.0, 0.6).expect("valid"));
        (d.sample(&mut self.rng) as i64).clamp(50, 2_000_000)
    }

    /// A background merchant in `city`.
    fn merchant_in(&mut self, city: usize) -> (String, usize, u16) {
        let per_city = (self.merchants / CITIES.len()).max(1);
        let i = self.rng.random_range(0..per_city) * CITIES.len() + city;
        merchant_of(i)
    }

    /// A background merchant in `city` of one half of them (`half` 0 or 1): decline
    /// spikes and rush hours never share a merchant, so neither is credited with the
    /// other's windows.
    fn merchant_in_half(&mut self, city: usize, half: usize) -> (String, usize, u16) {
        let per_city = (self.merchants / CITIES.len()).max(2);
        let k = self.rng.random_range(0..per_city / 2) * 2 + half;
        merchant_of(k * CITIES.len() + city)
    }

    fn far_city(&mut self, home: usize, min_km: f64) -> Option<usize> {
        let (_, lat, lon, _) = CITIES[home];
        let far: Vec<usize> = (0..CITIES.len())
            .filter(|&c| haversine_km(lat, lon, CITIES[c].1, CITIES[c].2) >= min_km)
            .collect();
        (!far.is_empty()).then(|| far[self.rng.random_range(0..far.len())])
    }

    #[allow(clippy::too_many_arguments)]
    fn txn(
        &mut self,
        card: &Card,
        merchant: &(String, usize, u16),
        amount: i64,
        t: i64,
        channel: Channel,
        declined: bool,
        owner: Option<usize>,
    ) {
        self.next += 1;
        let (_, lat, lon, country) = CITIES[merchant.1];
        let event_id = format!("fam-{}-{:07}", self.seed, self.next);
        if let Some(o) = owner {
            self.owner.insert(event_id.clone(), o);
        }
        self.events.push(Txn {
            card_bin: None,
            event_id,
            card_token: card.token.clone(),
            merchant_id: merchant.0.clone(),
            mcc: merchant.2,
            amount_minor: amount.max(1),
            currency: "USD".into(),
            event_time_ms: t,
            location: Location {
                lat,
                lon,
                country: country.into(),
            },
            channel,
            auth_result: if declined {
                AuthResult::Declined
            } else {
                AuthResult::Approved
            },
        });
    }

    /// `n` ordinary purchases at home between `from` and `to`.
    fn history(&mut self, c: &Card, n: std::ops::Range<usize>, from: i64, to: i64) {
        let n = self.rng.random_range(n);
        for _ in 0..n {
            let t = self.rng.random_range(from..to.max(from + 1));
            let m = self.merchant_in(c.city);
            let a = self.amount(c);
            let ch = self.channel(0.25);
            self.txn(c, &m, a, t, ch, false, None);
        }
    }

    fn instance(&mut self, family: &'static str, attack: bool, bucket: String) -> usize {
        self.instances.push(Instance {
            family,
            attack,
            bucket,
            merchant: None,
            range: (0, 0),
        });
        self.instances.len() - 1
    }
}

fn bucket(x: i64, edges: &[(i64, &str)]) -> String {
    edges
        .iter()
        .find(|(hi, _)| x <= *hi)
        .or(edges.last())
        .map_or_else(String::new, |(_, name)| (*name).to_owned())
}

/// Injects every family and look-alike, `n` instances each, between `start` and `end`.
fn inject(f: &mut Fam, n: usize, start: i64, end: i64) {
    let span = (end - start - 2 * HOUR).max(HOUR);
    let at = |f: &mut Fam| start + HOUR + f.rng.random_range(0..span);
    for _ in 0..n {
        // Velocity burst: 5-30 ordinary purchases over 1-15 minutes.
        let c = f.card();
        let t0 = at(f);
        f.history(&c, 5..15, t0 - 10 * DAY, t0 - DAY);
        let (count, dur) = (
            f.rng.random_range(5..=30),
            f.rng.random_range(MINUTE..=15 * MINUTE),
        );
        let o = f.instance(
            "velocity_burst",
            true,
            bucket(
                dur / MINUTE,
                &[(3, "1-3 min"), (7, "4-7 min"), (15, "8-15 min")],
            ),
        );
        for _ in 0..count {
            let m = f.merchant_in(c.city);
            let a = f.amount(&c);
            let t = t0 + f.rng.random_range(0..dur);
            let ch = f.channel(0.5);
            f.txn(&c, &m, a, t, ch, false, Some(o));
        }

        // Card testing: 3-40 small attempts at many merchants, some approved.
        let c = f.card();
        let t0 = at(f);
        if f.rng.random::<f64>() < 0.5 {
            f.history(&c, 3..12, t0 - 20 * DAY, t0 - DAY);
        }
        let attempts = f.rng.random_range(3..=40);
        let dur = f.rng.random_range(MINUTE..=20 * MINUTE);
        let decline_p = f.rng.random_range(0.3..0.9);
        let o = f.instance(
            "card_testing",
            true,
            bucket(
                attempts,
                &[
                    (5, "3-5 attempts"),
                    (15, "6-15 attempts"),
                    (40, "16-40 attempts"),
                ],
            ),
        );
        for _ in 0..attempts {
            let city = f.rng.random_range(0..CITIES.len());
            let m = f.merchant_in(city);
            let a = f.rng.random_range(50..400);
            let t = t0 + f.rng.random_range(0..dur);
            let declined = f.rng.random::<f64>() < decline_p;
            f.txn(&c, &m, a, t, Channel::Ecom, declined, Some(o));
        }

        // Account takeover: a card dormant for 2-42 days, then 1-3 large purchases from a
        // new country, at merchants it never used, often high-risk ones.
        let c = f.card();
        let t0 = at(f);
        let dormant = f.rng.random_range(2 * DAY..=42 * DAY);
        f.history(&c, 5..20, t0 - dormant - 30 * DAY, t0 - dormant);
        let o = f.instance(
            "account_takeover",
            true,
            bucket(
                dormant / DAY,
                &[
                    (7, "dormant 2-7 d"),
                    (21, "dormant 8-21 d"),
                    (42, "dormant 22-42 d"),
                ],
            ),
        );
        let far = f
            .far_city(c.city, 1_000.0)
            .unwrap_or((c.city + 6) % CITIES.len());
        let channel = f.channel(0.5);
        for k in 0..f.rng.random_range(1..=3) {
            let m = if f.rng.random::<f64>() < 0.6 {
                let (id, _, _) = f.merchant_in(far);
                (
                    format!("{id}-x"),
                    far,
                    [4829u16, 6051, 7995, 5967, 5816, 5732][f.rng.random_range(0..6)],
                )
            } else {
                f.merchant_in(far)
            };
            let a = (c.mean * f.rng.random_range(5.0..40.0)) as i64;
            let t = t0 + k * f.rng.random_range(MINUTE..10 * MINUTE);
            f.txn(&c, &m, a, t, channel, false, Some(o));
        }

        // Impossible travel: card present at home, then card present 1,000 km or more
        // away sooner than a plane could get there.
        let c = f.card();
        let t0 = at(f);
        f.history(&c, 3..10, t0 - 7 * DAY, t0 - 2 * HOUR);
        let m = f.merchant_in(c.city);
        let a = f.amount(&c);
        f.txn(&c, &m, a, t0, Channel::Pos, false, None);
        if let Some(far) = f.far_city(c.city, 1_000.0) {
            let km = haversine_km(
                CITIES[c.city].1,
                CITIES[c.city].2,
                CITIES[far].1,
                CITIES[far].2,
            );
            // Faster than 1,200 km/h: at most km / 1,200 hours later.
            let max_gap = ((km / 1_200.0) * HOUR as f64) as i64;
            let gap = f.rng.random_range(5 * MINUTE..max_gap.max(5 * MINUTE + 1));
            let o = f.instance(
                "impossible_travel",
                true,
                bucket(
                    km as i64,
                    &[(3_000, "1-3k km"), (8_000, "3-8k km"), (20_000, "8k+ km")],
                ),
            );
            for k in 0..f.rng.random_range(1..=3) {
                let m = f.merchant_in(far);
                let a = f.amount(&c);
                f.txn(
                    &c,
                    &m,
                    a,
                    t0 + gap + k * 7 * MINUTE,
                    Channel::Pos,
                    false,
                    Some(o),
                );
            }
        }

        // Merchant decline spike: 10-60 declines from many cards at one merchant over
        // 3-15 minutes.
        let t0 = at(f);
        let city = f.rng.random_range(0..CITIES.len());
        let m = f.merchant_in_half(city, 0);
        let declines = f.rng.random_range(10..=60);
        let dur = f.rng.random_range(3 * MINUTE..=15 * MINUTE);
        let o = f.instance(
            "merchant_decline_spike",
            true,
            bucket(
                declines,
                &[
                    (20, "10-20 declines"),
                    (40, "21-40 declines"),
                    (60, "41-60 declines"),
                ],
            ),
        );
        f.instances[o].merchant = Some(m.0.clone());
        f.instances[o].range = (t0, t0 + dur);
        for _ in 0..declines {
            let c = Card { city, ..f.card() };
            let a = f.amount(&c);
            let t = t0 + f.rng.random_range(0..dur);
            f.txn(&c, &m, a, t, Channel::Ecom, true, None);
        }

        // Look-alike: a traveller, who flies (at most 700 km/h door to door) and shops.
        let c = f.card();
        let t0 = at(f);
        f.history(&c, 8..20, t0 - 20 * DAY, t0 - 3 * HOUR);
        let m = f.merchant_in(c.city);
        let a = f.amount(&c);
        f.txn(&c, &m, a, t0 - 2 * HOUR, Channel::Pos, false, None);
        if let Some(far) = f.far_city(c.city, 1_000.0) {
            let km = haversine_km(
                CITIES[c.city].1,
                CITIES[c.city].2,
                CITIES[far].1,
                CITIES[far].2,
            );
            let gap = ((km / 700.0) * HOUR as f64) as i64 + f.rng.random_range(HOUR..3 * HOUR);
            let o = f.instance("traveller", false, String::new());
            for k in 0..f.rng.random_range(3..=8) {
                let m = f.merchant_in(far);
                let a = f.amount(&c);
                let t = t0 - 2 * HOUR + gap + k * f.rng.random_range(20 * MINUTE..2 * HOUR);
                f.txn(&c, &m, a, t, Channel::Pos, false, Some(o));
            }
        }

        // Look-alike: a big purchase at a merchant the card uses regularly.
        let c = f.card();
        let t0 = at(f);
        let regular = f.merchant_in(c.city);
        f.history(&c, 5..15, t0 - 30 * DAY, t0 - DAY);
        for _ in 0..f.rng.random_range(3..6) {
            let t = f.rng.random_range(t0 - 30 * DAY..t0 - DAY);
            let a = f.amount(&c);
            f.txn(&c, &regular, a, t, Channel::Pos, false, None);
        }
        let o = f.instance("big_regular", false, String::new());
        let a = (c.mean * f.rng.random_range(8.0..25.0)) as i64;
        f.txn(&c, &regular, a, t0, Channel::Pos, false, Some(o));

        // Look-alike: an occasional shopper's big purchase after days of quiet: 3-8 times
        // the card's typical amount at a new shop in town, often electronics, often online.
        let c = f.card();
        let t0 = at(f);
        let quiet = f.rng.random_range(2 * DAY..=10 * DAY);
        f.history(&c, 4..12, t0 - quiet - 60 * DAY, t0 - quiet);
        let o = f.instance("big_after_quiet", false, String::new());
        let mut m = f.merchant_in(c.city);
        if f.rng.random::<f64>() < 0.5 {
            m.2 = 5732;
        }
        let a = (c.mean * f.rng.random_range(3.0..8.0)) as i64;
        let ch = f.channel(0.5);
        f.txn(&c, &m, a, t0, ch, false, Some(o));

        // Look-alike: a shopping trip, 6-14 shops, 8 to 25 minutes from one to the next.
        let c = f.card();
        let t0 = at(f);
        f.history(&c, 5..15, t0 - 20 * DAY, t0 - DAY);
        let o = f.instance("shopping_trip", false, String::new());
        let mut t = t0;
        for _ in 0..f.rng.random_range(6..=14) {
            let m = f.merchant_in(c.city);
            let a = f.amount(&c);
            f.txn(&c, &m, a, t, Channel::Pos, false, Some(o));
            t += f.rng.random_range(8 * MINUTE..25 * MINUTE);
        }

        // Look-alike: a merchant's rush hour, 40-120 cards in 15 minutes, 3 % declined.
        let t0 = at(f);
        let city = f.rng.random_range(0..CITIES.len());
        let m = f.merchant_in_half(city, 1);
        let o = f.instance("rush_hour", false, String::new());
        f.instances[o].merchant = Some(m.0.clone());
        f.instances[o].range = (t0, t0 + 15 * MINUTE);
        for _ in 0..f.rng.random_range(40..=120) {
            let c = Card { city, ..f.card() };
            let a = f.amount(&c);
            let t = t0 + f.rng.random_range(0..15 * MINUTE);
            let declined = f.rng.random::<f64>() < 0.03;
            f.txn(&c, &m, a, t, Channel::Pos, declined, None);
        }
    }
}

/// Runs the eval.
pub fn run(cfg: &EvalConfig, policy: &Policy, window_rules: &WindowRuleSet) -> EvalReport {
    let mut report = EvalReport {
        seeds: cfg.seeds.clone(),
        rules: policy.rules.version.clone(),
        ..EvalReport::default()
    };
    let mut per_seed: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let merchant_rules: Vec<_> = window_rules
        .for_window(KeyKind::Merchant, MERCHANT_WINDOW_MS)
        .collect();
    for &seed in &cfg.seeds {
        let end = 1_795_000_000_000;
        let span = 12 * HOUR;
        let gen_cfg = GenConfig {
            seed,
            events: cfg.background,
            end_ms: end,
            span_ms: span,
            scenarios_each: 0,
            malformed: 0.0,
            unknown_schema: 0.0,
            duplicates: 0.0,
            out_of_order: 0.0,
            very_late: 0.0,
            ..GenConfig::default()
        };
        let background = generate(&gen_cfg);
        let mut f = Fam {
            rng: StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            seed,
            next: 0,
            events: background
                .records
                .into_iter()
                .filter_map(|r| r.txn)
                .collect(),
            owner: HashMap::new(),
            instances: Vec::new(),
            merchants: gen_cfg.merchants,
        };
        // Each background card's past month (0-15 purchases in its town, amounts like
        // its own), so history-based rules meet cards with history.
        let mut seen: HashSet<String> = HashSet::new();
        let firsts: Vec<Txn> = f
            .events
            .iter()
            .filter(|t| seen.insert(t.card_token.clone()))
            .cloned()
            .collect();
        for first in firsts {
            for _ in 0..f.rng.random_range(0..=15) {
                f.next += 1;
                let mut t = first.clone();
                t.event_id = format!("hist-{seed}-{:07}", f.next);
                t.event_time_ms = end - span - f.rng.random_range(HOUR..30 * DAY);
                let scale = LogNormal::new(0.0, 0.6).map_or(1.0, |d| d.sample(&mut f.rng));
                t.amount_minor = ((first.amount_minor as f64) * scale).max(50.0) as i64;
                f.events.push(t);
            }
        }
        let background_n = f.events.len();
        inject(&mut f, cfg.instances, end - span, end);
        let is_background: HashSet<String> = f.events[..background_n]
            .iter()
            .map(|t| t.event_id.clone())
            .collect();
        f.events.sort_by_key(|t| t.event_time_ms);

        // Card rules, event by event, through the scorer's own code.
        let mut replay = Replay::new();
        let mut flagged_instances: HashSet<usize> = HashSet::new();
        for t in &f.events {
            let Some(d) = replay.step(t, &[policy]) else {
                continue;
            };
            let flagged = d[0].outcome != Outcome::Allow;
            if is_background.contains(&t.event_id) {
                report.background_events += 1;
                report.background_alerts += u64::from(flagged);
            }
            if !flagged {
                continue;
            }
            report.alerts += 1;
            if let Some(&o) = f.owner.get(&t.event_id) {
                flagged_instances.insert(o);
                report.alerts_on_attacks += u64::from(f.instances[o].attack);
            }
        }
        // Window rules over each merchant's 15-minute windows.
        let mut windows: HashMap<(&str, i64), Vec<&Txn>> = HashMap::new();
        for t in &f.events {
            windows
                .entry((
                    &t.merchant_id,
                    window_start(t.event_time_ms, MERCHANT_WINDOW_MS),
                ))
                .or_default()
                .push(t);
        }
        let mut fired: HashSet<(&str, i64)> = HashSet::new();
        for (key, evs) in &windows {
            let mut m = Metrics::default();
            m.add_all(evs.iter().copied(), true);
            if merchant_rules.iter().any(|r| r.fires(&m)) {
                fired.insert(*key);
            }
        }
        report.merchant_windows += windows.len() as u64;
        let spike_windows: HashSet<(&str, i64)> = f
            .instances
            .iter()
            .filter(|i| i.attack)
            .filter_map(|i| {
                let m = i.merchant.as_deref()?;
                let first = window_start(i.range.0, MERCHANT_WINDOW_MS);
                let last = window_start(i.range.1, MERCHANT_WINDOW_MS);
                Some(
                    (0..=(last - first) / MERCHANT_WINDOW_MS)
                        .map(move |k| (m, first + k * MERCHANT_WINDOW_MS)),
                )
            })
            .flatten()
            .collect();
        report.merchant_window_false_alerts +=
            fired.iter().filter(|k| !spike_windows.contains(*k)).count() as u64;
        for (i, inst) in f.instances.iter().enumerate() {
            if let Some(merchant) = &inst.merchant {
                let mut w = window_start(inst.range.0, MERCHANT_WINDOW_MS);
                while w <= inst.range.1 {
                    if fired.contains(&(merchant.as_str(), w)) {
                        flagged_instances.insert(i);
                    }
                    w += MERCHANT_WINDOW_MS;
                }
            }
        }

        let mut seed_rows: BTreeMap<&str, Row> = BTreeMap::new();
        for (i, inst) in f.instances.iter().enumerate() {
            let caught = u64::from(flagged_instances.contains(&i));
            let rows: Vec<&mut Row> = if inst.attack {
                vec![report.families.entry(inst.family.to_owned()).or_default()]
            } else {
                vec![
                    report
                        .look_alikes
                        .entry(inst.family.to_owned())
                        .or_default(),
                ]
            };
            for r in rows {
                r.instances += 1;
                r.flagged += caught;
            }
            if inst.attack {
                let b = report
                    .buckets
                    .entry(inst.family.to_owned())
                    .or_default()
                    .entry(inst.bucket.clone())
                    .or_default();
                b.instances += 1;
                b.flagged += caught;
                let s = seed_rows.entry(inst.family).or_default();
                s.instances += 1;
                s.flagged += caught;
            }
        }
        for (family, r) in seed_rows {
            per_seed
                .entry(family.to_owned())
                .or_default()
                .push(r.flagged as f64 / r.instances.max(1) as f64);
        }
    }
    let rate = |r: &mut Row| r.rate = r.flagged as f64 / r.instances.max(1) as f64;
    report.families.values_mut().for_each(rate);
    report.look_alikes.values_mut().for_each(rate);
    for b in report.buckets.values_mut() {
        b.values_mut().for_each(rate);
    }
    report.worst_seed_recall = per_seed
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().fold(1.0, f64::min)))
        .collect();
    report.precision = report.alerts_on_attacks as f64 / report.alerts.max(1) as f64;
    report.background_alerts_per_1000 =
        report.background_alerts as f64 * 1000.0 / report.background_events.max(1) as f64;
    report
}

/// The report as text, with the targets.
pub fn render(r: &EvalReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "eval of rules {} over {} seed(s) ({:?})",
        r.rules,
        r.seeds.len(),
        r.seeds
    );
    let _ = writeln!(
        s,
        "\nattack families (recall: attacks with at least one alert)"
    );
    let _ = writeln!(
        s,
        "  {:<24} {:<18} {:>8} {:>7} {:>7}",
        "family", "bucket", "attacks", "caught", "recall"
    );
    for (family, row) in &r.families {
        let _ = writeln!(
            s,
            "  {:<24} {:<18} {:>8} {:>7} {:>7.3}   worst seed {:.3}",
            family,
            "all",
            row.instances,
            row.flagged,
            row.rate,
            r.worst_seed_recall.get(family).copied().unwrap_or(0.0)
        );
        for (b, row) in r.buckets.get(family).into_iter().flatten() {
            let _ = writeln!(
                s,
                "  {:<24} {:<18} {:>8} {:>7} {:>7.3}",
                "", b, row.instances, row.flagged, row.rate
            );
        }
    }
    let _ = writeln!(
        s,
        "\nlook-alikes (false-positive rate: instances with any alert)"
    );
    for (name, row) in &r.look_alikes {
        let _ = writeln!(
            s,
            "  {:<24} {:>8} instances {:>5} flagged  {:.3}",
            name, row.instances, row.flagged, row.rate
        );
    }
    let _ = writeln!(
        s,
        "\ncard alerts: {} ({} on attack events): precision {:.3}",
        r.alerts, r.alerts_on_attacks, r.precision
    );
    let _ = writeln!(
        s,
        "background (with each card's past month): {} events, {} alerts: {:.2} per 1,000",
        r.background_events, r.background_alerts, r.background_alerts_per_1000
    );
    let _ = writeln!(
        s,
        "merchant windows: {} with traffic, {} fired by a window rule with no decline spike in them",
        r.merchant_windows, r.merchant_window_false_alerts
    );
    let worst = r.families.values().map(|x| x.rate).fold(1.0, f64::min);
    let _ = writeln!(
        s,
        "\ntargets: recall >= 0.95 every family ({}), precision >= 0.90 ({}), <= 1 alert per 1,000 background events ({})",
        if worst >= 0.95 { "met" } else { "missed" },
        if r.precision >= 0.90 { "met" } else { "missed" },
        if r.background_alerts_per_1000 <= 1.0 {
            "met"
        } else {
            "missed"
        },
    );
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use shardline_core::fraud::rules::RuleSet;

    fn small() -> EvalConfig {
        EvalConfig {
            seeds: vec![11],
            background: 2_000,
            instances: 4,
        }
    }

    fn set(when: &str) -> Policy {
        Policy::of(
            RuleSet::from_json(&format!(
                r#"{{"version":"t","rules":[{{"id":"r","when":"{when}","action":"review","reason":"R"}}]}}"#
            ))
            .unwrap(),
        )
    }

    fn no_window_rules() -> WindowRuleSet {
        WindowRuleSet::from_json(r#"{"version":"none","rules":[]}"#).unwrap()
    }

    /// A set that flags nothing catches nothing; one that flags every event catches
    /// every card-level attack and look-alike, and its precision is the share of attack
    /// events in the traffic. Merchant-level instances need the window rules.
    #[test]
    fn the_figures_follow_from_what_the_rules_flag() {
        let none = run(&small(), &set("amount_minor < 0"), &no_window_rules());
        assert_eq!(none.alerts, 0);
        assert_eq!(none.background_alerts, 0);
        for f in FAMILIES {
            let r = &none.families[*f];
            assert_eq!((r.instances, r.flagged), (4, 0), "{f}");
        }
        assert!(none.look_alikes.values().all(|r| r.flagged == 0));

        let all = run(&small(), &set("amount_minor >= 0"), &no_window_rules());
        assert_eq!(all.background_alerts, all.background_events);
        assert_eq!(all.background_alerts_per_1000, 1000.0);
        for f in [
            "velocity_burst",
            "card_testing",
            "account_takeover",
            "impossible_travel",
        ] {
            assert_eq!(all.families[f].rate, 1.0, "{f}");
        }
        assert_eq!(all.families["merchant_decline_spike"].flagged, 0);
        for l in [
            "traveller",
            "big_regular",
            "big_after_quiet",
            "shopping_trip",
        ] {
            assert_eq!(all.look_alikes[l].rate, 1.0, "{l}");
        }
        assert!(all.alerts > all.background_events);
        assert_eq!(
            all.precision,
            all.alerts_on_attacks as f64 / all.alerts as f64
        );

        // The shipped window rules find every decline spike in this set, and no rush hour.
        let window = run(
            &small(),
            &set("amount_minor < 0"),
            &WindowRuleSet::default_rules(),
        );
        assert_eq!(window.families["merchant_decline_spike"].rate, 1.0);
        assert_eq!(window.look_alikes["rush_hour"].flagged, 0);
    }

    /// The same seeds give the same report.
    #[test]
    fn the_report_is_deterministic() {
        let p = Policy::of(RuleSet::default_rules());
        let a = run(&small(), &p, &WindowRuleSet::default_rules());
        let b = run(&small(), &p, &WindowRuleSet::default_rules());
        assert_eq!(a, b);
        assert_eq!(render(&a), render(&b));
    }
}
