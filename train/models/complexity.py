"""Model size and arithmetic per clip, counted without running the model on data.

    params_m, gflops = complexity(lambda: build_model("cost_b", num_classes=400), (3, 8, 224, 224))

The model is built on PyTorch's meta device (shapes only, no memory, no compute) and one forward
pass of a single clip is traced with ``torch.utils.flop_counter``: one multiply-add counts as two
FLOPs. The count is of the formulation that runs (e.g. CoST's three view convolutions), which is
what a GPU executes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def complexity(build: Callable[[], nn.Module], clip_shape: tuple[int, ...]) -> tuple[float, float]:
    """(parameters in millions, GFLOPs of one forward pass of one clip of ``clip_shape`` (C, T, H, W))."""
    with torch.device("meta"):
        model = build().eval()
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, *clip_shape, device="meta"))
    return params / 1e6, counter.get_total_flops() / 1e9
