"""The whole tree passes ruff with the repository's ruff.toml (the pinned ruff of requirements-dev.txt)."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _ruff() -> list[str]:
    exe = Path(sys.executable).parent / "ruff"
    return [str(exe)] if exe.is_file() else [shutil.which("ruff") or "ruff"]


def test_ruff_is_the_pinned_one():
    pinned = next(line.split("==")[1].strip() for line in (REPO / "requirements-dev.txt").read_text().splitlines()
                  if line.startswith("ruff=="))
    out = subprocess.run(_ruff() + ["--version"], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == pinned


def test_the_tree_is_clean():
    run = subprocess.run(_ruff() + ["check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_finds_what_the_configuration_forbids(tmp_path):
    """The check is not vacuous: the same configuration rejects an unused import and a 121-column line."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = '" + "a" * 115 + "'\n")
    run = subprocess.run(_ruff() + ["check", "--no-cache", "--config", str(REPO / "ruff.toml"), str(bad)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "F401" in run.stdout and "E501" in run.stdout
