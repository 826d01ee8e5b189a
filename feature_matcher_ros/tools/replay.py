"""``fm-replay BAG``: play a bag (rosbag2 or ROS 1) to the live matcher node over DDS and score what it publishes.

The images and camera info of the bag are published at their recorded pace (``--rate`` times real time)
together with ``/clock``; with ``input_mode: rgbd`` or ``stereo`` in the parameter file also the depth or
right-camera topics, which the node pairs with the images by stamp. The node runs with ``use_sim_time``
(started here as a subprocess, or an already running one with ``--connect``). Its ``matches``,
``relative_pose``, ``keyframe``, ``odometry`` and ``/diagnostics`` are recorded (``DIR/live_outputs``, mcap) and
scored like ``fm-eval`` does offline, plus frames dropped and end-to-end latency (image published -> its matches
received). A compact summary table is printed.

This module is an entry point and the only place of the evaluation tools that uses rclpy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import bagio
from ..evaluation.cli import UsageError, run_main
from ..evaluation.live import OUTPUTS, Received, decode, diagnostics_values, records_from_live
from ..evaluation.offline import default_params_file, load_params_file
from ..evaluation.pairing import Pairing
from ..evaluation.report import LIVE_SUMMARY_KEYS, METRIC_COLUMNS, text_table
from ..evaluation.scoring import score_run
from ..messages import stamp_to_ns
from ..ros.client import HelperNode, ServiceUnavailable
from ..ros.process import NodeProcess
from .eval import add_bag_input_args, base_mount, load_ground_truth, metric_meta, partner_topics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-replay", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bag", help="rosbag2 folder, .mcap or .db3 file")
    p.add_argument("--out", default="out/replay", help="output folder (created; files in it are overwritten)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="playback speed (1 = recorded pace, 0.2 = five times slower)")
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
    p.add_argument("--publish-camera-info-topic", default=None, help="likewise for the camera info (depth and "
                   "right-camera topics are published under their bag names, remapped for a started node)")
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
    if args.base_frame:
        params["base_frame"] = args.base_frame
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


@dataclass
class Stream:
    """A bag topic the replay publishes: on ``publish_topic``, as ``msgtype``; it feeds the node's input
    ``node_input`` (``image``, ``camera_info``, ``depth``, ``right/image``, ``right/camera_info``)."""

    bag_topic: str
    publish_topic: str
    msgtype: str
    node_input: str


class Player(HelperNode):
    """The helper node of a replay: publishers for the bag's streams (raw CDR, as recorded) and ``/clock``,
    and recorders for the node's outputs (raw, with their arrival time)."""

    def __init__(self, streams: list[Stream], outputs_ns: str, mount: tuple[str, str, Any] | None = None) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from nav_msgs.msg import Odometry
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

        from ..ros.qos import input_qos, latched_qos, output_qos

        super().__init__("fm_replay")
        self.streams = streams
        if mount is not None:  # (base frame, camera frame, T_base_camera) on /tf_static, latched for the node
            from ..ros.tf import TfBroadcaster, transform_msg

            self.tf_static = TfBroadcaster(self.node, static=True)
            self.tf_static.send([transform_msg(mount[2], mount[0], mount[1], 0)])
        self.received: list[Received] = []
        self.last_output = time.monotonic()
        self.Clock = Clock
        self.pub_clock = self.node.create_publisher(Clock, "/clock", input_qos("reliable", 10))
        classes = {bagio.IMAGE: Image, bagio.COMPRESSED_IMAGE: CompressedImage, bagio.CAMERA_INFO: CameraInfo}
        self.publishers = {s.bag_topic: self.node.create_publisher(classes[s.msgtype], s.publish_topic,
                                                                   input_qos("reliable", 10)) for s in streams}
        types = {"matches": PointCloud2, "relative_pose": PoseWithCovarianceStamped, "keyframe": PoseStamped,
                 "odometry": Odometry, "/diagnostics": DiagnosticArray}
        self.output_topics: dict[str, str] = {}
        ns = "/" + outputs_ns.strip("/") if outputs_ns.strip("/") else ""
        for name, cls in types.items():
            topic = name if name.startswith("/") else f"{ns}/{name}"
            self.output_topics[name] = topic
            qos = latched_qos(200) if name == "keyframe" else output_qos(200)
            self.node.create_subscription(cls, topic, self._recorder(name), qos, raw=True)

    def _recorder(self, name: str):
        def callback(raw: bytes) -> None:
            now = time.monotonic_ns()
            with self._cond:
                self.received.append(Received(name, now, bytes(raw)))
                self.last_output = time.monotonic()
        return callback

    def recorded(self) -> list[Received]:
        """A copy of every output received so far."""
        with self._cond:
            return list(self.received)

    def answered(self) -> set[int]:
        """Image stamps with a ``matches`` message so far."""
        frames, _, _ = decode(r for r in self.recorded() if r.output == "matches")
        return set(frames)

    def clock(self, stamp_ns: int) -> None:
        from builtin_interfaces.msg import Time

        self.pub_clock.publish(self.Clock(clock=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)))

    def ready(self) -> bool:
        """The node subscribes to everything we publish and publishes matches."""
        return (all(pub.get_subscription_count() > 0 for pub in self.publishers.values())
                and self.node.count_publishers(self.output_topics["matches"]) > 0)

    def heard_by(self, node: str, timeout_s: float) -> None:
        """Return once ``node`` has discovered our publishers, seen from its side: our publishers seeing its
        subscriptions is not enough (its volatile readers may match our writers a moment later and miss the
        first messages: a right image, and that stereo pair never pairs). A parameter service round trip from a
        client made after the publishers proves it, as discovery announcements arrive in order
        (:meth:`~feature_matcher_ros.ros.client.MatcherClient.wait_for_matcher`); a node without parameter
        services is waited for no longer."""
        from rcl_interfaces.srv import GetParameters

        try:
            self.call(GetParameters, f"{node}/get_parameters", GetParameters.Request(names=["use_sim_time"]),
                      timeout_s, repeat=True)
        except TimeoutError:  # ServiceUnavailable too
            pass

    def reset_node(self, service: str, timeout_s: float = 5.0) -> str:
        """Call a running node's ``~/reset`` (std_srvs/Trigger) so that it forgets keyframes and stamp
        order from an earlier replay; returns a warning, or "" when it was reset."""
        from std_srvs.srv import Trigger

        try:
            if self.call(Trigger, service, Trigger.Request(), timeout_s).success:
                return ""
        except ServiceUnavailable:
            return f"no {service} service: the node keeps its keyframe and stamp order from before"
        except TimeoutError:
            pass
        return f"{service} did not succeed"


# -- the node process -------------------------------------------------------------------------------------

def start_node(params_file: Path, namespace: str, streams: list[Stream], log_path: Path) -> NodeProcess:
    """The matcher on simulated time, its inputs remapped to the topics we publish, its output in ``log_path``."""
    remaps = [arg for s in streams for arg in ("-r", f"{s.node_input}:={s.publish_topic}")]
    return NodeProcess(params_file=params_file, params={"use_sim_time": True}, namespace=namespace,
                       extra_args=remaps, log_path=log_path)


def _log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text().strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# -- playback -------------------------------------------------------------------------------------------

def play(reader: Any, topics: bagio.BagTopics, player: Player, rate: float, total: int | None,
         progress: bool) -> tuple[dict[int, int], int, int]:
    """Publish the bag's streams (camera info, images, depth or right camera) at ``rate`` x the recorded
    pace, ``/clock`` along, after a pre-roll (:func:`pre_roll`). Returns ``(image stamp -> monotonic publish
    time ns, first log time, last log time)``."""
    store = bagio.typestore()
    published: dict[int, int] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="fm-replay", unit="frame", leave=False)
    pre_roll(reader, player)
    t0 = wall0 = None
    last_t = 0
    try:
        for conn, t, raw in bagio.raw_messages(reader, list(player.publishers)):
            if t0 is None:
                t0, wall0 = t, time.monotonic()
            _keep_pace(player, t0, wall0, t, rate)
            last_t = t
            if conn.topic == topics.image:
                try:
                    header = store.deserialize_cdr(raw, conn.msgtype).header
                except Exception as exc:  # noqa: BLE001
                    raise bagio.BagError(f"cannot decode a {conn.msgtype} message on {conn.topic}: {exc}") from None
                published[stamp_to_ns(header.stamp)] = time.monotonic_ns()
                if bar is not None:
                    bar.update(1)
            player.publishers[conn.topic].publish(bytes(raw))
    finally:
        if bar is not None:
            bar.close()
    return published, t0 or 0, last_t


def pre_roll(reader: Any, player: Player) -> None:
    """Before any image: ``/clock`` and the first message of every camera-info stream (a stereo node needs
    the right camera_info before it can use the first pair), then half a second for them to arrive."""
    infos = [s.bag_topic for s in player.streams if s.msgtype == bagio.CAMERA_INFO]
    sent: set[str] = set()
    for conn, t, raw in bagio.raw_messages(reader, infos):
        if not sent:
            player.clock(t)
        if conn.topic not in sent:
            player.publishers[conn.topic].publish(bytes(raw))
            sent.add(conn.topic)
        if len(sent) == len(infos):
            break
    time.sleep(0.5)


def _keep_pace(player: Player, t0: int, wall0: float, t: int, rate: float) -> None:
    """Wait until log time ``t`` is due (``rate`` x the recorded pace from ``t0`` at ``wall0``), ``/clock`` along."""
    target = wall0 + (t - t0) / 1e9 / rate
    while (now := time.monotonic()) < target:
        player.clock(t0 + int((now - wall0) * rate * 1e9))
        time.sleep(min(0.02, target - now))
    player.clock(t)


def drain(player: Player, published: dict[int, int], last_t: int, timeout_s: float, node: NodeProcess | None) -> None:
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
        if node is not None and not node.alive():
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


@dataclass
class BagInputs:
    """What a replay takes from the bag: the topics, the ground truth, the camera at each stamp, the
    number of images, the streams it publishes and the input mode."""

    topics: bagio.BagTopics
    ground_truth: Any
    camera_at: Callable[[int], Any]
    total: int | None
    streams: list[Stream]
    input_mode: str = "mono"


@dataclass
class LiveRun:
    """What came back: every output received, the image stamps published (-> monotonic publish ns), the
    wall time of playback and drain, and the topics the outputs were recorded from."""

    received: list[Received]
    published: dict[int, int]
    wall_s: float
    output_topics: dict[str, str]


def read_inputs(reader: Any, args: argparse.Namespace, input_mode: str = "mono") -> BagInputs:
    """Find the topics (those of ``input_mode`` too) and read the ground truth and cameras; the first image
    must decode (encoding, size) before a node is started for it."""
    topics = bagio.discover_topics(reader, args.image_topic, args.camera_info_topic, args.gt_topic,
                                   need_ground_truth=not args.gt)
    topics = bagio.discover_metric_topics(reader, topics, input_mode, args.depth_topic, args.right_image_topic,
                                          args.right_camera_info_topic)
    gt = load_ground_truth(reader, topics, args.gt, args.gt_frame)
    camera_at = bagio.camera_lookup(bagio.read_cameras(reader, topics.camera_info))
    for _ in bagio.iter_frames(reader, topics):  # preflight
        break
    types = bagio.topic_types(reader)
    streams = [Stream(topics.image, args.publish_image_topic or topics.image, topics.image_type, "image"),
               Stream(topics.camera_info, args.publish_camera_info_topic or topics.camera_info, bagio.CAMERA_INFO,
                      "camera_info")]
    streams += [Stream(topic, topic, types[topic], node_input) for node_input, topic in partner_topics(topics).items()]
    return BagInputs(topics, gt, camera_at, bagio.topic_counts(reader).get(topics.image), streams, input_mode)


def start_or_reset(player: Player, args: argparse.Namespace, params_file: Path, bag: BagInputs,
                   log_path: Path) -> NodeProcess | None:
    """Start the node; with ``--connect`` reset the running one instead (None; a warning if that fails)."""
    if not args.connect:
        return start_node(params_file, args.namespace, bag.streams, log_path)
    ns = args.node_namespace.strip("/")
    warning = player.reset_node(f"{'/' + ns if ns else ''}/{args.node_name}/reset")
    if warning:
        print(f"fm-replay: warning: {warning}", file=sys.stderr)
    return None


def wait_until_ready(player: Player, node: NodeProcess | None, args: argparse.Namespace, bag: BagInputs,
                     log_path: Path) -> None:
    """Wait for :meth:`Player.ready`; a :class:`UsageError` if the node exits or the timeout passes."""
    deadline = time.monotonic() + args.startup_timeout
    while not player.ready():
        if node is not None and not node.alive():
            raise UsageError(f"the matcher node exited with code {node.proc.returncode} before it was ready: "
                             f"{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            where = "started node" if node is not None else f"node under {args.node_namespace}"
            raise UsageError(f"the {where} did not come up within {args.startup_timeout:.0f} s "
                             f"(needs subscribers on {', '.join(s.publish_topic for s in bag.streams)} and a "
                             f"publisher of {player.output_topics['matches']})"
                             + (f": {_log_tail(log_path)}" if node is not None else ""))
        time.sleep(0.1)
    player.heard_by(_node_fqn(args, node), max(1.0, deadline - time.monotonic()))


def _node_fqn(args: argparse.Namespace, node: NodeProcess | None) -> str:
    """The matcher's fully qualified name: the started one, or the running one named by the arguments."""
    ns, name = (args.namespace, node.name) if node is not None else (args.node_namespace, args.node_name)
    return f"{'/' + ns.strip('/') if ns.strip('/') else ''}/{name}"


def run_live(reader: Any, args: argparse.Namespace, bag: BagInputs, params_file: Path, out: Path,
             mount: Any = None) -> LiveRun:
    """Play the bag to the node (started here unless ``--connect``) and record what it publishes until
    it has answered the last image or gone quiet; the node is stopped (SIGINT) afterwards. ``mount``
    (``T_base_camera``, with ``--base-frame``) is published on /tf_static for the node."""
    _dds_environment()
    frames = (args.base_frame, bagio.image_frame_id(reader, bag.topics.image), mount) if mount is not None else None
    player = Player(bag.streams, args.node_namespace if args.connect else args.namespace, frames)
    node = None
    try:
        node = start_or_reset(player, args, params_file, bag, out / "node.log")
        wait_until_ready(player, node, args, bag, out / "node.log")
        started = time.monotonic()
        published, _, last_t = play(reader, bag.topics, player, args.rate, bag.total, not args.quiet)
        drain(player, published, last_t, args.drain_timeout, node)
        wall = time.monotonic() - started
    finally:
        if node is not None:
            node.stop()  # SIGINT, a clean ROS shutdown; killed after 10 s
            node.close()
        player.close()
    return LiveRun(player.recorded(), published, wall, player.output_topics)


def live_meta(args: argparse.Namespace, bag: BagInputs, params: dict[str, Any], records: list, live: LiveRun,
              diag: dict[str, str]) -> dict[str, Any]:
    """The run's description for the report: what ran (the node's own report when it sent diagnostics,
    else what it was asked to run), what was published and dropped, speed and end-to-end latency."""
    latencies = [r.latency_ms for r in records if r.latency_ms == r.latency_ms]
    backend = diag.get("backend") or str(params.get("backend", "sift"))
    return {
        "name": f"{backend} (live)", "mode": "live", "backend": backend, **metric_meta(bag.input_mode, bag.topics),
        "device": diag.get("device") or params.get("device", "auto"),
        "precision": diag.get("precision") or params.get("precision", "fp32"),
        "bag": str(Path(args.bag)), "image_topic": bag.topics.image, "camera_info_topic": bag.topics.camera_info,
        "ground_truth": bag.ground_truth.source if bag.ground_truth is not None else None, "rate": args.rate,
        "fps": len(records) / live.wall_s if live.wall_s > 0 else None, "wall_s": live.wall_s,
        "frames_published": len(live.published), "frames_dropped": len(live.published) - len(records),
        "end_to_end_latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "end_to_end_latency_ms_p99": float(np.percentile(latencies, 99)) if latencies else None,
        "node_diagnostics_last": diag, "params_file": str(args.params or default_params_file() or ""),
    }


def replay(args: argparse.Namespace) -> int:
    """``fm-replay``: read the bag, play it live, record and score the node's outputs, print the summary."""
    if not args.rate > 0:
        raise UsageError(f"--rate must be > 0, got {args.rate}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with bagio.open_bag(args.bag) as reader:
        params_file, params = node_params_file(args, out)
        bag = read_inputs(reader, args, Pairing.from_params(params).input_mode)
        mount = base_mount(reader, args, bag.topics)
        live = run_live(reader, args, bag, params_file, out, mount)
        write_outputs_bag(live.received, live.output_topics, out / "live_outputs")
        records = records_from_live(live.received, live.published, {s: bag.camera_at(s) for s in live.published},
                                    metric=bag.input_mode != "mono")
        if not records:
            raise UsageError(f"the node answered none of the {len(live.published)} images "
                             f"(log: {out / 'node.log'}: {_log_tail(out / 'node.log')})")
        _, _, diagnostics = decode(r for r in live.received if r.output == "/diagnostics")
        meta = live_meta(args, bag, params, records, live, diagnostics_values(diagnostics))
        if mount is not None:
            meta["base_frame"] = args.base_frame

        def images_for(stamps: set[int]) -> dict[int, Any]:
            return {f.stamp_ns: f.image for f in bagio.iter_frames(reader, bag.topics, stamps=stamps)}

        metrics = score_run(records, bag.ground_truth, out, meta, images_for=images_for, pictures=args.pictures,
                            latency_label="end-to-end latency (publish → matches received)", mount=mount)
    metric_keys = tuple(key for key, _, _ in METRIC_COLUMNS) if bag.input_mode != "mono" else ()
    print(text_table([metrics], LIVE_SUMMARY_KEYS + metric_keys))
    print(f"results in {out}/ (report.md, metrics.json, plots, live_outputs/ with the node's messages)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("fm-replay", lambda: replay(args))


if __name__ == "__main__":
    sys.exit(main())
