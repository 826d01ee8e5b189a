"""Keep CPU cores busy with burner processes, so that "loaded" measurements can be repeated.

A robot's CPU is never idle (camera driver, SLAM back-end). ``fm-bench --burn N`` and ``fm-stress --burn N``
run their measurement while N processes spin at 100 % of one core each (plain Python loops, so they compete
for cores the way another busy process does, not for memory bandwidth).
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

_SPIN = "import os\nos.nice(0)\nwhile True:\n    pass\n"


@contextmanager
def burning(cores: int) -> Iterator[list[subprocess.Popen]]:
    """``cores`` spinning processes for the duration of the ``with`` block (none when 0)."""
    if cores < 0:
        raise ValueError(f"burn: the number of busy cores must be >= 0, not {cores}")
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(cores)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
