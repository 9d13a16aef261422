"""Shared helpers of the fixture scripts: txn.v1 events and Lambda KinesisEvent records."""
import base64
import datetime as dt
import json
import os

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/shardline-input"
SHARD = "shardId-000000000000"
BASE_SEQ = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898
T0 = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.timezone.utc)

NYC = (40.7128, -74.0060, "US")
PARIS = (48.8566, 2.3522, "FR")
SAO_PAULO = (-23.5505, -46.6333, "BR")


def txn(eid, card, merchant, amount, t, place=NYC, mcc="5411", result="approved", channel="pos"):
    lat, lon, country = place
    return {
        "schema": "txn.v1",
        "event_id": eid,
        "card_token": card,
        "merchant_id": merchant,
        "mcc": mcc,
        "amount_minor": amount,
        "currency": "USD",
        "event_time": t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z",
        "location": {"lat": lat, "lon": lon, "country": country},
        "channel": channel,
        "auth_result": result,
    }


def record(i, key, data: bytes, t):
    seq = str(BASE_SEQ + i * 1_000_000)
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": key,
            "sequenceNumber": seq,
            "data": base64.b64encode(data).decode(),
            "approximateArrivalTimestamp": round((t + dt.timedelta(seconds=1)).timestamp(), 3),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{SHARD}:{seq}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/shardline-fraud-scorer",
        "awsRegion": "us-east-1",
        "eventSourceARN": ARN,
    }


def event(txns):
    recs = []
    for i, x in enumerate(txns):
        if isinstance(x, tuple):  # (key, raw bytes, time): a malformed record
            key, raw, t = x
            recs.append(record(i, key, raw, t))
        else:
            t = dt.datetime.strptime(x["event_time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
            recs.append(record(i, x["card_token"], json.dumps(x, separators=(",", ":")).encode(), t))
    return {"Records": recs}


def write(here, name, ev):
    with open(os.path.join(here, f"{name}.json"), "w") as f:
        json.dump(ev, f, indent=2)
        f.write("\n")



def m(s):
    return T0 + dt.timedelta(seconds=s)
