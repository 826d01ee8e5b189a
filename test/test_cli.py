"""Every console script in setup.py exists, imports, and answers --help."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = re.findall(r'"([\w-]+) = ([\w.]+):(\w+)"', (REPO / "setup.py").read_text())


def test_console_scripts_are_declared():
    names = {name for name, _, _ in SCRIPTS}
    assert {"matcher_node", "fm-match", "fm-bench"} <= names


@pytest.mark.parametrize("name,module,func", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_help(name, module, func):
    code = f"import sys; sys.argv = [{name!r}, '--help']; import {module} as m; m.{func}()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{name} --help failed:\n{proc.stdout}\n{proc.stderr}"
    assert "usage" in (proc.stdout + proc.stderr).lower(), f"{name} --help printed no usage"
    assert "Traceback" not in proc.stderr
