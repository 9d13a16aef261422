//! Fraud features: pure functions of (card profile before the event, event).

use serde::{Deserialize, Serialize};

use super::profile::CardProfile;
use crate::event::{AuthResult, Txn};

/// Amounts at or below this (minor units) count as "tiny" for card testing.
pub const TINY_AMOUNT_MINOR: i64 = 500;
/// Card-testing look-back.
pub const CARD_TESTING_WINDOW_MS: i64 = 10 * 60_000;
/// History needed before "new merchant / new country / amount spike" mean anything.
pub const MIN_HISTORY: u64 = 3;
/// Distances under this are GPS and merchant-address noise, not travel.
pub const TRAVEL_MIN_KM: f64 = 50.0;
/// MCCs with high fraud rates: wire transfer, quasi-cash / crypto, securities,
/// betting, direct marketing.
pub const HIGH_RISK_MCC: &[u16] = &[4829, 6051, 6211, 7995, 5967, 5993];

/// MCC risk tier 3: money out with no goods — wire transfer and money orders (4829),
/// quasi-cash and crypto (6051), securities (6211), stored-value card loads (6540),
/// betting and lotteries (7995).
pub const MCC_TIER_3: &[u16] = &[4829, 6051, 6211, 6540, 7995];
/// Tier 2: the card schemes' high-risk / high-integrity-risk merchant categories (Visa
/// Integrity Risk Program, Mastercard BRAM): direct marketing (5962, 5966, 5967), dating
/// and escort services (7273), cigars and tobacco (5993). (Pharmacies, 5912, are on
/// those lists only when they sell remotely; as a category they are everyday shops.)
pub const MCC_TIER_2: &[u16] = &[5962, 5966, 5967, 5993, 7273];
/// Tier 1: resold easily or delivered at once — digital goods (5815, 5816, 5817, 5818),
/// electronics (5732), jewellery (5944), telecom services and top-ups (4814).
pub const MCC_TIER_1: &[u16] = &[4814, 5732, 5815, 5816, 5817, 5818, 5944];

/// The risk tier of a merchant category: 3, 2, 1, or 0 for the rest.
pub fn mcc_risk(mcc: u16) -> u8 {
    if MCC_TIER_3.contains(&mcc) {
        3
    } else if MCC_TIER_2.contains(&mcc) {
        2
    } else if MCC_TIER_1.contains(&mcc) {
        1
    } else {
        0
    }
}

/// The features of one event, computed before the event is folded into the profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// Transactions in the last minute, this one included.
    pub count_1m: u32,
    /// Amount in the last minute, this one included (minor units).
    pub sum_1m: i64,
    /// Transactions in the last hour, this one included.
    pub count_1h: u32,
    /// Amount in the last hour, this one included.
    pub sum_1h: i64,
    /// z-score of ln(1 + amount) against the card's history (0 without history).
    pub amount_z: f64,
    /// Speed implied by the distance from the previous event, km/h (0 under 50 km).
    pub travel_kmh: f64,
    /// Merchant not seen before on a card with history.
    pub new_merchant: bool,
    /// Country not seen before on a card with history.
    pub new_country: bool,
    /// Distinct merchants with tiny amounts in the last 10 minutes, this one included.
    pub tiny_merchants_10m: u32,
    /// Merchant category is high risk.
    pub high_risk_mcc: bool,
    /// Consecutive declines, this one included.
    pub decline_streak: u32,
    /// Transactions in the last hour when the card was first seen less than an hour ago
    /// (0 for older cards).
    pub new_card_burst: u32,
    /// Transactions in the last 5 minutes, this one included.
    pub count_5m: u32,
    /// Amount in the last 5 minutes, this one included.
    pub sum_5m: i64,
    /// Transactions in the last 15 minutes, this one included.
    pub count_15m: u32,
    /// Amount in the last 15 minutes, this one included.
    pub sum_15m: i64,
    /// Transactions in this clock hour and the 23 before, this one included.
    pub count_24h: u32,
    /// Amount in this clock hour and the 23 before, this one included.
    pub sum_24h: i64,
    /// Declined / transactions over the same 24 clock hours, this one included.
    pub decline_rate_24h: f64,
    /// Distinct merchants in the last hour, this one included.
    pub merchants_1h: u32,
    /// Distinct countries in the last hour, this one included.
    pub countries_1h: u32,
    /// Transactions the card made before this one.
    pub prev_txns: u64,
    /// Minutes since the card's latest earlier transaction (0 without one).
    pub mins_since_last: f64,
    /// Days since the card was first seen (0 for its first transaction).
    pub days_since_first: f64,
    /// (1 + amount) over the card's typical (1 + amount), a geometric mean (1 without
    /// history).
    pub amount_vs_typical: f64,
    /// Amount over the largest the card made before (1 without history).
    pub amount_vs_max: f64,
    /// The card's previous transaction was card present and this one is not.
    pub channel_change: bool,
    /// Merchant category risk tier, 0 to 3 ([`mcc_risk`]).
    pub mcc_risk: u8,
    /// Distinct merchants with tiny amounts in the last hour, this one included when
    /// tiny: card testing spread thin.
    pub tiny_merchants_1h: u32,
}

impl Features {
    /// Names of every feature, as rules refer to them.
    pub const NAMES: &'static [&'static str] = &[
        "count_1m",
        "sum_1m",
        "count_1h",
        "sum_1h",
        "amount_z",
        "travel_kmh",
        "new_merchant",
        "new_country",
        "tiny_merchants_10m",
        "high_risk_mcc",
        "decline_streak",
        "new_card_burst",
        "count_5m",
        "sum_5m",
        "count_15m",
        "sum_15m",
        "count_24h",
        "sum_24h",
        "decline_rate_24h",
        "merchants_1h",
        "countries_1h",
        "prev_txns",
        "mins_since_last",
        "days_since_first",
        "amount_vs_typical",
        "amount_vs_max",
        "channel_change",
        "mcc_risk",
        "tiny_merchants_1h",
    ];

    /// A feature's value by name (booleans as 0 / 1).
    pub fn get(&self, name: &str) -> Option<f64> {
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        Some(match name {
            "count_1m" => f64::from(self.count_1m),
            "sum_1m" => self.sum_1m as f64,
            "count_1h" => f64::from(self.count_1h),
            "sum_1h" => self.sum_1h as f64,
            "amount_z" => self.amount_z,
            "travel_kmh" => self.travel_kmh,
            "new_merchant" => b(self.new_merchant),
            "new_country" => b(self.new_country),
            "tiny_merchants_10m" => f64::from(self.tiny_merchants_10m),
            "high_risk_mcc" => b(self.high_risk_mcc),
            "decline_streak" => f64::from(self.decline_streak),
            "new_card_burst" => f64::from(self.new_card_burst),
            "count_5m" => f64::from(self.count_5m),
            "sum_5m" => self.sum_5m as f64,
            "count_15m" => f64::from(self.count_15m),
            "sum_15m" => self.sum_15m as f64,
            "count_24h" => f64::from(self.count_24h),
            "sum_24h" => self.sum_24h as f64,
            "decline_rate_24h" => self.decline_rate_24h,
            "merchants_1h" => f64::from(self.merchants_1h),
            "countries_1h" => f64::from(self.countries_1h),
            "prev_txns" => self.prev_txns as f64,
            "mins_since_last" => self.mins_since_last,
            "days_since_first" => self.days_since_first,
            "amount_vs_typical" => self.amount_vs_typical,
            "amount_vs_max" => self.amount_vs_max,
            "channel_change" => b(self.channel_change),
            "mcc_risk" => f64::from(self.mcc_risk),
            "tiny_merchants_1h" => f64::from(self.tiny_merchants_1h),
            _ => return None,
        })
    }
}

/// Great-circle distance in km.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6371.0;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().min(1.0).asin()
}

/// Count and sum of the profile's recent transactions in `(t - window, t]`, plus this one.
pub fn velocity(p: &CardProfile, t: &Txn, window_ms: i64) -> (u32, i64) {
    p.recent
        .iter()
        .filter(|r| r.t > t.event_time_ms - window_ms && r.t <= t.event_time_ms)
        .fold((1, t.amount_minor), |(c, s), r| (c + 1, s + r.amt))
}

/// z-score of this amount (log scale) against the card's history.
pub fn amount_z(p: &CardProfile, t: &Txn) -> f64 {
    if p.txn_count < MIN_HISTORY.max(5) {
        return 0.0;
    }
    // A floor on the spread: a card that always spends the same must not alert on cents.
    let sd = p.amt_std().unwrap_or(0.0).max(0.25);
    ((t.amount_minor as f64).ln_1p() - p.amt_mean) / sd
}

/// True for channels where the card is physically at the merchant: only these say where
/// the cardholder is (an online merchant's address says nothing about the buyer).
pub fn card_present(t: &Txn) -> bool {
    matches!(
        t.channel,
        crate::event::Channel::Pos | crate::event::Channel::Atm
    )
}

/// Speed from the previous card-present event's place to this one, km/h. Events closer
/// than a minute count as a minute apart, so one GPS jump cannot make an infinite speed.
pub fn travel_kmh(p: &CardProfile, t: &Txn) -> f64 {
    if !card_present(t) {
        return 0.0;
    }
    let Some(last) = p.last_time_ms else {
        return 0.0;
    };
    if t.event_time_ms < last {
        return 0.0;
    }
    let km = haversine_km(p.last_lat, p.last_lon, t.location.lat, t.location.lon);
    if km < TRAVEL_MIN_KM {
        return 0.0;
    }
    let hours = ((t.event_time_ms - last) as f64 / 3_600_000.0).max(1.0 / 60.0);
    km / hours
}

/// Merchant not seen before, on a card with history.
pub fn new_merchant(p: &CardProfile, t: &Txn) -> bool {
    p.txn_count >= MIN_HISTORY && !p.merchants.iter().any(|m| *m == t.merchant_id)
}

/// Country not seen before, on a card with history.
pub fn new_country(p: &CardProfile, t: &Txn) -> bool {
    p.txn_count >= MIN_HISTORY && !p.countries.iter().any(|c| *c == t.location.country)
}

/// Distinct merchants that took tiny amounts in the last 10 minutes (this one included
/// when tiny): the shape of card testing.
pub fn tiny_merchants_10m(p: &CardProfile, t: &Txn) -> u32 {
    tiny_merchants(p, t, CARD_TESTING_WINDOW_MS)
}

/// Distinct merchants that took tiny amounts in the last `window_ms` (this one included
/// when tiny).
pub fn tiny_merchants(p: &CardProfile, t: &Txn, window_ms: i64) -> u32 {
    let this = (t.amount_minor <= TINY_AMOUNT_MINOR).then_some(t.merchant_id.as_str());
    distinct(
        p.recent
            .iter()
            .filter(|r| {
                r.amt <= TINY_AMOUNT_MINOR
                    && r.t > t.event_time_ms - window_ms
                    && r.t <= t.event_time_ms
            })
            .map(|r| r.m.as_str())
            .chain(this),
    )
}

/// Consecutive declines including this event.
pub fn decline_streak(p: &CardProfile, t: &Txn) -> u32 {
    match t.auth_result {
        AuthResult::Declined => p.decline_streak + 1,
        AuthResult::Approved => 0,
    }
}

/// Transactions in the last hour when the card is less than an hour old.
pub fn new_card_burst(p: &CardProfile, t: &Txn, count_1h: u32) -> u32 {
    let first = if p.txn_count == 0 {
        t.event_time_ms
    } else {
        p.first_seen_ms
    };
    if t.event_time_ms - first < 3_600_000 {
        count_1h
    } else {
        0
    }
}

/// Transactions, declines and amount in this event's clock hour and the 23 before,
/// this event included.
pub fn day(p: &CardProfile, t: &Txn) -> (u32, u32, i64) {
    let hour = t.event_time_ms.div_euclid(3_600_000);
    let declined = u32::from(t.auth_result == AuthResult::Declined);
    p.hour_buckets()
        .filter(|b| b.hour <= hour && b.hour > hour - super::profile::DAY_HOURS)
        .fold((1, declined, t.amount_minor), |(c, d, s), b| {
            (c + b.count, d + b.declined, s.saturating_add(b.sum))
        })
}

/// Distinct merchants and countries in the last hour, this event's included (events
/// of profiles written before countries were kept count no country).
pub fn distinct_1h(p: &CardProfile, t: &Txn) -> (u32, u32) {
    let recent = || {
        p.recent
            .iter()
            .filter(|r| r.t > t.event_time_ms - 3_600_000 && r.t <= t.event_time_ms)
    };
    let merchants = distinct(
        recent()
            .map(|r| r.m.as_str())
            .chain([t.merchant_id.as_str()]),
    );
    let countries = distinct(
        recent()
            .map(|r| r.c.as_str())
            .filter(|c| !c.is_empty())
            .chain([t.location.country.as_str()]),
    );
    (merchants, countries)
}

/// Distinct values of a short sequence (at most a card's recent events), without
/// allocating: each value counts where it first appears.
fn distinct<'a>(items: impl Iterator<Item = &'a str> + Clone) -> u32 {
    let mut n = 0;
    for (i, x) in items.clone().enumerate() {
        if !items.clone().take(i).any(|y| y == x) {
            n += 1;
        }
    }
    n
}

/// The latest event time the profile holds: its clock, or (in a profile written before
/// the clock was kept) its latest recent transaction or its first one.
pub fn last_seen(p: &CardProfile) -> i64 {
    p.clock_ms
        .max(p.recent.back().map_or(i64::MIN, |r| r.t))
        .max(p.first_seen_ms)
}

/// Every feature of `t` against profile `p` (before `t` is folded in).
pub fn compute(p: &CardProfile, t: &Txn) -> Features {
    let (count_1m, sum_1m) = velocity(p, t, 60_000);
    let (count_5m, sum_5m) = velocity(p, t, 5 * 60_000);
    let (count_15m, sum_15m) = velocity(p, t, 15 * 60_000);
    let (count_1h, sum_1h) = velocity(p, t, 3_600_000);
    let (count_24h, declined_24h, sum_24h) = day(p, t);
    let (merchants_1h, countries_1h) = distinct_1h(p, t);
    let history = p.txn_count > 0;
    Features {
        count_5m,
        sum_5m,
        count_15m,
        sum_15m,
        count_24h,
        sum_24h,
        decline_rate_24h: f64::from(declined_24h) / f64::from(count_24h),
        merchants_1h,
        countries_1h,
        prev_txns: p.txn_count,
        mins_since_last: if history {
            (t.event_time_ms - last_seen(p)).max(0) as f64 / 60_000.0
        } else {
            0.0
        },
        days_since_first: if history {
            (t.event_time_ms - p.first_seen_ms).max(0) as f64 / 86_400_000.0
        } else {
            0.0
        },
        amount_vs_typical: if history {
            (1.0 + t.amount_minor as f64) / p.amt_mean.exp()
        } else {
            1.0
        },
        amount_vs_max: if history && p.max_amt > 0 {
            t.amount_minor as f64 / p.max_amt as f64
        } else {
            1.0
        },
        channel_change: p.last_cp == Some(true) && !card_present(t),
        mcc_risk: mcc_risk(t.mcc),
        tiny_merchants_1h: tiny_merchants(p, t, 3_600_000),
        count_1m,
        sum_1m,
        count_1h,
        sum_1h,
        amount_z: amount_z(p, t),
        travel_kmh: travel_kmh(p, t),
        new_merchant: new_merchant(p, t),
        new_country: new_country(p, t),
        tiny_merchants_10m: tiny_merchants_10m(p, t),
        high_risk_mcc: HIGH_RISK_MCC.contains(&t.mcc),
        decline_streak: decline_streak(p, t),
        new_card_burst: new_card_burst(p, t, count_1h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Channel, Location};

    const T0: i64 = 1_764_140_400_000;

    fn txn(i: u32, t: i64, amt: i64, merchant: &str) -> Txn {
        Txn {
            card_bin: None,
            event_id: format!("e{i}"),
            card_token: "tok".into(),
            merchant_id: merchant.into(),
            mcc: 5411,
            amount_minor: amt,
            currency: "USD".into(),
            event_time_ms: t,
            location: Location {
                lat: 40.71,
                lon: -74.0,
                country: "US".into(),
            },
            channel: Channel::Pos,
            auth_result: AuthResult::Approved,
        }
    }

    fn history(n: u32) -> CardProfile {
        let mut p = CardProfile::new("tok");
        for i in 0..n {
            p.update(&txn(
                i,
                T0 - 86_400_000 + i64::from(i) * 3_600_000,
                2_000 + i64::from(i % 3) * 500,
                "m-home",
            ));
        }
        p
    }

    #[test]
    fn velocity_counts_only_the_window_and_includes_this_event() {
        let mut p = CardProfile::new("tok");
        p.update(&txn(1, T0 - 120_000, 100, "a"));
        p.update(&txn(2, T0 - 30_000, 200, "a"));
        p.update(&txn(3, T0 - 1_000, 300, "a"));
        assert_eq!(velocity(&p, &txn(4, T0, 400, "a"), 60_000), (3, 900));
        assert_eq!(velocity(&p, &txn(4, T0, 400, "a"), 3_600_000), (4, 1000));
    }

    #[test]
    fn amount_z_flags_a_spike_and_needs_history() {
        let p = history(10);
        assert!(amount_z(&p, &txn(99, T0, 250_000, "m")) > 4.0);
        assert!(amount_z(&p, &txn(99, T0, 2_400, "m")).abs() < 1.0);
        assert_eq!(amount_z(&history(2), &txn(99, T0, 250_000, "m")), 0.0);
    }

    #[test]
    fn travel_from_new_york_to_paris_in_an_hour_is_impossible() {
        let mut p = CardProfile::new("tok");
        p.update(&txn(1, T0 - 3_600_000, 1_000, "a"));
        let mut paris = txn(2, T0, 1_000, "b");
        paris.location = Location {
            lat: 48.85,
            lon: 2.35,
            country: "FR".into(),
        };
        let kmh = travel_kmh(&p, &paris);
        assert!((5_700.0..5_900.0).contains(&kmh), "{kmh}");
        // Same city: no travel.
        assert_eq!(travel_kmh(&p, &txn(3, T0, 1_000, "c")), 0.0);
        // Online: the merchant's address says nothing about where the card is.
        let mut online = paris.clone();
        online.channel = Channel::Ecom;
        assert_eq!(travel_kmh(&p, &online), 0.0);
        // An event older than the last one says nothing about travel.
        assert_eq!(travel_kmh(&p, &txn(3, T0 - 7_200_000, 1_000, "c")), 0.0);
    }

    #[test]
    fn new_merchant_and_country_need_history() {
        let p = history(5);
        assert!(new_merchant(&p, &txn(9, T0, 100, "elsewhere")));
        assert!(!new_merchant(&p, &txn(9, T0, 100, "m-home")));
        let mut abroad = txn(9, T0, 100, "m-home");
        abroad.location.country = "BR".into();
        assert!(new_country(&p, &abroad));
        assert!(!new_country(&history(1), &abroad));
    }

    #[test]
    fn card_testing_counts_distinct_merchants_with_tiny_amounts() {
        let mut p = CardProfile::new("tok");
        for (i, m) in ["a", "b", "b", "c"].iter().enumerate() {
            p.update(&txn(i as u32, T0 - 60_000 * (4 - i as i64), 100, m));
        }
        p.update(&txn(8, T0 - 30_000, 9_000, "big"));
        assert_eq!(tiny_merchants_10m(&p, &txn(9, T0, 50, "d")), 4);
        assert_eq!(tiny_merchants_10m(&p, &txn(9, T0, 5_000, "d")), 3);
        assert_eq!(
            tiny_merchants_10m(&p, &txn(9, T0 + 20 * 60_000, 50, "d")),
            1
        );
    }

    #[test]
    fn high_risk_mcc_is_flagged() {
        let mut t = txn(1, T0, 100, "a");
        assert!(!compute(&CardProfile::new("tok"), &t).high_risk_mcc);
        t.mcc = 7995;
        assert!(compute(&CardProfile::new("tok"), &t).high_risk_mcc);
    }

    #[test]
    fn decline_streak_counts_consecutive_declines() {
        let mut p = CardProfile::new("tok");
        let mut d = txn(1, T0, 100, "a");
        d.auth_result = AuthResult::Declined;
        p.update(&d);
        p.update(&d);
        assert_eq!(decline_streak(&p, &d), 3);
        assert_eq!(decline_streak(&p, &txn(2, T0, 100, "a")), 0);
        p.update(&txn(2, T0, 100, "a"));
        assert_eq!(decline_streak(&p, &d), 1);
    }

    #[test]
    fn new_card_burst_only_for_young_cards() {
        let mut p = CardProfile::new("tok");
        for i in 0..4 {
            p.update(&txn(i, T0 - 600_000 + i64::from(i), 100, "a"));
        }
        assert_eq!(compute(&p, &txn(9, T0, 100, "a")).new_card_burst, 5);
        assert_eq!(
            compute(&history(10), &txn(9, T0, 100, "a")).new_card_burst,
            0
        );
    }

    #[test]
    fn every_named_feature_resolves() {
        let f = Features::default();
        for n in Features::NAMES {
            assert!(f.get(n).is_some(), "{n}");
        }
        assert!(f.get("nope").is_none());
    }

    /// The features an analyst expects, on a card with four earlier events, each value
    /// computed by hand. T0 is on the hour (07:00 UTC), so T0 - 50 min and T0 - 10 min
    /// fall in the hour before T0's.
    #[test]
    fn analyst_features_match_the_hand_count() {
        use crate::event::Channel;
        let ev = |i: u32, ago_min: i64, amt: i64, m: &str, country: &str, declined: bool| {
            let mut t = txn(i, T0 - ago_min * 60_000, amt, m);
            t.location.country = country.into();
            t.auth_result = if declined {
                AuthResult::Declined
            } else {
                AuthResult::Approved
            };
            t
        };
        let mut p = CardProfile::new("tok");
        p.update(&ev(1, 25 * 60, 1_000, "m1", "FR", false)); // 25 h ago: not in the 24 h
        p.update(&ev(2, 120, 4_000, "m2", "FR", true)); // 2 h ago: 24 h, not 1 h
        p.update(&ev(3, 50, 2_000, "m3", "DE", false));
        p.update(&ev(4, 10, 500, "m4", "DE", true)); // card present, declined
        let mut now = ev(5, 0, 9_000, "m9", "US", false);
        now.channel = Channel::Ecom;
        now.mcc = 5816;
        let f = compute(&p, &now);
        assert_eq!((f.count_5m, f.sum_5m), (1, 9_000));
        assert_eq!((f.count_15m, f.sum_15m), (2, 9_500));
        assert_eq!((f.count_1h, f.sum_1h), (3, 11_500));
        assert_eq!((f.count_24h, f.sum_24h), (4, 15_500));
        assert_eq!(f.decline_rate_24h, 0.5);
        assert_eq!((f.merchants_1h, f.countries_1h), (3, 2));
        assert_eq!(f.prev_txns, 4);
        assert_eq!(f.mins_since_last, 10.0);
        assert!((f.days_since_first - 25.0 / 24.0).abs() < 1e-12);
        let typical = (1_001f64 * 4_001.0 * 2_001.0 * 501.0).powf(0.25);
        assert!(
            (f.amount_vs_typical - 9_001.0 / typical).abs() < 1e-9,
            "{}",
            f.amount_vs_typical
        );
        assert_eq!(f.amount_vs_max, 2.25);
        assert!(f.channel_change, "card present (m4) then online");
        assert_eq!(f.mcc_risk, 1);

        // A card's first event: neutral values.
        let first = compute(&CardProfile::new("tok"), &now);
        assert_eq!(
            (
                first.prev_txns,
                first.mins_since_last,
                first.days_since_first
            ),
            (0, 0.0, 0.0)
        );
        assert_eq!((first.amount_vs_typical, first.amount_vs_max), (1.0, 1.0));
        assert!(!first.channel_change);
        assert_eq!((first.count_24h, first.decline_rate_24h), (1, 0.0));
        assert_eq!([mcc_risk(7995), mcc_risk(5967), mcc_risk(5411)], [3, 2, 0]);
    }

    /// The day's hour buckets keep 24 clock hours up to the card's latest, whatever the
    /// order events come in; an event older than that is in none.
    #[test]
    fn hour_buckets_keep_a_day_in_any_order() {
        let times: Vec<i64> = (0..40).map(|h| T0 + h * 3_600_000).collect();
        let mut fwd = CardProfile::new("tok");
        for (i, t) in times.iter().enumerate() {
            fwd.update(&txn(i as u32, *t, 100, "a"));
        }
        let mut back = CardProfile::new("tok");
        for (i, t) in times.iter().enumerate().rev() {
            back.update(&txn(i as u32, *t, 100, "a"));
        }
        let hours = |p: &CardProfile| p.hour_buckets().map(|b| b.hour).collect::<Vec<_>>();
        assert_eq!(hours(&fwd), hours(&back));
        assert_eq!(fwd.hours, back.hours);
        assert_eq!(hours(&fwd).len(), 24);
        assert_eq!(fwd.hours.len(), 24 * super::super::profile::HOUR_ENTRY);
        let late = compute(&fwd, &txn(99, T0, 100, "a"));
        assert_eq!(late.count_24h, 1, "T0's hour is past the day kept");
    }

    /// A profile written before the card clock was kept reads dormancy from its latest
    /// recent transaction, not from 1970; a late card-present event does not make the
    /// next online one a channel change.
    #[test]
    fn dormancy_and_channel_change_follow_event_time() {
        use crate::event::Channel;
        let mut old = history(5);
        let last = old.recent.back().unwrap().t;
        old.clock_ms = 0;
        let f = compute(&old, &txn(9, last + 120 * 60_000, 100, "a"));
        assert_eq!(f.mins_since_last, 120.0);

        let mut p = CardProfile::new("tok");
        let mut online = txn(2, T0 + 600_000, 100, "b");
        online.channel = Channel::Ecom;
        p.update(&txn(1, T0, 100, "a"));
        p.update(&online);
        p.update(&txn(3, T0 - 300_000, 100, "c")); // card present, but earlier: late
        let mut next = txn(4, T0 + 1_200_000, 100, "d");
        next.channel = Channel::Ecom;
        assert!(!compute(&p, &next).channel_change, "online follows online");
    }
}
