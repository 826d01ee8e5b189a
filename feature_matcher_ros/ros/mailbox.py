"""A one-slot mailbox: the newest item waits for the worker, an older one still waiting is dropped.

The node's subscription callback ``put``s each frame; the worker thread ``take``s. When the worker is
busy the slot is overwritten, so the queue can never grow and the worker always gets the freshest frame.
"""

from __future__ import annotations

import threading
from typing import Any


class Mailbox:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.dropped = 0  # items overwritten before the worker took them

    def put(self, item: Any) -> bool:
        """Leave ``item``; returns True when it replaced an item the worker never saw."""
        with self._cond:
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The waiting item (emptying the slot), or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> bool:
        """Empty the slot; returns True when it held an item the worker never saw (counted as dropped)."""
        with self._cond:
            dropped, self._item, self._full = self._full, None, False
            self.dropped += int(dropped)
            return dropped

    def close(self) -> None:
        """Wake the worker for good (``take`` returns None from now on when empty)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
