"""fm-eval over many bags on Ray and fm-tune (issue 21): real bags of the shared sequences, real Ray (embedded,
and a two-node cluster on loopback), real Optuna studies."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feature_matcher_ros.evaluation import fleet, tuning
from feature_matcher_ros.evaluation.cli import UsageError
from feature_matcher_ros.evaluation.offline import load_params_file
from feature_matcher_ros.settings import backend_class
from feature_matcher_ros.tools import eval as fm_eval
from feature_matcher_ros.tools import make_bag, tune

pytest.importorskip("ray")
pytest.importorskip("optuna")

#: metrics.json keys that depend on timing or on where the run was written, not on what it computed
NOT_COMPARED = re.compile(r"^(fps|wall_s|latency.*|settings_hash|folder|bag|reused|bag_label|ray_node|plots|"
                          r"evo_.*)$")
#: Ray binds loopback only with this (the tools set it for their embedded instance; the cluster test sets it)
LOOPBACK = {fleet.LOOPBACK_ENV: "0"}


@pytest.fixture(scope="module")
def bags(shared: Path, tmp_path_factory) -> Path:
    """A folder of two short real bags (TUM desk, KITTI 00; 4 frames each)."""
    folder = tmp_path_factory.mktemp("fleet") / "bags"
    folder.mkdir()
    for name, data in (("desk", "tum_fr2_desk"), ("kitti", "kitti00_f100_109")):
        assert make_bag.main([str(shared / "data" / data), str(folder / name), "--frames", "0:8:2", "--quiet"]) == 0
    return folder


@pytest.fixture(scope="module")
def one_by_one(bags: Path, tmp_path_factory) -> dict[str, dict]:
    """Each bag through the ordinary single-bag fm-eval (no Ray), one after the other."""
    out = tmp_path_factory.mktemp("single")
    results = {}
    for name in ("desk", "kitti"):
        assert fm_eval.main([str(bags / name), "--out", str(out / name), "--quiet", "--pictures", "0"]) == 0
        results[name] = json.loads((out / name / "metrics.json").read_text())
    return results


def compared(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not NOT_COMPARED.match(k)}


def test_two_workers_give_what_one_bag_after_the_other_gives_and_a_corrupt_bag_is_one_error_row(
        bags: Path, one_by_one: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "bags"
    shutil.copytree(bags, folder)
    (folder / "broken.mcap").write_bytes(b"\x89MCAP0\r\n" + os.urandom(2000))  # an mcap cut short
    out = tmp_path / "out"
    assert fm_eval.main([str(folder), "--out", str(out), "--workers", "2", "--quiet", "--pictures", "0"]) == 0
    printed = capsys.readouterr().out
    assert "3 runs, 0 reused, 1 failed" in printed and "FAILED broken · sift" in printed
    summary = json.loads((out / "metrics.json").read_text())
    rows = {r["bag_label"]: r for r in summary["runs"]}
    assert set(rows) == {"broken", "desk", "kitti"} and summary["workers"] == 2
    assert "error" in rows["broken"] and "broken.mcap" in rows["broken"]["error"]
    for name in ("desk", "kitti"):
        run = json.loads((out / name / "sift" / "metrics.json").read_text())
        assert compared(run) == compared(one_by_one[name]), name
        assert run["settings_hash"] == rows[name]["settings_hash"]
    # the totals: each bag once, the failed one counted apart
    (total,) = summary["totals"]
    assert total["bags"] == 2 and total["failed_bags"] == 1
    assert total["auc@10"] == pytest.approx((one_by_one["desk"]["auc@10"] + one_by_one["kitti"]["auc@10"]) / 2)
    report = (out / "report.md").read_text()
    assert "## Failed" in report and "spread.png" in report and (out / "spread.png").stat().st_size > 1000


def _fm_eval_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from feature_matcher_ros.tools.eval import main; sys.exit(main())",
            *args]


def test_a_run_stopped_halfway_resumes_without_redoing_finished_runs(bags: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "bags"
    for k in range(3):  # three bags, one run at a time: stopped after the first has finished
        shutil.copytree(bags / ("desk" if k != 1 else "kitti"), folder / f"bag{k}")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # SIGINT as Ctrl-C gives it: default handling in the child even when this test runs in the background,
    # where the shell makes SIGINT ignored and children inherit that
    proc = subprocess.Popen(_fm_eval_cmd(str(folder), "--out", str(out), "--workers", "1", "--quiet",
                                         "--pictures", "0"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("bag*/sift/metrics.json")) or not all(
                "settings_hash" in p.read_text() for p in out.glob("bag*/sift/metrics.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no run finished"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, log
    done = {p: p.stat().st_mtime_ns for p in out.glob("bag*/sift/metrics.json") if "settings_hash" in p.read_text()}
    assert 1 <= len(done) < 3, log
    assert fm_eval.main([str(folder), "--out", str(out), "--workers", "1", "--quiet", "--pictures", "0"]) == 0
    assert f"3 runs, {len(done)} reused, 0 failed" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in done.items())
    assert len(list(out.glob("bag*/sift/metrics.json"))) == 3
    # changed parameter files are different runs, each with its own name and totals: nothing reused
    for name, ratio in (("p", 0.7), ("q", 0.9)):
        (tmp_path / f"{name}.yaml").write_text(f"/**:\n  ros__parameters:\n    sift:\n      ratio: {ratio}\n")
    assert fm_eval.main([str(folder / "bag0"), "--out", str(out), "--workers", "1", "--quiet", "--pictures", "0",
                         "--params", str(tmp_path / "p.yaml"), "--params", str(tmp_path / "q.yaml")]) == 0
    assert "2 runs, 0 reused" in capsys.readouterr().out
    summary = json.loads((out / "metrics.json").read_text())
    assert [t["name"] for t in summary["totals"]] == ["sift_p", "sift_q"]
    assert [r["name"] for r in summary["runs"]] == ["sift_p", "sift_q"]
    assert summary["totals"][0]["matches_per_frame_median"] != summary["totals"][1]["matches_per_frame_median"]


def test_a_two_node_ray_cluster_on_loopback_runs_the_same_evaluation(bags: Path, one_by_one: dict, tmp_path: Path,
                                                                      monkeypatch) -> None:
    from ray.cluster_utils import Cluster

    for key, value in LOOPBACK.items():
        monkeypatch.setenv(key, value)
    # a head without CPUs for tasks (as on a real cluster's head) and a worker node: the runs must go there
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes(timeout=120)
        out = tmp_path / "out"
        proc = subprocess.run(_fm_eval_cmd(str(bags), "--out", str(out), "--workers", "2", "--threads", "1",
                                           "--address", cluster.address, "--quiet", "--pictures", "0"),
                              env=dict(os.environ), capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads((out / "metrics.json").read_text())
        assert summary["address"] == cluster.address
        for row in summary["runs"]:
            assert row["ray_node"] == worker.node_id, row.get("ray_node")
            run = json.loads((out / row["bag_label"] / "sift" / "metrics.json").read_text())
            assert compared(run) == compared(one_by_one[row["bag_label"]])
    finally:
        cluster.shutdown()


def test_fm_tune_writes_a_parameter_file_that_fm_eval_reproduces(bags: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tune"
    args = [str(bags / "desk"), "--out", str(out), "--trials", "6", "--seed", "3", "--workers", "2", "--quiet"]
    assert tune.main(args) == 0
    printed = capsys.readouterr().out
    best = float(re.search(r"best \(trial \d+\): auc@10 = ([0-9.]+)", printed).group(1))
    defaults = float(re.search(r"defaults \(trial 0\): auc@10 = ([0-9.]+)", printed).group(1))
    assert best >= defaults
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 6 and sum(t["defaults"] for t in trials) == 1
    assert all(t["params"]["sift.ratio"] == pytest.approx(0.8) for t in trials if t["defaults"])
    assert {"report.md", "history.png", "importance.png", "best.yaml", "study.db"} <= {p.name for p in out.iterdir()}
    params = load_params_file(out / "best.yaml")
    assert params["backend"] == "sift" and 0.6 <= params["sift.ratio"] <= 0.95
    assert fm_eval.main([str(bags / "desk"), "--out", str(tmp_path / "check"), "--params", str(out / "best.yaml"),
                         "--quiet", "--pictures", "0"]) == 0
    check = json.loads((tmp_path / "check" / "metrics.json").read_text())
    assert check["auc@10"] == pytest.approx(best, abs=5e-7)
    # the study goes on where it stopped: one more trial, the six kept
    assert tune.main([*args[:4], "7", *args[5:]]) == 0
    assert len(json.loads((out / "trials.json").read_text())) == 7


# -- the pieces, without Ray -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sift", "orb", "eloftr", "sptd2"])
@pytest.mark.parametrize("mode", ["mono", "rgbd"])
def test_default_spaces_lie_inside_the_parameters_bounds(backend: str, mode: str) -> None:
    dims = tuning.parse_space(tuning.default_space(backend, mode), backend)
    names = {d.name for d in dims}
    assert names >= {p.name for p in backend_class(backend).PARAMS if p.name in tuning.BACKEND_SPACES[backend]}
    assert ("pnp.threshold_px" in names) == (mode != "mono")
    for d in dims:
        assert d.choices is not None or (d.low > 0 if d.log else True)


@pytest.mark.parametrize("space, why", [
    ({"input_mode": {"choices": ["mono"]}}, "cannot be tuned"),
    ({"num_threads": {"low": 1, "high": 4}}, "cannot be tuned"),
    ({"orb.ratio": {"low": 0.5, "high": 0.9}}, "cannot be tuned with backend sift"),
    ({"sift.ratio": {"low": 0.5, "high": 1.5}}, "must be <= 1.0"),
    ({"sift.ratio": {"low": 0.9, "high": 0.5}}, "low < high"),
    ({"sift.contrast_threshold": {"low": 0.0, "high": 0.5, "log": True}}, "low > 0"),
    ({"keyframe.parallax": {"low": 0, "high": 1}}, "give choices"),
    ({"keyframe.parallax": {"choices": ["displacement", "sideways"]}}, "must be one of"),
    ({"sift.ratio": 0.7}, "expected {low"),
])
def test_a_bad_search_space_is_refused_with_its_reason(space: dict, why: str) -> None:
    with pytest.raises(UsageError, match=re.escape(why)):
        tuning.parse_space(space, "sift")


def test_integer_parameters_get_integer_ranges_and_the_objective_knows_its_direction() -> None:
    (dim,) = tuning.parse_space({"sift.max_keypoints": {"low": 512, "high": 4096, "log": True}}, "sift")
    assert dim.integer and dim.log
    assert tuning.direction("auc@10") == "maximize" and tuning.direction("translation_error_pct_median") == "minimize"
    assert tuning.direction("fps") == "maximize" and tuning.direction("latency_ms_p50") == "minimize"
    c = tuning.Constraint.parse(" fps >= 10 ")
    assert c.timing and c.holds(10.0) and not c.holds(9.9) and not c.holds(None)
    assert not tuning.Constraint.parse("inliers_per_frame_median>50").timing
    with pytest.raises(UsageError, match="METRIC OP VALUE"):
        tuning.Constraint.parse("fps=10")


def test_a_written_parameter_file_reads_back_the_same(tmp_path: Path) -> None:
    flat = {"backend": "sift", "sift.ratio": 0.71, "keyframe.min_inliers": 33, "ransac.homography": True,
            "tf.timeout_s": 0.1}
    (tmp_path / "p.yaml").write_text(tuning.params_yaml(flat, ["a comment"]))
    assert load_params_file(tmp_path / "p.yaml") == flat


def test_manifests_and_folders_of_bags(bags: Path, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "fleet.yaml"
    manifest.write_text(f"- bag: {bags / 'desk'}\n  params: [a.yaml, b.yaml]\n  gt: gt.txt\n- {bags / 'kitti'}\n"
                        f"- bag: {bags / 'desk'}\n")
    entries = fleet.label_entries(fleet.read_manifest(manifest))
    assert [e.label for e in entries] == ["desk", "kitti", "desk_2"]
    assert entries[0].params == [str(tmp_path / "m" / "a.yaml"), str(tmp_path / "m" / "b.yaml")]
    assert entries[0].gt == str(tmp_path / "m" / "gt.txt") and entries[1].gt is None
    assert fleet.find_bags([bags]) == [bags / "desk", bags / "kitti"]
    assert fleet.find_bags([bags / "desk"]) == [bags / "desk"]
    manifest.write_text("- bag: x\n  weights: y\n")
    with pytest.raises(UsageError, match="entry 1"):
        fleet.read_manifest(manifest)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="without metadata.yaml"):
        fleet.find_bags([tmp_path / "empty"])


def test_a_trial_left_running_by_a_stopped_fm_tune_is_failed_and_queued_again(tmp_path: Path) -> None:
    import socket

    import optuna

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    done = study.ask()
    done.suggest_float("sift.ratio", 0.6, 0.95)
    done.set_user_attr("owner", f"{socket.gethostname()}:{os.getpid()}")
    study.tell(done, 0.5)
    stale = study.ask()
    ratio = stale.suggest_float("sift.ratio", 0.6, 0.95)
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale.set_user_attr("owner", f"{socket.gethostname()}:{gone.pid}")
    other = subprocess.Popen(["sleep", "60"])  # another fm-tune, still running on this machine: left alone
    try:
        alive = study.ask()
        alive.suggest_float("sift.ratio", 0.6, 0.95)
        alive.set_user_attr("owner", f"{socket.gethostname()}:{other.pid}")
        tune.requeue_stale(study)
    finally:
        other.kill()
        other.wait()
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "RUNNING", "WAITING"]
    assert study.trials[3].params == {} and study.trials[3].system_attrs["fixed_params"] == {"sift.ratio": ratio}
    assert tune.finished_trials(study) == 1  # the stale one is not counted as run
