"""Helpers for the node tests: start ``matcher_node`` as its own process, talk to it over real DDS."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

import cv2

from feature_matcher_ros.datasets import read_sequence
from feature_matcher_ros.ros.client import MatcherClient
from feature_matcher_ros.ros.process import NodeProcess, node_command

REPO = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO / "config" / "matcher.yaml"


def load_frames(shared: Path, count: int | None = None):
    """``(frames, camera, truth)`` of the shared TUM snippet, frames as ``(stamp_ns, rgb)``."""
    seq = read_sequence(shared / "data" / "tum_fr2_desk")
    frames, camera, truth = seq.frames, seq.camera, seq.ground_truth.by_stamp()
    frames = frames[:count] if count else frames
    rgb = [(stamp, cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)) for stamp, path in frames]
    return rgb, camera, truth


@contextmanager
def running_node(log_path: Path, *overrides: str, name: str = "matcher_node", namespace: str = "",
                 compressed: bool = False, input_mode: str = "mono", env: dict | None = None):
    """``matcher_node`` started with ``--params-file config/matcher.yaml`` and ``-p`` ``overrides`` (in
    ``namespace``, so that several can run side by side; with ``env`` as its environment), plus a connected
    :class:`MatcherClient`; yields ``(the node's Popen, client)``. The node is stopped with SIGINT at the end
    (its log in ``log_path``)."""
    overrides = overrides + ((f"input_mode:={input_mode}",) if input_mode != "mono" else ())
    extra = [arg for item in overrides for arg in ("-p", item)]
    with NodeProcess(name, params_file=PARAMS_FILE, namespace=namespace, extra_args=extra,
                     log_path=log_path, env=env) as node:
        with MatcherClient(node=name, namespace=namespace, compressed=compressed, input_mode=input_mode) as client:
            if not client.wait_for_matcher(timeout=60.0):
                raise RuntimeError(f"matcher_node did not come up (exit code {node.proc.poll()}):\n" + node.stderr)
            yield node.proc, client
        code, _ = node.stop()
        if code not in (0, -2):
            print(node.stderr)


def run_cli(*overrides: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``matcher_node`` expecting it to exit by itself (start-up errors)."""
    command = node_command(params_file=PARAMS_FILE, extra_args=[arg for item in overrides for arg in ("-p", item)])
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def send_until_answered(client, rgb, first_stamp: int, camera, tries: int = 4, timeout: float = 20.0,
                        first_timeout: float | None = None) -> int | None:
    """Send ``rgb`` (frame "cam", stamps 10 ms apart) until one is answered; its stamp, or None.

    Right after start-up a first message can be lost before both sides have discovered each other (even
    with reliable QoS), and camera_info travels on its own topic: a driver resends with every image."""
    return answered_with(client, lambda stamp: client.send(rgb, "rgb8", stamp, camera, "cam"), first_stamp, tries,
                         timeout, first_timeout)


def answered_with(client, send, first_stamp: int, tries: int = 4, timeout: float = 20.0,
                  first_timeout: float | None = None, step_ns: int = 10_000_000) -> int | None:
    """``send(stamp)`` with stamps ``step_ns`` apart (0: the same stamp again) until a frame sent so far is
    answered; its stamp, or None (in rgbd/stereo an image may pair with the partner sent after it).

    What a test's first frames need: a new writer can be matched by the node's reader a moment after the
    writer matched it, and the reader misses what came before (reliable QoS too), so a first depth or right
    image can be lost and its frame never paired."""
    sent: list[int] = []
    for i in range(tries):
        sent.append(first_stamp + i * step_ns)
        send(sent[-1])
        wait = first_timeout if i == 0 and first_timeout is not None else timeout
        if client.wait_until(lambda: any(s in client.matches for s in sent), wait):
            stamp = next(s for s in sent if s in client.matches)
            client.wait_result(stamp, timeout=1.0)  # its pose and keyframe, which follow on their own topics
            return stamp
    return None
