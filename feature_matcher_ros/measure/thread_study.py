"""Thread count and OpenMP wait policy, quiet and loaded: the measurement behind the package's defaults.

    fm-thread-study --weights eloftr.ckpt [--backends eloftr sptd2 sift orb]
        [--frames 3] [--burn 1] [--json OUT.json]

Each cell is one ``fm-bench`` process (a fresh process: OpenMP reads its settings once, at start) with the
setting's environment and ``--threads``, run on a quiet machine and with ``--burn N`` cores kept busy.
Printed: streaming ms per frame (and pairwise for the learned backends), and each setting's ratio to the
best setting of the same backend and load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass

# name -> (environment, --threads); "" removes the variable (the process's own default)
# ("all cores" = --threads 0, the node's num_threads default; GOMP_SPINCOUNT=300000 is libgomp's own default,
# which the package's OMP_WAIT_POLICY=PASSIVE replaces unless one of the two variables is set)
SETTINGS = {
    "package default (all cores, PASSIVE)": ({"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": ""}, 0),
    "all cores, spinning (OpenMP default)": ({"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "300000"}, 0),
    "all cores, GOMP_SPINCOUNT=10000": ({"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"}, 0),
    "1 thread": ({"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": ""}, 1),
}


@dataclass
class Cell:
    backend: str
    setting: str
    burn: int
    streaming_ms: float
    pairwise_ms: float


def run_cell(backend: str, setting: str, burn: int, args: argparse.Namespace) -> Cell:
    env_change, threads = SETTINGS[setting]
    env = dict(os.environ)
    for key, value in env_change.items():
        env.pop(key, None)
        if value:
            env[key] = value
    cmd = [sys.executable, "-m", "feature_matcher_ros.measure.bench", "--backend", backend, "--size", args.size,
           "--frames", str(args.frames), "--json", "--burn", str(burn)]
    if threads:
        cmd += ["--threads", str(threads)]
    if backend == "eloftr":
        cmd += ["--weights", args.weights]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return Cell(backend, setting, burn, r["streaming_ms_per_frame"], r["pairwise_ms_per_frame"])


def format_table(cells: list[Cell]) -> str:
    lines = ["| backend | load | setting | streaming ms | pairwise ms | streaming / best |",
             "|---|---|---|---|---|---|"]
    for backend in dict.fromkeys(c.backend for c in cells):
        for burn in dict.fromkeys(c.burn for c in cells):
            group = [c for c in cells if c.backend == backend and c.burn == burn]
            best = min(c.streaming_ms for c in group)
            load = "quiet" if burn == 0 else f"{burn} core(s) busy"
            for c in group:
                lines.append(f"| {backend} | {load} | {c.setting} | {c.streaming_ms:.0f} | {c.pairwise_ms:.0f} | "
                             f"{c.streaming_ms / best:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fm-thread-study", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="Efficient LoFTR checkpoint (needed for eloftr)")
    p.add_argument("--backends", nargs="+", default=["eloftr", "sptd2", "sift", "orb"])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--size", default="640x480")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--burn", type=int, default=1, help="cores kept busy in the loaded runs (default 1)")
    p.add_argument("--json", help="also write the cells to this file")
    args = p.parse_args(argv)
    if "eloftr" in args.backends and not args.weights:
        p.error("--weights is needed for eloftr")
    cells = []
    for backend in args.backends:
        for burn in (0, args.burn):
            for setting in args.settings:
                cell = run_cell(backend, setting, burn, args)
                print(f"{backend:7s} burn {burn}  {setting:40s} streaming {cell.streaming_ms:8.1f} ms  "
                      f"pairwise {cell.pairwise_ms:8.1f} ms", flush=True)
                cells.append(cell)
    print(format_table(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([c.__dict__ for c in cells], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
