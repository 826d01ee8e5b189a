"""``fm-demo``: start ``matcher_node`` as its own process, play the bundled TUM frames to it over DDS and
print what comes back.

Each frame (with its ``camera_info``) is published with reliable QoS and the demo waits for the frame's
``matches`` before sending the next, so nothing is dropped. Per frame it prints the stamp, the keyframe's
stamp, matches, inliers and the rotation error of ``relative_pose`` against the ground truth; then the
median rotation error, the frame rate and the latency. Exit code 1 when no result came back.

    fm-demo                       # SIFT on the CPU
    fm-demo --backend eloftr --device auto
    fm-demo -- -p max_matches:=500   # anything after -- goes to the node's --ros-args
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..datasets import read_sequence
from ..geometry import rotation_error_deg
from ..resources import config_file, data_dir
from ..ros.process import NodeProcess, node_command

if TYPE_CHECKING:  # rclpy is imported only once the demo runs
    from ..camera import CameraModel
    from ..ros.client import MatcherClient

NS_PER_S = 1_000_000_000


@dataclass
class Played:
    """What came back while playing: the stamps answered, each one's latency (ms, send -> matches), the
    rotation errors against the ground truth (deg), the wall time and the node's last diagnostics."""

    answered: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    rot_errors: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    diagnostics: dict[str, str] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fm-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=data_dir() / "tum_fr2_desk", help="sequence folder")
    parser.add_argument("--backend", default="sift")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params-file", type=Path, default=config_file("matcher.yaml"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each result")
    parser.add_argument("ros_args", nargs="*", help="extra node arguments after --, e.g. -p max_matches:=500")
    return parser


def start_node(args: argparse.Namespace) -> NodeProcess:
    """The node with reliable input (so that nothing is lost in transport), its log on this terminal."""
    command = node_command(params={"backend": args.backend, "device": args.device, "input_qos": "reliable"},
                           params_file=args.params_file, extra_args=args.ros_args)
    print("starting:", " ".join(command), flush=True)
    return NodeProcess(command=command, inherit_output=True)


def wait_ready(client: MatcherClient, node: NodeProcess, timeout_s: float = 120.0) -> float | None:
    """Seconds until the node was ready, or None (with the reason on stderr) if it exited or timed out."""
    started = time.monotonic()
    while not client.wait_for_matcher(timeout=1.0):
        if not node.alive():
            print(f"fm-demo: matcher_node exited with code {node.proc.returncode} before it was ready",
                  file=sys.stderr)
            return None
        if time.monotonic() - started > timeout_s:
            print(f"fm-demo: matcher_node did not come up within {timeout_s:.0f} s", file=sys.stderr)
            return None
    return time.monotonic() - started


def keyframe_and_error(pose: Any, stamp: int, pts: np.ndarray,
                       truth: dict[int, np.ndarray]) -> tuple[int | None, float]:
    """The keyframe stamp a frame was matched against (from its pose, else from its matches) and the
    pose's rotation error against the ground truth (nan without both)."""
    from ..messages import matches_keyframe_stamp, parse_keyframe_frame_id, pose_to_matrix

    if pose is None:
        return matches_keyframe_stamp(pts), float("nan")
    kf = parse_keyframe_frame_id(pose.header.frame_id)[1]
    if kf not in truth or stamp not in truth:
        return kf, float("nan")
    T_kf_cur_gt = np.linalg.inv(truth[kf]) @ truth[stamp]
    return kf, rotation_error_deg(pose_to_matrix(pose.pose.pose)[:3, :3], T_kf_cur_gt[:3, :3])


def frame_row(client: MatcherClient, stamp: int, cloud: Any, latency: float,
              truth: dict[int, np.ndarray]) -> tuple[str, float]:
    """The printed row of one answered frame, and its rotation error."""
    from ..messages import cloud_to_array, stamp_to_ns

    pts = cloud_to_array(cloud)
    inliers = int((pts["inlier"] > 0.5).sum()) if len(pts) else 0
    pose = client.poses.get(stamp)
    kf, err = keyframe_and_error(pose, stamp, pts, truth)
    announced = {stamp_to_ns(k.header.stamp) for k in list(client.keyframes)}
    status = "pose" if pose is not None else "no pose"
    if stamp in announced:
        status += ", became keyframe"
        kf = stamp if kf is None else kf
    kf_text = f"{kf / NS_PER_S:20.6f}" if kf is not None else f"{'-':>20}"
    return (f"{stamp / NS_PER_S:20.6f} {kf_text} {len(pts):7d} {inliers:7d} {err:8.3f} "
            f"{latency:7.0f}ms  {status}"), err


def play(client: MatcherClient, frames: list[tuple[int, Path]], camera: CameraModel,
         truth: dict[int, np.ndarray], timeout: float) -> Played:
    """Send each frame (with its camera_info) and wait for its matches before the next; a row per frame."""
    print(f"{'stamp':>20} {'keyframe':>20} {'matches':>7} {'inliers':>7} {'rot_err':>8} "
          f"{'latency':>8}  status")
    played, t0 = Played(), time.monotonic()
    for stamp, path in frames:
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        sent = time.monotonic()
        client.send(rgb, "rgb8", stamp, camera, frame_id="camera_rgb_optical_frame")
        cloud = client.wait_result(stamp, timeout=timeout)
        if cloud is None:
            print(f"{stamp / NS_PER_S:20.6f}  no result within {timeout} s")
            continue
        latency = 1e3 * (client.arrival[stamp] - sent)
        row, err = frame_row(client, stamp, cloud, latency, truth)
        print(row, flush=True)
        played.answered.append(stamp)
        played.latencies.append(latency)
        if err == err:
            played.rot_errors.append(err)
    played.wall_s = time.monotonic() - t0
    played.diagnostics = client.latest_diagnostics(timeout=3.0) or {}
    return played


def print_summary(played: Played, frames: int, keyframes: int, code: int | None) -> None:
    """Answered frames, rotation error, throughput and latency, the node's own report, its exit code."""
    print()
    print(f"frames: {len(played.answered)}/{frames} answered; keyframes announced: {keyframes}")
    if played.rot_errors:
        print(f"rotation error vs ground truth: median {np.median(played.rot_errors):.3f} deg, "
              f"max {np.max(played.rot_errors):.3f} deg over {len(played.rot_errors)} poses")
    print(f"throughput (send, wait for result, repeat): {len(played.answered) / played.wall_s:.2f} fps; latency "
          f"median {np.median(played.latencies):.0f} ms, max {np.max(played.latencies):.0f} ms")
    diag = played.diagnostics
    if diag:
        print(f"node diagnostics: backend {diag.get('backend')} on {diag.get('device')} ({diag.get('precision')}), "
              f"frontend time {diag.get('process_ms_mean')} ms/frame (last window), "
              f"dropped {diag.get('frames_dropped')}, rejected {diag.get('rejected_total')}")
    print(f"matcher_node exited with code {code if code is not None else 'none (killed after 10 s)'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    seq = read_sequence(args.data)
    frames, camera = seq.frames, seq.camera
    truth = seq.ground_truth.by_stamp() if seq.ground_truth is not None else {}
    node = start_node(args)
    from ..ros.client import MatcherClient  # after the start: the node comes up while rclpy imports

    client = MatcherClient(name="fm_demo")
    played = None
    try:
        ready_s = wait_ready(client, node)
        if ready_s is not None:
            print(f"node ready after {ready_s:.1f} s; playing {len(frames)} frames from {args.data}", flush=True)
            played = play(client, frames, camera, truth, args.timeout)
    finally:
        client.close()
        code, _ = node.stop()
        node.close()
    if played is None:
        return 1
    if not played.answered:
        print("fm-demo: no result came back from matcher_node", file=sys.stderr)
        return 1
    print_summary(played, len(frames), len(client.keyframes), code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
