"""Writes the window-aggregator fixtures (Lambda KinesisEvent JSON, one shard each).
Deterministic; the output is committed. Each has <name>.expected.json with the merchant
and global window aggregates one delivery must produce (the test replays `duplicates`
a second time and expects the same). Run with any Python 3:

    python3 events/window-aggregator/make_fixtures.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fixturelib import event, m, txn, write  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# In order: 30 purchases at three merchants over six minutes, one in five declined.
in_order = [
    txn(f"io-{k}", f"tok_io_{k % 7}", f"m-io-{k % 3}", 1_000 + 100 * k, m(12 * k), result="declined" if k % 5 == 0 else "approved")
    for k in range(30)
]
write(HERE, "in-order", event(in_order))

# Out of order within the 2-minute lateness: event times shuffled by up to 90 s.
shifts = [0, 60, -30, 90, -90, 30, -60, 45, -45, 15]
ooo = [txn(f"ooo-{k}", f"tok_ooo_{k % 4}", "m-ooo", 500 + k, m(200 + 20 * k + shifts[k])) for k in range(10)]
write(HERE, "out-of-order", event(ooo))

# Late beyond lateness: the stream moves ten minutes on, then two events from before.
late = [txn(f"late-{k}", "tok_late", "m-late", 700, m(60 * k)) for k in range(3)]
late += [txn("late-ontime", "tok_late", "m-late", 700, m(600))]
late += [txn(f"late-old-{k}", "tok_late", "m-late", 9_999, m(5 + k)) for k in range(2)]
write(HERE, "late-beyond-lateness", event(late))

# Duplicates: the test delivers this batch twice; the windows must count it once.
dups = [txn(f"dup-{k}", f"tok_dup_{k % 2}", "m-dup", 2_500, m(30 * k)) for k in range(8)]
write(HERE, "duplicates", event(dups))

# Lambda tumbling-window mode (TumblingWindowInSeconds = 60): three invocations of one
# window of one shard; state is empty in the files because Lambda fills it from the
# previous response (the test and `shardline replay` carry it the same way).
def window_event(txns, first, final):
    ev = event(txns)
    for i, r in enumerate(ev["Records"]):  # distinct positions across the three files
        seq = str(int(r["kinesis"]["sequenceNumber"]) + first * 1_000_000)
        r["kinesis"]["sequenceNumber"] = seq
        r["eventID"] = r["eventID"].split(":")[0] + ":" + seq
    ev.update({
        "window": {"start": "2026-11-26T12:00:00Z", "end": "2026-11-26T12:01:00Z"},
        "state": {},
        "shardId": "shardId-000000000000",
        "eventSourceARN": ev["Records"][0]["eventSourceARN"],
        "isFinalInvokeForWindow": final,
        "isWindowTerminatedEarly": False,
    })
    return ev


tw = [txn(f"tw-{k}", f"tok_tw_{k % 3}", f"m-tw-{k % 2}", 1_000 + k, m(2 * k)) for k in range(12)]
write(HERE, "tumbling-1", window_event(tw[:5], 0, False))
write(HERE, "tumbling-2", window_event(tw[5:9], 5, False))
write(HERE, "tumbling-3-final", window_event(tw[9:] + [], 9, True))
