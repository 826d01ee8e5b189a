"""CUDA graphs for the static-shape streaming path: each fixed-shape call captured once, replayed per frame.

A 640x480 streaming frame is hundreds of small kernels; on a GPU their launches, not their arithmetic, set
the frame time. :meth:`EfficientLoFTR.match_static` has fixed shapes and never reads back to the host, so
it can be recorded as a CUDA graph and replayed with one launch. :class:`GraphCache` keeps one graph per
key (input shapes, dtype, mode, K), captured after a warm-up on a side stream, all graphs in one memory
pool. A replay copies the new inputs into the graph's input buffers and returns the graph's output
buffers, which the next replay overwrites: callers copy out what they keep (the backend's single host
copy of the keypoints, ``clone`` for a keyframe's features).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch

Tensors = Mapping[str, torch.Tensor]


class CapturedCall:
    """``fn(inputs) -> outputs`` (dicts of tensors) recorded as one CUDA graph for these input shapes."""

    def __init__(self, fn: Callable[[Tensors], dict[str, torch.Tensor]], inputs: Tensors, pool: Any,
                 warmup: int = 2) -> None:
        self.inputs = {k: v.detach().clone() for k, v in inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy tables, workspace buffers, cudnn's algorithm choice
            for _ in range(warmup):
                fn(self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.outputs = fn(self.inputs)

    def __call__(self, inputs: Tensors) -> dict[str, torch.Tensor]:
        for key, value in inputs.items():
            dst = self.inputs[key]
            if dst.data_ptr() != value.data_ptr():
                dst.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.outputs


class GraphCache:
    """Captured calls by key, the most recent ``max_graphs`` kept (a precision or mode change captures anew)."""

    def __init__(self, max_graphs: int = 8) -> None:
        self.graphs: OrderedDict[tuple, CapturedCall] = OrderedDict()
        self.max_graphs = max_graphs
        self.captures = 0
        self._pool: Any = None

    def run(self, key: tuple, fn: Callable[[Tensors], dict[str, torch.Tensor]], inputs: Tensors) -> dict[str, Any]:
        """``fn(inputs)`` through the graph of ``key`` (captured on first use)."""
        call = self.graphs.pop(key, None)
        if call is None:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            call = CapturedCall(fn, inputs, self._pool)
            self.captures += 1
        self.graphs[key] = call
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return call(inputs)

    def clear(self) -> None:
        self.graphs.clear()


def shape_key(tensors: Tensors) -> tuple:
    """The shapes, dtypes and devices of ``tensors``: what a graph was captured for."""
    return tuple((k, tuple(v.shape), v.dtype, str(v.device)) for k, v in sorted(tensors.items()))
