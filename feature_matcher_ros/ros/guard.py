"""One guard for every entry point of the node: an unexpected exception in a subscription, timer,
parameter callback, service or lifecycle transition is counted (``/diagnostics``:
``internal_error.<where>``), logged with its traceback at most once per :data:`LOG_PERIOD_S` per entry
point, and answered with the entry point's fallback (nothing, a refused parameter change, a failed service
call, a failed transition); the node goes on serving. Without the guard, rclpy's executor re-raises the
exception out of ``spin()`` and the node process ends.

Test-only switch: ``FM_TEST_FAULTS`` (read when the node starts) names entry points, comma-separated, each
of which raises once, on its first call, as a bug there would (``FM_TEST_FAULTS=image,reset``). The names
are those of :data:`ENTRY_POINTS`. It exists so that tests can show the guard working over DDS; never set
it on a robot.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

FAULTS_ENV = "FM_TEST_FAULTS"
LOG_PERIOD_S = 5.0
ENTRY_POINTS = (
    "image", "camera_info", "depth", "right_image", "right_camera_info", "set_pose", "tf", "tf_static",  # inputs
    "keyframe_edge", "loop_closure", "keyframe", "odometry",  # pose_graph_node's inputs
    "diagnostics",  # the timer
    "parameters", "parameters_pre_set",  # parameter callbacks
    "reset",  # services
    "configure", "activate", "deactivate", "cleanup", "shutdown", "error",  # lifecycle transitions
)


class InjectedFault(RuntimeError):
    """What an entry point named in ``FM_TEST_FAULTS`` raises on its first call."""


def faults_from_env(environ: Any = os.environ) -> set[str]:
    """The entry points ``FM_TEST_FAULTS`` names; ``ValueError`` for a name that is not one."""
    names = {n.strip() for n in environ.get(FAULTS_ENV, "").split(",") if n.strip()}
    unknown = sorted(names - set(ENTRY_POINTS))
    if unknown:
        raise ValueError(f"{FAULTS_ENV}: unknown entry points {unknown} (known: {', '.join(ENTRY_POINTS)})")
    return names


class EntryGuard:
    """Wraps entry points (see the module docstring).

    Args:
        log_error: takes one message (the node logger's ``error``).
        on_error: called with ``(where, exception)`` after counting (e.g. to show it on diagnostics).
        faults: entry points that raise once (:func:`faults_from_env`).

    >>> messages = []
    >>> guard = EntryGuard(messages.append, faults={"image"})
    >>> on_image = guard("image", lambda msg: f"took {msg}")
    >>> on_image("frame 1") is None, on_image("frame 2")   # the injected fault, then served
    (True, 'took frame 2')
    >>> guard.counts["image"], messages[0].splitlines()[0]
    (1, 'internal error in image (1 so far; the node goes on): InjectedFault: FM_TEST_FAULTS: image')
    """

    def __init__(self, log_error: Callable[[str], None], on_error: Callable[[str, BaseException], None] | None = None,
                 faults: set[str] | None = None) -> None:
        self.log_error = log_error
        self.on_error = on_error
        self.counts: Counter[str] = Counter()
        self._faults = set(faults or ())
        self._log_times: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, where: str, fn: Callable[..., Any], fallback: Callable[..., Any] | None = None
                 ) -> Callable[..., Any]:
        """``fn`` guarded as entry point ``where``; after an exception it returns ``fallback(exc, *args)``
        (None without a fallback)."""
        if where not in ENTRY_POINTS:
            raise ValueError(f"unknown entry point {where!r}")

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                self._maybe_fault(where)
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the point of the guard
                self.report(where, exc)
                return fallback(exc, *args, **kwargs) if fallback is not None else None

        guarded.__name__ = getattr(fn, "__name__", where)
        guarded.__doc__ = getattr(fn, "__doc__", None)
        return guarded

    def _maybe_fault(self, where: str) -> None:
        with self._lock:
            if where not in self._faults:
                return
            self._faults.discard(where)
        raise InjectedFault(f"{FAULTS_ENV}: {where}")

    def report(self, where: str, exc: BaseException) -> None:
        """Count ``exc`` at ``where`` and log it with its traceback (at most once per period per entry)."""
        with self._lock:
            self.counts[where] += 1
            count = self.counts[where]
            now = time.monotonic()
            due = now - self._log_times.get(where, -1e9) >= LOG_PERIOD_S
            if due:
                self._log_times[where] = now
        if due:
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
            self.log_error(f"internal error in {where} ({count} so far; the node goes on): "
                           f"{type(exc).__name__}: {exc}\n{trace}")
        if self.on_error is not None:
            self.on_error(where, exc)
