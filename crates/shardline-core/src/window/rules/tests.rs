use super::*;
use crate::event::Txn;
use crate::window::tests::txn;

/// The window rules as they shipped before the v2 language: they must load unchanged.
const V1_FIXTURE: &str = include_str!("v1-fixture.json");

fn window(key: &str, width_min: i64) -> WindowId {
    WindowId {
        key: key.into(),
        width_ms: width_min * MINUTE_MS,
        start_ms: 0,
    }
}

fn rule<'a>(rs: &'a WindowRuleSet, id: &str) -> &'a WindowRule {
    rs.rules.iter().find(|r| r.id == id).unwrap()
}

/// A merchant window total of `count` events, `declined` of them declined.
fn declines(count: usize, declined: usize) -> Metrics {
    let evs: Vec<Txn> = (0..count)
        .map(|i| txn(i, 0, 100, "m-1", i < declined))
        .collect();
    let mut m = Metrics::default();
    m.add_all(&evs, true);
    m
}

fn set(rules: &str) -> WindowRuleSet {
    WindowRuleSet::from_json(&format!(r#"{{"version":"t","rules":[{rules}]}}"#)).unwrap()
}

fn load_err(json: &str) -> String {
    match WindowRuleSet::from_json(json) {
        Ok(_) => panic!("loaded: {json}"),
        Err(e) => e.explain(),
    }
}

#[test]
fn default_rules_load_and_use_the_language() {
    let rs = WindowRuleSet::default_rules();
    assert_eq!(
        rs.rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [
            "merchant_decline_spike",
            "merchant_decline_rate",
            "merchant_decline_burst",
            "card_spend_1h",
            "merchant_card_spike"
        ]
    );
    assert!(rs.rules.iter().all(|r| r.description.is_some()));
    assert!(rs.rules.iter().all(|r| r.action == Outcome::Review));
    assert_eq!(
        rule(&rs, "merchant_decline_rate").when,
        "decline_rate >= 0.4 and count >= 20"
    );
    assert!(
        rs.hash.starts_with("sha256:") && rs.hash.len() == 23,
        "{}",
        rs.hash
    );
    // The hash is of the content: the same set in other whitespace hashes alike.
    let compact = WindowRuleSet::from_json(rs.to_json()).unwrap();
    assert_eq!(compact.hash, rs.hash);
    // And the v2 form loads to the same rules.
    let again = WindowRuleSet::from_json(&rs.to_v2_json()).unwrap();
    assert_eq!(again.rules, rs.rules);
}

#[test]
fn default_rules_parse_and_decline_spike_fires_once_per_window() {
    let rs = WindowRuleSet::default_rules();
    let rule = rs
        .for_window(KeyKind::Merchant, 15 * MINUTE_MS)
        .next()
        .unwrap();
    let w = window("merchant:m-1", 15);
    let mut m = Metrics::default();
    let evs: Vec<_> = (0..25).map(|i| txn(i, 0, 100, "m-1", i < 20)).collect();
    m.add_all(&evs[..19], true);
    assert!(rs.evaluate(rule, &w, &m).is_none());
    m.add_all(&evs[19..], true);
    let a = rs.evaluate(rule, &w, &m).unwrap();
    assert_eq!(a.alert_id, "win:merchant_decline_spike:merchant:m-1:15m:0");
    assert_eq!(a.reasons, vec!["MERCHANT_DECLINE_SPIKE"]);
    assert_eq!(a.event_time_ms, 15 * MINUTE_MS);
    assert!(a.card_token.is_none());
    assert_eq!(
        a.merchant_id.as_deref(),
        Some("m-1"),
        "the by-merchant index"
    );
    // The explanation: outcome, the rule and what it read, the set's hash.
    assert_eq!(a.outcome, Outcome::Review);
    assert_eq!(a.ruleset_hash, rs.hash);
    assert_eq!(a.ruleset_version, rs.version);
    assert_eq!(a.features, BTreeMap::from([("declined".to_owned(), 20.0)]));
    assert_eq!(
        a.rules,
        vec![FiredRule {
            id: "merchant_decline_spike".into(),
            reason: "MERCHANT_DECLINE_SPIKE".into(),
            action: Some(Outcome::Review),
            score: 700,
            values: BTreeMap::from([("declined".to_owned(), Value::Number(20.0))]),
        }]
    );
}

#[test]
fn card_spend_alert_carries_the_card() {
    let rs = WindowRuleSet::default_rules();
    let rule = rs.for_window(KeyKind::Card, 60 * MINUTE_MS).next().unwrap();
    let w = window("card:tok_1", 60);
    let mut m = Metrics::default();
    m.add_all(&[txn(1, 0, 600_000, "m", false)], false);
    let a = rs.evaluate(rule, &w, &m).unwrap();
    assert_eq!(a.card_token.as_deref(), Some("tok_1"));
    assert_eq!(a.merchant_id, None);
}

/// A merchant id that reads as a card number (10 % of numeric 15-digit ids pass Luhn)
/// never leaves in an alert; two such merchants keep distinct alert ids.
#[test]
fn a_merchant_id_that_reads_as_a_card_number_is_not_in_the_alert() {
    let rs = WindowRuleSet::default_rules();
    let m = declines(25, 25);
    for rule in rs.for_window(KeyKind::Merchant, 15 * MINUTE_MS) {
        let alert = |merchant: &str| {
            rs.evaluate(rule, &window(&format!("merchant:{merchant}"), 15), &m)
                .unwrap()
        };
        let (a, b) = (alert("4111111111111111"), alert("5500005555555559"));
        for x in [&a, &b] {
            let json = serde_json::to_string(x).unwrap();
            assert!(
                !json.contains("4111111111111111") && !json.contains("5500005555555559"),
                "{json}"
            );
        }
        assert_ne!(a.alert_id, b.alert_id);
        // The same safe form the scorer stores, so both share a by-merchant partition.
        assert_eq!(
            a.merchant_id.as_deref(),
            Some(&*crate::event::pan_safe_id("4111111111111111"))
        );
        assert_eq!(
            a.alert_id,
            alert("4111111111111111").alert_id,
            "deterministic"
        );
    }
}

#[test]
fn decline_rate_is_declines_over_count_and_zero_for_an_empty_window() {
    let rate = |m: &Metrics| WindowVars::new(m, 15 * MINUTE_MS).number(slot::DECLINE_RATE);
    assert_eq!(rate(&Metrics::default()), 0.0);
    assert_eq!(rate(&declines(10, 0)), 0.0);
    assert_eq!(rate(&declines(10, 3)), 0.3);
    assert_eq!(rate(&declines(20, 8)), 0.4);
    assert_eq!(rate(&declines(4, 4)), 1.0);

    let rs = WindowRuleSet::default_rules();
    let r = rule(&rs, "merchant_decline_rate");
    let by_ratio = set(
        r#"{"id":"r","kind":"merchant","width_min":15,"when":"declined / count >= 0.4 and count >= 20","score":1,"reason":"R"}"#,
    );
    let by_ratio = &by_ratio.rules[0];
    for (count, declined, fires) in [
        (0, 0, false),    // empty: the rate is 0 (and a division by 0 gives 0)
        (19, 19, false),  // every one declined, but under 20 events
        (20, 7, false),   // 35 %
        (20, 8, true),    // exactly 40 %
        (20, 20, true),   // all
        (100, 39, false), // 39 %
        (100, 40, true),  // 40 %
        (250, 10, false), // a busy merchant's ordinary declines
    ] {
        let m = declines(count, declined);
        assert_eq!(r.fires(&m), fires, "{declined} of {count}");
        assert_eq!(
            by_ratio.fires(&m),
            fires,
            "{declined} of {count}, as a ratio"
        );
    }
    let a = rs
        .evaluate(r, &window("merchant:m-1", 15), &declines(30, 30))
        .unwrap();
    assert_eq!(a.alert_id, "win:merchant_decline_rate:merchant:m-1:15m:0");
    assert_eq!(
        a.features,
        BTreeMap::from([("count".to_owned(), 30.0), ("decline_rate".to_owned(), 1.0)])
    );
    assert_eq!(a.reasons, ["MERCHANT_DECLINE_RATE"]);
}

#[test]
fn window_variables_read_their_own_value() {
    let mut evs: Vec<Txn> = (0..100)
        .map(|i| txn(i, 0, 100 * (i as i64 + 1), "m", i % 4 == 0))
        .collect();
    evs[0].currency = "EUR".into();
    evs[0].amount_minor = 50;
    let mut m = Metrics::default();
    m.add_all(&evs, true);
    let v = WindowVars::new(&m, 5 * MINUTE_MS);
    let get = |name: &str| {
        let s = WINDOW_VARS.iter().position(|d| d.name == name).unwrap();
        v.number(s as u16)
    };
    assert_eq!(get("count"), 100.0);
    assert_eq!(
        get("sum"),
        (2..=100).map(|i| 100.0 * i as f64).sum::<f64>() + 50.0
    );
    assert_eq!((get("approved"), get("declined")), (75.0, 25.0));
    assert_eq!(get("decline_rate"), 0.25);
    assert!((get("distinct_cards") - 5.0).abs() < 0.5);
    assert_eq!((get("min"), get("max")), (50.0, 10_000.0));
    for (name, want) in [("p50", 5_000.0), ("p95", 9_500.0), ("p99", 9_900.0)] {
        let got = get(name);
        assert!((got - want).abs() / want < 0.03, "{name} {got}");
    }
    assert_eq!(get("width_min"), 5.0);
    // An empty window reads 0 everywhere but its width.
    let empty = Metrics::default();
    let v = WindowVars::new(&empty, MINUTE_MS);
    for s in 0..WINDOW_VARS.len() as u16 {
        let want = if s == slot::WIDTH_MIN { 1.0 } else { 0.0 };
        assert_eq!(v.number(s), want, "{}", WINDOW_VARS[usize::from(s)].name);
    }
    // Every variable has a one-line doc and a distinct name.
    let mut names: Vec<_> = WINDOW_VARS.iter().map(|d| d.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), WINDOW_VARS.len());
    assert!(
        WINDOW_VARS
            .iter()
            .all(|d| !d.doc.is_empty() && !d.doc.contains('\n'))
    );
}

#[test]
fn a_block_rule_blocks_and_quantiles_read_the_sketch() {
    let rs = set(
        r#"{"id":"big","kind":"merchant","width_min":5,"when":"p95 >= 9_000 and max >= 10_000","score":900,"action":"block","reason":"BIG"}"#,
    );
    let evs: Vec<Txn> = (0..100)
        .map(|i| txn(i, 0, 100 * (i as i64 + 1), "m", false))
        .collect();
    let mut m = Metrics::default();
    m.add_all(&evs, true);
    let a = rs
        .evaluate(&rs.rules[0], &window("merchant:m", 5), &m)
        .unwrap();
    assert_eq!(a.outcome, Outcome::Block);
    assert_eq!(a.rules[0].action, Some(Outcome::Block));
    assert_eq!(a.features["max"], 10_000.0);
    assert!(a.features["p95"] >= 9_000.0);
    assert!(rs.to_v2_json().contains("\"action\": \"block\""));
}

#[test]
fn bad_rule_sets_are_refused_naming_the_rule_and_position() {
    let one = |r: &str| format!(r#"{{"version":"x","rules":[{r}]}}"#);
    let e = load_err(&one(
        r#"{"id":"spike","kind":"merchant","width_min":15,"when":"decline_rate >= 0.4 and\n  cnt >= 20","score":1,"reason":"R"}"#,
    ));
    assert!(
        e.starts_with("rule \"spike\", condition 2:3: unknown name \"cnt\"; known: count, sum,"),
        "{e}"
    );
    assert!(e.ends_with("\n      cnt >= 20\n      ^"), "{e}");
    let e = load_err(&one(
        r#"{"id":"r","kind":"merchant","width_min":15,"when":"declined >= 'x'","score":1,"reason":"R"}"#,
    ));
    assert!(
        e.contains("rule \"r\", condition 1:10: >= compares numbers"),
        "{e}"
    );
    let e = load_err(&one(
        r#"{"id":"r","kind":"merchant","width_min":15,"when":"count + 1","score":1,"reason":"R"}"#,
    ));
    assert!(e.contains("must be true or false"), "{e}");
    // No lists in window rules.
    let e = load_err(&one(
        r#"{"id":"r","kind":"merchant","width_min":15,"when":"count in @big","score":1,"reason":"R"}"#,
    ));
    assert!(
        e.contains("rule \"r\", condition 1:10: unknown list @big; declared: none"),
        "{e}"
    );
    let v1 = one(
        r#"{"id":"r","kind":"merchant","width_min":15,"metric":"nope","op":"gt","value":1,"score":1,"reason":"R"}"#,
    );
    assert!(
        load_err(&v1).contains("rule \"r\": unknown metric \"nope\"; known: count, sum"),
        "{}",
        load_err(&v1)
    );
    for (bad, says) in [
        (
            r#"{"id":"r","kind":"merchant","width_min":15,"metric":"count","op":"gt","score":1,"reason":"R"}"#,
            "rule \"r\": a v1 rule needs metric, op and value",
        ),
        (
            r#"{"id":"r","kind":"merchant","width_min":15,"when":"true","metric":"count","score":1,"reason":"R"}"#,
            "not both",
        ),
        (
            r#"{"id":"r","kind":"merchant","width_min":15,"score":1,"reason":"R"}"#,
            "rule \"r\": a rule needs a condition: when",
        ),
        (
            r#"{"id":"r","kind":"merchant","width_min":15,"wen":"true","score":1,"reason":"R"}"#,
            "unknown field `wen`",
        ),
        (
            r#"{"id":"r","kind":"merchant","width_min":15,"when":"true","score":1,"reason":"R","action":"allow"}"#,
            "rule \"r\": a window rule's action is review (the default) or block",
        ),
        (
            r#"{"id":"r","kind":"merchant","width_min":0,"when":"true","score":1,"reason":"R"}"#,
            "rule \"r\": width_min is 1 to",
        ),
        (
            r#"{"id":"r","kind":"merchant","width_min":15,"when":"true","score":1001,"reason":"R"}"#,
            "a score is 0 to 1000",
        ),
        (
            r#"{"id":"r","kind":"merchant","width_min":15,"when":"true","score":1,"reason":""}"#,
            "a reason is 1 to 128",
        ),
        (
            r#"{"id":"r","kind":"planet","width_min":15,"when":"true","score":1,"reason":"R"}"#,
            "not valid",
        ),
        (
            r#"{"id":"r","kind":"merchant","width_min":15,"when":"true","score":1,"reason":"R"},{"id":"r","kind":"card","width_min":60,"when":"true","score":1,"reason":"R"}"#,
            "the id is used twice",
        ),
    ] {
        let e = load_err(&one(bad));
        assert!(e.contains(says), "{bad}: {e}");
    }
    assert!(load_err(r#"{"version":"","rules":[]}"#).contains("version must be"));
    assert!(
        load_err(r#"{"version":"x","rules":[],"alert_threshold":1}"#).contains("unknown field")
    );
    assert!(load_err("{").contains("not valid"));
}

#[test]
fn the_v1_rules_load_unchanged_and_keep_their_alert_ids() {
    let v1 = WindowRuleSet::from_json(V1_FIXTURE).unwrap();
    assert_eq!(
        v1.rules.iter().map(|r| r.when.as_str()).collect::<Vec<_>>(),
        [
            "declined >= 20.0",
            "sum >= 500000.0",
            "distinct_cards >= 200.0"
        ]
    );
    let new = WindowRuleSet::default_rules();
    // A total every default rule fires on: 300 cards, all declined, 6,000.00 in all.
    let evs: Vec<Txn> = (0..300)
        .map(|i| {
            let mut t = txn(i, 0, 2_000, "m-1", true);
            t.card_token = format!("tok_{i}");
            t
        })
        .collect();
    let mut merchant = Metrics::default();
    merchant.add_all(&evs, true);
    let mut card = Metrics::default();
    card.add_all(&evs, false);
    for (id, key, total, want) in [
        (
            "merchant_decline_spike",
            "merchant:m-1",
            &merchant,
            "win:merchant_decline_spike:merchant:m-1:15m:0",
        ),
        (
            "card_spend_1h",
            "card:tok_1",
            &card,
            "win:card_spend_1h:card:tok_1:60m:0",
        ),
        (
            "merchant_card_spike",
            "merchant:m-1",
            &merchant,
            "win:merchant_card_spike:merchant:m-1:5m:0",
        ),
    ] {
        let (old, now) = (rule(&v1, id), rule(&new, id));
        assert_eq!(
            (old.kind, old.width_min, old.score, &old.reason),
            (now.kind, now.width_min, now.score, &now.reason),
            "{id}"
        );
        let w = window(key, old.width_min);
        let (a, b) = (
            v1.evaluate(old, &w, total).unwrap(),
            new.evaluate(now, &w, total).unwrap(),
        );
        assert_eq!(a.alert_id, want);
        assert_eq!(b.alert_id, want);
        assert_eq!(a.features, b.features, "{id}");
        assert_eq!((a.score, &a.reasons), (b.score, &b.reasons));
        assert_ne!(a.ruleset_hash, b.ruleset_hash);
    }
}

#[test]
fn a_shards_part_is_read_where_the_rule_could_fire_on_the_whole() {
    let rs = WindowRuleSet::default_rules();
    let spike = rule(&rs, "merchant_decline_spike");
    // As before: a quarter of the threshold on this shard.
    assert!(!spike.may_fire(&declines(10, 4), 0.25));
    assert!(spike.may_fire(&declines(10, 5), 0.25));
    assert!(!spike.may_fire(&declines(10, 5), 1.0));
    assert!(spike.may_fire(&declines(30, 20), 1.0));
    let rate = rule(&rs, "merchant_decline_rate");
    assert!(rate.may_fire(&declines(5, 2), 0.25), "5 of 20 events, 40 %");
    assert!(!rate.may_fire(&declines(4, 4), 0.25), "under 5 events");
    assert!(!rate.may_fire(&declines(50, 10), 0.25), "20 %");
    // A rule that needs at most N is read while the part is within N.
    let quiet = set(
        r#"{"id":"q","kind":"merchant","width_min":15,"when":"count < 5","score":1,"reason":"Q"}"#,
    );
    assert!(quiet.rules[0].may_fire(&declines(3, 0), 0.25));
    assert!(!quiet.rules[0].may_fire(&declines(5, 0), 0.25));
    // A share outside (0, 1] reads every window.
    assert!(spike.may_fire(&Metrics::default(), 0.0));
}

/// The v1 evaluator as it was: `metric op value` on the window total.
fn v1_fires(metric: Metric, op: Op, value: f64, m: &Metrics) -> bool {
    let v = metric.value(m);
    match op {
        Op::Gt => v > value,
        Op::Gte => v >= value,
        Op::Lt => v < value,
        Op::Lte => v <= value,
        Op::Eq => (v - value).abs() < f64::EPSILON,
    }
}

fn totals() -> impl proptest::strategy::Strategy<Value = Metrics> {
    use proptest::prelude::*;
    proptest::collection::vec(
        (
            0i64..400_000,
            any::<bool>(),
            0usize..400,
            proptest::sample::select(&["USD", "EUR", "JPY"][..]),
        ),
        0..300,
    )
    .prop_map(|evs| {
        let evs: Vec<Txn> = evs
            .into_iter()
            .enumerate()
            .map(|(i, (amount, declined, card, currency))| {
                let mut t = txn(i, 0, amount, "m", declined);
                t.card_token = format!("tok_{card}");
                t.currency = currency.into();
                t
            })
            .collect();
        let mut m = Metrics::default();
        m.add_all(&evs, true);
        m
    })
}

fn v1_rule() -> impl proptest::strategy::Strategy<Value = (Metric, Op, f64)> {
    use proptest::prelude::*;
    let value = prop_oneof![
        (0u32..300).prop_map(f64::from),
        -5.0f64..2_000_000.0,
        (0u32..30_000).prop_map(|n| f64::from(n) * 100.0),
        Just(0.0),
        Just(0.5)
    ];
    (
        proptest::sample::select(&Metric::ALL[..]),
        proptest::sample::select(&[Op::Gt, Op::Gte, Op::Lt, Op::Lte, Op::Eq][..]),
        value,
    )
}

proptest::proptest! {
    /// Every v1 window rule fires where the v1 evaluator fired, and so does its v2
    /// translation, with the same alert.
    #[test]
    fn a_v1_window_rule_and_its_v2_translation_fire_on_the_same_totals(
        rules in proptest::collection::vec(v1_rule(), 1..8),
        ms in proptest::collection::vec(totals(), 1..6),
    ) {
        let specs: Vec<serde_json::Value> = rules
            .iter()
            .enumerate()
            .map(|(i, (metric, op, value))| serde_json::json!({
                "id": format!("r{i}"), "kind": "merchant", "width_min": 15,
                "metric": metric.name(), "op": op, "value": value,
                "score": 500, "reason": format!("R{i}"),
            }))
            .collect();
        let json = serde_json::json!({"version": "p", "rules": specs}).to_string();
        let v1 = WindowRuleSet::from_json(&json).unwrap();
        let v2 = WindowRuleSet::from_json(&v1.to_v2_json()).unwrap();
        let w = window("merchant:m", 15);
        for m in &ms {
            for (i, &(metric, op, value)) in rules.iter().enumerate() {
                let want = v1_fires(metric, op, value, m);
                let (a, b) = (&v1.rules[i], &v2.rules[i]);
                proptest::prop_assert_eq!(&a.when, &b.when);
                let (x, y) = (v1.evaluate(a, &w, m), v2.evaluate(b, &w, m));
                proptest::prop_assert_eq!(x.is_some(), want, "{} on {:?}", a.when, metric.value(m));
                proptest::prop_assert_eq!(y.is_some(), want);
                if let (Some(x), Some(y)) = (x, y) {
                    proptest::prop_assert_eq!(&x.alert_id, &y.alert_id);
                    proptest::prop_assert_eq!(
                        &x.features,
                        &BTreeMap::from([(metric.name().to_owned(), metric.value(m))])
                    );
                    proptest::prop_assert_eq!(&x.features, &y.features);
                }
                // The shard gate of a total alone (one shard, share 1) is the rule.
                proptest::prop_assert_eq!(a.may_fire(m, 1.0), want);
            }
        }
    }
}
