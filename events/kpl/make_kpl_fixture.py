"""Makes events/kpl/aggregated.json: a Lambda KinesisEvent whose first record is a KPL
aggregated record built by AWS's own aggregator (PyPI `aws-kinesis-agg`, pinned in
infra/requirements-tools.txt), so shardline's de-aggregation is checked against an
independent implementation, not against itself.

Run once (the output is committed):
    infra/local/install.sh tools
    .tools/venv-tools/bin/python events/kpl/make_kpl_fixture.py > events/kpl/aggregated.json
"""
import base64
import json

import aws_kinesis_agg.aggregator as agg

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/shardline-input"
SHARD = "shardId-000000000001"
SEQ = "49590338271490256608559692538361571095921575989136588898"
ARRIVAL = 1764140400.123  # 2025-11-26T07:00:00.123Z


def txn(i, card):
    return {
        "schema": "txn.v1",
        "event_id": f"kpl-evt-{i}",
        "card_token": card,
        "merchant_id": f"m-{100 + i}",
        "mcc": "5411",
        "amount_minor": 1000 + i,
        "currency": "USD",
        "event_time": f"2025-11-26T06:59:5{i}.000Z",
        "location": {"lat": 40.71, "lon": -74.0, "country": "US"},
        "channel": "pos",
        "auth_result": "approved",
    }


record = agg.AggRecord()
users = [("tok_card_a", txn(0, "tok_card_a")), ("tok_card_b", txn(1, "tok_card_b")), ("tok_card_a", txn(2, "tok_card_a"))]
for key, body in users:
    record.add_user_record(key, json.dumps(body, separators=(",", ":")).encode())
pk, _ehk, data = record.get_contents()

event = {
    "Records": [
        {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": pk,
                "sequenceNumber": SEQ,
                "data": base64.b64encode(data).decode(),
                "approximateArrivalTimestamp": ARRIVAL,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"{SHARD}:{SEQ}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/shardline-fn",
            "awsRegion": "us-east-1",
            "eventSourceARN": ARN,
        }
    ]
}
print(json.dumps(event, indent=2))
