"""Many evaluation runs at once on Ray: one task per (bag, run), resumable, a failed bag one error row.

The runs are ordinary ``fm-eval`` runs (the same code, the same ``metrics.json``); this module plans them
(:func:`find_bags`, :func:`read_manifest`), skips the finished ones (:func:`finished`: a ``metrics.json``
with the same settings hash), runs the rest as Ray tasks (:class:`RayPool`: embedded on this machine, or
an existing cluster) and sums them up (:func:`totals`, :func:`write_fleet_report`).

Ray is imported only by :class:`RayPool`: it is an evaluation tool, not a dependency of the node.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bagio import BagError
from .cli import UsageError, read_yaml

#: what a folder of bags may hold besides rosbag2 folders
BAG_SUFFIXES = (".mcap", ".db3", ".bag")
#: Ray's loopback-only switch (it binds and advertises 127.0.0.1): set for an embedded instance only
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: object store of an embedded instance: tasks return small dictionaries
OBJECT_STORE_BYTES = 128 * 2**20
#: seconds between looks at the running tasks (Ctrl-C is seen at the latest then)
POLL_S = 1.0


@dataclass
class BagEntry:
    """One bag to evaluate, and what applies to it (a manifest entry, or a bag of the command line)."""

    bag: Path
    params: list[str] = field(default_factory=list)  # parameter files (empty: the command line's)
    gt: str | None = None                             # TUM ground truth (None: the command line's or the bag's)
    label: str = ""                                  # folder name of its results, unique in the fleet


@dataclass
class Job:
    """One run: ``fm-eval`` with ``argv`` writes ``folder``/metrics.json (and carries ``settings_hash``)."""

    label: str             # the bag's label
    run: str               # the run's name (backend, parameter file)
    folder: Path
    argv: list[str]
    settings_hash: str
    threads: int = 1

    @property
    def name(self) -> str:
        return f"{self.label}/{self.run}"


# -- planning ------------------------------------------------------------------------------------------


def find_bags(paths: Iterable[str | Path]) -> list[Path]:
    """The bags named by ``paths``: a bag (rosbag2 folder, .mcap, .db3, ROS 1 .bag) or a folder holding bags
    (its rosbag2 folders and bag files, sorted by name; a file there that is not a bag stays in the list
    when its suffix says it is one, so that its run reports the error)."""
    bags: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"bag {path} does not exist")
        if path.is_dir() and not (path / "metadata.yaml").is_file():
            inside = sorted(p for p in path.iterdir()
                            if (p.is_dir() and (p / "metadata.yaml").is_file())
                            or (p.is_file() and p.suffix in BAG_SUFFIXES))
            if not inside:
                raise UsageError(f"{path} is a folder without metadata.yaml: neither a rosbag2 bag nor a folder "
                                 f"holding bags (rosbag2 folders, or {', '.join(BAG_SUFFIXES)} files)")
            bags += inside
        else:
            bags.append(path)
    return bags


def read_manifest(path: str | Path) -> list[BagEntry]:
    """The entries of a manifest: a YAML list of ``{bag: PATH, params: [FILE, ...], gt: FILE}`` (``params`` and
    ``gt`` optional; relative paths are relative to the manifest's folder)."""
    path = Path(path)
    doc = read_yaml(path, "manifest")
    if not isinstance(doc, list) or not doc:
        raise UsageError(f"manifest {path}: expected a list of entries '- bag: PATH' (params, gt optional)")
    here = path.parent
    entries = []
    for k, item in enumerate(doc):
        if isinstance(item, str):
            item = {"bag": item}
        if not isinstance(item, dict) or "bag" not in item or set(item) - {"bag", "params", "gt"}:
            raise UsageError(f"manifest {path}, entry {k + 1}: expected keys bag (required), params, gt; got {item!r}")
        params = item.get("params") or []
        if isinstance(params, str):
            params = [params]
        entries.append(BagEntry(bag=here / str(item["bag"]), params=[str(here / str(p)) for p in params],
                                gt=str(here / str(item["gt"])) if item.get("gt") else None))
    return entries


def label_entries(entries: Sequence[BagEntry]) -> list[BagEntry]:
    """Give each entry a unique folder name: the bag's name without its suffix (``_2``, ``_3`` on repeats)."""
    seen: dict[str, int] = {}
    for entry in entries:
        base = entry.bag.name
        for suffix in BAG_SUFFIXES:
            base = base.removesuffix(suffix)
        seen[base] = seen.get(base, 0) + 1
        entry.label = base if seen[base] == 1 else f"{base}_{seen[base]}"
    return list(entries)


def _file_digest(path: Path) -> str:
    """A cheap identity of an input file or bag folder: its files' names, sizes and modification times."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def settings_hash(argv: Sequence[str], inputs: Iterable[str | Path], extra: Any = None) -> str:
    """The identity of a run: its ``fm-eval`` arguments (the output folder aside), the contents of the
    parameter files and ground truth, the bag's files, and the package's version."""
    from .. import __version__

    h = hashlib.sha256()
    h.update(json.dumps({"argv": list(argv), "extra": extra, "version": __version__}, sort_keys=True).encode())
    for item in inputs:
        path = Path(item)
        h.update(str(path.resolve()).encode())
        if path.is_file():
            h.update(hashlib.sha256(path.read_bytes()).digest() if path.stat().st_size < 2**20
                     else _file_digest(path).encode())
        elif path.is_dir():
            h.update(_file_digest(path).encode())
    return h.hexdigest()[:16]


def finished(job: Job) -> dict[str, Any] | None:
    """The run's metrics when ``job.folder`` holds a ``metrics.json`` of the same settings, else None."""
    path = job.folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return metrics if metrics.get("settings_hash") == job.settings_hash else None


def error_row(job: Job, exc: BaseException) -> dict[str, Any]:
    """The row of a run that failed: its bag, its name and one line saying why."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    if not isinstance(exc, (BagError, UsageError)):
        text = f"{type(exc).__name__}: {text}"
    return {"bag_label": job.label, "name": job.run, "error": text, "folder": job.folder.as_posix()}


# -- running -------------------------------------------------------------------------------------------


def run_job(fn: Callable[[Job], dict[str, Any]], job: Job) -> dict[str, Any]:
    """``fn(job)`` with the job's thread budget; its ``metrics.json`` gets the settings hash (written last: a
    run killed before has none and runs again); an exception becomes :func:`error_row`."""
    set_threads(job.threads)
    t0 = time.perf_counter()
    try:
        row = fn(job)
    except Exception as exc:  # noqa: BLE001 - one failed bag is one error row, the others go on
        return {**error_row(job, exc), "task_s": time.perf_counter() - t0}
    path = job.folder / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["settings_hash"] = job.settings_hash
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(path)
    return {**row, "name": job.run, "settings_hash": job.settings_hash, "bag_label": job.label,
            "folder": job.folder.as_posix(), "task_s": time.perf_counter() - t0, **ray_node()}


def ray_node() -> dict[str, str]:
    """``{"ray_node": id}`` of the Ray node running this task (nothing outside Ray)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    return {"ray_node": ray.get_runtime_context().get_node_id()}


def set_threads(threads: int) -> None:
    """Limit this process's torch and OpenCV threads (a task's share of the cores)."""
    import sys

    import cv2

    cv2.setNumThreads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def thread_budget(workers: int, threads: int | None, cores: int | None = None) -> int:
    """Threads per task: ``threads`` when given, else this machine's cores shared by ``workers`` tasks."""
    if threads:
        return threads
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


class RayPool:
    """Ray, embedded on this machine (``address`` None: started here with ``workers * threads`` CPUs, loopback
    only, no dashboard, and stopped by :meth:`close`) or an existing cluster (``address``: ``auto`` or
    ``ray://HOST:PORT``; the package must be installed on its nodes). At most ``workers`` tasks run at once;
    each asks Ray for ``threads`` CPUs and, with ``gpus``, for that many GPUs."""

    def __init__(self, workers: int, threads: int, address: str | None = None, gpus: float = 0.0):
        self.workers, self.threads, self.gpus, self.address = workers, threads, gpus, address
        self._ray: Any = None
        self._running: dict[Any, Job] = {}

    def __enter__(self) -> RayPool:
        import ray

        if self.address is None:
            os.environ.setdefault(LOOPBACK_ENV, "0")
            ray.init(num_cpus=self.workers * self.threads, num_gpus=None if self.gpus else 0,
                     include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False,
                     logging_level="ERROR", configure_logging=True)
        else:
            ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
        self._ray = ray
        self._task = ray.remote(run_job).options(num_cpus=self.threads, num_gpus=self.gpus, max_retries=0)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
        self._ray = None

    @property
    def free(self) -> int:
        """How many more tasks may start now."""
        return self.workers - len(self._running)

    def submit(self, fn: Callable[[Job], dict[str, Any]], job: Job) -> None:
        """Start ``run_job(fn, job)`` as a Ray task."""
        self._running[self._task.remote(fn, job)] = job

    def finished_tasks(self) -> list[tuple[Job, dict[str, Any]]]:
        """The tasks that ended since the last call (waits up to ``POLL_S`` for one); a task whose worker died
        gives that run's error row."""
        if not self._running:
            return []
        done, _ = self._ray.wait(list(self._running), num_returns=1, timeout=POLL_S)
        out = []
        for ref in done:
            job = self._running.pop(ref)
            try:
                out.append((job, self._ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - a worker that died is that run's error row
                out.append((job, error_row(job, exc)))
        return out

    def map(self, fn: Callable[[Job], dict[str, Any]], jobs: Sequence[Job],
            on_done: Callable[[Job, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """``run_job(fn, job)`` for every job, at most ``workers`` at once; results in the jobs' order.
        ``on_done(job, row)`` as each one ends (in the order they end)."""
        index = {id(job): k for k, job in enumerate(jobs)}
        results: dict[int, dict[str, Any]] = {}
        pending = list(jobs)
        while pending or self._running:
            while pending and self.free > 0:
                self.submit(fn, pending.pop(0))
            for job, row in self.finished_tasks():
                results[index[id(job)]] = row
                if on_done:
                    on_done(job, row)
        return [results[k] for k in range(len(jobs))]


def run_fleet(fn: Callable[[Job], dict[str, Any]], jobs: Sequence[Job], pool_args: dict[str, Any],
              progress: bool = True, desc: str = "runs") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every job not :func:`finished` through a :class:`RayPool` (``pool_args``), with a progress bar over
    all of them. Returns the rows in the jobs' order and where the time went: ``reused_runs``, ``wall_s``
    (all of it), ``ray_start_s``, ``task_s`` (the runs' own times, summed)."""
    t0 = time.perf_counter()
    rows: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for k, job in enumerate(jobs):
        metrics = finished(job)
        if metrics is None:
            todo.append(k)
        else:
            rows[k] = {**metrics, "name": job.run, "bag_label": job.label, "folder": job.folder.as_posix(),
                       "reused": True}
    timing = {"reused_runs": len(jobs) - len(todo), "ray_start_s": 0.0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="run")
    try:
        if todo:
            t_start = time.perf_counter()
            with RayPool(**pool_args) as pool:
                timing["ray_start_s"] = time.perf_counter() - t_start
                out = pool.map(fn, [jobs[k] for k in todo],
                               on_done=(lambda job, row: bar.update(1)) if bar is not None else None)
            rows.update(zip(todo, out))
    finally:
        if bar is not None:
            bar.close()
    timing["wall_s"] = time.perf_counter() - t0
    timing["task_s"] = sum(float(rows[k].get("task_s") or 0.0) for k in todo)
    return [rows[k] for k in range(len(jobs))], timing


# -- results -------------------------------------------------------------------------------------------

#: the metrics summed up over bags (when a run has them)
TOTAL_KEYS = (
    "frames", "pairs", "auc@5", "auc@10", "auc@20", "rotation_error_deg_median", "translation_error_deg_median",
    "epipolar_precision", "matches_per_frame_median", "inliers_per_frame_median", "keyframes", "fps",
    "latency_ms_p50", "latency_ms_p99", "ate_rmse_m", "rpe_rmse_m", "metric_pose_frames",
    "translation_error_m_median", "translation_error_pct_median", "nees_mean", "drift_pct", "drift_deg_per_m",
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def totals(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run name: the mean over bags of each metric (each bag counts once, bags without a value left out)
    and the median, with how many bags gave a value and how many failed."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(str(row.get("name")), []).append(row)
    out = []
    for name, group in by_run.items():
        ok = [r for r in group if "error" not in r]
        total: dict[str, Any] = {"name": name, "bags": len(ok), "failed_bags": len(group) - len(ok),
                                 "input_mode": next((r.get("input_mode") for r in ok), None)}
        for key in TOTAL_KEYS:
            values = [v for v in (_number(r.get(key)) for r in ok) if v is not None]
            total[key] = statistics.fmean(values) if values else None
            total[f"{key}.median"] = statistics.median(values) if values else None
            total[f"{key}.bags"] = len(values)
        out.append(total)
    return out


def spread_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics the spread figure shows: pose accuracy, speed, trajectory (metric modes: the metric error)."""
    metric = any(r.get("input_mode", "mono") not in ("mono", None) for r in rows)
    keys = ["auc@10", "fps", "ate_rmse_m"]
    return keys + (["translation_error_pct_median"] if metric else ["inliers_per_frame_median"])


def plot_spread(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One panel per metric of :func:`spread_keys`: each run's per-bag values (dots) and their box."""
    from .report import _pyplot

    plt = _pyplot()
    keys = spread_keys(rows)
    runs = list(dict.fromkeys(str(r.get("name")) for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        data = [[v for v in (_number(r.get(key)) for r in rows if str(r.get("name")) == run and "error" not in r)
                 if v is not None] for run in runs]
        ax.boxplot([d or [math.nan] for d in data], showfliers=False)
        for k, values in enumerate(data):
            ax.scatter([k + 1] * len(values), values, s=14, alpha=0.7)
        ax.set_xticks(range(1, len(runs) + 1), runs, rotation=30, ha="right", fontsize=7)
        ax.set_title(key, fontsize=9)
    fig.suptitle("per-bag spread (one dot per bag)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def fleet_markdown(rows: Sequence[dict[str, Any]], sums: Sequence[dict[str, Any]], header: Sequence[str]) -> str:
    """report.md of a fleet: the totals per run, a row per bag and run (errors in a table of their own), the
    spread figure."""
    from .report import markdown_table

    total_rows = [{**t, "name": f"{t['name']} (mean of {t['bags']} bags)"} for t in sums]
    median_rows = [{"name": f"{t['name']} (median)", **{k: t[f"{k}.median"] for k in TOTAL_KEYS},
                    "input_mode": t["input_mode"]} for t in sums]
    ok = [{**r, "name": f"{r['bag_label']} · {r['name']}"} for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]
    lines = ["# Fleet evaluation", "", *header, "", "## Totals per run", "",
             "Each bag counts once; a metric a bag does not have (no ground truth, no pairs) is left out of its "
             "mean and median.", "", markdown_table(total_rows + median_rows), "",
             "![per-bag spread](spread.png)", "", "## Per bag", "", markdown_table(ok) if ok else "(none)", ""]
    if failed:
        lines += ["## Failed", "", "| bag | run | error |", "|---|---|---|"]
        lines += [f"| {r['bag_label']} | {r['name']} | {r['error']} |" for r in failed]
        lines.append("")
    lines += ["## Runs", ""]
    lines += [f"- [{r['bag_label']} · {r['name']}]({r['folder']}/report.md)" for r in rows if "error" not in r]
    return "\n".join(lines) + "\n"


def write_fleet_report(out: Path, rows: list[dict[str, Any]], header: Sequence[str],
                       info: dict[str, Any]) -> list[dict[str, Any]]:
    """``out``/metrics.json (``runs``: a row per bag and run; ``totals``: per run), report.md and spread.png;
    returns the totals."""
    from .report import write_json

    sums = totals(rows)
    out.mkdir(parents=True, exist_ok=True)
    rel = [{**r, "folder": os.path.relpath(r["folder"], out) if r.get("folder") else None} for r in rows]
    write_json(out / "metrics.json", {**info, "runs": rel, "totals": sums})
    if any("error" not in r for r in rows):
        plot_spread(rows, out / "spread.png")
    (out / "report.md").write_text(fleet_markdown(rel, sums, header))
    return sums
