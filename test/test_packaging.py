"""The package builds the way colcon's ament_python builds it, without a single setuptools warning.

colcon runs ``setup.py egg_info``, ``build`` and ``install`` into the workspace prefix and reports any
stderr output ("1 package had stderr output"). It silences only the deprecation of ``setup.py install``
itself (``PYTHONWARNINGS``), so the test does the same and fails on anything else on stderr.
"""

import os
import subprocess
import sys

# what colcon-core itself adds to PYTHONWARNINGS for ament_python packages
COLCON_IGNORED = "ignore:setup.py install is deprecated,ignore:easy_install command is deprecated"


def test_setup_py_build_and_install_write_no_warning(repo, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONWARNINGS"] = COLCON_IGNORED
    prefix = tmp_path / "install"
    cmd = [sys.executable, "setup.py", "egg_info", "--egg-base", str(tmp_path),
           "build", "--build-base", str(tmp_path / "build"),
           "install", "--prefix", str(prefix), "--record", str(tmp_path / "record.txt"),
           "--single-version-externally-managed"]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.strip() == "", done.stderr
    installed = (tmp_path / "record.txt").read_text().splitlines()
    for shipped in ("weights/sptd2_fast_distill.pt", "weights/sptd2_fast_distill.json", "weights/sptd2_small.pt",
                    "share/feature_matcher_ros/package.xml",
                    "share/feature_matcher_ros/launch/matcher.launch.py", "lib/feature_matcher_ros/matcher_node"):
        assert any(line.endswith(shipped) for line in installed), shipped
