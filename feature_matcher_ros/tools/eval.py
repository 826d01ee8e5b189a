"""``fm-eval BAG --out DIR``: run the frontend offline on every frame of a rosbag2 and score it.

Reads rosbag2 (mcap or sqlite3) and ROS 1 (``.bag``) recordings. Topics are found automatically when unambiguous
(else name them); the ground truth comes from a PoseStamped, PoseWithCovarianceStamped, Odometry or TF topic, or
a TUM file (``--gt``). A parameter file with ``input_mode: rgbd`` or ``stereo`` pairs each image with its depth or
right image by stamp (the node's ``sync.*`` policy) and scores the metric poses as well.
Writes ``DIR/metrics.json``, ``DIR/report.md``, plots and the chained trajectory (TUM, scored with
``evo_ape``/``evo_rpe``). Several ``--backend``/``--params`` give one run each (every backend with every
parameter file) and a comparison table in ``DIR/report.md`` with one subfolder per run.

Several bags (or a folder of bags, or ``--manifest``, ``--workers``, ``--address``) make a fleet evaluation:
every (bag, backend, parameter file) run is one Ray task (:mod:`..evaluation.fleet`), ``DIR/<bag>/<run>/``
holds each run's results as above, and ``DIR/report.md`` the totals per run over the bags.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from ..datasets import Trajectory, read_tum
from ..evaluation import bagio, fleet
from ..evaluation.cli import UsageError, run_main
from ..evaluation.graph import run_pose_graph
from ..evaluation.offline import (
    RunSpec,
    build_frontend,
    default_params_file,
    load_params_file,
    make_run_spec,
    run_offline,
)
from ..evaluation.report import comparison_markdown, text_table, write_json
from ..evaluation.scoring import score_run

#: loop.keyframes under --pose-graph when the parameters leave loop detection off
POSE_GRAPH_LOOP_KEYFRAMES = 1000


def add_bag_input_args(p: argparse.ArgumentParser) -> None:
    """Which of the bag's topics (or a TUM file) hold the images, camera info and ground truth (fm-eval, fm-replay)."""
    p.add_argument("--image-topic", default=None, help="image topic in the bag (default: the only Image topic)")
    p.add_argument("--camera-info-topic", default=None, help="CameraInfo topic (default: beside the image topic)")
    p.add_argument("--gt-topic", default=None, help="ground-truth topic (PoseStamped, Odometry or TF)")
    p.add_argument("--gt-frame", default=None,
                   help="with a TF ground truth: the camera frame (default: the images' frame_id)")
    p.add_argument("--gt", default=None, metavar="TUM_FILE", help="ground truth from a TUM file (T_world_camera)")
    p.add_argument("--depth-topic", default=None, help="input_mode rgbd: depth topic (default: the one named *depth*)")
    p.add_argument("--right-image-topic", default=None,
                   help="input_mode stereo: right image topic (default: the one named *right*)")
    p.add_argument("--right-camera-info-topic", default=None,
                   help="input_mode stereo: right camera info (default: beside the right image topic)")
    p.add_argument("--base-frame", default="", metavar="FRAME",
                   help="score the trajectory of this robot frame (REP 105), the camera's mounting on it read from "
                        "the bag's /tf_static or given with --mount")
    p.add_argument("--mount", nargs=6, type=float, default=None, metavar=("X", "Y", "Z", "ROLL", "PITCH", "YAW"),
                   help="with --base-frame: the camera's mounting (metres, radians; zero angles look along the "
                        "base's x axis), when the bag has none")


def base_mount(reader: Any, args: argparse.Namespace, topics: bagio.BagTopics) -> Any:
    """``T_base_camera`` for ``--base-frame`` (from ``--mount`` or the bag's /tf_static), or None without one."""
    if not args.base_frame:
        if args.mount:
            raise UsageError("--mount needs --base-frame (the robot frame to score)")
        return None
    if args.mount:
        from ..base_odometry import camera_mount

        return camera_mount(*args.mount)
    return bagio.read_mount(reader, args.base_frame, bagio.image_frame_id(reader, topics.image))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bag", nargs="*", help="rosbag2 folder, .mcap or .db3 file, or a ROS 1 .bag; or a folder of bags "
                                          "(several: a fleet evaluation on Ray)")
    p.add_argument("--out", required=True, help="output folder (created; files in it are overwritten)")
    add_fleet_args(p)
    p.add_argument("--backend", action="append", default=[], metavar="NAME",
                   help="backend to run (repeatable; default: the parameter file's, else sift)")
    p.add_argument("--params", action="append", default=[], metavar="FILE",
                   help="node parameter file (ROS yaml; repeatable; default: the shipped config/matcher.yaml)")
    p.add_argument("--node-name", default="matcher_node", help="node name whose section of a parameter file applies")
    p.add_argument("--device", default=None, help="override the device (cpu, cuda, cuda:N, auto)")
    add_bag_input_args(p)
    p.add_argument("--pose-graph", action="store_true",
                   help="also run the pose-graph back-end (GTSAM, as pose_graph_node) on the keyframe and loop edges "
                        f"and score its keyframes (loop.keyframes 0 becomes {POSE_GRAPH_LOOP_KEYFRAMES})")
    p.add_argument("--pictures", type=int, default=3, help="match pictures per run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def add_fleet_args(p: argparse.ArgumentParser) -> None:
    """The options of an evaluation over many bags on Ray (fm-eval, fm-tune)."""
    g = p.add_argument_group("many bags (Ray)")
    g.add_argument("--manifest", default=None, metavar="FILE",
                   help="YAML list of {bag: PATH, params: [FILE, ...], gt: FILE} (params, gt optional; paths "
                        "relative to the file), evaluated with the bags given")
    g.add_argument("--workers", type=int, default=None,
                   help="runs at once (default 1; more than one bag: a Ray task per run, resumable)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads per run (default: this machine's cores / --workers)")
    g.add_argument("--address", default=None,
                   help="an existing Ray cluster (auto, or ray://HOST:PORT); default: Ray embedded on this machine")


def load_ground_truth(reader: Any, topics: bagio.BagTopics, gt_file: str | None, gt_frame: str | None) -> Trajectory:
    if gt_file:
        return read_tum(gt_file)
    assert topics.ground_truth is not None
    frame = gt_frame
    if topics.ground_truth_type == bagio.TF and not frame:
        frame = bagio.image_frame_id(reader, topics.image)
    return bagio.read_ground_truth(reader, topics.ground_truth, frame)


def plan_runs(args: argparse.Namespace) -> list[RunSpec]:
    """One run per (backend, parameter file)."""
    files = args.params or ([str(default_params_file())] if default_params_file() else [])
    params_sets: list[tuple[str | None, dict]] = ([(f, load_params_file(f, args.node_name)) for f in files]
                                                  or [(None, {})])
    backends = args.backend or [None]
    specs = []
    for backend in backends:
        for file, params in params_sets:
            specs.append(make_run_spec(params, backend=backend, device=args.device,
                                       params_files=[file] if file else []))
    # names: the backend, plus the parameter file when several share a backend
    for spec in specs:
        same = [s for s in specs if s.backend == spec.backend]
        if len(same) > 1 and spec.params_files:
            spec.name = f"{spec.backend}_{Path(spec.params_files[0]).stem}"
    seen: dict[str, int] = {}
    for spec in specs:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)
        seen[base] = seen.get(base, 0) + 1
        spec.name = base if seen[base] == 1 else f"{base}_{seen[base]}"
    return specs


def evaluate_bag(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out)
    specs = plan_runs(args)
    with bagio.open_bag(args.bag) as reader:
        topics = bagio.discover_topics(reader, args.image_topic, args.camera_info_topic, args.gt_topic,
                                       need_ground_truth=not args.gt)
        gt = load_ground_truth(reader, topics, args.gt, args.gt_frame)
        mount = base_mount(reader, args, topics)
        total = bagio.topic_counts(reader).get(topics.image)

        def images_for(stamps: set[int]) -> dict[int, Any]:
            return {f.stamp_ns: f.image for f in bagio.iter_frames(reader, topics, stamps=stamps)}

        if args.pose_graph:
            for spec in specs:
                if not spec.frontend_settings.get("loop.keyframes"):
                    spec.frontend_settings["loop.keyframes"] = POSE_GRAPH_LOOP_KEYFRAMES
        frontends = [build_frontend(spec) for spec in specs]  # every configuration is checked before any runs
        rows = []
        for spec, frontend in zip(specs, frontends):
            run_topics = metric_topics(reader, topics, spec, args)
            run = run_offline(reader, run_topics, frontend, total=total, progress=not args.quiet,
                              desc=f"fm-eval {spec.name}", pairing=spec.pairing)
            if not run.records:
                raise bagio.BagError(f"no images could be read from {topics.image}"
                                     + _pairing_problem(spec, run_topics, run.pairing.describe()))
            frames = len(run.records)
            meta = {
                "name": spec.name, "mode": "offline", "backend": spec.backend, "device": spec.device,
                "precision": spec.precision, "bag": str(Path(args.bag)), "image_topic": topics.image,
                "camera_info_topic": topics.camera_info,
                "ground_truth": gt.source if gt is not None else None,
                "fps": frames / run.wall_s if run.wall_s > 0 else None, "wall_s": run.wall_s,
                "settings": spec.describe(),
                **metric_meta(spec.pairing.input_mode, run_topics, run.pairing.describe()),
                **({"base_frame": args.base_frame} if mount is not None else {}),
            }
            folder = out if len(specs) == 1 else out / spec.name
            graph = run_pose_graph(run.records) if args.pose_graph else None
            metrics = score_run(run.records, gt, folder, meta, images_for=images_for, pictures=args.pictures,
                                mount=mount, pose_graph=graph)
            rows.append({**metrics, "folder": folder.relative_to(out).as_posix() if folder != out else ".",
                         "params_files": spec.params_files})
    if len(specs) > 1:
        (out / "report.md").write_text(comparison_markdown(rows, str(args.bag)))
        write_json(out / "metrics.json", {"runs": rows})
    return rows


def metric_topics(reader: Any, topics: bagio.BagTopics, spec: RunSpec, args: argparse.Namespace) -> bagio.BagTopics:
    """The bag's topics for the run's input mode (the depth or right-camera topics found or given)."""
    return bagio.discover_metric_topics(reader, topics, spec.pairing.input_mode, args.depth_topic,
                                        args.right_image_topic, args.right_camera_info_topic)


#: the node's inputs in rgbd / stereo mode, and the metrics.json key naming the bag topic that feeds each
PARTNER_KEYS = {"depth": "depth_topic", "right/image": "right_image_topic",
                "right/camera_info": "right_camera_info_topic"}


def partner_topics(topics: bagio.BagTopics) -> dict[str, str]:
    """node input -> bag topic of the depth or right-camera streams found (none in mono)."""
    found = {"depth": topics.depth, "right/image": topics.right_image, "right/camera_info": topics.right_camera_info}
    return {name: topic for name, topic in found.items() if topic}


def metric_meta(input_mode: str, topics: bagio.BagTopics, pairing: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """What metrics.json says about the input mode: the mode (always), and in rgbd / stereo the partner topics
    and, offline, what pairing did (paired, unpaired by input, rejected by reason)."""
    meta: dict[str, Any] = {"input_mode": input_mode}
    meta.update({PARTNER_KEYS[name]: topic for name, topic in partner_topics(topics).items()})
    if pairing is not None and input_mode != "mono":
        meta["pairing"] = pairing
    return meta


def _pairing_problem(spec: RunSpec, topics: bagio.BagTopics, pairing: dict[str, Any]) -> str:
    if spec.pairing.input_mode == "mono":
        return ""
    return (f" paired with {topics.depth or topics.right_image} (input_mode {spec.pairing.input_mode}, "
            f"sync.slop_s {spec.pairing.slop_s}): {pairing['paired']} paired, unpaired {pairing['unpaired']}, "
            f"rejected {pairing['rejected']}")


def pose_graph_line(row: dict) -> str:
    """One line of a run's pose-graph results."""
    g = row["pose_graph"]

    def num(key: str, fmt: str) -> str:
        return "–" if g.get(key) is None else fmt.format(g[key])

    return (f"{row['name']} pose graph: {g['keyframes']} keyframes, {g['loop_closures']} loop closures "
            f"({num('false_loop_closures', '{}')} false; {g['loop_candidates']} candidates, {g['loops_rejected']} "
            f"gated), keyframe ATE {num('ate_rmse_m', '{:.4f}')} m (front-end {num('frontend_ate_rmse_m', '{:.4f}')}"
            f" m), optimisation {num('optimise_ms_median', '{:.2f}')} ms median per keyframe")


def fleet_mode(args: argparse.Namespace) -> bool:
    """Whether this is a fleet evaluation (several bags, a folder of bags, a manifest, or Ray asked for)."""
    one_bag = len(args.bag) == 1 and fleet.find_bags(args.bag) == [Path(args.bag[0])]
    return not one_bag or bool(args.manifest or args.workers or args.address)


#: options passed on unchanged to each run of a fleet
RUN_OPTIONS = ("node_name", "device", "image_topic", "camera_info_topic", "gt_topic", "gt_frame", "depth_topic",
               "right_image_topic", "right_camera_info_topic", "base_frame", "pictures")


def run_argv(args: argparse.Namespace) -> list[str]:
    """The command-line options every run of the fleet shares (its bag, output, parameter files aside)."""
    argv: list[str] = []
    for name in RUN_OPTIONS:
        value = getattr(args, name)
        if value not in (None, ""):
            argv += [f"--{name.replace('_', '-')}", str(value)]
    if args.mount:
        argv += ["--mount", *map(str, args.mount)]
    return argv + (["--pose-graph"] if args.pose_graph else []) + ["--quiet"]


def plan_fleet(args: argparse.Namespace, threads: int, extra: Any = None) -> list[fleet.Job]:
    """One job per (bag, backend, parameter file): the manifest's entries, then the bags given (``extra``: more
    that tells these runs apart from others with the same arguments, in their settings hash)."""
    entries = fleet.read_manifest(args.manifest) if args.manifest else []
    entries += [fleet.BagEntry(bag=b) for b in fleet.find_bags(args.bag)]
    if not entries:
        raise UsageError("no bags: give bags, a folder of bags, or --manifest")
    shared = run_argv(args)
    jobs = []
    for entry in fleet.label_entries(entries):
        plan = argparse.Namespace(params=entry.params or args.params, backend=args.backend,
                                  node_name=args.node_name, device=args.device)
        gt = entry.gt or args.gt
        for spec in plan_runs(plan):
            argv = [f for file in spec.params_files for f in ("--params", file)]
            argv += (["--backend", spec.backend] if args.backend else []) + (["--gt", gt] if gt else []) + shared
            jobs.append(fleet.Job(label=entry.label, run=spec.name, folder=Path(args.out) / entry.label / spec.name,
                                  argv=[str(entry.bag), *argv], threads=threads,
                                  settings_hash=fleet.settings_hash(argv, [entry.bag, *spec.params_files,
                                                                           *([gt] if gt else [])], extra)))
    return jobs


def evaluate_job(job: fleet.Job) -> dict:
    """One run of a fleet: ``fm-eval`` on one bag with one configuration, into ``job.folder``."""
    args = build_parser().parse_args([*job.argv, "--out", str(job.folder)])
    args.bag = args.bag[0]
    return evaluate_bag(args)[0]


def pool_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`fleet.RayPool` of ``--workers``, ``--threads``, ``--address`` and ``--device`` (fm-eval,
    fm-tune): one GPU per run with a CUDA device."""
    workers = args.workers or 1
    if workers < 1 or (args.threads is not None and args.threads < 1):
        raise UsageError("--workers and --threads must be >= 1")
    return {"workers": workers, "threads": fleet.thread_budget(workers, args.threads), "address": args.address,
            "gpus": 1.0 if str(args.device or "").startswith("cuda") else 0.0}


def evaluate_fleet(args: argparse.Namespace) -> tuple[list[dict], list[dict], dict]:
    """Every run of :func:`plan_fleet` on Ray (resumable); writes ``DIR/report.md``, ``metrics.json`` and
    ``spread.png``. Returns the rows, the totals per run and where the time went (:func:`fleet.run_fleet`)."""
    pool = pool_options(args)
    workers, threads = pool["workers"], pool["threads"]
    jobs = plan_fleet(args, threads)
    rows, timing = fleet.run_fleet(evaluate_job, jobs, pool, progress=not args.quiet, desc="fm-eval")
    header = [f"{len({j.label for j in jobs})} bags, {len(jobs)} runs ({timing['reused_runs']} reused from an "
              f"earlier invocation), {workers} at once with {threads} threads each, on "
              f"{args.address or 'Ray embedded on this machine'}: {timing_line(timing)}"]
    sums = fleet.write_fleet_report(Path(args.out), rows, header,
                                    {"workers": workers, "threads_per_run": threads, "address": args.address,
                                     **timing})
    return rows, sums, timing


def timing_line(timing: dict) -> str:
    return (f"{timing['wall_s']:.1f} s in all, Ray start {timing['ray_start_s']:.1f} s, the runs' own times "
            f"{timing['task_s']:.1f} s summed")


def print_fleet(rows: list[dict], sums: list[dict], timing: dict) -> None:
    print(text_table([{**t, "name": f"{t['name']} (mean, {t['bags']} bags)"} for t in sums]))
    for row in rows:
        if "error" in row:
            print(f"FAILED {row['bag_label']} · {row['name']}: {row['error']}")
    print(f"{len(rows)} runs, {timing['reused_runs']} reused, {sum('error' in r for r in rows)} failed; "
          f"{timing_line(timing)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.pictures < 0:
            raise UsageError("--pictures must be >= 0")
        if not args.bag and not args.manifest:
            raise UsageError("give a bag (or several, a folder of bags, or --manifest)")
        if fleet_mode(args):
            rows, sums, timing = evaluate_fleet(args)
            print_fleet(rows, sums, timing)
            print(f"results in {Path(args.out)}/ (report.md, metrics.json, spread.png, one folder per bag)")
            return 0
        args.bag = args.bag[0]
        rows = evaluate_bag(args)
        print(text_table(rows))
        for row in rows:
            if "pose_graph" in row:
                print(pose_graph_line(row))
        print(f"results in {Path(args.out)}/ (report.md, metrics.json, plots)")
        return 0

    return run_main("fm-eval", body)


if __name__ == "__main__":
    sys.exit(main())
