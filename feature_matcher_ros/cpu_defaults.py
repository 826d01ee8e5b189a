"""CPU thread defaults that hold up on a loaded robot CPU, applied when the package is first imported.

OpenMP (torch's CPU kernels, through the libgomp torch ships) lets a thread that finishes its share of a
parallel region spin for a while (libgomp: ``GOMP_SPINCOUNT`` 300000) before it sleeps. On a quiet machine
that saves a wake-up; on a robot, whose cores are shared with camera drivers and a SLAM back-end, the
spinning threads take turns with the busy ones and every small parallel region waits for the slowest. The
streaming Efficient LoFTR path has many small regions and suffers most. ``OMP_WAIT_POLICY=PASSIVE`` lets the
waiting threads sleep at once; ``python -m feature_matcher_ros.measure.thread_study`` measures it against the
alternatives, quiet and with a core kept busy (docs/benchmarks.md, "Threads on a loaded CPU").

libgomp reads its environment once, when torch loads it, so the default is set here, at package import,
before any module of the package imports torch. A program that imports torch before this package keeps
torch's defaults. Either variable set by the user wins: ``OMP_WAIT_POLICY=ACTIVE`` or a ``GOMP_SPINCOUNT``
restores spinning. The thread count is the node's ``num_threads`` parameter (0 = all cores) and ``--threads``
of the tools.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

WAIT_POLICY = "PASSIVE"


def apply_cpu_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is already set.

    Returns what it set (empty when the user's settings stand).

    >>> env = {}
    >>> apply_cpu_defaults(env), env
    ({'OMP_WAIT_POLICY': 'PASSIVE'}, {'OMP_WAIT_POLICY': 'PASSIVE'})
    >>> apply_cpu_defaults({"GOMP_SPINCOUNT": "300000"})
    {}
    """
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return {"OMP_WAIT_POLICY": WAIT_POLICY}
