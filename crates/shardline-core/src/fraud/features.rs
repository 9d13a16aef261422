//! Fraud features: pure functions of (card profile before the event, event).

use serde::{Deserialize, Serialize};

use super::profile::CardProfile;
use crate::event::{AuthResult, Txn};

/// Amounts at or below this (minor units) count as "tiny" for card testing.
pub const TINY_AMOUNT_MINOR: i64 = 300;
/// Card-testing look-back.
pub const CARD_TESTING_WINDOW_MS: i64 = 10 * 60_000;
/// History needed before "new merchant / new country / amount spike" mean anything.
pub const MIN_HISTORY: u64 = 3;
/// Distances under this are GPS and merchant-address noise, not travel.
pub const TRAVEL_MIN_KM: f64 = 50.0;
/// MCCs with high fraud rates: wire transfer, quasi-cash / crypto, securities,
/// betting, direct marketing.
pub const HIGH_RISK_MCC: &[u16] = &[4829, 6051, 6211, 7995, 5967, 5993];

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
    let mut merchants: Vec<&str> = p
        .recent
        .iter()
        .filter(|r| {
            r.amt <= TINY_AMOUNT_MINOR
                && r.t > t.event_time_ms - CARD_TESTING_WINDOW_MS
                && r.t <= t.event_time_ms
        })
        .map(|r| r.m.as_str())
        .collect();
    if t.amount_minor <= TINY_AMOUNT_MINOR {
        merchants.push(&t.merchant_id);
    }
    merchants.sort_unstable();
    merchants.dedup();
    merchants.len() as u32
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

/// Every feature of `t` against profile `p` (before `t` is folded in).
pub fn compute(p: &CardProfile, t: &Txn) -> Features {
    let (count_1m, sum_1m) = velocity(p, t, 60_000);
    let (count_1h, sum_1h) = velocity(p, t, 3_600_000);
    Features {
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
}
