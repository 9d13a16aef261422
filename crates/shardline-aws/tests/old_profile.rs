//! A card profile stored before replay guards were per lane (each guard a padded
//! position string) reads through the DynamoDB adapter's own deserialiser: an unreadable
//! profile would fail every batch holding its card until the records went to OnFailure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use shardline_core::fraud::profile::CardProfile;

#[test]
fn a_profile_with_position_string_guards_reads_through_serde_dynamo() {
    let pos = format!(
        "{:0>138}",
        "4959033827149025660855969253836157109592157598913"
    );
    let item: HashMap<String, AttributeValue> = HashMap::from([
        ("card_token".to_owned(), AttributeValue::S("tok_old".into())),
        ("version".to_owned(), AttributeValue::N("7".into())),
        ("txn_count".to_owned(), AttributeValue::N("3".into())),
        (
            "applied".to_owned(),
            AttributeValue::M(HashMap::from([(
                "shardId-000000000001".to_owned(),
                AttributeValue::S(pos.clone()),
            )])),
        ),
        (
            "recent_ids".to_owned(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![0u8; 16])),
        ),
    ]);
    let p: CardProfile = serde_dynamo::from_item(item).expect("an old profile reads");
    assert_eq!(p.version, 7);
    assert_eq!(p.applied["shardId-000000000001"].pos, pos);
    // And what it becomes when written back reads again.
    let again: CardProfile = serde_dynamo::from_item(
        serde_dynamo::to_item::<_, HashMap<String, AttributeValue>>(&p).unwrap(),
    )
    .unwrap();
    assert_eq!(again, p);
}
