//! End to end on the emulators: labelled traffic with producer duplicates and malformed
//! records on a 4-shard stream, read by the local event source mapping with both
//! functions in process; the stream is resharded (a shard split) mid-run and the runner
//! is stopped and restarted. Then: every valid event is in the window aggregates exactly
//! once (recomputed independently from the generated events), every malformed record is
//! in the quarantine with its reason, and every card's events were scored in order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine as _;
use shardline::producer::{PutOptions, put_all};
use shardline::runner::{Clients, Mapping, RunOptions, run};
use shardline::traffic::{GenConfig, GenRecord, generate};
use shardline_aws::template::Template;
use shardline_core::fraud::profile::CardProfile;
use shardline_core::ports::QuarantineEntry;
use shardline_core::window::hll::stable_hash;
use shardline_core::window::{Metrics, WindowConfig, WindowId, WindowPartial, windows_of};
use shardline_core::{PoisonReason, Txn};
use shardline_tests::{emulator_config, fresh_stack};

async fn run_all(t: &Template, sdk: &aws_config::SdkConfig, opts: RunOptions) {
    let clients = Clients::new(sdk);
    let mut runs = Vec::new();
    for f in t.functions() {
        let m = Mapping::from_template(&f, t).unwrap();
        let invoker = shardline::invoke::in_process(&f, sdk).unwrap();
        let on_failure = m.on_failure_arn.as_ref().and_then(|arn| {
            t.physical()
                .values()
                .find(|p| &p.arn == arn)
                .map(|p| p.reference.clone())
        });
        runs.push(tokio::spawn(run(
            m,
            clients.clone(),
            invoker,
            on_failure,
            opts.clone(),
        )));
    }
    for r in runs {
        let stats = r.await.unwrap().unwrap();
        assert_eq!(
            stats.on_failure.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "nothing may give up"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_survives_reshard_restart_duplicates_and_poison() {
    let sdk = emulator_config().await;
    let t = fresh_stack(
        &sdk,
        'e',
        &[
            ("StreamMode", "PROVISIONED"),
            ("ShardCount", "4"),
            ("AllowedLatenessSeconds", "86400"),
        ],
    )
    .await;
    let clients = Clients::new(&sdk);
    let stream = t.physical()["InputStream"].reference.clone();

    let now = shardline::common::now_ms();
    let g = generate(&GenConfig {
        seed: 11,
        events: 1_500,
        cards: 300,
        merchants: 40,
        end_ms: now,
        span_ms: 20 * 60_000,
        scenarios_each: 2,
        malformed: 0.02,
        unknown_schema: 0.01,
        duplicates: 0.03,
        very_late: 0.0,
        ..GenConfig::default()
    });
    let (first, second) = g.records.split_at(g.records.len() / 2);
    put_all(&clients.kinesis, &stream, first, &PutOptions::default())
        .await
        .unwrap();
    let until_idle = RunOptions {
        poll_interval: Duration::from_millis(100),
        ..RunOptions::default()
    };
    run_all(&t, &sdk, until_idle.clone()).await;

    // Reshard: split the first shard at the middle of its hash range.
    let shards = clients
        .kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap();
    let s0 = &shards.shards()[0];
    let r = s0.hash_key_range().unwrap();
    let (lo, hi): (u128, u128) = (
        r.starting_hash_key().parse().unwrap(),
        r.ending_hash_key().parse().unwrap(),
    );
    clients
        .kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(s0.shard_id())
        .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
        .send()
        .await
        .unwrap();
    for _ in 0..50 {
        let d = clients
            .kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        clients
            .kinesis
            .list_shards()
            .stream_name(&stream)
            .send()
            .await
            .unwrap()
            .shards()
            .len(),
        6,
        "4 shards, one split in two"
    );
    put_all(&clients.kinesis, &stream, second, &PutOptions::default())
        .await
        .unwrap();

    // A runner stopped part way (its checkpoints stay), then a new one until idle.
    run_all(
        &t,
        &sdk,
        RunOptions {
            until_idle: false,
            max_duration: Duration::from_millis(1_500),
            ..until_idle.clone()
        },
    )
    .await;
    run_all(&t, &sdk, until_idle).await;

    // 1. Windows: every valid event exactly once (merchant and global windows).
    let distinct: Vec<&Txn> = g.distinct_events();
    let mut expected: BTreeMap<WindowId, Vec<&Txn>> = BTreeMap::new();
    for e in &distinct {
        for (_, w) in windows_of(e, &WindowConfig::default()) {
            expected.entry(w).or_default().push(e);
        }
    }
    let windows_table = shardline::common::table_name(&t, "WindowsTable").unwrap();
    let mut stored: BTreeMap<WindowId, Metrics> = BTreeMap::new();
    for item in shardline::common::scan_all(&clients.ddb, &windows_table)
        .await
        .unwrap()
    {
        if !shardline_aws::dynamo::is_window_partial(&item) {
            continue;
        }
        let p: WindowPartial = serde_dynamo::from_item(item).unwrap();
        stored
            .entry(p.window.clone())
            .or_default()
            .merge(&p.metrics);
    }
    assert_eq!(stored.len(), expected.len(), "window count");
    for (w, evs) in &expected {
        let m = &stored[w];
        let sum: i64 = evs.iter().map(|e| e.amount_minor).sum();
        let declined = evs
            .iter()
            .filter(|e| e.auth_result == shardline_core::AuthResult::Declined)
            .count() as u64;
        assert_eq!(
            (m.count, m.total_sum(), m.declined, m.late),
            (evs.len() as u64, sum, declined, 0),
            "{w:?}"
        );
        assert_eq!(
            m.currencies["USD"].max,
            evs.iter().map(|e| e.amount_minor).max().unwrap(),
            "{w:?}"
        );
    }

    // 2. Quarantine: every malformed or unknown-schema record, with its reason.
    let queue = t.physical()["QuarantineQueue"].reference.clone();
    let mut entries: Vec<QuarantineEntry> = Vec::new();
    for _ in 0..200 {
        let out = clients
            .sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .visibility_timeout(600)
            .send()
            .await
            .unwrap();
        if out.messages().is_empty() {
            break;
        }
        entries.extend(
            out.messages()
                .iter()
                .map(|m| serde_json::from_str::<QuarantineEntry>(m.body().unwrap()).unwrap()),
        );
    }
    let poison: Vec<&GenRecord> = g.records.iter().filter(|r| r.txn.is_none()).collect();
    for r in &poison {
        // The quarantine keeps the payload with anything that reads as a card number
        // redacted (a hex card token can hold such a digit run).
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(shardline_core::event::redact_pans_bytes(&r.data));
        let e = entries
            .iter()
            .find(|e| e.data_base64 == b64)
            .unwrap_or_else(|| panic!("not quarantined: {}", String::from_utf8_lossy(&r.data)));
        assert!(!matches!(e.reason, PoisonReason::LateEvent { .. }) && !e.reason_text.is_empty());
    }

    // 3. Per-card order across the reshard: each profile's latest event ids are the
    //    card's latest distinct events in the order they were produced.
    let profiles_table = shardline::common::table_name(&t, "ProfilesTable").unwrap();
    let profiles: Vec<CardProfile> = shardline::common::scan_all(&clients.ddb, &profiles_table)
        .await
        .unwrap()
        .into_iter()
        .map(|i| serde_dynamo::from_item(i).unwrap())
        .collect();
    let mut produced: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &distinct {
        produced.entry(&e.card_token).or_default().push(&e.event_id);
    }
    assert_eq!(profiles.len(), produced.len());
    for p in &profiles {
        let ids = &produced[p.card_token.as_str()];
        let kept: Vec<u64> = p.seen_event_hashes().collect();
        let tail: Vec<u64> = ids[ids.len().saturating_sub(kept.len())..]
            .iter()
            .map(|id| stable_hash(id))
            .collect();
        assert_eq!(kept, tail, "order of {}", p.card_token);
        assert_eq!(
            p.txn_count as usize,
            ids.len(),
            "every event of {} once",
            p.card_token
        );
    }
}
