"""How many large ``sensor_msgs/Image`` frames survive Fast DDS between two processes.

A publisher process sends real camera frames (640x480 and 1280x720 ``rgb8`` by default) at a fixed
rate with best-effort QoS; a subscriber process counts what arrives. Each configuration runs twice as
far as the middleware is concerned: once with Fast DDS's built-in transports (the default 512 KiB
shared-memory segment) and once with a transport profile loaded through
``FASTDDS_DEFAULT_PROFILES_FILE`` (``config/fastdds_large_images.xml`` by default).

Usage::

    fm-dds-loss --seconds 5 --rate 30
    fm-dds-loss --profiles default config/fastdds_large_images.xml \
        --sizes 640x480 1280x720 --json

The two helper roles (``--role pub`` / ``--role sub``) are what the driver starts; they print one JSON
line each. Both processes inherit the driver's environment, with ``FASTDDS_DEFAULT_PROFILES_FILE`` set
to the profile under test, or removed for ``default``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..resources import config_file, data_dir

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
DEFAULT_PROFILE = "fastdds_large_images.xml"


# -- frames ---------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)`` (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def real_frames(width: int, height: int, count: int = 20, folder: Path | None = None) -> list[np.ndarray]:
    """Up to ``count`` RGB frames ``(height, width, 3)`` uint8 of the TUM desk snippet, resized when needed."""
    import cv2

    from ..datasets import read_frame_list

    folder = folder or data_dir() / "tum_fr2_desk"
    frames = []
    for _, path in read_frame_list(folder / "images.txt")[:count]:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {path}")
        if bgr.shape[:2] != (height, width):
            bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    if not frames:
        raise FileNotFoundError(f"no images listed in {folder / 'images.txt'}")
    return frames


# -- the two roles --------------------------------------------------------------------------------
def _image_qos(depth: int = 5):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT)


def paced(count: int, rate: float, stop: list) -> Iterator[int]:
    """Yield ``0 .. count-1``, index i at ``start + i / rate`` (sleeping until then, never catching up in a
    burst); ends early once ``stop`` is non-empty."""
    period = 1.0 / rate
    start = time.perf_counter()
    for i in range(count):
        if stop:
            return
        wait = start + i * period - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        yield i


def _stop_flag():
    """A list that becomes truthy on SIGINT/SIGTERM (rclpy's own handlers are off in the roles)."""
    flag: list[int] = []

    def _handler(signum, _frame):
        flag.append(signum)

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    return flag


def run_subscriber(topic: str, timeout_s: float) -> dict:
    """Count images on ``topic`` until SIGINT/SIGTERM or ``timeout_s``; returns the counts."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    stop = _stop_flag()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("fm_dds_loss_sub")
    seen: set[int] = set()
    latencies: list[float] = []
    sizes: set[tuple[int, int]] = set()

    def _on_image(msg: Image) -> None:
        sent_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        latencies.append((time.time_ns() - sent_ns) / 1e6)
        seen.add(int(msg.header.frame_id.rsplit("#", 1)[-1]))
        sizes.add((msg.width, msg.height))

    node.create_subscription(Image, topic, _on_image, _image_qos())
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + timeout_s
    try:
        while not stop and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "received": len(seen),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "sizes": sorted(sizes),
    }


def run_publisher(topic: str, width: int, height: int, rate: float, seconds: float, match_timeout_s: float) -> dict:
    """Wait for a subscriber, then publish ``rate * seconds`` rgb8 frames best-effort; returns the count."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    stop = _stop_flag()
    frames = real_frames(width, height)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("fm_dds_loss_pub")
    pub = node.create_publisher(Image, topic, _image_qos())
    deadline = time.monotonic() + match_timeout_s
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline and not stop:
        rclpy.spin_once(node, timeout_sec=0.05)
    matched = pub.get_subscription_count() >= 1
    time.sleep(0.5)  # let the reader side finish matching too
    msg = Image()
    msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = height, width, "rgb8", 0, width * 3
    payloads = [f.tobytes() for f in frames]
    total = int(round(rate * seconds)) if matched else 0
    start = time.perf_counter()
    sent = 0
    for i in paced(total, rate, stop):
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        msg.header.frame_id = f"camera#{i}"
        msg.data = payloads[i % len(payloads)]
        pub.publish(msg)
        sent += 1
    elapsed = time.perf_counter() - start
    node.destroy_node()
    rclpy.try_shutdown()
    return {"sent": sent, "matched": matched, "achieved_hz": sent / elapsed if elapsed > 0 else 0.0}


def shm_segments(pid: int) -> dict[str, int]:
    """Fast DDS shared-memory segments a process has mapped: ``{"/dev/shm/fastdds_<id>": bytes}`` (Linux).

    The data segment's size shows which transport configuration the process really runs with: about
    512 KiB with the built-in one, ``segment_size`` from the profile when the profile was loaded.
    Port files (``fastdds_port*``) are left out.
    """
    sizes: dict[str, int] = {}
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or not fields[5].startswith("/dev/shm/fastdds_") or "port" in fields[5]:
                continue
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            sizes[fields[5]] = sizes.get(fields[5], 0) + hi - lo
    return sizes


# -- the driver -----------------------------------------------------------------------------------
@dataclass
class LossResult:
    profile: str
    size: str
    rate_hz: float
    sent: int
    received: int
    latency_ms_p50: float
    latency_ms_p99: float
    achieved_hz: float

    @property
    def received_fraction(self) -> float:
        return self.received / self.sent if self.sent else 0.0


def profile_env(profile: str | None, base: dict | None = None) -> dict:
    """The environment for a child process: ``profile`` in ``FASTDDS_DEFAULT_PROFILES_FILE``, or none."""
    env = dict(os.environ if base is None else base)
    env.pop(PROFILE_ENV, None)
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    if profile and profile != "default":
        path = Path(profile).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"Fast DDS profile not found: {path}")
        env[PROFILE_ENV] = str(path)
    return env


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return {}


def measure(profile: str | None, width: int, height: int, rate: float, seconds: float,
            topic: str = "/fm_dds_loss/image") -> LossResult:
    """One publisher/subscriber pair under ``profile`` (path, or ``default``/None for built-ins)."""
    env = profile_env(profile)
    me = [sys.executable, "-m", "feature_matcher_ros.measure.dds_loss"]
    sub = subprocess.Popen(me + ["--role", "sub", "--topic", topic, "--timeout", str(seconds + 30)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = sub.stdout.readline()
        if '"ready"' not in ready:
            raise RuntimeError(f"subscriber did not start: {ready}{sub.stderr.read()}")
        pub = subprocess.run(me + ["--role", "pub", "--topic", topic, "--sizes", f"{width}x{height}",
                                   "--rate", str(rate), "--seconds", str(seconds)],
                             env=env, capture_output=True, text=True, timeout=seconds + 60)
        pub_out = _last_json(pub.stdout)
        if pub.returncode != 0 or not pub_out:
            raise RuntimeError(f"publisher failed (rc {pub.returncode}): {pub.stderr[-2000:]}")
        time.sleep(1.0)  # frames still in flight
        sub.send_signal(signal.SIGINT)
        out, err = sub.communicate(timeout=20)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
    sub_out = _last_json(out)
    if not sub_out:
        raise RuntimeError(f"subscriber gave no result (rc {sub.returncode}): {err[-2000:]}")
    return LossResult(
        profile="default" if not profile or profile == "default" else str(profile),
        size=f"{width}x{height}", rate_hz=rate, sent=pub_out["sent"], received=sub_out["received"],
        latency_ms_p50=sub_out["latency_ms_p50"], latency_ms_p99=sub_out["latency_ms_p99"],
        achieved_hz=pub_out["achieved_hz"],
    )


def format_table(results: list[LossResult]) -> str:
    head = (f"{'profile':<28} {'size':>9} {'rate':>5} {'sent':>5} {'recv':>5} {'recv %':>7} "
            f"{'lat p50':>8} {'lat p99':>8}")
    rows = [head, "-" * len(head)]
    for r in results:
        name = r.profile if r.profile == "default" else Path(r.profile).name
        rows.append(f"{name:<28} {r.size:>9} {r.rate_hz:>5.0f} {r.sent:>5d} {r.received:>5d} "
                    f"{100 * r.received_fraction:>6.1f}% {r.latency_ms_p50:>6.1f}ms {r.latency_ms_p99:>6.1f}ms")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-dds-loss", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", nargs="+", default=None,
                   help=f"'default' and/or Fast DDS XML files (default: default + config/{DEFAULT_PROFILE})")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(640, 480), (1280, 720)], help="WxH frames")
    p.add_argument("--rate", type=float, default=30.0, help="publish rate in Hz (default 30)")
    p.add_argument("--seconds", type=float, default=5.0, help="publishing time per configuration (default 5)")
    p.add_argument("--topic", default="/fm_dds_loss/image")
    p.add_argument("--json", action="store_true", help="print one JSON line per configuration as well")
    p.add_argument("--role", choices=("driver", "pub", "sub"), default="driver", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        print("fm-dds-loss: --rate and --seconds must be positive", file=sys.stderr)
        return 2
    if args.role == "sub":
        print(json.dumps(run_subscriber(args.topic, args.timeout)), flush=True)
        return 0
    if args.role == "pub":
        w, h = args.sizes[0]
        print(json.dumps(run_publisher(args.topic, w, h, args.rate, args.seconds, match_timeout_s=20.0)), flush=True)
        return 0
    profiles = args.profiles or ["default", str(config_file(DEFAULT_PROFILE))]
    for prof in profiles:
        if prof != "default" and not Path(prof).is_file():
            print(f"fm-dds-loss: profile file not found: {prof}", file=sys.stderr)
            return 2
    results = []
    for prof in profiles:
        for w, h in args.sizes:
            r = measure(prof, w, h, args.rate, args.seconds, args.topic)
            results.append(r)
            if args.json:
                print(json.dumps({**asdict(r), "received_fraction": r.received_fraction}), flush=True)
    print(format_table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
