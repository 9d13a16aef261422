//! The largest window partial the aggregator can ever write stays under DynamoDB's
//! 400 KB item limit: every currency the decoder accepts, a dense distinct-card sketch
//! and a quantile sketch with every bin it can hold, serialised as `DynamoWindowStore`
//! writes it (`serde_dynamo::to_item`).
//! Limit and size rules: <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html#limits-items>,
//! <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html>.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use shardline_core::event::{DecodeLimits, MAX_AMOUNT_MINOR, decode_txn};
use shardline_core::seq::{RecordPos, SeqNo};
use shardline_core::window::{CurrencyAgg, WindowConfig, WindowId, WindowPartial};

mod common;
use common::{ITEM_LIMIT, item_size};

fn txn_json(currency: &str, card: &str, amount: i64) -> String {
    format!(
        r#"{{"schema":"txn.v1","event_id":"e","card_token":"{card}","merchant_id":"m","mcc":"5411","amount_minor":{amount},"currency":"{currency}","event_time":"2025-11-26T06:59:58.250Z","location":{{"lat":48.85,"lon":2.35,"country":"FR"}},"channel":"pos","auth_result":"approved"}}"#
    )
}

const ARRIVAL: i64 = 1_764_140_400_000;

#[test]
fn the_largest_window_partial_fits_a_dynamodb_item() {
    // Every three-letter code the decoder accepts can become a key of the currency map.
    let mut accepted = Vec::new();
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            for c in b'A'..=b'Z' {
                let code = String::from_utf8(vec![a, b, c]).unwrap();
                let json = txn_json(&code, "tok", 1);
                if decode_txn(json.as_bytes(), ARRIVAL, &DecodeLimits::default()).is_ok() {
                    accepted.push(code);
                }
            }
        }
    }
    assert!(accepted.iter().any(|c| c == "USD"));

    // A merchant id of the longest accepted length, a 56-digit sequence number.
    let merchant = "m".repeat(128);
    let window = WindowId {
        key: format!("merchant:{merchant}"),
        width_ms: 15 * 60_000,
        start_ms: 1_764_140_400_000,
    };
    let shard = "shardId-000000000000";
    let mut partial = WindowPartial::new(window, shard, &WindowConfig::default());
    partial.applied = RecordPos {
        seq: SeqNo::parse(&"9".repeat(56)).unwrap(),
        sub: u32::MAX,
    }
    .to_padded();

    // Amounts spread geometrically over the whole accepted range fill the quantile
    // sketch's bins; many distinct cards make the distinct-card sketch dense.
    let mut txns = Vec::new();
    let mut amount = 1.0f64;
    let mut i = 0;
    while amount <= MAX_AMOUNT_MINOR as f64 {
        let json = txn_json("USD", &format!("tok_{i}"), amount as i64);
        txns.push(decode_txn(json.as_bytes(), ARRIVAL, &DecodeLimits::default()).unwrap());
        amount *= 1.005;
        i += 1;
    }
    for j in 0..20_000 {
        let json = txn_json("EUR", &format!("card_{j}"), 0);
        txns.push(decode_txn(json.as_bytes(), ARRIVAL, &DecodeLimits::default()).unwrap());
    }
    partial.metrics.add_all(&txns, true);
    assert_eq!(
        serde_json::to_value(&partial.metrics.cards)
            .unwrap()
            .as_array()
            .map(Vec::len),
        Some(1024),
        "the distinct-card sketch is dense"
    );

    // Every accepted currency, with the widest numbers it can hold.
    for code in &accepted {
        partial.metrics.currencies.insert(
            code.clone(),
            CurrencyAgg {
                count: u64::MAX,
                sum: i64::MIN,
                min: i64::MIN,
                max: i64::MAX,
            },
        );
    }
    partial.metrics.count = u64::MAX;
    partial.metrics.approved = u64::MAX;
    partial.metrics.declined = u64::MAX;
    partial.metrics.late = u64::MAX;
    partial.version = u64::MAX;
    partial.expires_at = i64::MAX;

    let item: HashMap<String, AttributeValue> = serde_dynamo::to_item(&partial).unwrap();
    let size = item_size(&item);
    println!(
        "{} currencies, sketch {} bytes: item {size} bytes",
        accepted.len(),
        partial.metrics.amounts.len()
    );
    assert!(
        partial.metrics.amounts.len() > 1000,
        "the quantile sketch holds many bins"
    );
    assert!(
        size < ITEM_LIMIT,
        "a window partial of {size} bytes cannot be written"
    );
}
