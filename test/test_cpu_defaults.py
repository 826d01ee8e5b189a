"""The package's CPU thread default reaches torch's OpenMP runtime: libgomp, asked to print its settings
(OMP_DISPLAY_ENV=VERBOSE), shows a spin count of 0 (OMP_WAIT_POLICY=PASSIVE) when the package is imported
before torch, libgomp's own 300000 without the package, and the user's value when the user set one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

IMPORT_PACKAGE_THEN_TORCH = "import feature_matcher_ros.frontend, torch; torch.ones(4).sum()"


def spin_count(code: str, **env_change: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **env_change)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", done.stderr)
    if found is None:
        pytest.skip("this torch build does not use libgomp (nothing printed for OMP_DISPLAY_ENV)")
    return found.group(1)


def test_package_import_makes_openmp_threads_wait_passively() -> None:
    assert spin_count("import torch") == "300000"  # libgomp's default without the package: spinning
    assert spin_count(IMPORT_PACKAGE_THEN_TORCH) == "0"


@pytest.mark.parametrize("env, expected", [({"GOMP_SPINCOUNT": "10000"}, "10000"),
                                           ({"OMP_WAIT_POLICY": "ACTIVE"}, "30000000000")])
def test_users_setting_wins(env: dict[str, str], expected: str) -> None:
    assert spin_count(IMPORT_PACKAGE_THEN_TORCH, **env) == expected
