"""fm-export: a learned backend as ONNX graphs with fixed shapes, for onnxruntime and TensorRT.

    fm-export --backend eloftr --weights eloftr_outdoor.ckpt --size 640x480 [--frame-size WxH]
              [--precision fp32|fp16] [--modes full,opt] [--max-candidates K] [--device cpu|cuda] --out DIR
    fm-export --backend sptd2 [--weights FILE] --size 640x480 [--top-k N] --out DIR

Efficient LoFTR: the streaming split (an extraction graph per image size, a matching graph per mode with
at most K matches and a validity mask, the threshold an input) and ``eloftr.json``
(:mod:`feature_matcher_ros.backends.eloftr.onnx_export`). SPTD2: extraction with a fixed top-K of keypoints
and descriptors and ``sptd2.json`` (its matching stays in the package). Run the node or any tool on the
folder with ``runtime: onnxruntime`` and ``weights: DIR``. Sizes are the network's: multiples of 32 for
Efficient LoFTR (images of other sizes are resized to them at run time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..measure.dds_loss import parse_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True, choices=("eloftr", "sptd2"))
    p.add_argument("--weights", help="checkpoint (required for eloftr; sptd2: the shipped weights when omitted)")
    p.add_argument("--size", type=parse_size, required=True, help="WxH of the (key)frames, e.g. 640x480")
    p.add_argument("--frame-size", type=parse_size, help="eloftr: WxH of the frames when not --size")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    p.add_argument("--modes", default="full,opt", help="eloftr: coarse matching modes, one graph each")
    p.add_argument("--max-candidates", type=int, default=0,
                   help="eloftr: K, the most matches per frame (0 = half the frame's coarse cells)")
    p.add_argument("--top-k", type=int, help="sptd2: keypoints per image (default: its sptd2.top_k)")
    p.add_argument("--device", default="cpu", help="where the model runs while it is traced (default cpu)")
    p.add_argument("--out", required=True, help="output folder")
    return p


def export(args: argparse.Namespace) -> list[Path]:
    """Write the export; the files written."""
    from ..backends import create_backend

    out = Path(args.out)
    if args.backend == "sptd2":
        from ..backends.sptd2.onnx_export import export_sptd2, write_sidecar

        backend = create_backend("sptd2", device=args.device, weights=args.weights)
        entry = export_sptd2(backend, out, (args.size[1], args.size[0]), args.precision, args.top_k)
        write_sidecar(out, [entry])
        return [out / entry["file"], out / "sptd2.json"]
    from ..backends.eloftr.onnx_export import SIDECAR, ExportSpec, export_eloftr

    if not args.weights:
        raise ValueError("--weights FILE is required for --backend eloftr (the official eloftr_outdoor.ckpt)")
    backend = create_backend("eloftr", device=args.device, precision=args.precision, weights=args.weights)
    spec = ExportSpec(args.size, args.frame_size, tuple(m for m in args.modes.split(",") if m), args.max_candidates,
                      args.precision, args.weights)
    sidecar = export_eloftr(backend.model, out, spec)
    names = [*sidecar["files"]["extract"].values(), *sidecar["files"]["match"].values(), SIDECAR]
    print(f"fm-export: eloftr {args.precision}, keyframes {sidecar['keyframe_size']}, frames {sidecar['frame_size']}, "
          f"K = {sidecar['max_candidates']}, modes {sidecar['modes']}")
    return [out / n for n in names]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        files = export(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"fm-export: {exc}", file=sys.stderr)
        return 2
    for path in files:
        print(f"  {path} ({path.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
