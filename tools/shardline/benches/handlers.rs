//! Criterion benchmarks on realistic batches from the generator (fixed seed): decode
//! (100, 1,000 and a full 6 MB batch, plain and KPL), scoring, window pre-aggregation,
//! and each function's whole handler with in-memory stores. Throughput is reported in
//! records (elements) per second on one core; `shardline bench` prints bytes too.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shardline::bench::{
    Batch, batch, bench_limits, mem_aggregator, mem_scorer, preaggregate, stock_decode,
};
use shardline_core::batch::Item;
use shardline_core::fraud::apply_card;
use shardline_core::fraud::features::compute;
use shardline_core::fraud::profile::CardProfile;
use shardline_core::fraud::rules::{Policies, RuleSet};

fn sizes() -> Vec<(&'static str, Batch)> {
    vec![
        ("100", batch(Some(100), false)),
        ("1000", batch(Some(1_000), false)),
        ("6MB", batch(None, false)),
    ]
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, b) in sizes() {
        g.throughput(Throughput::Elements(b.records as u64));
        g.bench_function(format!("lean/{name}"), |x| {
            x.iter(|| {
                shardline_aws::decode_event_json(black_box(&b.json), &bench_limits()).unwrap()
            })
        });
        g.bench_function(format!("stock/{name}"), |x| {
            x.iter(|| stock_decode(black_box(&b.json)))
        });
    }
    let kpl = batch(Some(batch(None, false).records), true);
    g.throughput(Throughput::Elements(kpl.records as u64));
    g.bench_function("lean-kpl/6MB", |x| {
        x.iter(|| shardline_aws::decode_event_json(black_box(&kpl.json), &bench_limits()).unwrap())
    });
    g.finish();
}

fn score(c: &mut Criterion) {
    let b = batch(None, false);
    let records = shardline_aws::decode_event_json(&b.json, &bench_limits()).unwrap();
    let rules = Policies::from(RuleSet::default_rules());
    let mut g = c.benchmark_group("score");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("features+rules/6MB", |x| {
        x.iter(|| {
            // Each record against its card's profile, profiles in memory.
            let mut profiles: std::collections::HashMap<&str, CardProfile> =
                std::collections::HashMap::new();
            let mut alerts = 0;
            for r in &records {
                let Ok(t) = &r.body else { continue };
                let p = profiles
                    .remove(t.card_token.as_str())
                    .unwrap_or_else(|| CardProfile::new(t.card_token.clone()));
                let out = apply_card(
                    p,
                    &[Item {
                        meta: &r.meta,
                        body: t,
                    }],
                    &rules,
                );
                alerts += out.alerts.len();
                profiles.insert(&t.card_token, out.profile);
            }
            black_box(alerts)
        })
    });
    g.finish();
}

/// The default rule set alone, on the features of a realistic batch: the outcome (what
/// every event pays) and the full decision with its explanation (what a reviewed or
/// blocked event pays). Elements are rule evaluations: rules per second.
fn rules(c: &mut Criterion) {
    let b = batch(Some(1_000), false);
    let records = shardline_aws::decode_event_json(&b.json, &bench_limits()).unwrap();
    let txns: Vec<_> = records
        .iter()
        .filter_map(|r| r.body.as_ref().ok())
        .collect();
    let feats: Vec<_> = txns
        .iter()
        .map(|t| compute(&CardProfile::new(t.card_token.clone()), t))
        .collect();
    let policies = Policies::from(RuleSet::default_rules());
    let live = &policies.live;
    let n_rules = live.rules.rules.len() as u64;
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(txns.len() as u64 * n_rules));
    g.bench_function("default-set/outcome", |x| {
        x.iter(|| {
            let mut blocked = 0;
            for (t, f) in txns.iter().zip(&feats) {
                let v = live.vars(f, t);
                blocked += usize::from(live.rules.outcome(black_box(&v)) != Default::default());
            }
            black_box(blocked)
        })
    });
    g.bench_function("default-set/decision", |x| {
        x.iter(|| {
            let mut fired = 0;
            for (t, f) in txns.iter().zip(&feats) {
                let v = live.vars(f, t);
                fired += live.rules.decide(black_box(&v)).fired.len();
            }
            black_box(fired)
        })
    });
    g.finish();
}

fn aggregate(c: &mut Criterion) {
    let b = batch(None, false);
    let records = shardline_aws::decode_event_json(&b.json, &bench_limits()).unwrap();
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("pre-aggregation/6MB", |x| {
        x.iter(|| preaggregate(black_box(&records)))
    });
    g.finish();
}

fn handlers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("handler");
    for (name, b) in sizes() {
        g.throughput(Throughput::Elements(b.records as u64));
        g.bench_function(format!("fraud-scorer/{name}"), |x| {
            x.iter(|| mem_scorer(&rt, black_box(&b.json)))
        });
        g.bench_function(format!("window-aggregator/{name}"), |x| {
            x.iter(|| mem_aggregator(&rt, black_box(&b.json)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(3));
    targets = decode, score, rules, aggregate, handlers
}
criterion_main!(benches);
