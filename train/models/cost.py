"""The CoST operation (Li et al., CVPR 2019, section 3.3): one 3x3 kernel over three views.

Given x of shape (N, C_in, T, H, W) and a kernel w of shape (C_out, C_in, 3, 3), the three views
are 3D convolutions (eq. 1)

    x_hw = x * w_{1x3x3},   x_tw = x * w_{3x1x3},   x_th = x * w_{3x3x1}

where w_{...} is w with a singleton axis inserted at kernel position 0, 1 or 2 (padding 1 on
the non-singleton axes, spatial stride s as the residual unit requires). They are summed with
per-output-channel coefficients softmax-normalised over the views (eq. 2)

    y[:, c] = a_hw[c] x_hw[:, c] + a_tw[c] x_tw[:, c] + a_th[c] x_th[:, c].

Axis mapping (locked by tests/train/models/test_cost.py): for kernel tap w[:, :, i, j]
    H-W view: (dt, dh, dw) = (0, i, j)     - i runs along H, j along W
    T-W view: (dt, dh, dw) = (i, 0, j)     - i runs along T, j along W
    T-H view: (dt, dh, dw) = (i, j, 0)     - i runs along T, j along H
i.e. ``w.unsqueeze(2)``, ``w.unsqueeze(3)``, ``w.unsqueeze(4)``: the kernel's first axis is T
in both temporal views - the paper's "insert a dimension of size 1 at different indices", and
the convention of the authors' published code.

CoST(a) learns the coefficients as free parameters (C_out, 3). CoST(b) predicts them per sample
(eq. 3, Fig. 5): global max pool of each view -> one shared C->C linear map (no bias) ->
stacked (N, C, 3) -> a 3->3 linear map over views (no bias) -> softmax over views.

Formulations (``impl``), all the same operation (tests/train/models/test_cost.py checks outputs
and gradients of each against ``views``):
  ``views``    three 3D convolutions, one per view (the reference);
  ``stacked``  one 3D convolution with 3*C_out outputs, each view's kernel embedded in its own
               3x3x3 cube, split into the three views (one call, three times the arithmetic);
  ``fold``     three 2D convolutions with the view's third axis folded into the batch: frames
               for H-W, (strided) rows for T-W, (strided) columns for T-H;
  ``composed`` CoST(a) only: the coefficients folded into one 3x3x3 kernel (19 non-zero taps,
               the 8 corners zero) and one 3D convolution - a third of the view calls and no
               view tensors. CoST(b) needs each view's output for its coefficients.
``auto`` uses ``composed`` for CoST(a) on CUDA and ``views`` otherwise: on CPU the whole model is
faster with three thin convolutions (bench/models.py, ResNet-50 8x112x112, 2 cores: CoST(a) 1.96
clips/s as views, 1.75 composed; C2D 3.21). bench/train_throughput.py --cost-impls measures every
formulation in the whole training step (bench/RESULTS.md).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from train.models.spec import IMPLS, cost_problems

VIEWS = ("hw", "tw", "th")
# Kernel-axis insertion point and padding for each view of a (C_out, C_in, 3, 3) kernel.
_UNSQUEEZE = {"hw": 2, "tw": 3, "th": 4}
_PADDING = {"hw": (0, 1, 1), "tw": (1, 0, 1), "th": (1, 1, 0)}
Impl = Literal["auto", "views", "stacked", "fold", "composed"]  # spec.IMPLS


def formulations(mode: str) -> tuple[str, ...]:
    """The named formulations (all but ``auto``) of a CoST layer in ``mode`` 'a' or 'b'."""
    return tuple(i for i in IMPLS if i != "auto" and not (mode == "b" and i == "composed"))


def view_kernel(w: torch.Tensor, view: str) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> the 3D kernel of one view, e.g. (C_out, C_in, 3, 1, 3) for 'tw'."""
    return w.unsqueeze(_UNSQUEEZE[view])


def view_cubes(weights: torch.Tensor) -> torch.Tensor:
    """(3, C_out, C_in, 3, 3) view kernels -> (3, C_out, C_in, 3, 3, 3): each view's kernel in
    the central plane of its own cube (dt = 0 for H-W, dh = 0 for T-W, dw = 0 for T-H)."""
    cubes = weights.new_zeros(*weights.shape[:3], 3, 3, 3)
    cubes[0, :, :, 1, :, :] = weights[0]
    cubes[1, :, :, :, 1, :] = weights[1]
    cubes[2, :, :, :, :, 1] = weights[2]
    return cubes


def compose_kernel(weights: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """One (C_out, C_in, 3, 3, 3) kernel equal to the alpha-weighted sum of the three views.

    ``weights`` is (3, C_out, C_in, 3, 3) (one kernel per view, the same one when shared),
    ``alpha`` is (C_out, 3). The view planes meet on the central axes, so 19 taps are non-zero
    and the 8 corners stay zero.
    """
    a = alpha.to(weights.dtype).t()[:, :, None, None, None, None]  # (3, C_out, 1, 1, 1, 1)
    return (a * view_cubes(weights)).sum(0)


def folded_views(x: torch.Tensor, weights: torch.Tensor, stride: int) -> list[torch.Tensor]:
    """The three views as 2D convolutions, each with its view's third axis folded into the batch.

    A view's kernel has size 1 along that axis, so the 3D convolution is a 2D one per frame /
    row / column; spatial stride s keeps every s-th row (T-W) or column (T-H).
    """
    n, s = x.shape[0], stride
    hw = F.conv2d(x.transpose(1, 2).flatten(0, 1), weights[0], stride=s, padding=1)  # (N*T, C, H', W')
    hw = hw.unflatten(0, (n, -1)).transpose(1, 2)
    rows = x[:, :, :, ::s].permute(0, 3, 1, 2, 4).flatten(0, 1)  # (N*H', C, T, W)
    tw = F.conv2d(rows, weights[1], stride=(1, s), padding=1).unflatten(0, (n, -1)).permute(0, 2, 3, 1, 4)
    cols = x[..., ::s].permute(0, 4, 1, 2, 3).flatten(0, 1)  # (N*W', C, T, H)
    th = F.conv2d(cols, weights[2], stride=(1, s), padding=1).unflatten(0, (n, -1)).permute(0, 2, 3, 4, 1)
    return [hw, tw, th]


def mix_views(views: list[torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
    """Eq. 2: sum over views of alpha[..., v] * x_v; alpha is (C_out, 3) or per sample (N, C_out, 3)."""
    return sum(alpha[..., i, None, None, None] * v for i, v in enumerate(views))


class CoST(nn.Module):
    """Collaborative spatiotemporal convolution with coefficients learned (``mode='a'``) or
    predicted per sample (``mode='b'``). ``shared=False`` gives each view its own 3x3 kernel
    (the paper's ablation, Table 3)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 mode: Literal["a", "b"] = "a", shared: bool = True,
                 impl: Impl = "auto", a_init: Literal["spatial", "equal"] = "spatial") -> None:
        super().__init__()
        wrong = cost_problems(mode, impl, a_init)  # the builder's check of the same settings
        if wrong:
            raise ValueError("CoST setting '{}'{}".format(*wrong[0]))
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.mode, self.shared = mode, shared
        self.impl = impl
        shape = (out_channels, in_channels, 3, 3) if shared else (3, out_channels, in_channels, 3, 3)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if mode == "a":
            # "spatial" (the authors'): H-W dominant at the start, softmax(0.7, -0.7, -0.7) = (0.67, 0.17,
            # 0.17), close to the 2D network its ImageNet weights come from. "equal": a third each, for
            # models from scratch, whose coefficients otherwise move too slowly to find motion.
            logits = torch.tensor([0.7, -0.7, -0.7]) if a_init == "spatial" else torch.zeros(3)
            self.alpha_logits = nn.Parameter(logits.repeat(out_channels, 1))
        else:
            self.channel_fc = nn.Linear(out_channels, out_channels, bias=False)
            self.view_fc = nn.Linear(3, 3, bias=False)
            nn.init.normal_(self.channel_fc.weight, std=0.01)
            nn.init.normal_(self.view_fc.weight, std=0.01)

    def view_weights(self) -> torch.Tensor:
        """(3, C_out, C_in, 3, 3): the kernel of each view (three references to one when shared)."""
        return self.weight.expand(3, *self.weight.shape) if self.shared else self.weight

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three view outputs x_hw, x_tw, x_th, each (N, C_out, T, H/s, W/s)."""
        w = self.view_weights()
        stride = (1, self.stride, self.stride)
        if self.impl == "fold":
            return folded_views(x, w, self.stride)
        if self.impl == "stacked":
            stacked = F.conv3d(x, view_cubes(w).flatten(0, 1), stride=stride, padding=1)
            return list(stacked.unflatten(1, (3, -1)).unbind(1))
        return [F.conv3d(x, view_kernel(w[i], v), stride=stride, padding=_PADDING[v])
                for i, v in enumerate(VIEWS)]

    def predict_alpha(self, views: list[torch.Tensor]) -> torch.Tensor:
        """CoST(b)'s coefficient branch: (N, C_out, 3), softmax over the last axis."""
        pooled = torch.stack([v.amax(dim=(2, 3, 4)) for v in views], dim=1)  # (N, 3, C)
        mixed = self.channel_fc(pooled).transpose(1, 2)  # (N, C, 3), shared over views
        return torch.softmax(self.view_fc(mixed), dim=-1)  # over views, per channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, T, H, W)
        if self.mode == "a":
            alpha = torch.softmax(self.alpha_logits, dim=-1)  # (C_out, 3)
            if self.impl == "composed" or (self.impl == "auto" and x.is_cuda):
                kernel = compose_kernel(self.view_weights(), alpha)
                return F.conv3d(x, kernel, stride=(1, self.stride, self.stride), padding=1)
            return mix_views(self.views(x), alpha)
        views = self.views(x)
        alpha = self.predict_alpha(views)  # (N, C_out, 3)
        return mix_views(views, alpha)  # (N, C_out, T, H', W')

    def coefficients(self) -> torch.Tensor | None:
        """CoST(a): (C_out, 3) softmaxed parameters, columns the H-W, T-W, T-H views. CoST(b): None,
        its coefficients are per sample (train/models/views.py reads them during a forward pass)."""
        return torch.softmax(self.alpha_logits.detach(), dim=-1) if self.mode == "a" else None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, mode={self.mode!r}, "
                f"shared={self.shared}, impl={self.impl!r}")
