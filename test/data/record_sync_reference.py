"""Record the pairings of message_filters' own Python synchronisers on generated stamp streams: the
reference ``test_sync.py`` compares :class:`~feature_matcher_ros.sync.StampSynchronizer` against.

message_filters is not on PyPI; its source (github.com/ros2/message_filters, ``src/message_filters``) is
run as it is, from a checkout given on the command line, beside rclpy (its ``Time``/``Duration``). It is
never copied into this repository: only the streams and what it emitted are::

    git clone https://github.com/ros2/message_filters /tmp/message_filters
    python test/data/record_sync_reference.py /tmp/message_filters/src test/data/sync_reference.json.gz

Each stream is a list of arrivals ``[input, stamp_ns, message_id]`` fed one by one to
``ApproximateTimeSynchronizer`` (``slop_s > 0``) or ``TimeSynchronizer`` (``slop_s == 0``); ``sets`` is
what its callback received, in order, as message ids per input. The streams have jitter, dropped
messages, late and early arrivals (reordering), duplicated and repeated stamps, stamps jumping back (a
bag played again), bursts, and stamps exactly ``slop`` apart.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

SEED = 20261207
STREAMS = 600
MS = 1_000_000
BASE_NS = 1_700_000_000 * 1_000_000_000


def _stamps_of_stream(rng: random.Random, inputs: int, slop_ns: int) -> list[tuple[float, int, int]]:
    """``(arrival time, input, stamp_ns)`` of one generated recording, in no particular order."""
    period = rng.choice([10, 20, 33, 50, 100]) * MS
    quantum = rng.choice([1, 1000, MS, MS])  # stamps on a ms grid make equal distances (ties) common
    offsets = [0] + [rng.choice([0, 1, -1, 3, 7, -12, slop_ns, -slop_ns, 40]) * (MS if i else 0)
                     for i in range(1, inputs)]
    offsets = [0] + [o if abs(o) < 5 * period else 0 for o in offsets[1:]]
    events, t, base = [], 0.0, BASE_NS + rng.randrange(0, 10**9)
    for k in range(rng.randint(8, 40)):
        if rng.random() < 0.04:  # the recording played again: stamps jump back
            base -= rng.randint(1, k + 1) * period + rng.choice([0, 10**9])
        stamp_k = base + k * period
        for i in range(inputs):
            if rng.random() < 0.12:  # dropped
                continue
            jitter = (rng.choice([0, 0, 0, 1, -1, 2, 5, slop_ns // MS if slop_ns else 0]) * MS
                      + rng.randint(-2, 2) * quantum)
            stamp = max(0, (stamp_k + offsets[i] + jitter) // quantum * quantum)
            arrival = t + k * period / 1e9 + rng.expovariate(1 / 0.004)
            if rng.random() < 0.08:  # late by several frames
                arrival += rng.randint(1, 6) * period / 1e9
            events.append((arrival, i, stamp))
            if rng.random() < 0.05:  # sent twice
                events.append((arrival + rng.random() * 0.05, i, stamp))
            if rng.random() < 0.04:  # another message with the previous frame's stamp
                events.append((arrival + 1e-4, i, max(0, stamp - period)))
        if rng.random() < 0.05:  # a burst: the next frames arrive all at once
            t -= rng.randint(1, 4) * period / 1e9
    return events


def make_stream(rng: random.Random) -> dict:
    inputs = rng.choice([2, 2, 3])
    slop_s = rng.choice([0.0, 0.001, 0.005, 0.01, 0.02, 0.02, 0.029, 0.05, 0.1, 0.29])
    queue_size = rng.choice([1, 1, 2, 3, 3, 5, 10])
    slop_ns = int(slop_s * 1e9)
    events = sorted(_stamps_of_stream(rng, inputs, slop_ns))
    arrivals = [[i, stamp, n] for n, (_, i, stamp) in enumerate(events)]
    return {"inputs": inputs, "queue_size": queue_size, "slop_s": slop_s, "arrivals": arrivals}


def reference_sets(message_filters, stream: dict) -> list[list[int]]:
    """What message_filters emits for ``stream``: message ids per set, input order."""
    from builtin_interfaces.msg import Time as TimeMsg

    filters = [message_filters.SimpleFilter() for _ in range(stream["inputs"])]
    if stream["slop_s"] == 0:
        sync = message_filters.TimeSynchronizer(filters, stream["queue_size"])
    else:
        sync = message_filters.ApproximateTimeSynchronizer(filters, stream["queue_size"], stream["slop_s"])
    sets: list[list[int]] = []
    sync.registerCallback(lambda *msgs: sets.append([m.id for m in msgs]))
    for index, stamp, msg_id in stream["arrivals"]:
        sec, nanosec = divmod(stamp, 1_000_000_000)
        msg = SimpleNamespace(id=msg_id, header=SimpleNamespace(stamp=TimeMsg(sec=sec, nanosec=nanosec)))
        filters[index].signalMessage(msg)
    return sets


def main(argv: list[str]) -> int:
    source, out = Path(argv[0]), Path(argv[1])
    sys.path.insert(0, str(source))
    import message_filters

    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = argv[2] if len(argv) > 2 else "unknown"
    rng = random.Random(SEED)
    streams = []
    for _ in range(STREAMS):
        stream = make_stream(rng)
        stream["sets"] = reference_sets(message_filters, stream)
        streams.append(stream)
    record = {"reference": f"ros2/message_filters {commit} src/message_filters/__init__.py "
                           "(ApproximateTimeSynchronizer, TimeSynchronizer at slop 0)",
              "seed": SEED, "streams": streams}
    with gzip.open(out, "wt") as f:
        json.dump(record, f, separators=(",", ":"))
    sets = sum(len(s["sets"]) for s in streams)
    arrivals = sum(len(s["arrivals"]) for s in streams)
    print(f"{len(streams)} streams, {arrivals} arrivals, {sets} sets -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
