"""Pairing messages of several inputs by time stamp, with the policy of ``message_filters``'
``ApproximateTimeSynchronizer`` (Python), which is not on PyPI. No rclpy here: stamps are integer
nanoseconds, messages are opaque.

The policy, as message_filters implements it:

* one queue per input, keyed by stamp (a message with a stamp already queued replaces it); after each
  insertion the oldest stamps are dropped until ``queue_size`` are left, the new one among them when it is
  the oldest (it then pairs with nothing);
* a new message is paired only on its arrival: from each other queue, the stamps within ``slop`` of it
  (``|s - stamp| <= slop``) are the candidates, nearest first; no candidate in some queue: no set;
* the candidate combinations are tried in that order (``itertools.product``), and the first whose whole
  span is strictly under ``slop`` (``max - min < slop``) is emitted and removed from every queue.

With ``slop`` 0 that test can never pass; here ``slop == 0`` means exact pairing instead (equal stamps in
every queue, the policy of message_filters' ``TimeSynchronizer``). Messages dropped from a queue without
ever being paired are reported to ``on_unpaired``, and messages replaced by one with the same stamp to
``on_replaced`` (default: ``on_unpaired``), so the node can count every message it did not use.

``test/test_sync.py`` compares this class with message_filters' own code on recorded streams
(``test/data/sync_reference.json.gz``, made by ``test/data/record_sync_reference.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any


class StampSynchronizer:
    """``add(index, stamp_ns, msg)`` per input; ``on_set(*msgs)`` for each complete set (input order).

    >>> sets = []
    >>> sync = StampSynchronizer(2, queue_size=5, slop_s=0.02, on_set=lambda *m: sets.append(m))
    >>> sync.add(0, 1_000_000_000, "image@1.000")
    >>> sync.add(1, 1_015_000_000, "depth@1.015")
    >>> sets
    [('image@1.000', 'depth@1.015')]
    """

    def __init__(self, inputs: int, queue_size: int, slop_s: float, on_set: Callable[..., None],
                 on_unpaired: Callable[[int, Any], None] | None = None,
                 on_replaced: Callable[[int, Any], None] | None = None) -> None:
        if inputs < 2 or queue_size < 1 or not slop_s >= 0:
            raise ValueError(f"synchroniser: need >= 2 inputs, queue_size >= 1, slop >= 0 (got {inputs}, "
                             f"{queue_size}, {slop_s})")
        self.queues: list[dict[int, Any]] = [{} for _ in range(inputs)]
        self.queue_size = queue_size
        self.slop_ns = int(slop_s * 1e9)  # as rclpy's Duration(seconds=slop), which message_filters uses
        self.on_set = on_set
        self.on_unpaired = on_unpaired or (lambda index, msg: None)
        self.on_replaced = on_replaced or self.on_unpaired

    def add(self, index: int, stamp_ns: int, msg: Any) -> None:
        """Queue ``msg`` of input ``index`` and emit the set it completes, if any. Never raises: a message
        older than everything in its full queue leaves at once (reported unpaired), as in message_filters,
        which only emits sets whose messages are all still queued."""
        queue = self.queues[index]
        if stamp_ns in queue:
            self.on_replaced(index, queue[stamp_ns])
        queue[stamp_ns] = msg
        while len(queue) > self.queue_size:
            oldest = min(queue)
            self.on_unpaired(index, queue.pop(oldest))
        if stamp_ns not in queue:
            return
        stamps = self._exact(stamp_ns) if self.slop_ns == 0 else self._approximate(index, stamp_ns)
        if stamps is not None:
            self.on_set(*(q.pop(s) for q, s in zip(self.queues, stamps)))

    def _exact(self, stamp_ns: int) -> list[int] | None:
        return [stamp_ns] * len(self.queues) if all(stamp_ns in q for q in self.queues) else None

    def _approximate(self, index: int, stamp_ns: int) -> list[int] | None:
        candidates = []
        for other, queue in enumerate(self.queues):
            if other == index:
                continue
            near = [s for s in queue if abs(s - stamp_ns) <= self.slop_ns]
            if not near:
                return None
            candidates.append(sorted(near, key=lambda s: abs(s - stamp_ns)))  # stable: ties in queue order
        for combo in itertools.product(*candidates):
            stamps = list(combo)
            stamps.insert(index, stamp_ns)
            if max(stamps) - min(stamps) < self.slop_ns:
                return stamps
        return None

    def clear(self) -> list[int]:
        """Forget everything queued (``~/reset``, a time jump); returns how many messages each input had
        queued (nothing is reported to ``on_unpaired``)."""
        counts = [len(queue) for queue in self.queues]
        for queue in self.queues:
            queue.clear()
        return counts
