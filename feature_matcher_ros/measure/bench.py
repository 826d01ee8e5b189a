"""fm-bench: frames per second of a backend, pairwise vs streaming against a keyframe, in one run.

    fm-bench --backend eloftr --weights FILE --size 640x480 --frames 10 [--device cpu|cuda]
             [--precision fp32|fp16|bf16] [--mode full|opt] [--threshold T] [--threads N]
             [--images DIR] [--uncached] [--dynamic] [--runtime onnxruntime [--onnx DIR]] [--json]

Frames come from ``--images DIR`` (sorted png/jpg), else ``$FM_SHARED/data/tum_fr2_desk`` (or
``../shared`` beside the checkout), else the bundled ``data/tum_fr2_desk``; they are converted to gray
and resized to ``--size``. Frame 0 is the keyframe; frames 1..N (cycling) are matched against it:

* pairwise: ``match_pair(keyframe, frame)``, nothing cached (for eloftr: the faithful reference path,
  the official computation: both images through every stage, the whole confidence matrix, the whole-map
  fine FPN and every window unfolded);
* streaming: the keyframe's features extracted once, then ``match(kf, extract(frame))`` per frame;
* with ``--uncached``: also ``match(extract(keyframe), extract(frame))`` per frame, the streaming
  path's stages with nothing cached.

Beside the streaming path, in the same run and on the same frames (eloftr): ``--dynamic`` times the
dynamic streaming path (``eloftr.static: false``, the path before fixed shapes), ``--runtime onnxruntime``
the onnxruntime streaming frame on an fm-export folder (``--onnx DIR``, else an export made at ``--size``
into a temporary folder first). Each reports ms/frame, matches/frame and its ratio to the streaming path.

After one untimed warm-up of each, the two paths alternate frame by frame (so that both see the same
load on a shared machine).

Reported: frames/s of both, per-stage milliseconds (mean per frame), mean match count, peak RSS
(process-wide ``ru_maxrss``; after the streaming warm-up, before any pairwise call, and at the end), peak GPU
memory on CUDA over the timed frames of each path (after the warm-ups, which include cudnn's autotuning),
and what streaming holds between frames (one keyframe's features,
the backend's reused scratch buffers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 640x480, not {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"--size must be positive, got {text!r}")
    return w, h


def default_image_dirs() -> list[Path]:
    from ..resources import data_dir, shared_dir

    return [shared_dir() / "data" / "tum_fr2_desk" / "images", data_dir() / "tum_fr2_desk" / "images"]


def load_frames(folder: Path | None, size: tuple[int, int], count: int) -> tuple[list[np.ndarray], Path]:
    """``count + 1`` gray uint8 frames of ``size`` (W, H): the keyframe and ``count`` frames (cycling)."""
    import cv2

    folders = [folder] if folder is not None else default_image_dirs()
    for candidate in folders:
        files = sorted(p for p in Path(candidate).glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if files:
            break
    else:
        raise SystemExit(f"fm-bench: no png/jpg images in {', '.join(str(f) for f in folders)}")
    frames = []
    for k in range(count + 1):
        path = files[k % len(files)] if k < len(files) else files[1 + (k - 1) % max(1, len(files) - 1)]
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise SystemExit(f"fm-bench: cannot read image {path}")
        frames.append(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
    return frames, Path(candidate)


def _stage_ms(backend, fallback: dict[str, float]) -> dict[str, float]:
    return backend.stage_ms or dict(fallback)


@dataclass
class _Path:
    """What one path (streaming, pairwise, uncached) measured over the timed frames."""

    ms: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    gpu_peak_mb: float = 0.0

    def add(self, ms: float, count: int, stages: dict[str, float]) -> None:
        self.ms.append(ms)
        self.counts.append(count)
        for k, v in stages.items():
            self.stages[k] = self.stages.get(k, 0.0) + v


class _Clock:
    """Wall-clock milliseconds that include the device's queued work (CUDA-synchronised), and GPU peaks."""

    def __init__(self, cuda: bool) -> None:
        import torch

        self.torch, self.cuda = torch, cuda
        if cuda:  # peaks of this run only (several runs may share a process: fm-gpu-check)
            torch.cuda.reset_peak_memory_stats()

    def now(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
        return time.perf_counter()

    def take_peak(self, path: _Path) -> None:
        """The GPU peak since the last call goes to ``path``."""
        if self.cuda:
            path.gpu_peak_mb = max(path.gpu_peak_mb, self.torch.cuda.max_memory_allocated() / 2**20)
            self.torch.cuda.reset_peak_memory_stats()


def _make_backend(args: argparse.Namespace):
    import torch

    from ..backends import create_backend

    if args.threads:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    settings = {}
    if args.backend == "eloftr":
        if args.mode:
            settings["eloftr.mode"] = args.mode
        if args.threshold is not None:
            settings["eloftr.threshold"] = args.threshold
    elif args.mode or args.threshold is not None:
        raise SystemExit("fm-bench: --mode/--threshold apply to --backend eloftr only")
    return create_backend(args.backend, device=args.device, precision=args.precision, weights=args.weights, **settings)


def _time_frame(backend, kf, keyframe, frame, clock: _Clock, paths: dict[str, _Path], args) -> None:
    """One frame through each path, streaming first (the two alternate, so both see the same load)."""
    a = clock.now()
    feats = backend.extract(frame)
    b = clock.now()
    extract_stages = _stage_ms(backend, {"extract": 1000 * (b - a)})
    matches = backend.match(kf, feats)
    c = clock.now()
    paths["streaming"].add(1000 * (c - a), len(matches),
                           {**extract_stages, **_stage_ms(backend, {"match": 1000 * (c - b)})})
    clock.take_peak(paths["streaming"])
    a = clock.now()
    matches = backend.match_pair(keyframe, frame)
    elapsed = 1000 * (clock.now() - a)
    paths["pairwise"].add(elapsed, len(matches),
                          _stage_ms(backend, {}) if args.backend == "eloftr" else {"match_pair": elapsed})
    clock.take_peak(paths["pairwise"])
    if args.uncached:  # the streaming path with nothing cached: both images extracted every frame
        a = clock.now()
        backend.match(backend.extract(keyframe), backend.extract(frame))
        paths["uncached"].add(1000 * (clock.now() - a), 0, {})


def run(args: argparse.Namespace) -> dict:
    """Warm both paths up, then time them frame by frame (see the module docstring); one result dict."""
    backend = _make_backend(args)
    frames, source = load_frames(Path(args.images) if args.images else None, args.size, args.frames)
    keyframe, rest = frames[0], frames[1:]
    clock = _Clock(str(backend.device).startswith("cuda"))
    # warm-up: streaming first, so that its peak RSS is known before the heavier pairwise path runs
    kf = backend.extract(keyframe)
    backend.match(kf, backend.extract(rest[0]))
    peak_stream = _peak_rss_mb()
    backend.match_pair(keyframe, rest[0])
    # GPU peaks of the timed frames only: the warm-ups include cudnn's autotuning, whose trial
    # algorithms may ask for GBs of workspace once (fp32 at 1280x720: ~33 GB on an H200)
    clock.take_peak(_Path())
    paths = {name: _Path() for name in ("streaming", "pairwise", "uncached")}
    variants = _variants(args, backend, keyframe, rest[0])
    for frame in rest:
        _time_frame(backend, kf, keyframe, frame, clock, paths, args)
        for name, (other, other_kf) in variants.items():
            a = clock.now()
            matches = other.match(other_kf, other.extract(frame))
            paths.setdefault(name, _Path()).add(1000 * (clock.now() - a), len(matches), other.stage_ms)
    result = _result(args, backend, source, paths, len(rest))
    result["variants"] = {name: _variant_result(paths[name], paths["streaming"]) for name in variants}
    result.update(peak_rss_streaming_mb=peak_stream, peak_rss_mb=_peak_rss_mb(),
                  keyframe_mb=kf.nbytes / 2**20,  # one cached keyframe's features
                  scratch_mb=backend.scratch_nbytes / 2**20)  # buffers reused between frames
    if clock.cuda:
        result["peak_gpu_streaming_mb"] = paths["streaming"].gpu_peak_mb
        result["peak_gpu_mb"] = max(paths["streaming"].gpu_peak_mb, paths["pairwise"].gpu_peak_mb)
    return result


def _variants(args: argparse.Namespace, backend, keyframe: np.ndarray, frame: np.ndarray) -> dict[str, tuple]:
    """The other streaming paths to time beside this one: name -> (backend, its keyframe features), warm."""
    from ..backends import create_backend

    if (args.dynamic or args.runtime != "torch") and args.backend != "eloftr":
        raise ValueError("--dynamic and --runtime onnxruntime compare eloftr paths (--backend eloftr)")
    settings = {k: v for k, v in backend.settings.items() if k in ("eloftr.mode", "eloftr.threshold")}
    out = {}
    if args.dynamic:
        out["dynamic"] = create_backend("eloftr", device=args.device, precision=args.precision, weights=args.weights,
                                        **settings, **{"eloftr.static": False})
    if args.runtime == "onnxruntime":
        folder = args.onnx or _export_for_bench(args, backend.model)
        out["onnxruntime"] = create_backend("eloftr", device=args.device, precision=args.precision, weights=folder,
                                            runtime="onnxruntime", num_threads=args.threads or None, **settings)
    warm = {}
    for name, other in out.items():
        other_kf = other.extract(keyframe)
        other.match(other_kf, other.extract(frame))
        warm[name] = (other, other_kf)
    return warm


def _export_for_bench(args: argparse.Namespace, model) -> str:
    """An export of the benchmarked ``model`` (already in ``--precision``) at ``--size``, in a temporary folder."""
    import tempfile

    from ..backends.eloftr.onnx_export import ExportSpec, export_eloftr

    folder = tempfile.mkdtemp(prefix="fm-bench-onnx-")
    export_eloftr(model, folder, ExportSpec(tuple(args.size), modes=(args.mode or "full",), precision=args.precision,
                                            weights=args.weights))
    return folder


def _variant_result(path: _Path, streaming: _Path) -> dict:
    ratio = float(np.mean(path.ms) / np.mean(streaming.ms))
    return {"ms_per_frame": float(np.mean(path.ms)), "ms_median": float(np.median(path.ms)),
            "matches": float(np.mean(path.counts)), "ratio_to_streaming": ratio,
            "stage_ms": {k: v / len(path.ms) for k, v in path.stages.items()}}


def _result(args: argparse.Namespace, backend, source: Path, paths: dict[str, _Path], n: int) -> dict:
    import torch

    stream, pair, uncached = paths["streaming"], paths["pairwise"], paths["uncached"]
    stream_s, pair_s = sum(stream.ms) / 1000, sum(pair.ms) / 1000
    result = {
        "backend": args.backend, "device": str(backend.device), "precision": backend.precision,
        "settings": {k: v for k, v in backend.describe().items() if "." in k},
        "size": f"{args.size[0]}x{args.size[1]}", "frames": n, "images": str(source),
        "threads": torch.get_num_threads(), "burn": getattr(args, "burn", 0),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
        "pairwise_fps": n / pair_s, "streaming_fps": n / stream_s, "speedup": pair_s / stream_s,
        "pairwise_ms_per_frame": 1000 * pair_s / n, "streaming_ms_per_frame": 1000 * stream_s / n,
        "pairwise_ms_median": float(np.median(pair.ms)), "streaming_ms_median": float(np.median(stream.ms)),
        "stage_ms": {k: v / n for k, v in stream.stages.items()},
        "pairwise_stage_ms": {k: v / n for k, v in pair.stages.items()},
        "matches_streaming": float(np.mean(stream.counts)), "matches_pairwise": float(np.mean(pair.counts)),
    }
    if uncached.ms:
        result["uncached_fps"] = n / (sum(uncached.ms) / 1000)
        result["uncached_ms_per_frame"] = sum(uncached.ms) / n
    return result


def _print_human(r: dict) -> None:
    load = f", {r['burn']} cores kept busy" if r.get("burn") else ""
    print(f"fm-bench {r['backend']} on {r['device']} ({r['precision']}, {r['threads']} threads{load}), {r['size']}, "
          f"{r['frames']} frames from {r['images']}")
    if r["settings"]:
        print("  settings: " + ", ".join(f"{k}={v}" for k, v in r["settings"].items()))
    print(f"  pairwise : {r['pairwise_fps']:.3f} frames/s ({r['pairwise_ms_per_frame']:.0f} ms/frame mean, "
          f"{r['pairwise_ms_median']:.0f} median), {r['matches_pairwise']:.1f} matches/frame")
    print(f"  streaming: {r['streaming_fps']:.3f} frames/s ({r['streaming_ms_per_frame']:.0f} ms/frame mean, "
          f"{r['streaming_ms_median']:.0f} median), {r['matches_streaming']:.1f} matches/frame")
    if "uncached_fps" in r:
        print(f"  uncached : {r['uncached_fps']:.3f} frames/s ({r['uncached_ms_per_frame']:.0f} ms/frame mean): "
              f"streaming without its cache, {r['pairwise_ms_per_frame'] / r['uncached_ms_per_frame']:.2f}x pairwise")
    print(f"  speed-up : {r['speedup']:.2f}x")
    for name, v in r.get("variants", {}).items():
        print(f"  {name:<9}: {v['ms_per_frame']:.0f} ms/frame mean ({v['ms_median']:.0f} median), "
              f"{v['matches']:.1f} matches/frame, {v['ratio_to_streaming']:.2f}x the streaming path's time")
    print("  streaming stages (ms/frame): " + ", ".join(f"{k} {v:.0f}" for k, v in r["stage_ms"].items()))
    print("  pairwise stages (ms/frame):  " + ", ".join(f"{k} {v:.0f}" for k, v in r["pairwise_stage_ms"].items()))
    mem = f"  peak RSS: {r['peak_rss_streaming_mb']:.0f} MB streaming only, {r['peak_rss_mb']:.0f} MB overall"
    if "peak_gpu_mb" in r:
        mem += (f"; peak GPU (timed frames) {r['peak_gpu_streaming_mb']:.0f} MB streaming, "
                f"{r['peak_gpu_mb']:.0f} MB overall")
    print(mem)
    print(f"  held between frames: keyframe features {r['keyframe_mb']:.1f} MB, scratch {r['scratch_mb']:.1f} MB")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="eloftr", help="eloftr, sift, orb, ... (default eloftr)")
    p.add_argument("--weights", help="checkpoint (required for eloftr)")
    p.add_argument("--size", type=_parse_size, default=(640, 480), help="WxH of the frames (default 640x480)")
    p.add_argument("--frames", type=int, default=10, help="frames matched against the keyframe (default 10)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--mode", choices=("full", "opt"), help="eloftr coarse matching mode")
    p.add_argument("--threshold", type=float, help="eloftr coarse threshold (mode default when omitted)")
    p.add_argument("--threads", type=int, default=0, help="torch and OpenCV threads (0 = their defaults)")
    p.add_argument("--images", help="folder of png/jpg frames (default: tum_fr2_desk)")
    p.add_argument("--uncached", action="store_true",
                   help="also time the streaming path with nothing cached (both images extracted every frame): "
                        "separates what caching the keyframe gains from what the faster stages gain")
    p.add_argument("--dynamic", action="store_true",
                   help="eloftr: also time the dynamic streaming path (eloftr.static false) on the same frames")
    p.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"),
                   help="onnxruntime: also time the onnxruntime streaming frame beside torch")
    p.add_argument("--onnx", help="fm-export folder for --runtime onnxruntime (default: export at --size first)")
    p.add_argument("--burn", type=int, default=0, metavar="N",
                   help="keep N cores busy with burner processes while measuring (a loaded robot CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 1:
        print("fm-bench: --frames must be >= 1", file=sys.stderr)
        return 2
    if args.backend == "eloftr" and not args.weights:
        print("fm-bench: --weights FILE is required for --backend eloftr", file=sys.stderr)
        return 2
    from .burn import burning

    try:
        with burning(args.burn):
            result = run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"fm-bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        _print_human(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
