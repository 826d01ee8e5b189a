"""fm-stress: the matcher node under overload and over time, measured from outside.

Starts the real node process (``python -m feature_matcher_ros.matcher_node --ros-args --params-file
config/matcher.yaml ...``), a camera publisher process sending real TUM desk frames (resized for
1280x720) faster than the node can match them, and watches what comes out: processed rate, end-to-end
latency (image stamp -> output received), frames dropped by the node (read from ``/diagnostics``) and
the node's resident memory (psutil).

Usage::

    fm-stress                                   # 30 and 60 Hz x 640x480 and 1280x720, 10 s each
    fm-stress --rates 30 --sizes 640x480 --seconds 20 -p backend:=sift
    fm-stress --soak 300                        # one 5-minute run at 30 Hz 640x480, a row per window
    fm-stress --profile default                 # Fast DDS's built-in transports (large frames are lost)
    fm-stress --chaos 120                       # disorder in mono, rgbd and stereo, 2 minutes each
                                                # (episodes and checks: feature_matcher_ros/measure/chaos.py)

Every child (node and publisher) gets ``FASTDDS_DEFAULT_PROFILES_FILE`` set to ``--profile``
(``config/fastdds_large_images.xml`` by default; ``default`` removes it).

The node runs as a :class:`~feature_matcher_ros.ros.process.NodeProcess` and is watched by a
:class:`~feature_matcher_ros.ros.monitor.Monitor`; :func:`run_scenario` and the camera are used by the
robustness and shutdown tests too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..resources import config_file, data_dir
from ..ros.monitor import Monitor
from ..ros.process import NodeProcess
from .burn import burning
from .dds_loss import DEFAULT_PROFILE, paced, parse_size, profile_env, real_frames


# -- the camera -----------------------------------------------------------------------------------
def run_camera(image_topic: str, info_topic: str, width: int, height: int, rate: float, seconds: float,
               reliable: bool, frame_id: str = "camera") -> dict:
    """Publish real frames (rgb8) and their camera_info at ``rate`` for ``seconds``; stamps are wall
    time at publication. Returns ``{"sent": n, "achieved_hz": f, "first_stamp_ns": s}``."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CameraInfo, Image

    from ..camera import CameraModel
    from ..ros.conversions import model_to_camera_info
    from ..ros.qos import input_qos

    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    frames = real_frames(width, height)
    camera = CameraModel.from_yaml(data_dir() / "tum_fr2_desk" / "intrinsics.yaml")
    if (camera.width, camera.height) != (width, height):
        camera = camera.scaled(width, height)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"fm_stress_camera_{os.getpid()}")
    qos = input_qos("reliable" if reliable else "sensor_data")  # keep last 5, reliable or best effort
    pub = node.create_publisher(Image, image_topic, qos)
    info_pub = node.create_publisher(CameraInfo, info_topic, qos)
    deadline = time.monotonic() + 20.0
    while (pub.get_subscription_count() < 1 or info_pub.get_subscription_count() < 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    img = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3)
    img.header.frame_id = frame_id
    info = model_to_camera_info(camera, 0, frame_id)
    payloads = [f.tobytes() for f in frames]
    sent, first = 0, 0
    start = time.perf_counter()
    for i in paced(int(round(rate * seconds)), rate, stop):
        stamp = time.time_ns()
        if not first:
            first = stamp
            print(json.dumps({"started": first}), flush=True)
        sec, nsec = divmod(stamp, 1_000_000_000)
        info.header.stamp.sec, info.header.stamp.nanosec = sec, nsec
        img.header.stamp.sec, img.header.stamp.nanosec = sec, nsec
        img.data = payloads[i % len(payloads)]
        info_pub.publish(info)
        pub.publish(img)
        sent += 1
    elapsed = time.perf_counter() - start
    time.sleep(0.2)
    node.destroy_node()
    rclpy.try_shutdown()
    return {"sent": sent, "achieved_hz": sent / elapsed if elapsed > 0 else 0.0, "first_stamp_ns": first}


def start_camera(image_topic: str, info_topic: str, width: int, height: int, rate: float, seconds: float,
                 reliable: bool, env: dict | None = None) -> subprocess.Popen:
    """:func:`run_camera` in a child process (its own GIL); its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "feature_matcher_ros.measure.stress", "--role", "camera",
           "--image-topic", image_topic, "--info-topic", info_topic, "--sizes", f"{width}x{height}",
           "--rates", str(rate), "--seconds", str(seconds)] + (["--reliable"] if reliable else [])
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- one scenario ---------------------------------------------------------------------------------
@dataclass
class Window:
    """Numbers over one stretch of time (the whole run, or one soak window); ``rss_mb`` is the median of
    the node's RSS samples (every 0.25 s) in the window."""

    t_start_s: float
    t_end_s: float
    processed: int
    processed_hz: float
    latency_ms_p50: float
    latency_ms_p99: float
    rss_mb: float


@dataclass
class ScenarioResult:
    """One scenario. ``sent`` and the ``node_*`` counters (from /diagnostics) cover the whole run,
    warm-up included; rates, latency and windows cover the measured time after the warm-up."""

    size: str
    input_hz: float
    sent: int
    achieved_hz: float
    node_received: int
    node_processed: int
    node_dropped: int
    node_rejected: int
    processed_hz: float
    drop_pct: float
    latency_ms_p50: float
    latency_ms_p99: float
    rss_start_mb: float
    rss_end_mb: float
    windows: list[Window]
    node_alive: bool
    outputs: list[str]


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    arr = np.asarray(values)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def _int(values: dict, key: str) -> int:
    try:
        return int(float(values.get(key, "nan")))
    except ValueError:
        return -1


@dataclass
class _Run:
    """One scenario while it runs: what it measures and what was sampled so far (times in seconds since
    the camera's first frame, ``t0`` on the monotonic clock, ``t0_ns`` that frame's stamp)."""

    width: int
    height: int
    rate: float
    warmup_s: float
    total_s: float
    window_s: float
    t0: float = 0.0
    t0_ns: int = 0
    outputs: list[str] = field(default_factory=list)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    rss_start: float = float("nan")
    windows: list[Window] = field(default_factory=list)


def run_scenario(node: NodeProcess, monitor: Monitor, width: int, height: int, rate: float, seconds: float,
                 warmup_s: float = 3.0, window_s: float | None = None, env: dict | None = None,
                 log=None) -> ScenarioResult:
    """Publish at ``rate`` for ``warmup_s + seconds`` and measure the last ``seconds``.

    ``window_s`` splits the measured time into windows (soak), each with its own latency percentiles
    and median RSS. The node must be up (``monitor.wait_for_node``). If the node dies, the camera is
    stopped and the result says ``node_alive=False``.
    """
    run = _Run(width, height, rate, warmup_s, warmup_s + seconds, window_s or seconds)
    cam = _start_clocked_camera(node, monitor, run, env)
    _sample_while_publishing(node, monitor, cam, run, log)
    cam_result = _camera_result(cam)
    time.sleep(1.5)  # last outputs and a diagnostics period
    if len(run.windows) * run.window_s < seconds - 1e-3:  # the rest of the measured time, unlogged
        _close_window(monitor, run, warmup_s + len(run.windows) * run.window_s, run.total_s)
    return _scenario_result(node, monitor, run, cam_result)


def _start_clocked_camera(node: NodeProcess, monitor: Monitor, run: _Run, env: dict | None) -> subprocess.Popen:
    """Watch the node's outputs, then start the camera on the node's own input topics (and QoS); the
    clock of ``run`` starts with the camera's first frame."""
    images, infos = monitor.image_topics(), monitor.info_topics()
    if not images or not infos:
        raise RuntimeError(f"node {node.name} subscribes to no image/camera_info topic: {monitor.subscriptions()}")
    reliable = monitor.input_reliable(images[0])
    run.outputs = monitor.watch_outputs()
    cam = start_camera(images[0], infos[0], run.width, run.height, run.rate, run.total_s, reliable, env)
    started = cam.stdout.readline()
    if '"started"' not in started:
        cam.kill()
        raise RuntimeError(f"camera publisher did not start: {started}{cam.communicate()[1][-2000:]}")
    run.t0, run.t0_ns = time.monotonic(), json.loads(started)["started"]
    return cam


def _sample_while_publishing(node: NodeProcess, monitor: Monitor, cam: subprocess.Popen, run: _Run,
                             log=None) -> None:
    """Every 0.25 s until the camera ends: sample the node's RSS and close each window that is over;
    stop the camera early if the node dies."""
    next_window = run.warmup_s + run.window_s
    while cam.poll() is None:
        elapsed = time.monotonic() - run.t0
        run.rss_samples.append((elapsed, node.rss_mb()))
        if elapsed >= run.warmup_s and run.rss_start != run.rss_start:  # still nan
            run.rss_start = node.rss_mb()
        if elapsed >= next_window - 1e-3:
            _close_window(monitor, run, next_window - run.window_s, next_window, log)
            next_window += run.window_s
        if not node.alive():
            break
        time.sleep(0.25)
    if cam.poll() is None:  # the node died: stop the camera early
        cam.send_signal(signal.SIGINT)


def _close_window(monitor: Monitor, run: _Run, start_s: float, end_s: float, log=None) -> None:
    """Add the window ``[start_s, end_s)`` to ``run`` (and print its row with ``log``)."""
    w = _window(monitor, run.t0_ns, start_s, end_s, _median_rss(run.rss_samples, start_s, end_s))
    run.windows.append(w)
    if log:
        log(f"  t={w.t_end_s:6.0f}s processed {w.processed_hz:5.1f} Hz  latency p50 {w.latency_ms_p50:7.1f} ms"
            f"  p99 {w.latency_ms_p99:7.1f} ms  RSS {w.rss_mb:7.1f} MiB")


def _camera_result(cam: subprocess.Popen) -> dict:
    """The camera's JSON result (its last JSON line on stdout), once it has exited."""
    out, err = cam.communicate(timeout=30)
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"camera publisher failed: {err[-2000:]}")


def _scenario_result(node: NodeProcess, monitor: Monitor, run: _Run, cam_result: dict) -> ScenarioResult:
    """Rates and latency over the measured time; counters over the whole run (warm-up included), from
    the node's last report after the camera stopped."""
    whole = _window(monitor, run.t0_ns, run.warmup_s, run.total_s, node.rss_mb())
    diag = monitor.snapshot().diagnostics
    received, processed = _int(diag, "frames_received"), _int(diag, "frames_processed")
    dropped, rejected = _int(diag, "frames_dropped"), _int(diag, "rejected_total")
    return ScenarioResult(
        size=f"{run.width}x{run.height}", input_hz=run.rate, sent=cam_result["sent"],
        achieved_hz=cam_result["achieved_hz"], node_received=received, node_processed=processed,
        node_dropped=dropped, node_rejected=rejected, processed_hz=whole.processed_hz,
        drop_pct=100.0 * dropped / received if received > 0 else float("nan"),
        latency_ms_p50=whole.latency_ms_p50, latency_ms_p99=whole.latency_ms_p99,
        rss_start_mb=run.rss_start, rss_end_mb=node.rss_mb(), windows=run.windows, node_alive=node.alive(),
        outputs=run.outputs,
    )


def _median_rss(samples: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    """Median RSS (MiB) of the samples taken in ``[start_s, end_s]``: steadier than one sample, as the
    allocator hands memory back and forth by 10-20 MiB within seconds."""
    values = [rss for t, rss in samples if start_s <= t <= end_s and rss == rss]
    return float(np.median(values)) if values else float("nan")


def _window(monitor: Monitor, t0_ns: int, start_s: float, end_s: float, rss: float) -> Window:
    outputs = monitor.snapshot().outputs
    lo, hi = t0_ns + int(start_s * 1e9), t0_ns + int(end_s * 1e9)
    lat = [(arrival - stamp) / 1e6 for stamp, arrival in outputs.items() if lo <= stamp < hi]
    p50, p99 = _percentiles(lat)
    span = max(end_s - start_s, 1e-6)
    return Window(start_s, end_s, len(lat), len(lat) / span, p50, p99, rss)


# -- table ----------------------------------------------------------------------------------------
def format_table(results: list[ScenarioResult]) -> str:
    head = (f"{'size':>9} {'input':>7} {'sent':>5} {'node rx':>7} {'processed':>9} {'proc Hz':>7} {'drop %':>6} "
            f"{'lat p50':>9} {'lat p99':>9} {'RSS start':>10} {'RSS end':>9}")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.size:>9} {r.input_hz:>5.0f}Hz {r.sent:>5d} {r.node_received:>7d} {r.node_processed:>9d} "
            f"{r.processed_hz:>7.1f} {r.drop_pct:>6.1f} {r.latency_ms_p50:>7.0f}ms {r.latency_ms_p99:>7.0f}ms "
            f"{r.rss_start_mb:>7.0f}MiB {r.rss_end_mb:>6.0f}MiB" + ("" if r.node_alive else "  NODE EXITED")
        )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-stress", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", nargs="+", type=float, default=[30.0, 60.0], help="camera rates in Hz (default 30 60)")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(640, 480), (1280, 720)],
                   help="frame sizes WxH (default 640x480 1280x720)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario (default 10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds published before measuring (default 3)")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="one long run (first rate and size) reported per --window, e.g. --soak 300")
    p.add_argument("--window", type=float, default=30.0, help="soak report window in seconds (default 30)")
    p.add_argument("--params-file", default=str(config_file("matcher.yaml")), help="node params file")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="node parameter override (repeatable), e.g. -p backend:=sift")
    p.add_argument("--profile", default=str(config_file(DEFAULT_PROFILE)),
                   help="Fast DDS profile for node and camera ('default' = Fast DDS built-ins)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the node")
    p.add_argument("--burn", type=int, default=0, metavar="N",
                   help="keep N cores busy with burner processes during the scenarios (a loaded robot CPU)")
    p.add_argument("--json", action="store_true", help="also print one JSON line per scenario")
    p.add_argument("--chaos", type=float, default=None, metavar="SECONDS",
                   help="instead of the load scenarios: disorder for SECONDS per input mode (0 = one round of "
                        "episodes); exit code 1 when a check fails")
    p.add_argument("--chaos-modes", nargs="+", choices=("mono", "rgbd", "stereo"), default=["mono", "rgbd", "stereo"],
                   help="input modes of --chaos (default all three)")
    p.add_argument("--data", default=None, help="folder of the shared datasets for --chaos rgbd/stereo "
                                                "(default $FM_SHARED/data or ../shared/data)")
    p.add_argument("--role", choices=("driver", "camera"), default="driver", help=argparse.SUPPRESS)
    p.add_argument("--image-topic", default="image", help=argparse.SUPPRESS)
    p.add_argument("--info-topic", default="camera_info", help=argparse.SUPPRESS)
    p.add_argument("--reliable", action="store_true", help=argparse.SUPPRESS)
    return p


def _parse_overrides(items: list[str]) -> dict[str, object]:
    import yaml

    out = {}
    for item in items:
        if ":=" not in item:
            raise ValueError(f"-p expects NAME:=VALUE, got {item!r}")
        key, value = item.split(":=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _run_scenarios(args: argparse.Namespace, scenarios: list, seconds: float, overrides: dict,
                   env: dict) -> tuple[list[ScenarioResult] | None, bool]:
    """Each scenario against a fresh node: ``(results, any failed)``; ``(None, True)`` when a node never came up."""
    results: list[ScenarioResult] = []
    failed = False
    for i, (rate, (w, h)) in enumerate(scenarios):
        name = f"fm_stress_{os.getpid()}_{i}"
        with NodeProcess(name, overrides, args.params_file, env) as node:
            with Monitor(name) as monitor:
                if not monitor.wait_for_node(args.startup_timeout, node):
                    print(f"fm-stress: node did not come up (exit code {node.proc.poll()}):\n{node.stderr[-3000:]}",
                          file=sys.stderr)
                    return None, True
                print(f"{w}x{h} at {rate:.0f} Hz: node up (RSS {node.rss_mb():.0f} MiB), measuring {seconds:.0f} s",
                      flush=True)
                r = run_scenario(node, monitor, w, h, rate, seconds, args.warmup,
                                 window_s=args.window if args.soak else None, env=env,
                                 log=(lambda s: print(s, flush=True)) if args.soak else None)
            rc, took = node.stop(signal.SIGINT)
            if not r.node_alive or rc not in (0, -signal.SIGINT):
                failed = True
                print(f"fm-stress: node exit code {rc}:\n{node.stderr[-3000:]}", file=sys.stderr)
        results.append(r)
        if args.json:
            print(json.dumps(asdict(r)), flush=True)
    return results, failed


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role == "camera":
        (w, h), rate = args.sizes[0], args.rates[0]
        print(json.dumps(run_camera(args.image_topic, args.info_topic, w, h, rate, args.seconds, args.reliable)),
              flush=True)
        return 0
    if min(args.rates) <= 0 or args.seconds <= 0 or args.warmup < 0:
        print("fm-stress: --rates and --seconds must be positive, --warmup not negative", file=sys.stderr)
        return 2
    try:
        overrides = _parse_overrides(args.param)
        env = profile_env(args.profile)
    except (ValueError, FileNotFoundError) as err:
        print(f"fm-stress: {err}", file=sys.stderr)
        return 2
    if not Path(args.params_file).is_file():
        print(f"fm-stress: params file not found: {args.params_file}", file=sys.stderr)
        return 2
    os.environ.clear()  # this process (the monitor) runs with the same transports as its children
    os.environ.update(env)
    if args.chaos is not None:
        from . import chaos

        with burning(args.burn):
            results = chaos.run(args.chaos_modes, args.chaos, overrides, env,
                                Path(args.data) if args.data else None, log=lambda s: print(s, flush=True))
        return 1 if any(r.problems for r in results) else 0
    scenarios = [(args.rates[0], args.sizes[0])] if args.soak else [(r, s) for s in args.sizes for r in args.rates]
    seconds = args.soak or args.seconds
    print(f"fm-stress: profile {Path(args.profile).name}, params {args.params_file} {overrides or ''}, "
          f"{len(scenarios)} scenario(s) of {seconds:.0f} s (+{args.warmup:.0f} s warm-up)", flush=True)
    with burning(args.burn):
        results, failed = _run_scenarios(args, scenarios, seconds, overrides, env)
    if results is None:
        return 1
    print(format_table(results), flush=True)
    if args.soak and results and results[0].windows:
        ws = results[0].windows
        print(f"soak: RSS {ws[0].rss_mb:.0f} -> {ws[-1].rss_mb:.0f} MiB; latency p99 first window "
              f"{ws[0].latency_ms_p99:.0f} ms, last window {ws[-1].latency_ms_p99:.0f} ms", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
