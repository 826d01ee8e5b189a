"""fm-match: match images against a keyframe and save the correspondences.

    fm-match KEYFRAME IMAGE [IMAGE ...] --backend eloftr --weights FILE [--mode full|opt]
             [--threshold T] [--device D] [--precision P] [--out OUT.npz] [--draw OUT.png] [--raw]
             [--runtime torch|onnxruntime]

Without ``--raw``: any image size (colour images are converted to gray); keypoints are in the input
images' pixels. The npz holds, per image k (0-based, in command-line order), ``kpts0_k`` (keyframe),
``kpts1_k`` (image k), ``scores_k``.

With ``--raw`` (eloftr only): the images are fed unchanged (8-bit grayscale, sides multiples of 32,
otherwise a clear error) and the model's native outputs are written per image k as ``mkpts0_f_k``,
``mkpts1_f_k``, ``mconf_k``, ``i_ids_k``, ``j_ids_k``, in the official coordinate convention.

The keyframe's features are extracted once and each IMAGE is matched against them through the
streaming path (bounded memory at any size). ``--raw`` with one IMAGE runs the faithful reference
computation instead (the official whole-matrix steps: memory grows as ``(H W / 64)^2``), with several
the streaming path. ``--draw OUT.png`` writes a side-by-side picture of the
matches (``OUT_k.png`` per image when there are several).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


class UsageError(Exception):
    pass


def read_image(path: str, raw: bool) -> np.ndarray:
    import cv2

    if not Path(path).is_file():
        raise UsageError(f"image {path!r} not found")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED if raw else cv2.IMREAD_COLOR)
    if img is None:
        raise UsageError(f"image {path!r} cannot be read (not an image file?)")
    if raw:
        if img.dtype != np.uint8 or img.ndim != 2:
            raise UsageError(
                f"--raw needs 8-bit single-channel grayscale images; {path!r} is {img.dtype} with shape {img.shape}"
            )
        h, w = img.shape
        if h % 32 or w % 32:
            raise UsageError(f"--raw needs sides that are multiples of 32; {path!r} is {w}x{h} (drop --raw to resize)")
        return img
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def draw_matches(img0: np.ndarray, img1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray, scores: np.ndarray,
                 path: str) -> None:
    """Side-by-side picture: keyframe left, image right, one line per match (colour by score rank)."""
    import cv2

    h = max(img0.shape[0], img1.shape[0])
    canvas = np.zeros((h, img0.shape[1] + img1.shape[1], 3), np.uint8)
    canvas[: img0.shape[0], : img0.shape[1]] = cv2.cvtColor(img0, cv2.COLOR_GRAY2BGR)
    canvas[: img1.shape[0], img0.shape[1] :] = cv2.cvtColor(img1, cv2.COLOR_GRAY2BGR)
    order = np.argsort(np.argsort(-scores)) if len(scores) else np.zeros(0)
    for k, (p0, p1) in enumerate(zip(kpts0, kpts1)):
        t = order[k] / max(1, len(scores) - 1)
        colour = (int(255 * t), int(255 * (1 - t)), 0)
        a = (int(round(p0[0])), int(round(p0[1])))
        b = (int(round(p1[0])) + img0.shape[1], int(round(p1[1])))
        cv2.line(canvas, a, b, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, a, 2, colour, -1)
        cv2.circle(canvas, b, 2, colour, -1)
    if not cv2.imwrite(path, canvas):
        raise UsageError(f"cannot write {path!r}")


def _draw_path(base: str, k: int, count: int) -> str:
    if count == 1:
        return base
    p = Path(base)
    return str(p.with_name(f"{p.stem}_{k}{p.suffix or '.png'}"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-match", description="Match images against a keyframe.")
    p.add_argument("keyframe", help="keyframe image (image 0)")
    p.add_argument("images", nargs="+", help="images matched against the keyframe")
    p.add_argument("--backend", default="eloftr", help="eloftr, sift, orb, ... (default eloftr)")
    p.add_argument("--weights", help="checkpoint (required for eloftr); --runtime onnxruntime: the fm-export folder")
    p.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"),
                   help="onnxruntime: run an fm-export folder (default torch)")
    p.add_argument("--mode", choices=("full", "opt"), help="eloftr coarse matching mode (default full)")
    p.add_argument("--threshold", type=float, help="eloftr coarse threshold (default: the mode's, 0.2 / 25)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--out", help="write the matches to this .npz")
    p.add_argument("--draw", help="write a picture of the matches (PNG)")
    p.add_argument("--raw", action="store_true", help="eloftr: feed images unchanged, write native outputs")
    return p


def run(args: argparse.Namespace) -> int:
    from ..backends import create_backend

    settings = {}
    if args.mode:
        settings["eloftr.mode"] = args.mode
    if args.threshold is not None:
        settings["eloftr.threshold"] = args.threshold
    if args.backend != "eloftr" and (settings or args.raw):
        raise UsageError("--mode, --threshold and --raw apply to --backend eloftr only")
    if args.runtime != "torch" and args.raw:
        raise UsageError("--raw needs --runtime torch (the native outputs are the torch model's)")
    if args.backend == "eloftr" and not args.weights:
        raise UsageError("--weights FILE is required for --backend eloftr (the official eloftr_outdoor.ckpt)")
    keyframe = read_image(args.keyframe, args.raw)
    images = [read_image(p, args.raw) for p in args.images]
    backend = create_backend(args.backend, device=args.device, precision=args.precision, weights=args.weights,
                             runtime=args.runtime, **settings)

    arrays: dict[str, np.ndarray] = {}
    results = []
    single = len(images) == 1
    if args.raw:
        kf = None if single else backend.extract_native(keyframe)
        for k, img in enumerate(images):
            if single:
                out = backend.match_pair_native(keyframe, img, resize=False)[0]
            else:
                out = backend.match_native(kf, backend.extract_native(img))
            for key in ("mkpts0_f", "mkpts1_f", "mconf", "i_ids", "j_ids"):
                arrays[f"{key}_{k}"] = out[key].detach().cpu().numpy()
            results.append((arrays[f"mkpts0_f_{k}"], arrays[f"mkpts1_f_{k}"], arrays[f"mconf_{k}"]))
    else:
        kf = backend.extract(keyframe)  # streaming even for one image: bounded memory, same matches
        for k, img in enumerate(images):
            m = backend.match(kf, backend.extract(img))
            arrays[f"kpts0_{k}"], arrays[f"kpts1_{k}"], arrays[f"scores_{k}"] = m.kpts0, m.kpts1, m.scores
            results.append((m.kpts0, m.kpts1, m.scores))

    for k, (path, (k0, k1, s)) in enumerate(zip(args.images, results)):
        print(f"{path}: {len(s)} matches" + (f", score {s.min():.4g}..{s.max():.4g}" if len(s) else ""))
        if args.draw:
            draw_matches(keyframe, images[k], k0, k1, s, _draw_path(args.draw, k, len(images)))
    if args.out:
        np.savez(args.out, **arrays)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"fm-match: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"fm-match: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
