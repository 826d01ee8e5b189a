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
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from ..datasets import read_sequence
from ..geometry import rotation_error_deg
from ..resources import config_file, data_dir

NS_PER_S = 1_000_000_000


def node_command(params_file: Path, backend: str, device: str, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "feature_matcher_ros.matcher_node", "--ros-args",
        "--params-file", str(params_file),
        "-p", f"backend:={backend}", "-p", f"device:={device}", "-p", "input_qos:=reliable",
        *extra,
    ]


def stop(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT, then SIGKILL if it does not exit within ``timeout`` seconds; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fm-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=data_dir() / "tum_fr2_desk", help="sequence folder")
    parser.add_argument("--backend", default="sift")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params-file", type=Path, default=config_file("matcher.yaml"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each result")
    parser.add_argument("ros_args", nargs="*", help="extra node arguments after --, e.g. -p max_matches:=500")
    args = parser.parse_args(argv)

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    seq = read_sequence(args.data)
    frames, camera = seq.frames, seq.camera
    truth = seq.ground_truth.by_stamp() if seq.ground_truth is not None else {}
    command = node_command(args.params_file, args.backend, args.device, args.ros_args)
    print("starting:", " ".join(command), flush=True)
    process = subprocess.Popen(command)

    from ..ros.client import MatcherClient
    from ..messages import cloud_to_array, parse_keyframe_frame_id, pose_to_matrix

    client = MatcherClient(name="fm_demo")
    rows, latencies, rot_errors = [], [], []
    try:
        started = time.monotonic()
        while not client.wait_for_matcher(timeout=1.0):
            if process.poll() is not None:
                print(f"fm-demo: matcher_node exited with code {process.returncode} before it was ready",
                      file=sys.stderr)
                return 1
            if time.monotonic() - started > 120:
                print("fm-demo: matcher_node did not come up within 120 s", file=sys.stderr)
                return 1
        print(f"node ready after {time.monotonic() - started:.1f} s; playing {len(frames)} frames "
              f"from {args.data}", flush=True)
        print(f"{'stamp':>20} {'keyframe':>20} {'matches':>7} {'inliers':>7} {'rot_err':>8} "
              f"{'latency':>8}  status")
        t0 = time.monotonic()
        for stamp, path in frames:
            rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            sent = time.monotonic()
            client.send(rgb, "rgb8", stamp, camera, frame_id="camera_rgb_optical_frame")
            cloud = client.wait_result(stamp, timeout=args.timeout)
            if cloud is None:
                print(f"{stamp / NS_PER_S:20.6f}  no result within {args.timeout} s")
                continue
            latency = 1e3 * (client.arrival[stamp] - sent)
            latencies.append(latency)
            pts = cloud_to_array(cloud)
            inliers = int((pts["inlier"] > 0.5).sum()) if len(pts) else 0
            pose = client.poses.get(stamp)
            kf, err = None, float("nan")
            if pose is not None:
                kf = parse_keyframe_frame_id(pose.header.frame_id)[1]
                if kf in truth and stamp in truth:
                    T_kf_cur_gt = np.linalg.inv(truth[kf]) @ truth[stamp]
                    err = rotation_error_deg(pose_to_matrix(pose.pose.pose)[:3, :3], T_kf_cur_gt[:3, :3])
                    rot_errors.append(err)
            elif len(pts):
                kf = int(pts["kf_sec"][0]) * NS_PER_S + int(pts["kf_nanosec"][0])
            announced = {k.header.stamp.sec * NS_PER_S + k.header.stamp.nanosec for k in list(client.keyframes)}
            status = "pose" if pose is not None else "no pose"
            if stamp in announced:
                status += ", became keyframe"
                kf = stamp if kf is None else kf
            kf_text = f"{kf / NS_PER_S:20.6f}" if kf is not None else f"{'-':>20}"
            print(f"{stamp / NS_PER_S:20.6f} {kf_text} {len(pts):7d} {inliers:7d} {err:8.3f} "
                  f"{latency:7.0f}ms  {status}", flush=True)
            rows.append(stamp)
        wall = time.monotonic() - t0
        diag = client.latest_diagnostics(timeout=3.0) or {}
    finally:
        client.close()
        code = stop(process)
    if not rows:
        print("fm-demo: no result came back from matcher_node", file=sys.stderr)
        return 1
    print()
    print(f"frames: {len(rows)}/{len(frames)} answered; keyframes announced: {len(client.keyframes)}")
    if rot_errors:
        print(f"rotation error vs ground truth: median {np.median(rot_errors):.3f} deg, "
              f"max {np.max(rot_errors):.3f} deg over {len(rot_errors)} poses")
    print(f"throughput (send, wait for result, repeat): {len(rows) / wall:.2f} fps; latency median "
          f"{np.median(latencies):.0f} ms, max {np.max(latencies):.0f} ms")
    if diag:
        print(f"node diagnostics: backend {diag.get('backend')} on {diag.get('device')} ({diag.get('precision')}), "
              f"frontend time {diag.get('process_ms_mean')} ms/frame (last window), "
              f"dropped {diag.get('frames_dropped')}, rejected {diag.get('rejected_total')}")
    print(f"matcher_node exited with code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
