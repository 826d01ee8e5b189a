"""``make gpu-check`` without CUDA: one line saying so, then the CPU dry run of the same script, exit 0."""

import subprocess
import sys

import pytest
import torch

SECTIONS = ("env", "tests", "parity", "static", "bench", "frontend", "node")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, make gpu-check runs the real check")
def test_dry_run_without_cuda_reports_every_section(tmp_path, repo):
    done = subprocess.run([sys.executable, "-m", "feature_matcher_ros.measure.gpu_check", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=repo, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith("fm-gpu-check: no CUDA device here") and "CPU dry run" in first
    report = (tmp_path / "report.md").read_text()
    for name in SECTIONS:
        assert f"## {name} (" in report
    assert "FAILED" not in report and "skipped: time budget" not in report
    # bridge pair, both modes, against the fixture: reference and streaming (parity), eager and static (static)
    assert report.count("| pass |") == 8
    assert "| 160x128 | fp32 | full | static |" in report
    assert "| eloftr | 160x128 | fp32 | full |" in report and "| sptd2 | 160x128 | fp32 |" in report
    assert "| bridge_256x320 | full | bf16 |" in report and "| 5 | bf16 |" in report  # precision changes
    assert "frames answered over DDS: 6/6" in report
