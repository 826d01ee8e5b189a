"""fm-gpu-check (``make gpu-check``): everything that needs CUDA, proven in one short run, one report.

    fm-gpu-check                          # on a machine with CUDA: the whole check (< 8 minutes)
    fm-gpu-check --device cpu --quick     # the CPU dry run (tiny sizes): what CI runs
    fm-gpu-check --prepare-carry .gpu_carry   # here: what a bare GPU machine needs (see below)

Sections, each timed, each failing alone (its error goes into the report, the others still run):

1. ``env``: GPU name, driver, torch / CUDA / cudnn versions, Python.
2. ``tests``: the suite's CUDA tests (``pytest -m cuda``; they skip without CUDA).
3. ``parity``: Efficient LoFTR on the device, fp32, against ``fixtures/eloftr`` with the fixture's recipe
   (reference and streaming paths, every pair and mode); fp16 and bf16 against the device's fp32
   (coarse match-set IoU, keypoint and score differences) with the tolerances in ``AGREEMENT``.
4. ``static``: Efficient LoFTR's streaming frame on the dynamic path (``eager``), the static-shape path
   (``static``) and, on CUDA, its CUDA graphs (``graph``; ``compiled``: ``torch.compile(mode=
   "reduce-overhead")`` of the static path, with ``--compile``): parity of each with the fixture in fp32,
   then ms/frame at each size in fp32 and fp16, both modes, with the ratio to eager, the matches against
   eager's and the peak GPU memory (graphs captured in the warm-up).
5. ``bench``: ``fm-bench`` (CUDA-synchronised timing) for eloftr at each size x precision x mode, and
   for sptd2 at each size x precision: pairwise and streaming frames/s, per-stage ms, peak GPU memory.
6. ``frontend``: the frontend on the bundled TUM frames with eloftr and the fixture weights, precision
   changed live fp32 -> fp16 -> bf16 mid-stream.
7. ``node``: ``matcher_node`` with eloftr on the device, over DDS (when rclpy imports), with a live
   ``precision`` change.

Writes ``report.md`` and ``report.json`` to ``--out`` (default ``$OUT`` when set, else
``out/gpu-check``). Without CUDA and without ``--device cpu`` it says so in one line and runs the CPU dry
run instead, exit code 0. Exit code 1 when a section failed or a check was outside its tolerance.

A bare GPU machine (no registry, another Python) gets what it lacks from a carry folder made here with
``--prepare-carry DIR``: a slim copy of the fixture (outputs and score summaries, not the whole stage
maps), the poselib wheel and a Fast DDS / rclpy prefix for that machine's Python (``--carry-python``),
packed as ``ros.tar.xz``. ``fm-gpu-check --carry DIR`` unpacks and uses them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("full", "opt")
PRECISIONS = ("fp32", "fp16", "bf16")
ROS_ARCHIVE = "ros.tar.xz"


@dataclass
class Section:
    name: str
    seconds: float = 0.0
    ok: bool = True
    skipped: str = ""
    error: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


@dataclass
class Plan:
    device: str
    quick: bool
    sizes: tuple[tuple[int, int], ...]
    frames: int
    weights: Path
    fixture: Path
    out: Path
    deadline: float
    precisions: tuple[str, ...] = PRECISIONS
    compile: bool = False

    @property
    def pairs(self) -> tuple[str, ...]:
        from .parity import fixture_pairs

        return ("bridge_256x320",) if self.quick else fixture_pairs(self.fixture)

    def left(self) -> float:
        return self.deadline - time.monotonic()


# -- set-up -------------------------------------------------------------------------------------------
def _shared() -> Path:
    from ..resources import shared_dir

    return shared_dir()


def _checkpoint(fixture: Path) -> Path:
    from ..resources import cache_dir
    from .parity import fixture_checkpoint

    return fixture_checkpoint(fixture, cache_dir() / "eloftr")


def _thresholds(fixture: Path) -> dict[str, float]:
    from .parity import fixture_thresholds

    return fixture_thresholds(fixture)


# -- sections -----------------------------------------------------------------------------------------
def section_env(plan: Plan, sec: Section) -> None:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": plan.device,
        "cpu_threads": torch.get_num_threads(),
    }
    if plan.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(plan.device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            info["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else "?"
    sec.data = info
    sec.lines = [f"- {k}: {v}" for k, v in info.items()]


def section_tests(plan: Plan, sec: Section) -> None:
    from ..resources import source_checkout

    checkout = source_checkout()
    if checkout is None:  # an installed package ships no tests: the other sections still check the device
        sec.skipped = "the CUDA tests live in a source checkout (test/test_cuda.py); installed packages ship none"
        return
    log = plan.out / "pytest_cuda.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           str(checkout / "test" / "test_cuda.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=checkout, timeout=max(30, plan.left()))
    log.write_text(done.stdout + done.stderr)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    sec.data = {"returncode": done.returncode, "summary": summary}
    sec.ok = done.returncode in (0, 5)  # 5: nothing collected (no test marked cuda selected)
    sec.lines = [f"`{' '.join(cmd[1:])}`: {summary} (log: pytest_cuda.log)"]


def _fixture_gray(fixture: Path, pair: str, k: int) -> np.ndarray:
    import cv2

    img = cv2.imread(str(fixture / f"{pair}_img{k}.png"), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(fixture / f"{pair}_img{k}.png")
    return img


def _eloftr(plan: Plan, precision: str = "fp32", **settings: Any):
    from ..backends.eloftr import EfficientLoFTRBackend

    return EfficientLoFTRBackend(device=plan.device, precision=precision, weights=str(plan.weights), **settings)


def section_parity(plan: Plan, sec: Section) -> None:
    import cv2

    from .parity import (
        AGREEMENT,
        agreement,
        agreement_problems,
        compare_matches,
        load_fixture_reference,
    )

    thr = _thresholds(plan.fixture)
    backends = {p: _eloftr(plan, p) for p in plan.precisions}
    sec.lines = ["| pair | mode | path | reference matches | matches | recipe |", "|---|---|---|---|---|---|"]
    agree_rows: list[str] = []
    for pair in plan.pairs:
        imgs = [_fixture_gray(plan.fixture, pair, k) for k in (0, 1)]
        for mode in MODES:
            ref = load_fixture_reference(plan.fixture, pair, mode)
            fp32 = backends["fp32"]
            for backend in backends.values():
                backend.apply({"eloftr.mode": mode, "eloftr.threshold": thr[mode]})
            streaming = fp32.match_native(*(fp32.extract_native(img) for img in imgs))
            reference = fp32.match_pair_native(*imgs, resize=False)[0]
            for path, out in (("reference", reference), ("streaming", streaming)):
                problems = compare_matches(out, ref, mode, thr[mode])
                sec.ok &= not problems
                verdict = "pass" if not problems else "FAIL: " + "; ".join(problems)
                sec.data[f"{pair}/{mode}/{path}"] = {"problems": problems, "matches": int(len(out["i_ids"]))}
                sec.lines.append(f"| {pair} | {mode} | {path} | {len(ref['i_ids'])} | {len(out['i_ids'])} | "
                                 f"{verdict} |")
            # the dry run compares precisions on half-size images, in one mode (CPU half precision is slow)
            small = [cv2.resize(i, (i.shape[1] // 2, i.shape[0] // 2), interpolation=cv2.INTER_AREA) for i in imgs]
            agree_imgs = small if plan.quick else imgs
            outs = {p: b.match_native(*(b.extract(img) for img in agree_imgs))
                    for p, b in backends.items() if not plan.quick or mode == "full"}
            for precision in [p for p in plan.precisions[1:] if p in outs]:
                a = agreement(outs["fp32"], outs[precision])
                problems = agreement_problems(a, precision)
                within = not problems
                if plan.device.startswith("cuda"):  # the tolerances are CUDA's; CPU kernels round otherwise
                    sec.ok &= within
                sec.data[f"{pair}/{mode}/{precision}_vs_fp32"] = {**a, "within_tolerance": within}
                agree_rows.append(
                    f"| {pair} | {mode} | {precision} | {int(a['ref_matches'])} / {int(a['matches'])} | "
                    f"{a['iou']:.3f} | "
                    f"{a.get('kpt1_px_median', float('nan')):.3f} / {a.get('kpt1_px_p95', float('nan')):.3f} / "
                    f"{a.get('kpt1_px_max', float('nan')):.3f} | {a.get('mconf_median', float('nan')):.2e} / "
                    f"{a.get('mconf_max', float('nan')):.2e} | {'yes' if within else 'NO: ' + '; '.join(problems)} |")
    sec.lines += ["", f"fp16 / bf16 against fp32 on {plan.device} (streaming path; tolerance "
                  f"{AGREEMENT}: match count, keypoints on common matches; the IoU is reported, no criterion with "
                  "the fixture's random weights, see parity.AGREEMENT):", "",
                  "| pair | mode | precision | matches fp32 / this | IoU | kpt1 px median / p95 / max | "
                  "mconf diff median / max | within |",
                  "|---|---|---|---|---|---|---|---|", *agree_rows]


# settings of each streaming variant of section_static
STATIC_VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {"eloftr.static": False}, "static": {"eloftr.cuda_graph": False}, "graph": {}, "compiled": {
        "eloftr.cuda_graph": False}}


def _static_backends(plan: Plan, precision: str, mode: str, thr: dict[str, float]) -> dict[str, Any]:
    """The variants this device runs, each its own backend."""
    names = ["eager", "static"]
    if plan.device.startswith("cuda"):
        names += ["graph"] + (["compiled"] if plan.compile else [])
    out = {}
    for name in names:
        b = _eloftr(plan, precision, **{"eloftr.mode": mode, "eloftr.threshold": thr[mode]}, **STATIC_VARIANTS[name])
        if name == "compiled":
            import torch

            b.model.match_static = torch.compile(b.model.match_static, mode="reduce-overhead", dynamic=False)
        out[name] = b
    return out


def _static_outputs(name: str, backend: Any, f0: Any, f1: Any) -> dict[str, Any]:
    """``match_native``-like outputs (valid matches only) of one variant."""
    if name == "eager":
        return backend.match_native(f0, f1)
    out = backend.match_static(f0, f1)
    v = out["valid"]
    return {k: out[k][v].cpu() for k in ("i_ids", "j_ids", "mconf", "mkpts0_f", "mkpts1_f")}


def _time_variant(plan: Plan, backend: Any, frames: list[np.ndarray]) -> tuple[list[float], list[int], float]:
    """ms per streaming frame (extract + match, synchronised), matches per frame, peak GPU MB (timed frames)."""
    from .bench import _Clock, _Path

    clock = _Clock(plan.device.startswith("cuda"))
    kf = backend.extract(frames[0])
    for frame in frames[1:3]:  # warm-up: cudnn's choice, graph capture, compilation
        backend.match(kf, backend.extract(frame))
    clock.take_peak(_Path())
    ms, counts = [], []
    for frame in frames[1:]:
        a = clock.now()
        counts.append(len(backend.match(kf, backend.extract(frame))))
        ms.append(1000 * (clock.now() - a))
    peak = _Path()
    clock.take_peak(peak)
    return ms, counts, peak.gpu_peak_mb


def section_static(plan: Plan, sec: Section) -> None:
    from .bench import load_frames
    from .parity import compare_matches, load_fixture_reference

    thr = _thresholds(plan.fixture)
    sec.lines = ["Parity with the fixture (fp32, the recipe of the parity section):", "",
                 "| pair | mode | path | matches | recipe |", "|---|---|---|---|---|"]
    for pair in plan.pairs:
        imgs = [_fixture_gray(plan.fixture, pair, k) for k in (0, 1)]
        for mode in MODES:
            ref = load_fixture_reference(plan.fixture, pair, mode)
            for name, b in _static_backends(plan, "fp32", mode, thr).items():
                out = _static_outputs(name, b, *(b.extract_native(i) for i in imgs))
                problems = compare_matches(out, ref, mode, thr[mode])
                sec.ok &= not problems
                sec.data[f"parity/{pair}/{mode}/{name}"] = problems
                sec.lines.append(f"| {pair} | {mode} | {name} | {len(out['i_ids'])} | "
                                 f"{'pass' if not problems else 'FAIL: ' + '; '.join(problems)} |")
    sec.lines += ["", f"Streaming frame (extract + match, synchronised), {plan.frames} frames after two warm-ups; "
                  "matches: mean per frame, and the mean |difference| from eager's on the same frames:", "",
                  "| size | precision | mode | path | ms median | ms mean | x eager | matches (diff) | peak GPU MB | "
                  "stages (ms) |", "|---|---|---|---|---|---|---|---|---|---|"]
    precisions = ("fp32",) if plan.quick else ("fp32", "fp16")
    for w, h in plan.sizes:
        frames = load_frames(None, (w, h), plan.frames)[0]
        for precision in precisions:
            for mode in ("full",) if plan.quick else MODES:
                if plan.left() < 30:
                    sec.lines.append(f"| {w}x{h} | {precision} | {mode} | skipped: time budget spent |")
                    continue
                _static_rows(plan, sec, (w, h, precision, mode), frames, thr)


def _static_rows(plan: Plan, sec: Section, key: tuple, frames: list[np.ndarray], thr: dict[str, float]) -> None:
    w, h, precision, mode = key
    eager_ms, eager_counts = None, None
    for name, b in _static_backends(plan, precision, mode, thr).items():
        try:
            ms, counts, peak = _time_variant(plan, b, frames)
        except Exception as exc:  # noqa: BLE001 - one variant failing must not hide the others
            sec.ok = False
            sec.lines.append(f"| {w}x{h} | {precision} | {mode} | {name} | error: {type(exc).__name__}: {exc} |")
            continue
        if name == "eager":
            eager_ms, eager_counts = float(np.mean(ms)), counts
        diff = float(np.mean(np.abs(np.subtract(counts, eager_counts)))) if eager_counts else float("nan")
        ratio = float(np.mean(ms)) / eager_ms if eager_ms else float("nan")
        stages = ", ".join(f"{k} {v:.1f}" for k, v in b.stage_ms.items())
        sec.data[f"{w}x{h}/{precision}/{mode}/{name}"] = {
            "ms_median": float(np.median(ms)), "ms_mean": float(np.mean(ms)), "x_eager": ratio,
            "matches": float(np.mean(counts)), "matches_diff": diff, "peak_gpu_mb": peak,
            "graphs": b.counters.get("eloftr.cuda_graphs", 0)}
        sec.lines.append(f"| {w}x{h} | {precision} | {mode} | {name} | {np.median(ms):.1f} | {np.mean(ms):.1f} | "
                         f"{ratio:.2f} | {np.mean(counts):.0f} ({diff:.1f}) | {peak:.0f} | {stages} |")


def _bench(plan: Plan, argv: list[str]) -> dict:
    from . import bench

    return bench.run(bench.build_parser().parse_args(argv))


def section_bench(plan: Plan, sec: Section) -> None:
    rows = ["| backend | size | precision | mode | pairwise fps | streaming fps | speed-up | streaming ms | "
            "stages (ms) | peak GPU MB streaming / pairwise |", "|---|---|---|---|---|---|---|---|---|---|"]
    runs = [("eloftr", w, h, p, m) for w, h in plan.sizes for p in plan.precisions for m in MODES]
    runs += [("sptd2", w, h, p, None) for w, h in plan.sizes for p in plan.precisions]
    if plan.quick:  # the dry run: each backend once, fp32 (torch's CPU half-precision kernels are slow)
        runs = [r for r in runs if r[3] == "fp32" and r[4] in ("full", None)]
    for backend, w, h, precision, mode in runs:
        if plan.left() < 20:
            rows.append(f"| {backend} | {w}x{h} | {precision} | {mode or '-'} | skipped: time budget spent |")
            sec.ok = False
            continue
        argv = ["--backend", backend, "--size", f"{w}x{h}", "--frames", str(plan.frames), "--device", plan.device,
                "--precision", precision]
        if backend == "eloftr":
            argv += ["--weights", str(plan.weights), "--mode", mode]
        try:
            r = _bench(plan, argv)
        except Exception as exc:  # noqa: BLE001 - one configuration failing must not hide the others
            sec.ok = False
            rows.append(f"| {backend} | {w}x{h} | {precision} | {mode or '-'} | error: {type(exc).__name__}: {exc} |")
            continue
        key = f"{backend}/{w}x{h}/{precision}/{mode or '-'}"
        sec.data[key] = r
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_ms"].items())
        peak = f"{r['peak_gpu_streaming_mb']:.0f} / {r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
        rows.append(f"| {backend} | {w}x{h} | {precision} | {mode or '-'} | {r['pairwise_fps']:.1f} | "
                    f"{r['streaming_fps']:.1f} | {r['speedup']:.2f}x | {r['streaming_ms_median']:.1f} | {stages} | "
                    f"{peak} |")
    sec.lines = [f"{plan.frames} frames per configuration after one warm-up, median streaming ms; "
                 "frames/s from the means.", "", *rows]


def _tum_frames(limit: int | None = None):
    """``(frames, camera)`` of the bundled TUM snippet: frames as ``(stamp_ns, rgb)``."""
    import cv2

    from ..datasets import read_sequence
    from ..resources import data_dir

    seq = read_sequence(data_dir() / "tum_fr2_desk")
    frames, camera = seq.frames, seq.camera
    frames = frames[:limit] if limit else frames
    return [(s, cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)) for s, p in frames], camera


def section_frontend(plan: Plan, sec: Section) -> None:
    from ..frontend import Frontend

    thr = _thresholds(plan.fixture)
    frames, camera = _tum_frames(6 if plan.quick else 20)
    settings = {"resize_long_edge": 160} if plan.quick else {}
    frontend = Frontend(_eloftr(plan, threshold=thr["full"]), settings)
    later = plan.precisions[1:]
    switch = {(k + 1) * len(frames) // (len(later) + 1): p for k, p in enumerate(later)}
    if plan.quick:  # the last frames only
        switch = {len(frames) - len(later) + k: p for k, p in enumerate(later)}
    sec.lines = ["| frame | precision | matches | inliers | keyframe | status | total ms | extract | match | "
                 "geometry |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
    for k, (stamp, rgb) in enumerate(frames):
        if k in switch:
            reason = frontend.update({"precision": switch[k]})
            if reason:
                raise RuntimeError(f"precision change to {switch[k]} refused: {reason}")
        t0 = time.perf_counter()
        res = frontend.process(rgb, stamp, camera)
        ms = 1000 * (time.perf_counter() - t0)
        precision = frontend.backend.precision
        t = res.timings_ms
        sec.data[str(k)] = {"precision": precision, "matches": len(res.matches), "inliers": res.num_inliers,
                            "status": res.status, "ms": ms, "new_keyframe": res.new_keyframe, "timings_ms": t}
        sec.lines.append(f"| {k} | {precision} | {len(res.matches)} | {res.num_inliers} | "
                         f"{'new' if res.new_keyframe else ''} | {res.status} | {ms:.1f} | {t.get('extract', 0):.1f} | "
                         f"{t.get('match', 0):.1f} | {t.get('geometry', 0):.1f} |")
    answered = [v for v in sec.data.values() if v["matches"] > 0 or v["new_keyframe"]]
    sec.ok = len(answered) == len(frames) and {v["precision"] for v in sec.data.values()} == set(plan.precisions)


def section_node(plan: Plan, sec: Section) -> None:
    try:
        import rclpy  # noqa: F401
    except ImportError as exc:
        sec.skipped = f"rclpy does not import here ({exc}); carry the ROS prefix (--prepare-carry)"
        return
    from ..ros.client import MatcherClient
    from ..ros.conversions import model_to_camera_info
    from ..ros.process import NodeProcess

    thr = _thresholds(plan.fixture)
    frames, camera = _tum_frames(6 if plan.quick else 12)
    params = {"backend": "eloftr", "weights": str(plan.weights), "device": plan.device, "input_qos": "reliable",
              "eloftr.threshold": thr["full"], "diagnostics_period_s": 0.2}
    if plan.quick:
        params["resize_long_edge"] = 160
    name = f"fm_gpu_check_{os.getpid()}"
    with NodeProcess(name=name, params=params) as node, MatcherClient(node=name) as client:
        if not client.wait_for_matcher(timeout=90.0):
            raise RuntimeError(f"matcher_node did not come up:\n{node.stderr[-2000:]}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # camera_info until the node has counted one
            client.pub_info.publish(model_to_camera_info(camera, 0, "camera"))
            diag = client.latest_diagnostics(timeout=1.0)
            if diag and int(diag.get("camera_info_received", 0)) > 0:
                break
        got, lat = 0, []
        for k, (stamp, rgb) in enumerate(frames):
            if k == (len(frames) - 2 if plan.quick else len(frames) // 2):
                result = client.set_parameters_atomically({"precision": plan.precisions[-1]})
                sec.data["precision_change"] = result.successful
            t0 = time.monotonic()
            client.send(rgb, "rgb8", stamp, camera, "camera_rgb_optical_frame")
            if client.wait_result(stamp, timeout=60.0) is not None:
                got += 1
                lat.append(1000 * (time.monotonic() - t0))
        diag = client.latest_diagnostics(timeout=3.0) or {}
    sec.data.update(frames=len(frames), answered=got, latency_ms_median=float(np.median(lat)) if lat else None,
                    diagnostics={k: diag.get(k)
                                 for k in ("device", "precision", "process_ms_mean", "frames_processed")})
    sec.ok = got == len(frames) and sec.data.get("precision_change", False)
    sec.lines = [f"- frames answered over DDS: {got}/{len(frames)}; send-to-matches latency median "
                 f"{sec.data['latency_ms_median'] or float('nan'):.1f} ms",
                 f"- live precision change fp32 -> {plan.precisions[-1]}: "
                 f"{'accepted' if sec.data.get('precision_change') else 'REFUSED'}",
                 f"- node diagnostics: {sec.data['diagnostics']}"]


SECTIONS: list[tuple[str, Callable[[Plan, Section], None]]] = [
    ("env", section_env), ("tests", section_tests), ("parity", section_parity), ("static", section_static),
    ("bench", section_bench),
    ("frontend", section_frontend), ("node", section_node),
]


# -- report -------------------------------------------------------------------------------------------
def write_report(plan: Plan, sections: list[Section], started: float) -> Path:
    env = next((s.data for s in sections if s.name == "env"), {})
    title = env.get("gpu") or f"{plan.device} (dry run)" if plan.quick else env.get("gpu", plan.device)
    md = [f"# fm-gpu-check: {title}", "",
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {time.monotonic() - started:.0f} s in all, device `{plan.device}`"
          f"{', quick (dry run: tiny sizes)' if plan.quick else ''}.", ""]
    for s in sections:
        state = "skipped: " + s.skipped if s.skipped else ("ok" if s.ok and not s.error else "FAILED")
        md += [f"## {s.name} ({s.seconds:.1f} s): {state}", ""]
        if s.error:
            md += ["```", s.error.strip(), "```", ""]
        md += s.lines + [""]
    (plan.out / "report.md").write_text("\n".join(md))
    (plan.out / "report.json").write_text(json.dumps(
        {s.name: {"seconds": s.seconds, "ok": s.ok, "skipped": s.skipped, "error": s.error, "data": s.data}
         for s in sections}, indent=1, default=str))
    return plan.out / "report.md"


def run_sections(plan: Plan, only: list[str] | None) -> list[Section]:
    started = time.monotonic()
    done: list[Section] = []
    for name, fn in SECTIONS:
        sec = Section(name)
        if only and name not in only:
            continue
        t0 = time.monotonic()
        if plan.left() < 10:
            sec.skipped, sec.ok = "time budget spent", False
        else:
            print(f"fm-gpu-check: {name} ...", flush=True)
            try:
                fn(plan, sec)
            except Exception:  # noqa: BLE001 - a section's failure is reported, the next one runs
                sec.ok, sec.error = False, traceback.format_exc(limit=6)
        sec.seconds = time.monotonic() - t0
        print(f"fm-gpu-check: {name} {'skipped' if sec.skipped else ('ok' if sec.ok else 'FAILED')} "
              f"({sec.seconds:.1f} s)", flush=True)
        done.append(sec)
        write_report(plan, done, started)  # a report even if a later section hangs past the limit
    return done


# -- the carry folder (bare GPU machines) ---------------------------------------------------------------
def prepare_carry(dest: Path, python: str, fixture: Path) -> None:
    """Fill ``dest`` with what a bare machine lacks: the slim fixture, poselib's wheel and a ROS prefix
    for ``python`` (``X.Y``; wheels fetched with pip for that Python)."""
    slim = dest / "shared" / "fixtures" / "eloftr"
    slim.mkdir(parents=True, exist_ok=True)
    from .parity import fixture_manifest

    manifest = fixture_manifest(fixture)
    for name in ["manifest.json", manifest["checkpoint"]["file"]] + [
        f"{p}_{suffix}" for p in manifest["pairs"] for suffix in ("img0.png", "img1.png", "full.npz", "opt.npz")
    ]:
        shutil.copy2(fixture / name, slim / name)
    for pair in manifest["pairs"]:  # the stage summaries, without the whole maps (MBs each)
        stages = np.load(fixture / f"{pair}_stages.npz")
        np.savez_compressed(slim / f"{pair}_stages.npz",
                            **{k: stages[k] for k in stages.files if stages[k].nbytes < 2**20})
    tag = python.replace(".", "")
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28, 31, 34, 35, 39)]
    wheels = dest / "whl"
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           f"--python-version={python}", "--implementation=cp", *platforms]
    from importlib.metadata import version

    subprocess.run(pip + ["-d", str(wheels), f"poselib=={version('poselib')}"], check=True)  # the one installed here
    _prepare_ros_prefix(dest, python, tag, pip)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"fm-gpu-check: carry folder {dest} ready, {size / 2**20:.1f} MiB")


def _prepare_ros_prefix(dest: Path, python: str, tag: str, pip: list[str]) -> None:
    """The ROS wheels of this venv, for ``python``, installed into one prefix and packed (``ros.tar.xz``)."""
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    ros = [line for line in freeze.splitlines() if line.startswith("ros-") and "==" in line]
    from ..resources import cache_dir

    work = cache_dir() / f"ros-carry-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "whl").mkdir(parents=True)
    subprocess.run(pip + ["-d", str(work / "whl"), *ros], check=True)
    interpreter = _interpreter(python)
    if interpreter is None:
        raise SystemExit(f"fm-gpu-check: python{python} is needed here to unpack the ROS wheels for it")
    prefix = Path("/tmp") / f"fm-ros-{tag}"  # the same absolute path on the GPU machine
    shutil.rmtree(prefix, ignore_errors=True)
    subprocess.run([interpreter, "-m", "venv", str(prefix)], check=True)
    subprocess.run([str(prefix / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-compile", *map(str, sorted((work / "whl").glob("*.whl")))], check=True)
    for bulky in ("include", "lib/cmake", "bin", f"lib/python{python}/site-packages/pip"):
        shutil.rmtree(prefix / bulky, ignore_errors=True)
    _shrink(prefix / "lib")
    subprocess.run(["tar", "cJf", str(dest / ROS_ARCHIVE), "-C", str(prefix.parent), prefix.name], check=True)


def _interpreter(python: str) -> str | None:
    """A working ``python{X.Y}`` here (on PATH, or one of pyenv's versions)."""
    candidates = [shutil.which(f"python{python}")]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{python}*/bin/python{python}"))
    for exe in filter(None, candidates):
        if subprocess.run([exe, "-c", ""], capture_output=True).returncode == 0:
            return exe
    return None


def _shrink(lib: Path) -> None:
    """Static libraries out, shared libraries stripped, identical copies in one folder made symlinks."""
    import hashlib

    seen: dict[tuple[Path, str], Path] = {}
    strip = shutil.which("strip")
    for path in sorted(lib.rglob("*"), key=lambda p: len(str(p))):
        if path.is_symlink() or not path.is_file():
            continue
        if path.suffix == ".a":
            path.unlink()
            continue
        if ".so" in path.name and strip:
            subprocess.run([strip, "--strip-unneeded", str(path)], capture_output=True)
        if path.stat().st_size < 2**17:
            continue
        key = (path.parent, hashlib.sha1(path.read_bytes()).hexdigest())
        if key in seen:
            path.unlink()
            path.symlink_to(seen[key].name)
        else:
            seen[key] = path


def carry_environment(carry: Path) -> dict[str, str] | None:
    """The environment that makes the carried packages importable (None when nothing is carried)."""
    env = dict(os.environ)
    changed = False
    site = Path("/tmp/fm-gpu-site")
    wheels = sorted((carry / "whl").glob("*.whl"))
    if wheels and not site.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, wheels)], check=True)
    paths = [str(site)] if wheels else []
    archive = carry / ROS_ARCHIVE
    if archive.is_file():
        tag = f"{sys.version_info.major}{sys.version_info.minor}"
        prefix = Path("/tmp") / f"fm-ros-{tag}"
        if not prefix.is_dir():
            subprocess.run(["tar", "xJf", str(archive), "-C", "/tmp"], check=True)
        sp = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        paths.append(str(sp))
        libs = [str(prefix / "lib")] + sorted(str(p) for p in sp.glob("ros_*.libs"))
        env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
        env["AMENT_PREFIX_PATH"] = str(prefix)
        env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"] = "1"
        env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        env.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))
        changed = True
    if (carry / "shared").is_dir():
        env["FM_SHARED"] = str((carry / "shared").resolve())
        changed = True
    if paths:
        from ..resources import package_parent

        env["PYTHONPATH"] = ":".join([str(package_parent()), *paths]
                                     + [p for p in env.get("PYTHONPATH", "").split(":") if p])
        changed = True
    return env if changed else None


# -- command line -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda; cpu = the dry run)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few frames (the CPU dry run)")
    p.add_argument("--out", type=Path, help="report folder (default: $OUT, else out/gpu-check)")
    p.add_argument("--budget-s", type=float, help="stop starting new work after this (default 420; dry run 900)")
    p.add_argument("--frames", type=int, help="frames per benchmark configuration (default 20, quick 2)")
    p.add_argument("--only", nargs="+", choices=[n for n, _ in SECTIONS], help="run only these sections")
    p.add_argument("--compile", action="store_true",
                   help="static section: also torch.compile(mode='reduce-overhead') of the static path (slow start)")
    p.add_argument("--carry", type=Path, help="folder made by --prepare-carry (on the GPU machine)")
    p.add_argument("--prepare-carry", type=Path, metavar="DIR", help="fill DIR for a bare GPU machine, then exit")
    p.add_argument("--carry-python", default="3.12", help="that machine's Python (default 3.12)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prepare_carry:
        from ..resources import shared_dir

        prepare_carry(args.prepare_carry, args.carry_python, shared_dir() / "fixtures" / "eloftr")
        return 0
    if args.carry and not os.environ.get("FM_GPU_CHECK_CARRIED"):
        env = carry_environment(args.carry)
        if env is not None:  # the dynamic loader reads LD_LIBRARY_PATH at start: start again with it
            env["FM_GPU_CHECK_CARRIED"] = "1"
            os.execve(sys.executable,
                      [sys.executable, "-m", "feature_matcher_ros.measure.gpu_check", *(argv or sys.argv[1:])], env)
    import torch

    device, quick = args.device, args.quick
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"fm-gpu-check: no CUDA device here (torch {torch.__version__}); running the CPU dry run instead")
        device, quick = "cpu", True
    out = args.out or Path(os.environ.get("OUT") or Path.cwd() / "out" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    fixture = _shared() / "fixtures" / "eloftr"
    plan = Plan(device=device, quick=quick, sizes=((160, 128),) if quick else ((640, 480), (1280, 720)),
                frames=args.frames or (2 if quick else 20), weights=_checkpoint(fixture), fixture=fixture, out=out,
                deadline=time.monotonic() + (args.budget_s or (900.0 if quick else 420.0)),
                # torch's CPU fp16 kernels are very slow: the dry run checks fp32 and bf16 there
                precisions=PRECISIONS if device != "cpu" else ("fp32", "bf16"), compile=args.compile)
    sections = run_sections(plan, args.only)
    report = plan.out / "report.md"
    failed = [s.name for s in sections if not s.ok and not s.skipped]
    print(f"fm-gpu-check: report {report}; " + (f"FAILED: {', '.join(failed)}" if failed else "all sections ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
