"""Training batches made on the training device (GPU or CPU), so that pair generation never holds the
trainer up: the photographs (and their teacher heatmaps) live on the device once, each step draws only
the small random parameters on the host and does every warp, crop and photometric change with batched
torch operations.

Two kinds of pairs, both as ``{"image0", "image1" (B, 1, S, S) in [0, 1], "flow" (B, S, S, 2), "valid"
(B, S, S), "teacher0", "teacher1" (B, 1, S, S) or None}`` with the flow convention of :mod:`.data`:

* :class:`HomographyBatcher`: random homography/rotation pairs of single photographs (the paper's
  synthetic pairs; ranges from :class:`.data.PairConfig`).
* :class:`DepthPairBatcher`: real pairs of an RGB-D sequence with ground-truth poses and registered depth
  (e.g. ``tum_fr3_cabinet_rgbd``): pixels of frame a are lifted with their depth, moved with the relative
  pose and projected into frame b; a pixel is valid when frame b's depth there agrees (not occluded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import PairConfig, apply_homography, find_images, load_gray, random_homography

TEACHER_SUFFIX = ".png"


def image_key(path: str | Path) -> str:
    """The name of an image's teacher heatmap: the first 16 hex digits of its SHA-1."""
    import hashlib

    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def load_teacher(folder: str | Path | None, path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The teacher heatmap of ``path`` (uint8 PNG named by :func:`image_key`) at ``shape``, as float32 in
    [0, 1]; None when there is no teacher folder. A missing file is an error (silently training part of the
    data without a teacher would change the loss)."""
    if folder is None:
        return None
    import cv2

    file = Path(folder) / (image_key(path) + TEACHER_SUFFIX)
    heat = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
    if heat is None:
        raise FileNotFoundError(f"no teacher heatmap {file} for training image {path} (run fm-sptd2-teacher)")
    if heat.shape != shape:
        heat = cv2.resize(heat, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return heat.astype(np.float32) / 255.0


def photometric_torch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image: brightness, contrast, gamma, Gaussian blur (30 %) and noise, like :func:`.data.photometric`.
    ``(B, 1, S, S)`` in [0, 1] -> same."""
    b = images.shape[0]
    dev = images.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, 1, 1, 1, generator=generator, device=generator.device) * (hi - lo) + lo).to(dev)

    x = (images * uniform(0.7, 1.3) + uniform(-0.15, 0.15)).clamp(0, 1) ** uniform(0.7, 1.4)
    sigma = uniform(0.3, 1.2).view(b, 1)
    blur = (torch.rand(b, generator=generator, device=generator.device) < 0.3).to(dev)
    taps = torch.arange(-3, 4, device=dev, dtype=x.dtype).view(1, 7)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (taps == 0).to(x.dtype).expand(b, -1)
    kernel = torch.where(blur[:, None], kernel, identity)  # (B, 7)
    y = x.view(1, b, *x.shape[-2:])
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="replicate"), kernel.view(b, 1, 1, 7), groups=b)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="replicate"), kernel.view(b, 1, 7, 1), groups=b)
    x = y.view_as(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(dev) * uniform(0.0, 0.03)
    return (x + noise).clamp(0, 1)


class _Bank:
    """Grayscale images (and optional teacher heatmaps) padded into one ``(N, 2, H, W)`` device tensor."""

    def __init__(self, images: list[np.ndarray], teachers: list[np.ndarray | None], device: torch.device) -> None:
        h = max(im.shape[0] for im in images)
        w = max(im.shape[1] for im in images)
        bank = np.zeros((len(images), 2, h, w), np.float32)
        for i, (im, heat) in enumerate(zip(images, teachers)):
            bank[i, 0, : im.shape[0], : im.shape[1]] = im.astype(np.float32) / 255.0
            if heat is not None:
                bank[i, 1, : im.shape[0], : im.shape[1]] = heat
        self.data = torch.from_numpy(bank).to(device)
        self.sizes = [im.shape for im in images]
        self.has_teacher = all(t is not None for t in teachers)


class HomographyBatcher:
    """Endless random homography/rotation pairs of a fixed set of photographs, warped on ``device``.

    Args:
        sources: image files or folders (as :func:`.data.find_images`).
        cfg: pair ranges and crop size.
        device: where the images live and the warps run.
        teacher_dir: folder of teacher heatmaps (:func:`load_teacher`), or None.
        seed: seeds the host and device random generators.
    """

    def __init__(self, sources: Sequence[str | Path], cfg: PairConfig, device: str | torch.device = "cpu",
                 teacher_dir: str | Path | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.paths = find_images(sources)
        images = [self._fit(load_gray(p)) for p in self.paths]
        teachers = [load_teacher(teacher_dir, p, im.shape) for p, im in zip(self.paths, images)]
        self.bank = _Bank(images, teachers, self.device)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _fit(self, image: np.ndarray) -> np.ndarray:
        import cv2

        size = self.cfg.crop
        if min(image.shape) < size:
            factor = size / min(image.shape) * 1.05
            image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
        return image

    def _jitter(self) -> np.ndarray:
        return self.rng.uniform(-1, 1, 2) * self.cfg.crop_jitter * self.cfg.crop

    def _draw(self, shape: tuple[int, int], tries: int = 30) -> tuple[np.ndarray, int, int]:
        """A homography (source -> crop 1) and the crop-0 corner whose crops overlap enough, checked on a
        coarse grid of crop 0."""
        h, w = shape
        size = self.cfg.crop
        coarse = np.stack(np.meshgrid(np.linspace(0, size - 1, 9), np.linspace(0, size - 1, 9)), -1)
        for _ in range(tries):
            H = random_homography(self.rng, (h, w), self.cfg)
            x0, y0 = int(self.rng.integers(0, w - size + 1)), int(self.rng.integers(0, h - size + 1))
            centre = apply_homography(H, np.array([x0 + size / 2, y0 + size / 2])) + self._jitter()
            x1, y1 = int(round(centre[0] - size / 2)), int(round(centre[1] - size / 2))
            to_crop1 = np.array([[1, 0, -x1], [0, 1, -y1], [0, 0, 1]]) @ H
            flow = apply_homography(to_crop1, coarse + np.array([x0, y0]))
            inside = (flow >= 0).all(-1) & (flow <= size - 1).all(-1)
            if inside.mean() >= 0.3:
                return to_crop1, x0, y0
        raise RuntimeError(f"could not draw a {size}px homography pair from a {w}x{h} image in {tries} tries")

    def batch(self, batch_size: int) -> dict[str, torch.Tensor | None]:
        size, dev = self.cfg.crop, self.device
        index = self.rng.integers(len(self.paths), size=batch_size)
        draws = [self._draw(self.bank.sizes[i][:2]) for i in index]
        to_crop1 = torch.tensor(np.stack([d[0] for d in draws]), dtype=torch.float32, device=dev)  # (B, 3, 3)
        corner = torch.tensor([[d[1], d[2]] for d in draws], dtype=torch.float32, device=dev)  # (B, 2)
        src = self.bank.data[torch.as_tensor(index, device=dev)]  # (B, 2, Hb, Wb)
        hb, wb = src.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(size, device=dev, dtype=torch.float32),
                                torch.arange(size, device=dev, dtype=torch.float32), indexing="ij")
        grid = torch.stack([xs, ys], -1).view(1, -1, 2)  # crop pixels (1, S*S, 2)
        scale = torch.tensor([2.0 / wb, 2.0 / hb], device=dev)

        def sample(points: torch.Tensor) -> torch.Tensor:  # source pixels (B, S*S, 2) -> (B, 2, S, S)
            g = ((points + 0.5) * scale - 1.0).view(batch_size, size, size, 2)
            return F.grid_sample(src, g, mode="bilinear", padding_mode="zeros", align_corners=False)

        crop0 = sample(grid + corner[:, None])
        homog = torch.cat([grid.expand(batch_size, -1, -1), torch.ones(batch_size, size * size, 1, device=dev)], -1)
        back = homog @ torch.linalg.inv(to_crop1).transpose(1, 2)  # crop-1 pixel -> source pixel
        crop1 = sample(back[..., :2] / back[..., 2:])
        src0 = homog.clone()
        src0[..., :2] += corner[:, None]
        fwd = src0 @ to_crop1.transpose(1, 2)
        flow = (fwd[..., :2] / fwd[..., 2:]).view(batch_size, size, size, 2)
        valid = ((flow >= 0) & (flow <= size - 1)).all(-1) & (fwd[..., 2] > 0).view(batch_size, size, size)
        return self._finish(crop0, crop1, flow, valid)

    def _finish(self, crop0: torch.Tensor, crop1: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor):
        image0, image1 = crop0[:, :1], crop1[:, :1]
        if self.cfg.photometric:
            image0, image1 = photometric_torch(image0, self.generator), photometric_torch(image1, self.generator)
        teacher = self.bank.has_teacher
        return {"image0": image0.contiguous(), "image1": image1.contiguous(), "flow": flow.contiguous(),
                "valid": valid, "teacher0": crop0[:, 1:].contiguous() if teacher else None,
                "teacher1": crop1[:, 1:].contiguous() if teacher else None}


def read_rgbd_sequence(folder: str | Path) -> dict:
    """An RGB-D sequence folder (:func:`~feature_matcher_ros.datasets.read_sequence`) as training needs it:
    image and depth paths, ``K``, ``T_world_cam`` per frame, the frame pairs of ``pairs.txt`` and the depth scale."""
    from ...datasets import read_pose_pairs, read_sequence

    seq = read_sequence(folder)
    if seq.depth is None or seq.ground_truth is None:
        raise ValueError(f"{folder}: an RGB-D sequence with depth.txt and groundtruth.txt is needed")
    images = [path for _, path in seq.frames]
    truth = seq.ground_truth.by_stamp()
    index = {path: i for i, path in enumerate(images)}
    return {"images": images, "depths": [path for _, path in seq.depth.frames], "K": seq.camera.K,
            "poses": [truth[stamp] for stamp, _ in seq.frames],
            "pairs": [(index[p.image0], index[p.image1]) for p in read_pose_pairs(folder)],
            "depth_scale": seq.depth.scale}


def depth_flow(depth0: torch.Tensor, depth1: torch.Tensor, K: torch.Tensor, T_1_0: torch.Tensor,
               tolerance: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense flow frame 0 -> frame 1 from depth and the relative pose ``X1 = T_1_0 X0``.

    depth0, depth1: ``(H, W)`` metres (0 = unknown). Returns flow ``(H, W, 2)`` pixels of frame 1 and valid
    ``(H, W)``: depth known, in front of camera 1, inside frame 1, and frame 1's depth at the projection
    within ``tolerance`` (relative) of the moved point's depth (not occluded)."""
    h, w = depth0.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=depth0.device, dtype=torch.float32),
                            torch.arange(w, device=depth0.device, dtype=torch.float32), indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # (H, W, 3)
    rays = pix @ torch.linalg.inv(K).T
    points = rays * depth0[..., None]
    moved = points @ T_1_0[:3, :3].T + T_1_0[:3, 3]
    z = moved[..., 2]
    proj = moved @ K.T
    flow = proj[..., :2] / proj[..., 2:].clamp_min(1e-6)
    u, v = flow[..., 0].round().long(), flow[..., 1].round().long()
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    seen = depth1[v.clamp(0, h - 1), u.clamp(0, w - 1)]
    valid = (depth0 > 0) & (z > 0.05) & inside & (seen > 0) & ((seen - z).abs() <= tolerance * z)
    return flow, valid


class DepthPairBatcher(HomographyBatcher):
    """Endless real pairs of an RGB-D sequence (both directions of every pair in pairs.txt), cropped on
    ``device``: crop 0 is centred on a random pixel with a valid correspondence, crop 1 on its match.

    Args:
        folder: the sequence (:func:`read_rgbd_sequence`).
        cfg, device, teacher_dir, seed: as :class:`HomographyBatcher` (the geometric ranges are unused: the
            camera motion is the transformation).
    """

    def __init__(self, folder: str | Path, cfg: PairConfig, device: str | torch.device = "cpu",
                 teacher_dir: str | Path | None = None, seed: int = 0) -> None:
        import cv2

        self.cfg = cfg
        self.device = torch.device(device)
        seq = read_rgbd_sequence(folder)
        self.paths = list(seq["images"])
        images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in self.paths]
        teachers = [load_teacher(teacher_dir, p, im.shape) for p, im in zip(self.paths, images)]
        self.bank = _Bank(images, teachers, self.device)
        K = torch.tensor(seq["K"], dtype=torch.float32, device=self.device)
        depths = [torch.from_numpy(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float32) / seq["depth_scale"])
                  .to(self.device) for p in seq["depths"]]
        directed = seq["pairs"] + [(b, a) for a, b in seq["pairs"]]
        flows, valids, self.centres = [], [], []
        margin = cfg.crop // 2
        for a, b in directed:
            T_1_0 = torch.tensor(np.linalg.inv(seq["poses"][b]) @ seq["poses"][a], dtype=torch.float32,
                                 device=self.device)
            flow, valid = depth_flow(depths[a], depths[b], K, T_1_0)
            h, w = valid.shape
            ok = valid.clone()  # centres whose crop fits in frame a
            ok[:margin], ok[h - margin:], ok[:, :margin], ok[:, w - margin:] = False, False, False, False
            ys, xs = ok[::4, ::4].nonzero(as_tuple=True)
            self.centres.append(np.stack([xs.cpu().numpy() * 4, ys.cpu().numpy() * 4], 1))
            flows.append(flow)
            valids.append(valid)
        keep = [i for i, c in enumerate(self.centres) if len(c) > 0]
        if not keep:
            raise ValueError(f"{folder}: no pair has a valid correspondence for a {cfg.crop}px crop")
        self.pairs = [directed[i] for i in keep]
        self.centres = [self.centres[i] for i in keep]
        self.flows = torch.stack([flows[i] for i in keep])  # (P, H, W, 2), on the device
        self.valids = torch.stack([valids[i] for i in keep])
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 1)

    def batch(self, batch_size: int) -> dict[str, torch.Tensor | None]:
        size, dev = self.cfg.crop, self.device
        h, w = self.flows.shape[1:3]
        crops0, crops1, flows, valids = [], [], [], []
        for p in self.rng.integers(len(self.pairs), size=batch_size):
            a, b = self.pairs[p]
            cx, cy = self.centres[p][self.rng.integers(len(self.centres[p]))]
            x0, y0 = int(cx) - size // 2, int(cy) - size // 2
            target = np.array(self.flows[p, cy, cx].tolist()) + self._jitter()
            x1 = min(max(int(round(target[0])) - size // 2, 0), w - size)
            y1 = min(max(int(round(target[1])) - size // 2, 0), h - size)
            flow = self.flows[p, y0:y0 + size, x0:x0 + size] - torch.tensor([x1, y1], dtype=torch.float32, device=dev)
            valid = self.valids[p, y0:y0 + size, x0:x0 + size] & ((flow >= 0) & (flow <= size - 1)).all(-1)
            crops0.append(self.bank.data[a, :, y0:y0 + size, x0:x0 + size])
            crops1.append(self.bank.data[b, :, y1:y1 + size, x1:x1 + size])
            flows.append(flow)
            valids.append(valid)
        return self._finish(torch.stack(crops0), torch.stack(crops1), torch.stack(flows), torch.stack(valids))


def concat_batches(parts: list[dict]) -> dict:
    """One batch from several (same keys); the teacher maps only when every part has them."""
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        out[key] = None if any(v is None for v in values) else torch.cat(values)
    return out


def split_sizes(batch: int, real_fraction: float) -> tuple[int, int]:
    """(homography pairs, real pairs) for one step."""
    real = int(math.floor(batch * real_fraction + 0.5)) if real_fraction > 0 else 0
    return batch - real, real
