"""Scratch buffers reused from frame to frame by the streaming path.

A fresh tensor of tens of megabytes costs its page faults on every frame (the allocator hands large
blocks back to the system). :class:`Workspace` keeps the buffers of the last shape per name. It belongs
to one model and serves one matching call at a time (the node matches on one worker thread); a deep
copy of the model (another precision) starts with an empty workspace.
"""

from __future__ import annotations

import torch


class Workspace:
    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, zero: bool = False
    ) -> torch.Tensor:
        """The buffer ``name`` with this shape, dtype and device, reused when the last one matches (its
        old contents are kept); a new one otherwise (zero-filled when ``zero``)."""
        buf = self.buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or buf.device != torch.device(device):
            self.buffers.pop(name, None)
            buf = (torch.zeros if zero else torch.empty)(tuple(shape), dtype=dtype, device=device)
            self.buffers[name] = buf
        return buf

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    def clear(self) -> None:
        self.buffers.clear()

    def __deepcopy__(self, memo: dict) -> "Workspace":
        return Workspace()
