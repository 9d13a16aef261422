//! `shardline gen`: seeded, realistic transaction traffic with labelled fraud scenarios.
//!
//! A population of cards (home city, spending level) and merchants (category, city,
//! Zipf popularity) produces event-time traffic with a diurnal rate shape and a burst;
//! a small share of records is malformed, has an unknown schema version, or carries
//! extra fields a newer producer added; some are sent twice (a producer retry) or
//! slightly out of order. Fraud scenarios are injected and labelled in a separate file,
//! never in the events.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};
use serde::Serialize;
use shardline_core::event::{AuthResult, Channel, Location, Txn};

/// The fraud scenarios the generator injects.
pub const SCENARIOS: &[&str] = &[
    "card_testing",
    "impossible_travel",
    "velocity_burst",
    "account_takeover",
    "merchant_decline_spike",
];

/// Cities cards live in and merchants sit in: (name, lat, lon, country).
pub const CITIES: &[(&str, f64, f64, &str)] = &[
    ("new-york", 40.7128, -74.0060, "US"),
    ("chicago", 41.8781, -87.6298, "US"),
    ("austin", 30.2672, -97.7431, "US"),
    ("seattle", 47.6062, -122.3321, "US"),
    ("toronto", 43.6532, -79.3832, "CA"),
    ("london", 51.5074, -0.1278, "GB"),
    ("paris", 48.8566, 2.3522, "FR"),
    ("berlin", 52.5200, 13.4050, "DE"),
    ("madrid", 40.4168, -3.7038, "ES"),
    ("sao-paulo", -23.5505, -46.6333, "BR"),
    ("tokyo", 35.6762, 139.6503, "JP"),
    ("sydney", -33.8688, 151.2093, "AU"),
];
/// Everyday merchant categories, and a few high-risk ones.
const MCCS: &[u16] = &[
    5411, 5812, 5541, 5311, 5999, 5732, 4111, 5912, 5814, 7011, 4829, 7995,
];

/// Background cards make at most two purchases within this much of each other.
pub const BACKGROUND_SPACING_MS: i64 = 15 * 60_000;

/// Generator settings.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Seed: the same seed gives the same traffic.
    pub seed: u64,
    /// Transactions of the background traffic (scenarios add a few hundred).
    pub events: usize,
    /// Cards in the population.
    pub cards: usize,
    /// Merchants in the population.
    pub merchants: usize,
    /// Event time of the last event, epoch ms.
    pub end_ms: i64,
    /// Event-time span of the traffic, ms.
    pub span_ms: i64,
    /// Rate multiplier during the burst (a few minutes two thirds of the way through).
    pub peak_factor: f64,
    /// Instances of each fraud scenario.
    pub scenarios_each: usize,
    /// Share of malformed records (bad JSON, missing field, negative amount...).
    pub malformed: f64,
    /// Share of records with an unknown schema version.
    pub unknown_schema: f64,
    /// Share of valid records carrying extra fields (forward compatibility).
    pub extra_fields: f64,
    /// Share of records a producer sends twice.
    pub duplicates: f64,
    /// Share of records sent up to a minute out of event-time order.
    pub out_of_order: f64,
    /// Share of records held back 4 to 10 minutes: past the allowed lateness.
    pub very_late: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            seed: 7,
            events: 20_000,
            cards: 10_000,
            merchants: 400,
            end_ms: 0,
            span_ms: 60 * 60_000,
            peak_factor: 3.0,
            scenarios_each: 12,
            malformed: 0.002,
            unknown_schema: 0.001,
            extra_fields: 0.05,
            duplicates: 0.003,
            out_of_order: 0.02,
            very_late: 0.001,
        }
    }
}

/// One record to put on the stream.
#[derive(Clone, Debug)]
pub struct GenRecord {
    /// Partition key (the card token).
    pub partition_key: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The event, when the record is a valid `txn.v1` event (duplicates included).
    pub txn: Option<Txn>,
    /// True for the second send of a duplicate.
    pub duplicate: bool,
}

/// Ground truth of one labelled event or merchant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Label {
    /// The scenario.
    pub scenario: String,
    /// Attack instance id (all events of one attack share it).
    pub attack: String,
    /// The event, for event-level scenarios.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The merchant, for merchant-level scenarios.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
}

/// Generated traffic and its labels.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    /// Records in send order.
    pub records: Vec<GenRecord>,
    /// Labels of the fraud scenarios.
    pub labels: Vec<Label>,
}

impl Generated {
    /// Valid, distinct events (what the aggregates must reflect exactly once).
    pub fn distinct_events(&self) -> Vec<&Txn> {
        self.records
            .iter()
            .filter(|r| !r.duplicate)
            .filter_map(|r| r.txn.as_ref())
            .collect()
    }

    /// Records that can never be processed (malformed or unknown schema).
    pub fn poison_count(&self) -> usize {
        self.records.iter().filter(|r| r.txn.is_none()).count()
    }
}

struct Card {
    token: String,
    city: usize,
    mean_amount: f64,
}

struct Merchant {
    id: String,
    city: usize,
    mcc: u16,
}

struct Gen {
    rng: StdRng,
    cards: Vec<Card>,
    merchants: Vec<Merchant>,
    by_city: Vec<Vec<usize>>,
    popularity: Zipf<f64>,
    next_id: u64,
}

impl Gen {
    fn event_id(&mut self) -> String {
        self.next_id += 1;
        format!("evt-{:08}", self.next_id)
    }

    fn txn(
        &mut self,
        card: usize,
        merchant: usize,
        amount: i64,
        t: i64,
        channel: Channel,
        declined: bool,
    ) -> Txn {
        let (c, m) = (&self.cards[card], &self.merchants[merchant]);
        let (_, lat, lon, country) = CITIES[m.city];
        let jitter = (self.rng.random::<f64>() - 0.5) * 0.05;
        Txn {
            card_bin: None,
            event_id: String::new(),
            card_token: c.token.clone(),
            merchant_id: m.id.clone(),
            mcc: m.mcc,
            amount_minor: amount.max(1),
            currency: "USD".into(),
            event_time_ms: t,
            // Six decimals (about 10 cm), as card networks send them.
            location: Location {
                lat: ((lat + jitter) * 1e6).round() / 1e6,
                lon: ((lon + jitter) * 1e6).round() / 1e6,
                country: country.into(),
            },
            channel,
            auth_result: if declined {
                AuthResult::Declined
            } else {
                AuthResult::Approved
            },
        }
        .with_id(self.event_id())
    }

    /// A merchant near the card's home, by popularity.
    fn local_merchant(&mut self, card: usize) -> usize {
        let local = &self.by_city[self.cards[card].city];
        let rank = (self.popularity.sample(&mut self.rng) as usize).saturating_sub(1);
        local[rank % local.len()]
    }

    fn amount(&mut self, card: usize) -> i64 {
        let d = LogNormal::new(self.cards[card].mean_amount.ln(), 0.6)
            .unwrap_or_else(|_| LogNormal::new(7.0, 0.6).expect("valid"));
        (d.sample(&mut self.rng) as i64).clamp(50, 2_000_000)
    }

    fn far_city(&mut self, home: usize) -> usize {
        let (_, lat, lon, _) = CITIES[home];
        loop {
            let c = self.rng.random_range(0..CITIES.len());
            let (_, la, lo, _) = CITIES[c];
            if shardline_core::fraud::features::haversine_km(lat, lon, la, lo) > 3_000.0 {
                return c;
            }
        }
    }
}

trait WithId {
    fn with_id(self, id: String) -> Self;
}

impl WithId for Txn {
    fn with_id(mut self, id: String) -> Self {
        self.event_id = id;
        self
    }
}

/// Merchant `i` of every population: (id, city, category).
pub fn merchant_of(i: usize) -> (String, usize, u16) {
    (
        format!("m-{i:05}"),
        i % CITIES.len(),
        MCCS[(i * 7) % (MCCS.len() - 2)],
    )
}

/// Generates traffic.
pub fn generate(cfg: &GenConfig) -> Generated {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let merchants: Vec<Merchant> = (0..cfg.merchants.max(CITIES.len()))
        .map(|i| {
            let (id, city, mcc) = merchant_of(i);
            Merchant { id, city, mcc }
        })
        .collect();
    let mut by_city = vec![Vec::new(); CITIES.len()];
    for (i, m) in merchants.iter().enumerate() {
        by_city[m.city].push(i);
    }
    let cards: Vec<Card> = (0..cfg.cards.max(1))
        .map(|i| Card {
            token: format!(
                "tok_{:016x}",
                shardline_core::window::hll::stable_hash(&format!("{}-{i}", cfg.seed))
            ),
            city: (i * 31 + i / 7) % CITIES.len(),
            mean_amount: [1_500.0, 3_000.0, 6_000.0, 12_000.0][i % 4] * (0.5 + rng.random::<f64>()),
        })
        .collect();
    let per_city = merchants.len() / CITIES.len();
    let mut g = Gen {
        rng,
        cards,
        merchants,
        by_city,
        popularity: Zipf::new(per_city.max(1) as f64, 1.1).expect("valid Zipf"),
        next_id: 0,
    };
    let start = cfg.end_ms - cfg.span_ms;
    let mut events: Vec<(Txn, Option<Label>)> = Vec::with_capacity(cfg.events + 1_000);

    // Background traffic: event times drawn from a diurnal shape with a burst.
    let burst = (
        start + cfg.span_ms * 2 / 3,
        start + cfg.span_ms * 2 / 3 + 5 * 60_000,
    );
    let shape = |t: i64| {
        let hour = (t.rem_euclid(86_400_000)) as f64 / 3_600_000.0;
        let diurnal = 1.0 + 0.6 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos();
        if (burst.0..burst.1).contains(&t) {
            diurnal * cfg.peak_factor
        } else {
            diurnal
        }
    };
    let max_shape = 1.6 * cfg.peak_factor.max(1.0);
    // Card activity is heavy-tailed too, within what one cardholder does: at most two
    // purchases in any 15 minutes (five in 15 minutes is what a velocity attack looks
    // like), so a short, dense span does not turn its busiest cards into bursts.
    let card_pick = Zipf::new(g.cards.len() as f64, 0.3).expect("valid Zipf");
    let mut times: Vec<Vec<i64>> = vec![Vec::new(); g.cards.len()];
    let mut crowded = 0u32;
    let busy = |times: &[i64], t: i64| {
        times
            .iter()
            .filter(|&&x| (x - t).abs() < BACKGROUND_SPACING_MS)
            .count()
            >= 2
    };
    while events.len() < cfg.events {
        let t = start + g.rng.random_range(0..cfg.span_ms.max(1));
        if g.rng.random::<f64>() * max_shape > shape(t) {
            continue; // rejection sampling of the rate shape
        }
        let mut card = (card_pick.sample(&mut g.rng) as usize - 1) % g.cards.len();
        // A card busy around `t` gives way to another (a few tries, then the event is
        // drawn again). A span too short for its events and cards at that spacing gives
        // the spacing up for good once 1,000 draws in a row found no room: bounded.
        let mut tries = 0;
        while crowded < 1_000 && busy(&times[card], t) && tries < 8 {
            card = g.rng.random_range(0..g.cards.len());
            tries += 1;
        }
        if crowded < 1_000 && busy(&times[card], t) {
            crowded += 1;
            continue;
        }
        if crowded < 1_000 {
            crowded = 0;
        }
        times[card].push(t);
        let merchant = g.local_merchant(card);
        let amount = g.amount(card);
        let declined = g.rng.random::<f64>() < 0.03;
        let channel = if g.rng.random::<f64>() < 0.3 {
            Channel::Ecom
        } else {
            Channel::Pos
        };
        let txn = g.txn(card, merchant, amount, t, channel, declined);
        events.push((txn, None));
    }

    // Fraud scenarios, each on its own card (or merchant), spread over the span.
    let mut attack_no = 0;
    let mut merchant_labels: Vec<Label> = Vec::new();
    for scenario in SCENARIOS {
        for k in 0..cfg.scenarios_each {
            attack_no += 1;
            let attack = format!("{scenario}-{k}");
            // Spread over the span, ending well before its end (attacks last minutes).
            let t0 = start
                + cfg.span_ms / 10
                + (cfg.span_ms * 7 / 10) * (k as i64) / (cfg.scenarios_each.max(1) as i64)
                + (attack_no % 5) * 7_000;
            let card = g.cards.len() - 1 - (attack_no as usize % g.cards.len());
            let label = |e: &Txn| {
                Some(Label {
                    scenario: (*scenario).into(),
                    attack: attack.clone(),
                    event_id: Some(e.event_id.clone()),
                    merchant_id: None,
                })
            };
            match *scenario {
                "card_testing" => {
                    for i in 0..6 {
                        let m = g.rng.random_range(0..g.merchants.len());
                        let amt = g.rng.random_range(100..300);
                        let e = g.txn(card, m, amt, t0 + i * 25_000, Channel::Ecom, i % 3 == 0);
                        let l = label(&e);
                        events.push((e, l));
                    }
                }
                "impossible_travel" => {
                    for i in 0..3 {
                        let m = g.local_merchant(card);
                        let amt = g.amount(card);
                        events.push((
                            g.txn(
                                card,
                                m,
                                amt,
                                t0 - 3_600_000 + i * 600_000,
                                Channel::Pos,
                                false,
                            ),
                            None,
                        ));
                    }
                    let far = g.far_city(g.cards[card].city);
                    let m = g.by_city[far][0];
                    let amt = g.amount(card);
                    let at = t0 - 3_600_000 + 1_800_000 + g.rng.random_range(0..600_000);
                    let e = g.txn(card, m, amt, at, Channel::Pos, false);
                    let l = label(&e);
                    events.push((e, l));
                }
                "velocity_burst" => {
                    for i in 0..12 {
                        let m = g.local_merchant(card);
                        let amt = g.amount(card);
                        let e = g.txn(card, m, amt, t0 + i * 4_000, Channel::Ecom, false);
                        let l = label(&e);
                        events.push((e, l));
                    }
                }
                "account_takeover" => {
                    for i in 0..6 {
                        let m = g.local_merchant(card);
                        let amt = g.amount(card);
                        events.push((
                            g.txn(
                                card,
                                m,
                                amt,
                                t0 - 3_000_000 + i * 400_000,
                                Channel::Pos,
                                false,
                            ),
                            None,
                        ));
                    }
                    let far = g.far_city(g.cards[card].city);
                    let m = *g.by_city[far].last().expect("every city has merchants");
                    let amt = (g.cards[card].mean_amount * g.rng.random_range(25.0..60.0)) as i64;
                    let e = g.txn(card, m, amt, t0, Channel::Ecom, false);
                    let l = label(&e);
                    events.push((e, l));
                }
                _ => {
                    // Merchant decline spike: many cards declined at one merchant in 10 minutes.
                    let m = g.rng.random_range(0..g.merchants.len());
                    let window_start = shardline_core::window::window_start(t0, 15 * 60_000);
                    // Cards from the merchant's own city, so the spike is the only signal.
                    let city = g.merchants[m].city;
                    // (The last cards are the attacked ones; keep them out of it.)
                    let reserved = (g.cards.len() / 2).min(200);
                    let mut locals: Vec<usize> = (0..g.cards.len() - reserved)
                        .filter(|&c| g.cards[c].city == city)
                        .collect();
                    if locals.is_empty() {
                        locals = (0..g.cards.len()).collect();
                    }
                    for i in 0..30 {
                        let c = locals[g.rng.random_range(0..locals.len())];
                        let amt = g.amount(c);
                        let e = g.txn(
                            c,
                            m,
                            amt,
                            window_start + 60_000 + i * 15_000,
                            Channel::Ecom,
                            true,
                        );
                        events.push((e, None));
                    }
                    merchant_labels.push(Label {
                        scenario: (*scenario).into(),
                        attack,
                        event_id: None,
                        merchant_id: Some(g.merchants[m].id.clone()),
                    });
                }
            }
        }
    }

    // Send order: event time, with a few events held back (out of order).
    events.sort_by_key(|(e, _)| e.event_time_ms);
    let mut order: Vec<(i64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, (e, _))| {
            let r = g.rng.random::<f64>();
            let delay = if r < cfg.very_late {
                g.rng.random_range(240_000..600_000)
            } else if r < cfg.very_late + cfg.out_of_order {
                g.rng.random_range(1_000..60_000)
            } else {
                0
            };
            (e.event_time_ms + delay, i)
        })
        .collect();
    order.sort();

    let mut out = Generated {
        labels: merchant_labels,
        ..Generated::default()
    };
    for (_, i) in order {
        let (e, label) = &events[i];
        if let Some(l) = label {
            out.labels.push(l.clone());
        }
        let r = g.rng.random::<f64>();
        if r < cfg.malformed {
            out.records.push(GenRecord {
                partition_key: e.card_token.clone(),
                data: malformed(&mut g.rng, e),
                txn: None,
                duplicate: false,
            });
            continue;
        }
        if r < cfg.malformed + cfg.unknown_schema {
            let data = e.to_json().replacen("txn.v1", "txn.v2", 1).into_bytes();
            out.records.push(GenRecord {
                partition_key: e.card_token.clone(),
                data,
                txn: None,
                duplicate: false,
            });
            continue;
        }
        let data = if g.rng.random::<f64>() < cfg.extra_fields {
            let mut v: serde_json::Value = serde_json::from_str(&e.to_json()).expect("own JSON");
            v["device"] = serde_json::json!({"id": format!("dev-{}", g.rng.random::<u32>()), "os": "android"});
            v["risk_hints"] = serde_json::json!(["new_device"]);
            serde_json::to_vec(&v).expect("JSON")
        } else {
            e.to_json().into_bytes()
        };
        let rec = GenRecord {
            partition_key: e.card_token.clone(),
            data,
            txn: Some(e.clone()),
            duplicate: false,
        };
        out.records.push(rec.clone());
        if g.rng.random::<f64>() < cfg.duplicates {
            out.records.push(GenRecord {
                duplicate: true,
                ..rec
            });
        }
    }
    out
}

fn malformed(rng: &mut StdRng, e: &Txn) -> Vec<u8> {
    let json = e.to_json();
    match rng.random_range(0..5) {
        0 => json.as_bytes()[..json.len() / 2].to_vec(),
        1 => json
            .replacen("\"merchant_id\"", "\"merchant\"", 1)
            .into_bytes(),
        2 => json
            .replacen(
                &format!("\"amount_minor\":{}", e.amount_minor),
                "\"amount_minor\":-100",
                1,
            )
            .into_bytes(),
        3 => json.replacen("\"lat\":", "\"lat\":1", 1).into_bytes(), // latitude out of range
        _ => b"\x00\x01binary garbage".to_vec(),
    }
}

/// Summary counts by kind, for printing.
pub fn summary(g: &Generated) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("records", g.records.len()),
        ("valid distinct events", g.distinct_events().len()),
        (
            "producer duplicates",
            g.records.iter().filter(|r| r.duplicate).count(),
        ),
        ("malformed or unknown schema", g.poison_count()),
        (
            "labelled events",
            g.labels.iter().filter(|l| l.event_id.is_some()).count(),
        ),
        (
            "labelled merchants",
            g.labels.iter().filter(|l| l.merchant_id.is_some()).count(),
        ),
    ])
}

/// A Lambda KinesisEvent fixture for records (one shard, sequence numbers from `first`).
pub fn fixture_event(records: &[GenRecord], first: usize) -> serde_json::Value {
    use base64::Engine as _;
    let recs: Vec<serde_json::Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let seq = format!("49590338271490256608559692538361571095921575989{:09}", first + i);
            let arrival = r.txn.as_ref().map_or(0.0, |t| (t.event_time_ms + 500) as f64 / 1000.0);
            serde_json::json!({
                "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": r.partition_key, "sequenceNumber": seq,
                            "data": base64::engine::general_purpose::STANDARD.encode(&r.data), "approximateArrivalTimestamp": arrival},
                "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": format!("shardId-000000000000:{seq}"),
                "eventName": "aws:kinesis:record", "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/shardline-dev-input",
            })
        })
        .collect();
    serde_json::json!({ "Records": recs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_core::event::{DecodeLimits, decode_txn};

    fn cfg() -> GenConfig {
        GenConfig {
            events: 3_000,
            end_ms: 1_795_000_000_000,
            malformed: 0.01,
            unknown_schema: 0.01,
            duplicates: 0.01,
            ..GenConfig::default()
        }
    }

    #[test]
    fn same_seed_same_traffic() {
        let (a, b) = (generate(&cfg()), generate(&cfg()));
        assert_eq!(a.records.len(), b.records.len());
        assert!(
            a.records
                .iter()
                .zip(&b.records)
                .all(|(x, y)| x.data == y.data)
        );
        assert_ne!(
            generate(&GenConfig { seed: 8, ..cfg() }).records[0].data,
            a.records[0].data
        );
    }

    #[test]
    fn valid_records_decode_and_bad_ones_are_poison() {
        let g = generate(&cfg());
        for r in &g.records {
            let arrival = r
                .txn
                .as_ref()
                .map_or(cfg().end_ms, |t| t.event_time_ms + 1_000);
            let d = decode_txn(&r.data, arrival, &DecodeLimits::default());
            match &r.txn {
                Some(t) => {
                    let mut got = d.unwrap();
                    assert!(
                        (got.location.lat - t.location.lat).abs() < 1e-9
                            && (got.location.lon - t.location.lon).abs() < 1e-9
                    );
                    got.location = t.location.clone();
                    assert_eq!(&got, t);
                }
                None => assert!(d.is_err(), "{}", String::from_utf8_lossy(&r.data)),
            }
        }
        assert!(g.poison_count() > 20);
        assert!(g.records.iter().any(|r| r.duplicate));
    }

    #[test]
    fn every_scenario_is_labelled_and_labels_stay_out_of_events() {
        let g = generate(&cfg());
        for s in SCENARIOS {
            assert!(g.labels.iter().any(|l| l.scenario == *s), "{s}");
        }
        assert!(
            g.records
                .iter()
                .all(|r| !String::from_utf8_lossy(&r.data).contains("card_testing"))
        );
    }

    #[test]
    fn merchant_popularity_is_heavy_tailed() {
        let g = generate(&cfg());
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for t in g.distinct_events() {
            *counts.entry(&t.merchant_id).or_default() += 1;
        }
        let mut v: Vec<usize> = counts.into_values().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        let top: usize = v.iter().take(v.len() / 10).sum();
        assert!(
            top * 100 / v.iter().sum::<usize>() > 30,
            "top 10% of merchants should carry a large share"
        );
    }
}
