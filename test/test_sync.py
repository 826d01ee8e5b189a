"""StampSynchronizer: message_filters' ApproximateTimeSynchronizer policy (and exact pairing at slop 0),
compared with message_filters' own code on recorded streams, and never raising on any stamp sequence."""

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_matcher_ros.sync import StampSynchronizer

MS = 1_000_000
REFERENCE = Path(__file__).parent / "data" / "sync_reference.json.gz"


def make(inputs=2, queue_size=3, slop_s=0.01):
    sets, unpaired = [], []
    sync = StampSynchronizer(inputs, queue_size, slop_s, lambda *m: sets.append(m),
                             lambda i, m: unpaired.append((i, m)))
    return sync, sets, unpaired


def test_pairs_within_slop_nearest_first():
    sync, sets, _ = make(slop_s=0.010)
    sync.add(1, 100 * MS, "d100")
    sync.add(1, 106 * MS, "d106")
    sync.add(0, 104 * MS, "i104")  # candidates d106 (2 ms) then d100 (4 ms): the nearest wins
    assert sets == [("i104", "d106")]
    assert sync.queues[1] == {100 * MS: "d100"}


def test_span_must_be_strictly_under_slop():
    sync, sets, _ = make(slop_s=0.010)
    sync.add(0, 100 * MS, "i100")
    sync.add(1, 110 * MS, "d110")  # |delta| == slop: a candidate, but max - min < slop fails
    assert sets == []
    sync.add(1, 109 * MS + 999_999, "d110-")
    assert sets == [("i100", "d110-")]


def test_pairing_happens_only_when_a_message_arrives():
    sync, sets, _ = make(slop_s=0.010)
    sync.add(0, 100 * MS, "i100")
    sync.add(0, 200 * MS, "i200")
    sync.add(1, 203 * MS, "d203")
    assert sets == [("i200", "d203")]
    assert list(sync.queues[0]) == [100 * MS]  # i100 stays queued until it falls out


def test_queue_overflow_reports_unpaired_messages_oldest_first():
    sync, sets, unpaired = make(queue_size=2)
    for k in range(4):
        sync.add(0, (100 + 50 * k) * MS, f"i{k}")
    assert sets == [] and unpaired == [(0, "i0"), (0, "i1")]


def test_same_stamp_replaces_the_queued_message():
    sync, sets, _ = make()
    sync.add(0, 100 * MS, "old")
    sync.add(0, 100 * MS, "new")
    sync.add(1, 101 * MS, "d")
    assert sets == [("new", "d")]


def test_slop_zero_is_exact_pairing():
    sync, sets, _ = make(slop_s=0.0)
    sync.add(0, 100 * MS, "i100")
    sync.add(1, 100 * MS + 1, "d100+1ns")
    assert sets == []
    sync.add(1, 100 * MS, "d100")
    assert sets == [("i100", "d100")]


def test_three_inputs_first_combination_with_a_small_span():
    sync, sets, _ = make(inputs=3, queue_size=5, slop_s=0.010)
    sync.add(1, 95 * MS, "a95")
    sync.add(1, 108 * MS, "a108")
    sync.add(2, 91 * MS, "b91")
    sync.add(2, 104 * MS, "b104")
    # new message at 100: candidates a95 (5), a108 (8); b104 (4), b91 (9). Product order: (a95, b104)
    # spans 95..104 = 9 ms < 10: emitted.
    sync.add(0, 100 * MS, "c100")
    assert sets == [("c100", "a95", "b104")]
    assert set(sync.queues[1]) == {108 * MS} and set(sync.queues[2]) == {91 * MS}


def test_bad_arguments():
    with pytest.raises(ValueError):
        StampSynchronizer(1, 3, 0.01, print)
    with pytest.raises(ValueError):
        StampSynchronizer(2, 0, 0.01, print)
    with pytest.raises(ValueError):
        StampSynchronizer(2, 3, -1.0, print)


def test_a_late_message_older_than_its_full_queue_is_unpaired_at_once():
    """The crash of issue 16: queue_size 1, image at t, depth at t + 0.5 s, then the late depth at t."""
    sync, sets, unpaired = make(queue_size=1, slop_s=0.02)
    sync.add(0, 1000 * MS, "i1000")
    sync.add(1, 1500 * MS, "d1500")
    sync.add(1, 1000 * MS, "d1000-late")  # older than d1500, which fills the queue: it leaves at once
    assert sets == [] and unpaired == [(1, "d1000-late")]
    sync.add(0, 1510 * MS, "i1510")  # the queue of one keeps the newest image; d1500 pairs with it
    assert sets == [("i1510", "d1500")] and unpaired == [(1, "d1000-late"), (0, "i1000")]


def test_slop_in_nanoseconds_as_rclpy_duration():
    """message_filters compares with ``Duration(seconds=slop)``, which truncates: 0.0157 s is 15699999 ns."""
    sync, sets, _ = make(slop_s=0.0157)
    assert sync.slop_ns == 15_699_999
    sync.add(0, 0, "i0")
    sync.add(1, 15_699_999, "d-at-slop")  # a candidate (|d| <= slop) but its span is not under slop
    assert sets == []


def _reference():
    with gzip.open(REFERENCE, "rt") as f:
        return json.load(f)


def _run(stream):
    """Feed a recorded stream; the emitted sets (message ids) and every message's fate."""
    sets, fate = [], {}

    def leave(why):
        return lambda index, msg: fate.__setitem__(msg, why)

    sync = StampSynchronizer(stream["inputs"], stream["queue_size"], stream["slop_s"],
                             lambda *m: sets.append(list(m)), leave("unpaired"), leave("replaced"))
    for index, stamp, msg_id in stream["arrivals"]:
        sync.add(index, stamp, msg_id)
    for msg_ids in sets:
        fate.update((m, "paired") for m in msg_ids)
    fate.update((m, "queued") for q in sync.queues for m in q.values())
    return sets, fate


def test_same_sets_as_message_filters_on_recorded_streams():
    """600 generated streams (jitter, drops, reordering, duplicates, stamps jumping back, bursts, on 2 and
    3 inputs) played through message_filters' own ApproximateTimeSynchronizer / TimeSynchronizer: the
    same sets in the same order, and every message accounted for (paired, reported, or still queued)."""
    reference = _reference()
    assert "message_filters" in reference["reference"] and len(reference["streams"]) >= 500
    for k, stream in enumerate(reference["streams"]):
        sets, fate = _run(stream)
        assert sets == stream["sets"], f"stream {k}: {stream['inputs']} inputs, queue {stream['queue_size']}, " \
                                       f"slop {stream['slop_s']}"
        assert set(fate) == {n for _, _, n in stream["arrivals"]}
    assert sum(len(s["sets"]) for s in reference["streams"]) > 1000  # the streams do pair


@st.composite
def stamp_sequences(draw):
    inputs = draw(st.integers(2, 3))
    queue_size = draw(st.integers(1, 6))
    slop_s = draw(st.sampled_from([0.0, 0.001, 0.01, 0.02, 0.1, 0.5]))
    stamps = st.one_of(st.integers(0, 2_000).map(lambda ms: ms * MS), st.integers(0, 2 * 10**9))
    arrivals = draw(st.lists(st.tuples(st.integers(0, inputs - 1), stamps), max_size=60))
    return inputs, queue_size, slop_s, arrivals


@settings(max_examples=300, deadline=None)
@given(stamp_sequences())
def test_any_stamp_sequence_never_raises_and_sets_keep_the_policy(case):
    inputs, queue_size, slop_s, arrivals = case
    stream = {"inputs": inputs, "queue_size": queue_size, "slop_s": slop_s,
              "arrivals": [[i, s, n] for n, (i, s) in enumerate(arrivals)]}
    sets, fate = _run(stream)  # never raises
    assert set(fate) == set(range(len(arrivals)))  # every message paired, reported or still queued
    stamp_of = {n: (i, s) for n, (i, s) in enumerate(arrivals)}
    paired = [n for msg_ids in sets for n in msg_ids]
    assert len(paired) == len(set(paired))
    for msg_ids in sets:
        assert [stamp_of[n][0] for n in msg_ids] == list(range(inputs))
        stamps = [stamp_of[n][1] for n in msg_ids]
        slop_ns = int(slop_s * 1e9)
        assert (max(stamps) - min(stamps) < slop_ns) if slop_ns else len(set(stamps)) == 1
        assert max(msg_ids) in msg_ids  # a set is emitted when its newest message arrives
    assert all(len(q) <= queue_size for q in _queues_after(stream))


def _queues_after(stream):
    sync = StampSynchronizer(stream["inputs"], stream["queue_size"], stream["slop_s"], lambda *m: None)
    for index, stamp, msg_id in stream["arrivals"]:
        sync.add(index, stamp, msg_id)
    return sync.queues
