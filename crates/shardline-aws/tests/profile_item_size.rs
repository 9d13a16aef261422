//! Card profiles stay small as DynamoDB stores them (`serde_dynamo::to_item`, as
//! `DynamoProfileStore` writes them): a typical card's under 1 KB (one write unit), the
//! busiest realistic card's within a few write units, with every feature's state.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use shardline_core::event::{AuthResult, Channel, Location, Txn};
use shardline_core::fraud::profile::CardProfile;
use shardline_core::seq::{RecordPos, SeqNo};

mod common;
use common::item_size;

const T0: i64 = 1_764_140_400_000;

fn txn(i: usize, t: i64, merchant: &str, country: &str, channel: Channel) -> Txn {
    Txn {
        card_bin: None,
        event_id: format!("evt-{i:08}"),
        card_token: "tok_5f9c2a7d41e0b3c8".into(),
        merchant_id: merchant.into(),
        mcc: 5411,
        amount_minor: 1_000 + (i as i64 % 97) * 113,
        currency: "EUR".into(),
        event_time_ms: t,
        location: Location {
            lat: 48.85,
            lon: 2.35,
            country: country.into(),
        },
        channel,
        auth_result: if i % 9 == 0 {
            AuthResult::Declined
        } else {
            AuthResult::Approved
        },
    }
}

fn size(p: &CardProfile) -> usize {
    let item: HashMap<String, AttributeValue> = serde_dynamo::to_item(p).unwrap();
    item_size(&item)
}

fn pos(seq: u64) -> RecordPos {
    RecordPos::plain(SeqNo::parse(&format!("4959{seq:052}")).unwrap())
}

/// Three purchases a day for a month at a dozen shops, read from one shard.
#[test]
fn a_typical_card_is_under_one_kilobyte() {
    let mut p = CardProfile::new("tok_5f9c2a7d41e0b3c8");
    for i in 0..90 {
        let t = T0 + i as i64 * 8 * 3_600_000;
        p.update(&txn(i, t, &format!("m-{:05}", i % 12), "FR", Channel::Pos));
        p.mark_applied("shardId-000000000003", &pos(i as u64), t);
    }
    let n = size(&p);
    println!("typical profile: {n} bytes");
    assert!(n < 1_000, "a typical profile of {n} bytes");
}

/// A card used every 30 seconds for a day, at a new 24-character merchant each time, in
/// 20 countries, under 8 lanes of long guard names: every bounded list full.
#[test]
fn the_busiest_card_stays_within_a_few_write_units() {
    let mut p = CardProfile::new("tok_5f9c2a7d41e0b3c8");
    let countries = [
        "FR", "DE", "GB", "US", "ES", "IT", "NL", "BE", "PT", "IE", "SE", "NO", "DK", "FI", "PL",
        "CZ", "AT", "CH", "GR", "HU",
    ];
    for i in 0..2_880 {
        let t = T0 + i as i64 * 30_000;
        let channel = if i % 2 == 0 {
            Channel::Pos
        } else {
            Channel::Ecom
        };
        p.update(&txn(
            i,
            t,
            &format!("merchant-{i:015}"),
            countries[i % countries.len()],
            channel,
        ));
        p.mark_applied(
            &format!("shardId-{:012}/lane-{:016x}", i % 4, i % 8),
            &pos(i as u64),
            t,
        );
    }
    assert_eq!(p.hour_buckets().count(), 24);
    let n = size(&p);
    println!("busiest profile: {n} bytes");
    // 9.2 KB: 2 KiB of it the day's 128 event-id hashes (the re-send memory).
    assert!(n < 10_000, "the busiest profile of {n} bytes");
}
