"""``make test-repeat N=5``: every DDS test file (marker ``dds``, test/conftest.py) run N times in a row, each
run of each file its own pytest process, while ``--burn`` cores are kept busy (a loaded robot CPU); then a
table of how many runs of each file passed. A file that does not pass every time has a test that depends on
chance: timing, a one-shot message, a fixed sleep.

    python test/repeat_dds.py --runs 5 --burn 1 [--files test_node.py ...] [--log-dir out/test-repeat]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

TEST_DIR = Path(__file__).resolve().parent


def dds_files() -> list[str]:
    """The test files with tests marked ``dds``, as pytest collects them."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "dds", str(TEST_DIR)],
                         capture_output=True, text=True, check=False).stdout
    return sorted({line.split("::")[0].split("/")[-1] for line in out.splitlines() if "::" in line})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--burn", type=int, default=1, help="cores kept busy meanwhile (default 1)")
    parser.add_argument("--files", nargs="*", help="these files instead of every DDS file")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep each failing run's output here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(TEST_DIR.parent))
    from feature_matcher_ros.measure.burn import burning

    files = args.files or dds_files()
    passed = {f: 0 for f in files}
    seconds = {f: 0.0 for f in files}
    with burning(args.burn):
        for run in range(1, args.runs + 1):
            for f in files:
                t0 = time.monotonic()
                proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                       str(TEST_DIR / f)], capture_output=True, text=True, check=False)
                seconds[f] += time.monotonic() - t0
                ok = proc.returncode == 0
                passed[f] += ok
                tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
                print(f"run {run}/{args.runs} {f}: {'pass' if ok else 'FAIL'} ({tail})", flush=True)
                if not ok and args.log_dir:
                    args.log_dir.mkdir(parents=True, exist_ok=True)
                    (args.log_dir / f"{f[:-3]}_run{run}.log").write_text(proc.stdout + proc.stderr)
    width = max(len(f) for f in files)
    print(f"\n{'file':<{width}}  passed  mean s   (burn {args.burn}, {args.runs} runs)")
    for f in files:
        print(f"{f:<{width}}  {passed[f]:>3}/{args.runs}  {seconds[f] / args.runs:6.0f}")
    return 0 if all(v == args.runs for v in passed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
