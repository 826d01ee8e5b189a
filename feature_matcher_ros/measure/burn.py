"""fm-burn: keep CPU cores busy with burner processes, so that "loaded" measurements can be repeated.

    fm-burn 1                 # one core at 100 % until Ctrl-C (beside a node, a bag replay, a benchmark)
    fm-burn 2 --seconds 60

A robot's CPU is never idle (camera driver, SLAM back-end). ``fm-bench --burn N`` and ``fm-stress --burn N``
run their measurement while N processes spin at 100 % of one core each (plain Python loops, so they compete
for cores the way another busy process does, not for memory bandwidth).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fm-burn", description=__doc__.split("\n\n")[0])
    p.add_argument("cores", type=int, help="cores to keep busy")
    p.add_argument("--seconds", type=float, default=0.0, help="how long (default: until Ctrl-C)")
    args = p.parse_args(argv)
    if args.cores < 1:
        p.error("cores must be >= 1")
    with burning(args.cores):
        print(f"fm-burn: {args.cores} core(s) busy" + (f" for {args.seconds:g} s" if args.seconds else
                                                       " until Ctrl-C"), flush=True)
        try:
            if args.seconds:
                time.sleep(args.seconds)
            else:
                _wait_forever()
        except KeyboardInterrupt:
            pass
    return 0


def _wait_forever() -> None:
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
