"""Writes the fraud-scorer fixtures: Lambda KinesisEvent JSON files, one batch of one
shard each, for each fraud pattern. Deterministic; the output is committed. The KPL
fixture uses AWS's own aggregator (PyPI aws-kinesis-agg), so run with the tools venv:

    infra/local/install.sh tools
    .tools/venv-tools/bin/python events/fraud-scorer/make_fixtures.py

Each fixture has a golden file next to it (<name>.expected.json) with the alerts and
quarantined records a single delivery must produce; tests and `shardline replay
--expect` compare against it.
"""
import json
import os
import sys

import aws_kinesis_agg.aggregator as agg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fixturelib import NYC, PARIS, SAO_PAULO, event, m, record, txn  # noqa: E402
from fixturelib import write as _write  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, ev):
    _write(HERE, name, ev)




# Clean traffic: ten cards, two purchases each, at home, ordinary amounts.
clean = []
for c in range(10):
    for k in range(2):
        clean.append(txn(f"clean-{c}-{k}", f"tok_clean_{c}", f"m-grocer-{c % 3}", 1_500 + 250 * c + 40 * k, m(60 * c + 600 * k)))
write("clean", event(clean))

# Velocity burst: twelve purchases on one card within a minute, at six merchants.
write("velocity-burst", event([txn(f"vel-{k}", "tok_velocity", f"m-shop-{k % 6}", 4_000 + 10 * k, m(5 * k)) for k in range(12)]))

# Impossible travel: New York, then Paris 30 minutes later.
write("impossible-travel", event([
    txn("trv-0", "tok_travel", "m-nyc-deli", 1_800, m(0), NYC),
    txn("trv-1", "tok_travel", "m-paris-cafe", 2_200, m(1_800), PARIS),
]))

# Card testing: tiny amounts at five merchants within four minutes, then a big one.
ct = [txn(f"ct-{k}", "tok_testing", f"m-web-{k}", 100 + k, m(50 * k), channel="ecom", mcc="5999") for k in range(5)]
ct.append(txn("ct-5", "tok_testing", "m-electronics", 89_900, m(300), channel="ecom", mcc="5732"))
write("card-testing", event(ct))

# New country (account takeover): a quiet card at home for days, then a large purchase
# in another country at a merchant it never used.
ato = [txn(f"ato-{k}", "tok_takeover", "m-home-market", 2_000 + 300 * (k % 3), m(-86_400 * (6 - k))) for k in range(6)]
ato.append(txn("ato-6", "tok_takeover", "m-sp-jeweller", 250_000, m(0), SAO_PAULO, mcc="5944"))
write("new-country", event(ato))

# Poison: valid records around every kind of bad one. None may fail the batch.
pz = [
    txn("pz-ok-0", "tok_poison_ok", "m-a", 1_000, m(0)),
    ("tok_bad_json", b'{"schema":"txn.v1","event_id":', m(1)),
    ("tok_v9", json.dumps({**txn("pz-v9", "tok_v9", "m-a", 1, m(2)), "schema": "txn.v9"}).encode(), m(2)),
    ("tok_negative", json.dumps(txn("pz-neg", "tok_negative", "m-a", -500, m(3))).encode(), m(3)),
    ("4111111111111111", json.dumps(txn("pz-pan", "4111111111111111", "m-a", 700, m(4))).encode(), m(4)),
    ("tok_coords", json.dumps(txn("pz-coord", "tok_coords", "m-a", 700, m(5), (123.0, 0.0, "US"))).encode(), m(5)),
    ("tok_missing", json.dumps({k: v for k, v in txn("pz-miss", "tok_missing", "m-a", 1, m(6)).items() if k != "merchant_id"}).encode(), m(6)),
    txn("pz-ok-1", "tok_poison_ok", "m-a", 1_100, m(7)),
]
write("poison", event(pz))

# KPL: one aggregated record carrying a card-testing burst (AWS's aggregator), followed
# by a plain record of the same card.
a = agg.AggRecord()
kpl_txns = [txn(f"kpl-{k}", "tok_kpl", f"m-kpl-{k}", 150, m(20 * k), channel="ecom") for k in range(4)]
for x in kpl_txns:
    a.add_user_record(x["card_token"], json.dumps(x, separators=(",", ":")).encode())
pk, _ehk, data = a.get_contents()
last = txn("kpl-4", "tok_kpl", "m-kpl-4", 120, m(100), channel="ecom")
write("kpl-aggregated", {"Records": [
    record(0, pk, data, m(60)),
    record(1, "tok_kpl", json.dumps(last, separators=(",", ":")).encode(), m(100)),
]})
