"""What the node reports on ``/diagnostics``: rates, latency, drops and rejected inputs by reason.

``rejected.<reason>`` counts images (frames), so that once the worker is idle ``frames_received =
frames_processed + frames_dropped + rejected_total + images_waiting``; a depth or right image that never
paired is ``unpaired.<input>``, an unusable ``camera_info`` message ``invalid.<input>`` (the images that meet
it are then ``rejected.bad_camera_info``).

:class:`Stats` is filled from the subscription callbacks and the worker thread (thread-safe) and turned
into one ``diagnostic_msgs/DiagnosticStatus`` per period by :meth:`Stats.status`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue


class Stats:
    """Counters since start plus a window (reset at every report) for rates and latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.keyframes = 0
        self.debug_images = 0
        self.time_jumps = 0  # resets because a stamp jumped back (reset_on_time_jump_s)
        self.rejected: Counter[str] = Counter()
        self.unpaired: Counter[str] = Counter()  # depth / right images never paired with an image
        self.warnings: Counter[str] = Counter()  # input problems that do not stop a frame
        self.invalid: Counter[str] = Counter()  # unusable camera_info messages, by input (not images)
        self.last_status = "init"
        self.last_reason = ""
        self.last_error = ""
        self._window_start = time.monotonic()
        self._window_in = 0
        self._window_out = 0
        self._latencies_ms: list[float] = []
        self._process_ms: list[float] = []

    def on_input(self) -> None:
        with self._lock:
            self.received += 1
            self._window_in += 1

    def on_reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def on_invalid(self, which: str) -> int:
        """Count an unusable non-image message of input ``which`` (``camera_info``); how many so far."""
        with self._lock:
            self.invalid[which] += 1
            return self.invalid[which]

    def on_unpaired(self, which: str, count: int = 1) -> None:
        with self._lock:
            self.unpaired[which] += count

    def on_warning(self, reason: str) -> int:
        """Count a warning; returns how many of this reason so far."""
        with self._lock:
            self.warnings[reason] += 1
            return self.warnings[reason]

    def on_time_jump(self) -> int:
        """Count a time jump; returns how many so far."""
        with self._lock:
            self.time_jumps += 1
            return self.time_jumps

    def on_drop(self, count: int = 1) -> None:
        with self._lock:
            self.dropped += count

    def on_output(self, latency_ms: float, process_ms: float, status: str, reason: str, new_keyframe: bool) -> None:
        """A frame was processed: ``latency_ms`` from arrival to publication, ``process_ms`` in the frontend."""
        with self._lock:
            self.processed += 1
            self._window_out += 1
            self._latencies_ms.append(latency_ms)
            self._process_ms.append(process_ms)
            self.last_status, self.last_reason = status, reason
            self.keyframes += int(new_keyframe)

    def status(self, name: str, hardware_id: str, info: Mapping[str, Any]) -> DiagnosticStatus:
        """The report for the window since the previous call (and resets the window)."""
        with self._lock:
            now = time.monotonic()
            span = max(now - self._window_start, 1e-6)
            lat = np.asarray(self._latencies_ms) if self._latencies_ms else None
            proc = np.asarray(self._process_ms) if self._process_ms else None
            values: dict[str, Any] = {
                "input_rate_hz": f"{self._window_in / span:.2f}",
                "output_rate_hz": f"{self._window_out / span:.2f}",
                "latency_ms_mean": f"{lat.mean():.1f}" if lat is not None else "nan",
                "latency_ms_max": f"{lat.max():.1f}" if lat is not None else "nan",
                "process_ms_mean": f"{proc.mean():.1f}" if proc is not None else "nan",
                "frames_received": self.received,
                "frames_processed": self.processed,
                "frames_dropped": self.dropped,
                "keyframes": self.keyframes,
                "debug_images_published": self.debug_images,
                "time_jumps": self.time_jumps,
                "rejected_total": sum(self.rejected.values()),
                **{f"rejected.{k}": v for k, v in sorted(self.rejected.items())},
                **{f"unpaired.{k}": v for k, v in sorted(self.unpaired.items())},
                **{f"warning.{k}": v for k, v in sorted(self.warnings.items())},
                **{f"invalid.{k}": v for k, v in sorted(self.invalid.items())},
                "tracking_status": self.last_status,
                "last_reason": self.last_reason,
                **info,
            }
            self._window_start, self._window_in, self._window_out = now, 0, 0
            self._latencies_ms, self._process_ms = [], []
            level, message = DiagnosticStatus.OK, f"{self.last_status}"
            if self.last_error:
                level, message = DiagnosticStatus.ERROR, self.last_error
            elif self.last_status == "lost":
                level, message = DiagnosticStatus.WARN, f"tracking lost: {self.last_reason}"
            elif self.processed == 0:
                level, message = DiagnosticStatus.WARN, "no frame processed yet"
        return DiagnosticStatus(
            level=level,
            name=name,
            message=message,
            hardware_id=hardware_id,
            values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()],
        )
