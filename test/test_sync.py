"""StampSynchronizer: message_filters' ApproximateTimeSynchronizer policy (and exact pairing at slop 0)."""

import pytest

from feature_matcher_ros.ros.sync import StampSynchronizer

MS = 1_000_000


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
