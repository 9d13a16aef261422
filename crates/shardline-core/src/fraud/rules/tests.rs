use super::*;
use crate::event::Location;

/// The v1 default rule set as it shipped before the v2 language: it must load unchanged.
const V1_FIXTURE: &str = include_str!("v1-fixture.json");

fn txn() -> Txn {
    Txn {
        card_bin: None,
        event_id: "e1".into(),
        card_token: "tok-1".into(),
        merchant_id: "m-1".into(),
        mcc: 5411,
        amount_minor: 1_000,
        currency: "USD".into(),
        event_time_ms: 1_764_140_400_000,
        location: Location {
            lat: 0.0,
            lon: 0.0,
            country: "US".into(),
        },
        channel: Channel::Pos,
        auth_result: AuthResult::Approved,
    }
}

fn decide(rs: &RuleSet, f: &Features) -> Decision {
    let p = Policy::of(rs.clone());
    let t = txn();
    let v = p.vars(f, &t);
    let d = rs.decide(&v);
    assert_eq!(rs.outcome(&v), d.outcome, "quick and full outcomes agree");
    d
}

fn fired(f: Features) -> Decision {
    decide(&RuleSet::default_rules(), &f)
}

#[test]
fn default_rule_set_is_valid_and_uses_the_language() {
    let rs = RuleSet::default_rules();
    assert!(rs.rules.len() >= 10);
    assert!(rs.rules.iter().any(|r| r.shadow));
    assert!(rs.rules.iter().any(|r| r.action == Some(Outcome::Allow)));
    assert!(rs.rules.iter().any(|r| r.action == Some(Outcome::Block)));
    assert_eq!(
        rs.thresholds,
        Thresholds {
            review: Some(600),
            block: Some(900)
        }
    );
    assert!(rs.hash.starts_with("sha256:") && rs.hash.len() == 23);
}

#[test]
fn velocity_rule_fires_at_six_a_minute() {
    let d = fired(Features {
        count_1m: 6,
        ..Default::default()
    });
    assert_eq!(
        (d.score, d.reasons()),
        (400, vec!["VELOCITY_1M".to_string()])
    );
    assert_eq!(
        d.outcome,
        Outcome::Allow,
        "400 is under the review threshold"
    );
    assert_eq!(d.fired[0].values["count_1m"], Value::Number(6.0));
    let burst = fired(Features {
        count_1m: 10,
        ..Default::default()
    });
    assert_eq!((burst.score, burst.outcome), (700, Outcome::Review));
}

#[test]
fn impossible_travel_alone_is_reviewed_and_with_more_blocked() {
    let d = fired(Features {
        travel_kmh: 5_000.0,
        ..Default::default()
    });
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(d.reasons(), vec!["IMPOSSIBLE_TRAVEL"]);
    let d = fired(Features {
        travel_kmh: 5_000.0,
        new_country: true,
        ..Default::default()
    });
    assert_eq!((d.score, d.outcome), (900, Outcome::Block));
}

#[test]
fn account_takeover_shape_is_reviewed_but_one_signal_is_not() {
    let d = fired(Features {
        new_country: true,
        new_merchant: true,
        amount_z: 4.0,
        ..Default::default()
    });
    assert_eq!(d.score, 610);
    assert_eq!(
        d.reasons(),
        vec!["AMOUNT_SPIKE", "NEW_COUNTRY", "NEW_MERCHANT"]
    );
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(d.fired[1].values["new_country"], Value::Bool(true));
    assert_eq!(
        fired(Features {
            new_country: true,
            ..Default::default()
        })
        .outcome,
        Outcome::Allow
    );
}

#[test]
fn shadow_rule_is_recorded_not_counted() {
    let d = fired(Features {
        count_1h: 25,
        ..Default::default()
    });
    assert_eq!(d.score, 0);
    assert_eq!(d.shadow_reasons(), vec!["VELOCITY_1H"]);
    assert_eq!(d.numeric_values()["count_1h"], 25.0);
}

#[test]
fn score_is_capped_at_1000() {
    let all = Features {
        count_1m: 20,
        travel_kmh: 9e3,
        tiny_merchants_10m: 9,
        decline_streak: 9,
        ..Default::default()
    };
    assert_eq!(fired(all).score, 1000);
}

fn set(rules: &str, thresholds: &str) -> RuleSet {
    let json = format!(
        r#"{{"version":"t","thresholds":{thresholds},"lists":{{"ok":"card","bad":{{"kind":"card","values":["tok-1"]}}}},"rules":[{rules}]}}"#
    );
    RuleSet::from_json(&json).unwrap_or_else(|e| panic!("{}", e.explain()))
}

#[test]
fn outcome_precedence_allow_then_block_then_review_and_thresholds() {
    let f = Features {
        count_1m: 7,
        ..Default::default()
    };
    let review = r#"{"id":"r","when":"count_1m > 5","action":"review","reason":"R"}"#;
    let block = r#"{"id":"b","when":"count_1m > 6","action":"block","reason":"B"}"#;
    let allow = r#"{"id":"a","when":"card == 'tok-1'","action":"allow","reason":"A"}"#;
    let score = r#"{"id":"s","when":"count_1m >= 1","score":500,"reason":"S"}"#;
    let th = r#"{"review":300,"block":500}"#;
    // Review alone.
    assert_eq!(decide(&set(review, "{}"), &f).outcome, Outcome::Review);
    // Block beats review, whatever the order in the file.
    assert_eq!(
        decide(&set(&format!("{review},{block}"), "{}"), &f).outcome,
        Outcome::Block
    );
    assert_eq!(
        decide(&set(&format!("{block},{review}"), "{}"), &f).outcome,
        Outcome::Block
    );
    // Allow beats both, wherever it is.
    let d = decide(&set(&format!("{review},{block},{allow}"), "{}"), &f);
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(
        d.fired.len(),
        3,
        "the explanation keeps every rule that fired"
    );
    // Score thresholds: 500 reaches block; a review action does not lower it.
    assert_eq!(decide(&set(score, th), &f).outcome, Outcome::Block);
    assert_eq!(
        decide(&set(&format!("{review},{score}"), th), &f).outcome,
        Outcome::Block
    );
    assert_eq!(
        decide(&set(score, r#"{"review":300}"#), &f).outcome,
        Outcome::Review
    );
    assert!(
        RuleSet::from_json(&format!(r#"{{"version":"t","rules":[{score}]}}"#)).is_err(),
        "a scored rule needs thresholds"
    );
    // A rule that does not fire changes nothing.
    let quiet = Features::default();
    assert_eq!(
        decide(&set(&format!("{review},{block}"), th), &quiet).outcome,
        Outcome::Allow
    );
}

#[test]
fn lists_from_the_file_and_the_store_are_both_used() {
    let rs = set(
        r#"{"id":"bad","when":"card in @bad or card in @ok","action":"block","reason":"B"}"#,
        "{}",
    );
    let f = Features::default();
    let mut t = txn();
    // tok-1 is in the file's values of @bad.
    let p = Policy::of(rs.clone());
    assert_eq!(rs.outcome(&p.vars(&f, &t)), Outcome::Block);
    t.card_token = "tok-2".into();
    assert_eq!(rs.outcome(&p.vars(&f, &t)), Outcome::Allow);
    let mut stored = Lists::empty();
    stored.insert("ok", ListKind::Card, ListValues::new(["tok-2"]));
    // The same name under another kind is another list.
    stored.insert("bad", ListKind::Merchant, ListValues::new(["tok-2"]));
    stored.insert("bad", ListKind::Card, ListValues::new(["tok-3"]));
    let p = Policy::new(Arc::new(rs.clone()), &stored);
    assert_eq!(rs.outcome(&p.vars(&f, &t)), Outcome::Block);
    t.card_token = "tok-3".into();
    assert_eq!(
        rs.outcome(&p.vars(&f, &t)),
        Outcome::Block,
        "merged with the file's"
    );
    t.card_token = "tok-1".into();
    assert_eq!(
        rs.outcome(&p.vars(&f, &t)),
        Outcome::Block,
        "the file's values stay"
    );
}

#[test]
fn a_bin_list_matches_the_card_bin_by_prefix() {
    let rs = RuleSet::from_json(
        r#"{"version":"b","lists":{"risky_bins":{"kind":"bin","values":["4111","52"]}},"rules":[{"id":"bin","when":"card_bin in @risky_bins","action":"review","reason":"BIN"}]}"#,
    )
    .unwrap();
    let f = Features::default();
    let mut t = txn();
    let p = Policy::of(rs.clone());
    assert_eq!(rs.outcome(&p.vars(&f, &t)), Outcome::Allow, "no BIN sent");
    for (bin, want) in [
        ("411111", Outcome::Review),
        ("520000", Outcome::Review),
        ("411211", Outcome::Allow),
    ] {
        t.card_bin = Some(bin.into());
        assert_eq!(rs.outcome(&p.vars(&f, &t)), want, "{bin}");
    }
}

#[test]
fn v1_rules_scoring_zero_and_shadow_rules_recording_only_still_load() {
    let v1 = r#"{"version":"x","alert_threshold":500,"rules":[{"id":"r","feature":"count_1m","op":"gte","value":1,"score":0,"reason":"R","shadow":true}]}"#;
    assert!(RuleSet::from_json(v1).is_ok());
    let v2 =
        r#"{"version":"x","rules":[{"id":"r","when":"count_1m >= 1","score":0,"reason":"R"}]}"#;
    assert!(RuleSet::from_json(v2).is_ok());
}

#[test]
fn a_merchant_id_that_reads_as_a_card_number_is_not_in_an_explanation() {
    let rs = set(
        r#"{"id":"m","when":"merchant != ''","action":"review","reason":"M"}"#,
        "{}",
    );
    let f = Features::default();
    let mut t = txn();
    t.merchant_id = "4111111111111111".into();
    let d = rs.decide(&Policy::of(rs.clone()).vars(&f, &t));
    let json = serde_json::to_string(&d).unwrap();
    assert!(!json.contains("4111111111111111"), "{json}");
}

#[test]
fn event_fields_are_readable() {
    let rs = set(
        r#"{"id":"x","when":"amount_minor >= 1000 and currency == 'USD' and mcc == 5411 and country == 'US' and channel == 'pos' and merchant == 'm-1' and auth_result == 'approved' and hour_utc == 7","action":"review","reason":"X"}"#,
        "{}",
    );
    let d = decide(&rs, &Features::default());
    assert_eq!(d.outcome, Outcome::Review);
    let v = &d.fired[0].values;
    assert_eq!(v["hour_utc"], Value::Number(7.0));
    assert_eq!(v["channel"], Value::Text("pos".into()));
    assert_eq!(v.len(), 8);
}

fn load_err(json: &str) -> String {
    match RuleSet::from_json(json) {
        Ok(_) => panic!("loaded: {json}"),
        Err(e) => e.explain(),
    }
}

#[test]
fn bad_rule_sets_are_refused_naming_the_rule_and_position() {
    let rule = |r: &str| format!(r#"{{"version":"x","lists":{{"home":"country"}},"rules":[{r}]}}"#);
    let e = load_err(&rule(
        r#"{"id":"big_foreign","when":"amount_minor > 50000 and country not in @hom","score":1,"reason":"R"}"#,
    ));
    assert!(
        e.starts_with("rule \"big_foreign\", condition 1:41: unknown list @hom"),
        "{e}"
    );
    assert!(
        e.contains("\n    amount_minor > 50000 and country not in @hom\n"),
        "{e}"
    );
    assert!(e.ends_with(&format!("\n    {}^", " ".repeat(40))), "{e}");
    let e = load_err(&rule(
        r#"{"id":"r","when":"amount_minor > 'x'","score":1,"reason":"R"}"#,
    ));
    assert!(
        e.contains("rule \"r\", condition 1:14: > compares numbers"),
        "{e}"
    );
    let e = load_err(&rule(
        r#"{"id":"r","when":"cnt > 1","score":1,"reason":"R"}"#,
    ));
    assert!(e.contains("1:1: unknown name \"cnt\""), "{e}");
    let v1 = r#"{"version":"x","alert_threshold":500,"rules":[{"id":"r","feature":"nope","op":"gt","value":1,"score":1,"reason":"R"}]}"#;
    assert!(load_err(v1).contains("rule \"r\": unknown feature \"nope\""));
    assert!(
        load_err(r#"{"version":"x","alert_threshold":0,"rules":[]}"#).contains("outside 1..=1000")
    );
    assert!(load_err("{").contains("not valid"));
    assert!(
        load_err(&rule(r#"{"id":"r","when":"true","reason":"R"}"#)).contains("score, an action")
    );
    assert!(
        load_err(&rule(
            r#"{"id":"r","when":"true","score":1,"reason":"R"},{"id":"r","when":"true","score":1,"reason":"R"}"#
        ))
        .contains("used twice")
    );
    assert!(
        load_err(&rule(
            r#"{"id":"r","when":"true","feature":"count_1m","score":1,"reason":"R"}"#
        ))
        .contains("not both")
    );
    assert!(
        load_err(&rule(r#"{"id":"r","wen":"true","score":1,"reason":"R"}"#))
            .contains("unknown field")
    );
    assert!(
        load_err(r#"{"version":"x","thresholds":{"review":800,"block":700},"rules":[]}"#)
            .contains("below the review")
    );
    assert!(
        load_err(r#"{"version":"x","lists":{"a":{"kind":"country","values":["USA"]}},"rules":[]}"#)
            .contains("list \"a\": \"USA\" is not a two-letter country code")
    );
    assert!(load_err(r#"{"version":"x","lists":{"a":"planet"},"rules":[]}"#).contains("not valid"));
}

#[test]
fn the_v1_default_set_loads_unchanged_and_scores_as_before() {
    let v1 = RuleSet::from_json(V1_FIXTURE).unwrap();
    assert_eq!(v1.thresholds.review, Some(600));
    assert_eq!(v1.rules[5].when, "new_country");
    let ato = Features {
        new_country: true,
        new_merchant: true,
        amount_z: 4.0,
        ..Default::default()
    };
    let d = decide(&v1, &ato);
    assert_eq!((d.score, d.outcome), (610, Outcome::Review));
    // Translated to v2 text and loaded again: the same rules.
    let v2 = RuleSet::from_json(&v1.to_v2_json()).unwrap();
    assert_eq!(
        v2.rules.iter().map(|r| &r.when).collect::<Vec<_>>(),
        v1.rules.iter().map(|r| &r.when).collect::<Vec<_>>()
    );
}

/// The v1 evaluator as it was: `feature op value` on the feature as a number (booleans
/// 0 / 1), counted rules' scores summed and capped, alert at the threshold.
fn v1_reference(json: &str, f: &Features) -> (u32, Vec<String>, Vec<String>, bool) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut total = 0u32;
    let (mut reasons, mut shadow) = (Vec::new(), Vec::new());
    for r in v["rules"].as_array().unwrap() {
        let x = f.get(r["feature"].as_str().unwrap()).unwrap();
        let t = r["value"].as_f64().unwrap();
        let fires = match r["op"].as_str().unwrap() {
            "gt" => x > t,
            "gte" => x >= t,
            "lt" => x < t,
            "lte" => x <= t,
            _ => (x - t).abs() < f64::EPSILON,
        };
        if !fires {
            continue;
        }
        let reason = r["reason"].as_str().unwrap().to_owned();
        if r["shadow"].as_bool().unwrap_or(false) {
            shadow.push(reason);
        } else {
            total = total.saturating_add(r["score"].as_u64().unwrap() as u32);
            reasons.push(reason);
        }
    }
    let score = total.min(MAX_SCORE);
    let threshold = v["alert_threshold"].as_u64().unwrap() as u32;
    (score, reasons, shadow, score >= threshold)
}

fn features() -> impl proptest::strategy::Strategy<Value = Features> {
    use proptest::prelude::*;
    (
        (
            0u32..30,
            0i64..2_000_000,
            0u32..40,
            -5.0f64..10.0,
            0.0f64..5_000.0,
        ),
        (
            any::<bool>(),
            any::<bool>(),
            0u32..10,
            any::<bool>(),
            0u32..10,
            0u32..20,
        ),
    )
        .prop_map(
            |((c1m, s1m, c1h, z, kmh), (nm, nc, tiny, mcc, streak, burst))| Features {
                count_1m: c1m,
                sum_1m: s1m,
                count_1h: c1h,
                sum_1h: s1m * 3,
                amount_z: z,
                travel_kmh: kmh,
                new_merchant: nm,
                new_country: nc,
                tiny_merchants_10m: tiny,
                high_risk_mcc: mcc,
                decline_streak: streak,
                new_card_burst: burst,
                ..Features::default()
            },
        )
}

fn v1_rule() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let value = prop_oneof![
        (0u32..30).prop_map(f64::from),
        -5.0f64..5_000.0,
        Just(0.0),
        Just(1.0),
        Just(0.5)
    ];
    (
        proptest::sample::select(Features::NAMES),
        proptest::sample::select(&["gt", "gte", "lt", "lte", "eq"][..]),
        value,
        0u32..1200,
        any::<bool>(),
    )
        .prop_map(|(feature, op, value, score, shadow)| {
            serde_json::json!({
                "feature": feature, "op": op, "value": value,
                "score": score.min(1000), "reason": format!("R_{feature}_{op}"), "shadow": shadow,
            })
        })
}

proptest::proptest! {
    /// A v1 rule set scores like the v1 evaluator did, and so does its v2 translation.
    #[test]
    fn a_v1_rule_set_and_its_v2_translation_give_the_same_scores(
        rules in proptest::collection::vec(v1_rule(), 1..12),
        threshold in 1u32..=1000,
        fs in proptest::collection::vec(features(), 1..20),
    ) {
        let rules: Vec<serde_json::Value> = rules
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r["id"] = format!("r{i}").into();
                r
            })
            .collect();
        let json = serde_json::json!({"version": "p", "alert_threshold": threshold, "rules": rules}).to_string();
        let v1 = RuleSet::from_json(&json).unwrap();
        let v2 = RuleSet::from_json(&v1.to_v2_json()).unwrap();
        for f in &fs {
            let (score, reasons, shadow, alerts) = v1_reference(&json, f);
            for rs in [&v1, &v2] {
                let d = decide(rs, f);
                proptest::prop_assert_eq!(d.score, score);
                proptest::prop_assert_eq!(d.reasons(), reasons.clone());
                proptest::prop_assert_eq!(d.shadow_reasons(), shadow.clone());
                proptest::prop_assert_eq!(d.outcome == Outcome::Review, alerts);
            }
        }
    }

    /// The quick outcome and the full decision agree on any rule set of actions and
    /// scores.
    #[test]
    fn quick_outcome_agrees_with_the_full_decision(
        specs in proptest::collection::vec((0u32..20, 0u32..500, 0usize..4), 1..10),
        review in proptest::option::of(1u32..600),
        block in proptest::option::of(600u32..1000),
        fs in proptest::collection::vec(features(), 1..10),
    ) {
        let rules: Vec<serde_json::Value> = specs
            .iter()
            .enumerate()
            .map(|(i, (at, score, action))| {
                let mut r = serde_json::json!({"id": format!("r{i}"), "when": format!("count_1m >= {at}"), "reason": format!("R{i}")});
                if let Some(a) = [None, Some("allow"), Some("review"), Some("block")][*action] {
                    r["action"] = a.into();
                }
                if *score > 0 || *action == 0 {
                    r["score"] = (*score).max(1).into();
                }
                r
            })
            .collect();
        // A set with scored rules needs a threshold.
        let review = if review.is_none() && block.is_none() { Some(300) } else { review };
        let json = serde_json::json!({"version": "p", "thresholds": {"review": review, "block": block}, "rules": rules}).to_string();
        let rs = RuleSet::from_json(&json).unwrap();
        for f in &fs {
            decide(&rs, f);
        }
    }
}

#[test]
fn cache_reloads_after_its_ttl_and_keeps_the_set_when_nothing_is_stored() {
    let t0 = Instant::now();
    let mut c = RuleCache::new(RuleSet::default_rules(), Duration::from_secs(30));
    assert!(c.stale(t0));
    c.refreshed(t0, None);
    assert!(!c.stale(t0 + Duration::from_secs(29)));
    assert!(c.stale(t0 + Duration::from_secs(30)));
    let v2 = RuleSet::from_json(V1_FIXTURE).unwrap();
    c.refreshed(t0 + Duration::from_secs(30), Some(v2));
    assert_eq!(c.current().version, "2026-11-26.1");
}

/// Every slot of the scorer's variables reads what its name says.
#[test]
fn scorer_variables_read_their_own_value() {
    let f = Features {
        count_1m: 1,
        sum_1m: 2,
        count_1h: 3,
        sum_1h: 4,
        amount_z: 5.5,
        travel_kmh: 6.5,
        new_merchant: true,
        new_country: false,
        tiny_merchants_10m: 9,
        high_risk_mcc: true,
        decline_streak: 11,
        new_card_burst: 12,
        count_5m: 13,
        sum_5m: 14,
        count_15m: 15,
        sum_15m: 16,
        count_24h: 17,
        sum_24h: 18,
        decline_rate_24h: 0.19,
        merchants_1h: 20,
        countries_1h: 21,
        prev_txns: 22,
        mins_since_last: 23.5,
        days_since_first: 24.5,
        amount_vs_typical: 25.5,
        amount_vs_max: 26.5,
        channel_change: true,
        mcc_risk: 3,
        tiny_merchants_1h: 28,
    };
    let t = txn();
    let v = TxnVars {
        features: &f,
        txn: &t,
        lists: &[],
    };
    assert_eq!(
        SCORER_VARS[..Features::NAMES.len()]
            .iter()
            .map(|d| d.name)
            .collect::<Vec<_>>(),
        Features::NAMES
    );
    for (slot, d) in SCORER_VARS.iter().enumerate() {
        let got = read_var(SCORER_VARS, slot as u16, &v);
        let want = match f.get(d.name) {
            Some(x) if d.ty == crate::expr::Type::Bool => Value::Bool(x == 1.0),
            Some(x) => Value::Number(x),
            None => match d.name {
                "amount_minor" => Value::Number(1000.0),
                "currency" => Value::Text("USD".into()),
                "mcc" => Value::Number(5411.0),
                "country" => Value::Text("US".into()),
                "channel" => Value::Text("pos".into()),
                "merchant" => Value::Text("m-1".into()),
                "card" => Value::Text("tok-1".into()),
                "auth_result" => Value::Text("approved".into()),
                "hour_utc" => Value::Number(7.0),
                "card_bin" => Value::Text(String::new()),
                other => panic!("no expectation for {other}"),
            },
        };
        assert_eq!(got, want, "{}", d.name);
    }
}
