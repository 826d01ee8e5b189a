"""Training pairs for SPTD2: random homographies and rotations of real photographs, cropped around one
correspondence, with dense ground-truth flow.

A pair is ``(image0, image1, flow, valid)``: ``flow[v, u] = (x, y)``, the pixel of ``image1`` showing
pixel ``(u, v)`` of ``image0``; ``valid[v, u]`` says it lies inside ``image1``. Everything is numpy;
:func:`collate` makes torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp")


def find_images(sources: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively) in the given folders, sorted."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += [p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"training image source not found: {path}")
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {list(map(str, sources))}")
    return found


def load_gray(path: Path, max_edge: int = 640) -> np.ndarray:
    """``(H, W)`` uint8 grayscale, shrunk so that its longer edge is at most ``max_edge``."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    scale = max_edge / max(image.shape)
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image


@dataclass
class PairConfig:
    """Ranges of the random pairs. ``rotation_prob``: share of pairs drawn from the full-circle
    "rotation" family (otherwise rotation within +-``max_rotation_deg``). ``crop_jitter``: crop 1 is centred
    on the match of crop 0's centre plus a uniform shift of up to this share of the crop size per axis, so
    that a point does not sit at the same place in both crops (used by :mod:`.batches`)."""

    crop: int = 160
    min_scale: float = 0.7
    max_scale: float = 1.4
    max_rotation_deg: float = 30.0
    rotation_prob: float = 0.25
    max_perspective: float = 0.0006
    photometric: bool = True
    crop_jitter: float = 0.25


def random_homography(rng: np.random.Generator, size: tuple[int, int], cfg: PairConfig) -> np.ndarray:
    """3x3 homography about the image centre: scale, rotation, perspective and a small shift."""
    h, w = size
    centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], float)
    if rng.random() < cfg.rotation_prob:
        angle = rng.uniform(-math.pi, math.pi)
    else:
        angle = math.radians(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
    scale = math.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale)))
    aniso = math.exp(rng.uniform(-0.1, 0.1))
    c, s = math.cos(angle), math.sin(angle)
    affine = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([scale * aniso, scale / aniso, 1])
    affine[2, :2] = rng.uniform(-cfg.max_perspective, cfg.max_perspective, 2)
    shift = np.array([[1, 0, w / 2 + rng.uniform(-0.1, 0.1) * w], [0, 1, h / 2 + rng.uniform(-0.1, 0.1) * h],
                      [0, 0, 1]])
    return shift @ affine @ centre


def apply_homography(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(..., 2)`` points through a 3x3 homography."""
    p = points @ H[:, :2].T + H[:, 2]
    return p[..., :2] / np.maximum(np.abs(p[..., 2:]), 1e-9) * np.sign(p[..., 2:])


def photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Brightness, contrast, gamma, blur and noise, each random. uint8 in, uint8 out."""
    x = image.astype(np.float32) / 255.0
    x = np.clip(x * rng.uniform(0.7, 1.3) + rng.uniform(-0.15, 0.15), 0, 1) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.2))
    x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape).astype(np.float32)
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def make_pair(
    rng: np.random.Generator, image: np.ndarray, cfg: PairConfig, tries: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One training pair from one ``(H, W)`` uint8 image.

    Returns ``image0``, ``image1`` ``(crop, crop)`` uint8, ``flow`` ``(crop, crop, 2)`` float32 and
    ``valid`` ``(crop, crop)`` bool.
    """
    size = cfg.crop
    h, w = image.shape
    if h < size or w < size:
        factor = size / min(h, w) * 1.05
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
        h, w = image.shape
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64)), -1)
    for _ in range(tries):
        H = random_homography(rng, (h, w), cfg)
        x0, y0 = rng.integers(0, w - size + 1), rng.integers(0, h - size + 1)
        centre1 = apply_homography(H, np.array([x0 + size / 2, y0 + size / 2]))
        x1 = int(round(centre1[0] - size / 2))
        y1 = int(round(centre1[1] - size / 2))
        # crop 1 is drawn straight from the warped image: compose H with both crop offsets
        to_crop1 = np.array([[1, 0, -x1], [0, 1, -y1], [0, 0, 1]]) @ H @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]])
        flow = apply_homography(to_crop1, grid)
        # pixels of crop 1 that come from outside the source image are black: mark them via the inverse
        back = apply_homography(np.linalg.inv(to_crop1), grid) + np.array([x0, y0])
        inside_source = (back[..., 0] >= 0) & (back[..., 0] <= w - 1) & (back[..., 1] >= 0) & (back[..., 1] <= h - 1)
        valid = (flow[..., 0] >= 0) & (flow[..., 0] <= size - 1) & (flow[..., 1] >= 0) & (flow[..., 1] <= size - 1)
        if valid.mean() < 0.3 or inside_source.mean() < 0.5:
            continue
        image0 = image[y0:y0 + size, x0:x0 + size]
        image1 = cv2.warpPerspective(image, to_crop1 @ np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]]), (size, size),
                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # flow target must also show image content: pixels of crop 0 mapping onto black in crop 1 are invalid
        xi = np.clip(np.round(flow[..., 0]).astype(int), 0, size - 1)
        yi = np.clip(np.round(flow[..., 1]).astype(int), 0, size - 1)
        valid &= inside_source[yi, xi]
        if cfg.photometric:
            image0, image1 = photometric(rng, image0), photometric(rng, image1)
        return image0, image1, flow.astype(np.float32), valid
    raise RuntimeError(f"could not draw a valid {size}px pair from a {w}x{h} image in {tries} tries")


class PairSampler:
    """Endless random pairs from a fixed list of images (loaded once, grayscale, longer edge <= 640)."""

    def __init__(self, sources: Sequence[str | Path], cfg: PairConfig | None = None, seed: int = 0) -> None:
        self.paths = find_images(sources)
        self.images = [load_gray(p) for p in self.paths]
        self.cfg = cfg or PairConfig()
        self.rng = np.random.default_rng(seed)

    def batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """``image0``/``image1`` ``(B, S, S)`` uint8, ``flow`` ``(B, S, S, 2)``, ``valid`` ``(B, S, S)``."""
        items = [make_pair(self.rng, self.images[self.rng.integers(len(self.images))], self.cfg)
                 for _ in range(batch_size)]
        return {key: np.stack([item[i] for item in items])
                for i, key in enumerate(("image0", "image1", "flow", "valid"))}


def collate(batch: dict[str, np.ndarray], device: str = "cpu"):
    """Torch tensors: images ``(B, 1, S, S)`` float in [0, 1], ``flow`` ``(B, S, S, 2)``, ``valid`` bool."""
    import torch

    return {
        "image0": torch.from_numpy(batch["image0"]).float().div(255).unsqueeze(1).to(device),
        "image1": torch.from_numpy(batch["image1"]).float().div(255).unsqueeze(1).to(device),
        "flow": torch.from_numpy(batch["flow"]).to(device),
        "valid": torch.from_numpy(batch["valid"]).to(device),
    }
