"""``fm-replay BAG``: play a rosbag2 to the live matcher node over DDS and score what it publishes.

The images and camera info of the bag are published at their recorded pace (``--rate`` times real time)
together with ``/clock``; the node runs with ``use_sim_time`` (started here as a subprocess, or an already
running one with ``--connect``). Its ``matches``, ``relative_pose``, ``keyframe``, ``odometry`` and
``/diagnostics`` are recorded (``DIR/live_outputs``, mcap) and scored like ``fm-eval`` does offline, plus
frames dropped and end-to-end latency (image published -> its matches received). A compact summary table
is printed.

This module is an entry point and the only place of the evaluation tools that uses rclpy.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import read_tum
from ..evaluation import bagio
from ..evaluation.cli import UsageError, run_main
from ..evaluation.live import OUTPUTS, Received, decode, diagnostics_values, records_from_live
from ..evaluation.offline import default_params_file, load_params_file
from ..evaluation.report import LIVE_SUMMARY_KEYS, text_table
from ..evaluation.scoring import score_run
from ..messages import stamp_to_ns
from .eval import add_bag_input_args

NODE_MODULE = "feature_matcher_ros.matcher_node"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-replay", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bag", help="rosbag2 folder, .mcap or .db3 file")
    p.add_argument("--out", default="out/replay", help="output folder (created; files in it are overwritten)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed (1 = recorded pace, 0.2 = five times slower)")
    p.add_argument("--params", default=None, metavar="FILE",
                   help="node parameter file (default: the shipped config/matcher.yaml)")
    p.add_argument("--backend", default=None, help="override the parameter file's backend")
    p.add_argument("--device", default=None, help="override the device (cpu, cuda, auto)")
    p.add_argument("--input-qos", default="reliable", choices=("reliable", "sensor_data", "system_default"),
                   help="the started node's input QoS (reliable: no frame is lost in transport; drops are the node's)")
    p.add_argument("--namespace", default="/fm_replay", help="namespace of the started node (its outputs live there)")
    p.add_argument("--connect", action="store_true",
                   help="use an already running node (started with use_sim_time:=true) instead of starting one")
    p.add_argument("--node-namespace", default="/",
                   help="with --connect: the namespace of the running node's outputs")
    p.add_argument("--node-name", default="matcher_node",
                   help="with --connect: the running node's name (its ~/reset is called before playing)")
    p.add_argument("--publish-image-topic", default=None,
                   help="publish the images on this topic (default: the bag's image topic; with a started node it "
                        "is remapped to the node's 'image')")
    p.add_argument("--publish-camera-info-topic", default=None, help="likewise for the camera info")
    add_bag_input_args(p)
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the node to come up")
    p.add_argument("--drain-timeout", type=float, default=20.0,
                   help="after the last image: seconds without any output before giving up on the rest")
    p.add_argument("--pictures", type=int, default=3, help="match pictures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# -- the node's parameters ------------------------------------------------------------------------------

def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"parameter {key!r} clashes with a parameter named like its prefix")
        node[parts[-1]] = value
    return tree


def node_params_file(args: argparse.Namespace, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The parameters the started node gets, as one ``/**`` file (whatever the section names of the
    user's file), with the command-line overrides applied."""
    import yaml

    source = args.params or (str(default_params_file()) if default_params_file() else None)
    params = load_params_file(source) if source else {}
    if args.backend:
        params["backend"] = args.backend
    if args.device:
        params["device"] = args.device
    params["input_qos"] = args.input_qos
    params["use_sim_time"] = True
    path = folder / "node_params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": _nest(params)}}, sort_keys=True))
    return path, params


# -- DDS ------------------------------------------------------------------------------------------------

def _dds_environment() -> None:
    """Large images between processes need the package's Fast DDS profile (bigger shared-memory
    segment); used unless the user chose a profile already."""
    if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        return
    from ..resources import config_file

    profile = config_file("fastdds_large_images.xml")
    if profile.is_file():
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)


class Player:
    """The rclpy side: publishers for the bag, recorders for the node's outputs, an executor thread."""

    def __init__(self, image_topic: str, info_topic: str, image_type: str, outputs_ns: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import PointCloud2

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("fm_replay", context=self.context)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        record = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.Clock = Clock
        self.pub_clock = self.node.create_publisher(Clock, "/clock", reliable)
        img_cls = CompressedImage if image_type == bagio.COMPRESSED_IMAGE else Image
        self.pub_image = self.node.create_publisher(img_cls, image_topic, reliable)
        self.pub_info = self.node.create_publisher(CameraInfo, info_topic, reliable)
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.last_output = time.monotonic()
        types = {"matches": PointCloud2, "relative_pose": PoseWithCovarianceStamped, "keyframe": PoseStamped,
                 "odometry": Odometry, "/diagnostics": DiagnosticArray}
        self.output_topics: dict[str, str] = {}
        ns = "/" + outputs_ns.strip("/") if outputs_ns.strip("/") else ""
        for name, cls in types.items():
            topic = name if name.startswith("/") else f"{ns}/{name}"
            self.output_topics[name] = topic
            self.node.create_subscription(cls, topic, self._recorder(name), latched if name == "keyframe" else record,
                                          raw=True)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True, name="fm_replay_executor")
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - shutdown races end the spin
            pass

    def _recorder(self, name: str):
        def callback(raw: bytes) -> None:
            now = time.monotonic_ns()
            with self.lock:
                self.received.append(Received(name, now, bytes(raw)))
                self.last_output = time.monotonic()
        return callback

    def answered(self) -> set[int]:
        """Image stamps with a ``matches`` message so far."""
        with self.lock:
            items = [r for r in self.received if r.output == "matches"]
        frames, _, _ = decode(items)
        return set(frames)

    def clock(self, stamp_ns: int) -> None:
        from builtin_interfaces.msg import Time

        self.pub_clock.publish(self.Clock(clock=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)))

    def ready(self) -> bool:
        """The node subscribes to our image and camera info and publishes matches."""
        return (self.pub_image.get_subscription_count() > 0 and self.pub_info.get_subscription_count() > 0
                and self.node.count_publishers(self.output_topics["matches"]) > 0)

    def reset_node(self, service: str, timeout_s: float = 5.0) -> str:
        """Call a running node's ``~/reset`` (std_srvs/Trigger) so that it forgets keyframes and stamp
        order from an earlier replay; returns a warning, or "" when it was reset."""
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                return f"no {service} service: the node keeps its keyframe and stamp order from before"
            future = client.call_async(Trigger.Request())
            deadline = time.monotonic() + timeout_s
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not future.done() or not future.result().success:
                return f"{service} did not succeed"
            return ""
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=2.0)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.node.destroy_node()
        finally:
            self.rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=2.0)


# -- the node process -------------------------------------------------------------------------------------

def start_node(params_file: Path, namespace: str, image_topic: str, info_topic: str, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", NODE_MODULE, "--ros-args", "--params-file", str(params_file),
           "-p", "use_sim_time:=true", "-r", f"image:={image_topic}", "-r", f"camera_info:={info_topic}"]
    if namespace.strip("/"):
        cmd += ["-r", f"__ns:=/{namespace.strip('/')}"]
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_node
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def stop_node(proc: subprocess.Popen) -> None:
    """SIGINT (a clean ROS shutdown), then SIGTERM, then SIGKILL, to this one process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    log = getattr(proc, "log_file", None)
    if log is not None:
        log.close()


def _log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text().strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# -- playback -------------------------------------------------------------------------------------------

def play(reader: Any, topics: bagio.BagTopics, player: Player, rate: float, total: int | None,
         progress: bool) -> tuple[dict[int, int], int, int]:
    """Publish the bag's camera info and images at ``rate`` x the recorded pace, ``/clock`` along.
    Returns ``(image stamp -> monotonic publish time ns, first log time, last log time)``."""
    store = bagio.typestore()
    published: dict[int, int] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="fm-replay", unit="frame", leave=False)
    t0 = wall0 = None
    last_t = 0
    first_info_sent = False
    try:
        for conn, t, raw in bagio.raw_messages(reader, [topics.image, topics.camera_info]):
            if t0 is None:
                t0 = t
                # pre-roll: the clock and the first camera info before any image
                player.clock(t)
                if conn.topic == topics.camera_info:
                    player.pub_info.publish(bytes(raw))
                    first_info_sent = True
                time.sleep(0.5)
                wall0 = time.monotonic()
                if first_info_sent:
                    continue
            target = wall0 + (t - t0) / 1e9 / rate
            while True:
                now = time.monotonic()
                if now >= target:
                    break
                player.clock(t0 + int((now - wall0) * rate * 1e9))
                time.sleep(min(0.02, target - now))
            player.clock(t)
            last_t = t
            if conn.topic == topics.camera_info:
                player.pub_info.publish(bytes(raw))
            else:
                try:
                    header = store.deserialize_cdr(raw, conn.msgtype).header
                except Exception as exc:  # noqa: BLE001
                    raise bagio.BagError(f"cannot decode a {conn.msgtype} message on {conn.topic}: {exc}") from None
                s = stamp_to_ns(header.stamp)
                published[s] = time.monotonic_ns()
                player.pub_image.publish(bytes(raw))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return published, t0 or 0, last_t


def drain(player: Player, published: dict[int, int], last_t: int, timeout_s: float, proc: subprocess.Popen | None) -> None:
    """Wait until the last image is answered (the node always works on the newest frame, so everything
    is then done), or no output came for ``timeout_s``; keep ``/clock`` going meanwhile."""
    if not published:
        return
    last_stamp = max(published)
    while True:
        if last_stamp in player.answered():
            time.sleep(0.5)  # the pose/keyframe messages follow the matches
            return
        if time.monotonic() - player.last_output > timeout_s:
            return
        if proc is not None and proc.poll() is not None:
            return
        player.clock(last_t)
        time.sleep(0.05)


def write_outputs_bag(received: list[Received], topics: dict[str, str], path: Path) -> None:
    """Record the node's outputs as an mcap bag (log time = receive time)."""
    import shutil

    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin

    if path.exists():
        shutil.rmtree(path)
    store = bagio.typestore()
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {name: writer.add_connection(topics[name], OUTPUTS[name], typestore=store) for name in OUTPUTS}
        base = time.time_ns() - time.monotonic_ns()
        for item in sorted(received, key=lambda r: r.received_ns):
            writer.write(conns[item.output], base + item.received_ns, item.raw)


def replay(args: argparse.Namespace) -> int:
    if not args.rate > 0:
        raise UsageError(f"--rate must be > 0, got {args.rate}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with bagio.open_bag(args.bag) as reader:
        topics = bagio.discover_topics(reader, args.image_topic, args.camera_info_topic, args.gt_topic,
                                       need_ground_truth=not args.gt)
        if args.gt:
            gt = read_tum(args.gt)
        else:
            frame = args.gt_frame
            if topics.ground_truth_type == bagio.TF and not frame:
                frame = bagio.image_frame_id(reader, topics.image)
            gt = bagio.read_ground_truth(reader, topics.ground_truth, frame)
        cams = bagio.read_cameras(reader, topics.camera_info)
        # preflight: the first image decodes (encoding, size) before a node is started for it
        for _ in bagio.iter_frames(reader, topics):
            break
        camera_at = bagio.camera_lookup(cams)
        total = bagio.topic_counts(reader).get(topics.image)
        pub_image = args.publish_image_topic or topics.image
        pub_info = args.publish_camera_info_topic or topics.camera_info
        params_file, params = node_params_file(args, out)

        _dds_environment()
        proc = None
        player = Player(pub_image, pub_info, topics.image_type,
                        args.node_namespace if args.connect else args.namespace)
        try:
            if not args.connect:
                proc = start_node(params_file, args.namespace, pub_image, pub_info, out / "node.log")
            else:
                ns = args.node_namespace.strip("/")
                warning = player.reset_node(f"{'/' + ns if ns else ''}/{args.node_name}/reset")
                if warning:
                    print(f"fm-replay: warning: {warning}", file=sys.stderr)
            deadline = time.monotonic() + args.startup_timeout
            while not player.ready():
                if proc is not None and proc.poll() is not None:
                    raise UsageError(f"the matcher node exited with code {proc.returncode} before it was ready: "
                                     f"{_log_tail(out / 'node.log')}")
                if time.monotonic() > deadline:
                    where = "started node" if proc is not None else f"node under {args.node_namespace}"
                    raise UsageError(f"the {where} did not come up within {args.startup_timeout:.0f} s "
                                     f"(needs subscribers on {pub_image} and {pub_info} and a publisher of "
                                     f"{player.output_topics['matches']})"
                                     + (f": {_log_tail(out / 'node.log')}" if proc is not None else ""))
                time.sleep(0.1)
            time.sleep(0.5)  # let discovery settle in both directions
            started = time.monotonic()
            published, t0, last_t = play(reader, topics, player, args.rate, total, not args.quiet)
            drain(player, published, last_t, args.drain_timeout, proc)
            wall = time.monotonic() - started
        finally:
            if proc is not None:
                stop_node(proc)
            player.close()
        with player.lock:
            received = list(player.received)
        write_outputs_bag(received, player.output_topics, out / "live_outputs")
        records = records_from_live(received, published, {s: camera_at(s) for s in published})
        if not records:
            raise UsageError(f"the node answered none of the {len(published)} images "
                             f"(log: {out / 'node.log'}: {_log_tail(out / 'node.log')})")
        _, _, diagnostics = decode(r for r in received if r.output == "/diagnostics")
        diag = diagnostics_values(diagnostics)

        def images_for(stamps: set[int]) -> dict[int, Any]:
            return {f.stamp_ns: f.image for f in bagio.iter_frames(reader, topics, stamps=stamps)}

        latencies = [r.latency_ms for r in records if r.latency_ms == r.latency_ms]
        # what ran: the node's own report when it sent diagnostics, else what it was asked to run
        backend = diag.get("backend") or str(params.get("backend", "sift"))
        meta = {
            "name": f"{backend} (live)", "mode": "live", "backend": backend,
            "device": diag.get("device") or params.get("device", "auto"),
            "precision": diag.get("precision") or params.get("precision", "fp32"),
            "bag": str(Path(args.bag)), "image_topic": topics.image, "camera_info_topic": topics.camera_info,
            "ground_truth": gt.source if gt is not None else None, "rate": args.rate,
            "fps": len(records) / wall if wall > 0 else None, "wall_s": wall,
            "frames_published": len(published), "frames_dropped": len(published) - len(records),
            "end_to_end_latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
            "end_to_end_latency_ms_p99": float(np.percentile(latencies, 99)) if latencies else None,
            "node_diagnostics_last": diag, "params_file": str(args.params or default_params_file() or ""),
        }
        metrics = score_run(records, gt, out, meta, images_for=images_for, pictures=args.pictures,
                            latency_label="end-to-end latency (publish → matches received)")
    print(text_table([metrics], LIVE_SUMMARY_KEYS))
    print(f"results in {out}/ (report.md, metrics.json, plots, live_outputs/ with the node's messages)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("fm-replay", lambda: replay(args))


if __name__ == "__main__":
    sys.exit(main())
