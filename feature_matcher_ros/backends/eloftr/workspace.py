"""Scratch buffers reused from frame to frame by the streaming path.

A fresh tensor of tens of megabytes costs its page faults on every frame (the allocator hands large
blocks back to the system). :class:`Workspace` keeps the buffers of the last shape per name. It belongs
to one model and serves one matching call at a time (the node matches on one worker thread); a deep
copy of the model (another precision) starts with an empty workspace.
"""

from __future__ import annotations

import torch


def same_device(have: torch.device, want: torch.device | str) -> bool:
    """Whether a tensor on ``have`` is on ``want``: ``cuda`` (no index) means the current CUDA device, so a
    buffer on ``cuda:0`` is reused for ``cuda`` instead of being reallocated every frame."""
    want = torch.device(want)
    if have.type != want.type:
        return False
    if want.index is None and want.type == "cuda":
        return have.index == torch.cuda.current_device()
    return want.index is None or have.index == want.index


class Workspace:
    """Buffers by name; ``max_buffers`` bounds how many are kept (least recently used dropped first)."""

    def __init__(self, max_buffers: int = 16) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.max_buffers = max_buffers

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, zero: bool = False
    ) -> torch.Tensor:
        """The buffer ``name`` with this shape, dtype and device, reused when the last one matches (its
        old contents are kept); a new one otherwise (zero-filled when ``zero``)."""
        buf = self.buffers.pop(name, None)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or not same_device(buf.device, device):
            buf = None  # drop the old one before allocating its successor
            buf = (torch.zeros if zero else torch.empty)(tuple(shape), dtype=dtype, device=device)
        self.buffers[name] = buf  # most recently used last
        while len(self.buffers) > self.max_buffers:
            self.buffers.pop(next(iter(self.buffers)))
        return buf

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    def clear(self) -> None:
        self.buffers.clear()

    def __deepcopy__(self, memo: dict) -> Workspace:
        return Workspace()
