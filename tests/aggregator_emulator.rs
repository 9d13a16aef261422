//! window-aggregator against the local DynamoDB and SQS, resources from template.yaml:
//! each fixture is run on fresh tables, the window items checked against its golden file
//! (read back through the query API), the batch replayed, and nothing changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use shardline_core::window::view::{sliding_rows, tumbling_rows};
use shardline_core::window::{MINUTE_MS, WindowPartial, pk_for};
use shardline_testkit::fixture_bytes;
use shardline_tests::{emulator_config, fresh_stack};
use window_aggregator::Config;

async fn scan(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Vec<WindowPartial> {
    let out = ddb
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let mut items: Vec<WindowPartial> = out
        .items()
        .iter()
        .filter(|i| shardline_aws::dynamo::is_window_partial(i))
        .map(|i| serde_dynamo::from_item(i.clone()).unwrap())
        .collect();
    items.sort_by(|a, b| (&a.pk, &a.sk).cmp(&(&b.pk, &b.sk)));
    items
}

#[tokio::test]
async fn aggregator_on_fixtures_against_dynamodb_then_replay_changes_nothing() {
    let cfg = emulator_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    for name in [
        "in-order",
        "out-of-order",
        "late-beyond-lateness",
        "duplicates",
    ] {
        let t = fresh_stack(&cfg, 'w', &[]).await;
        let f = t
            .functions()
            .into_iter()
            .find(|f| f.binary == "window-aggregator")
            .unwrap();
        let config = Config::from_lookup(|k| f.environment.get(k).cloned())
            .expect("template sets the aggregator's environment");
        // The aggregator exactly as deployed, on the template's tables.
        let agg = window_aggregator::deployed(&config, &cfg);
        let store = agg.windows();
        let payload = fixture_bytes(&format!("window-aggregator/{name}.json"));
        let report = agg.handle(&payload, None).await.expect("handle");
        assert!(report.response.batch_item_failures.is_empty(), "{name}");
        let before = scan(&ddb, &config.windows_table).await;
        assert!(
            !before.is_empty() && before.iter().all(|p| p.expires_at > 0),
            "{name}: items with a TTL"
        );

        // The stored aggregates, read through the query API, match the golden file.
        let golden: serde_json::Value = serde_json::from_slice(&fixture_bytes(&format!(
            "window-aggregator/{name}.expected.json"
        )))
        .unwrap();
        for (id, want) in golden["windows"].as_object().unwrap() {
            let (pk, start) = id.split_once('@').unwrap();
            let start: i64 = start.parse().unwrap();
            let width = pk
                .rsplit_once('#')
                .unwrap()
                .1
                .trim_end_matches('m')
                .parse::<i64>()
                .unwrap()
                * MINUTE_MS;
            let rows = tumbling_rows(
                &store.query_range(pk, start, start + 1).await.unwrap(),
                width,
            );
            assert_eq!(rows.len(), 1, "{name} {id}");
            let got = (
                rows[0].count,
                rows[0].late,
                rows[0].declined,
                rows[0].max,
                rows[0].min,
            );
            let exp = (
                want["count"].as_u64().unwrap(),
                want["late"].as_u64().unwrap(),
                want["declined"].as_u64().unwrap(),
                want["max"].as_i64(),
                want["min"].as_i64(),
            );
            assert_eq!(got, exp, "{name} {id}");
        }

        if name == "in-order" {
            // The sliding 15-minute window, merged from 1-minute panes.
            let pk = pk_for("merchant:m-io-0", MINUTE_MS);
            let panes = store.query_range(&pk, 0, i64::MAX / 2).await.unwrap();
            let last = panes.iter().map(|p| p.window.start_ms).max().unwrap();
            let rows = sliding_rows(&panes, 15 * MINUTE_MS, last, last + MINUTE_MS);
            assert_eq!(
                rows[0].count, 10,
                "m-io-0 took every third of the 30 in-order events"
            );
        }

        // Replay: nothing changes.
        let again = agg.handle(&payload, None).await.expect("replay");
        assert!(again.response.batch_item_failures.is_empty());
        assert_eq!(again.partial_writes, 0, "{name}: a replay writes no window");
        assert_eq!(scan(&ddb, &config.windows_table).await, before, "{name}");
    }
}
