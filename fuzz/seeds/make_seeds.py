#!/usr/bin/env python3
"""Writes the fuzz seed corpora (fuzz/seeds/<target>/) from the fixtures in events/ and
a few handcrafted inputs. Small on purpose: afl-fuzz grows its own queue from them.
Run from anywhere: python3 fuzz/seeds/make_seeds.py"""
import base64
import hashlib
import json
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fuzz" / "seeds"
MAGIC = bytes([0xF3, 0x89, 0x9A, 0xC2])


def payloads(fixture):
    event = json.loads((ROOT / fixture).read_text())
    return [base64.b64decode(r["kinesis"]["data"]) for r in event["Records"]]


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(tag, wire, value):
    key = varint(tag << 3 | wire)
    if wire == 0:
        return key + varint(value)
    return key + varint(len(value)) + value


def frame(body):
    return MAGIC + body + hashlib.md5(body).digest()


def write(target, name, data):
    (OUT / target).mkdir(parents=True, exist_ok=True)
    (OUT / target / name).write_bytes(data)


def main():
    for target in ("envelope", "kpl", "txn"):
        shutil.rmtree(OUT / target, ignore_errors=True)

    # envelope: Lambda KinesisEvent JSON as the functions receive it.
    for fixture in (
        "events/fraud-scorer/impossible-travel.json",
        "events/fraud-scorer/poison.json",
        "events/kpl/aggregated.json",
    ):
        write("envelope", pathlib.Path(fixture).name, (ROOT / fixture).read_bytes())
    minimal = {
        "Records": [
            {
                "eventID": "shardId-000000000000:1",
                "kinesis": {
                    "partitionKey": "k",
                    "sequenceNumber": "1",
                    "data": "e30=",
                    "approximateArrivalTimestamp": 1764140400.123,
                },
            }
        ]
    }
    write("envelope", "minimal.json", json.dumps(minimal).encode())

    # kpl: the aggregate made by AWS's aws-kinesis-agg, framed and as a bare body (the
    # target frames a body itself), a handcrafted body using every field, a truncation.
    aws = payloads("events/kpl/aggregated.json")[0]
    write("kpl", "aws-aggregate.bin", aws)
    write("kpl", "aws-body.bin", aws[len(MAGIC) : -16])
    tag = field(1, 2, b"trace") + field(2, 2, b"on")
    body = (
        field(1, 2, b"card-a")
        + field(1, 2, b"card-b")
        + field(2, 2, b"170141183460469231731687303715884105728")
        + field(3, 2, field(1, 0, 0) + field(3, 2, b"{}"))
        + field(3, 2, field(1, 0, 1) + field(2, 0, 0) + field(3, 2, b"x") + field(4, 2, tag))
    )
    write("kpl", "two-keys-body.bin", body)
    write("kpl", "truncated.bin", frame(body)[:12])

    # txn: single payloads, valid and each kind of poison of the fixtures.
    write("txn", "valid.json", payloads("events/fraud-scorer/impossible-travel.json")[0])
    for i, p in enumerate(payloads("events/fraud-scorer/poison.json")[1:-1]):
        write("txn", f"poison-{i}.json", p)
    numeric_mcc = json.loads(payloads("events/fraud-scorer/impossible-travel.json")[1])
    numeric_mcc["mcc"] = 5411
    numeric_mcc["note"] = "caf\u00e9"
    write("txn", "numeric-mcc.json", json.dumps(numeric_mcc, ensure_ascii=True).encode())


if __name__ == "__main__":
    main()
