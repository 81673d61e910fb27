"""One video ResNet trunk (paper Table 1) with a swappable temporal convolution per residual unit.

    model = build_model("cost_b", depth=50, num_classes=400)  # or create_model(ModelSpec(...), 400)
    logits = model(clips)  # clips (N, 3, T, H, W) -> (N, num_classes)

Architectures (paper section 3): ``c2d`` (every unit 1x1, 1x3x3, 1x1), ``c3d`` (marked units
inflate the first 1x1 to 3x1x1), ``cost_a`` / ``cost_b`` (marked units replace the middle 3x3
by the CoST operation). Which units are marked is a per-stage table of 0/1; the defaults are
the published ones. Parameter and module names follow torchvision's 2D ResNet, so ImageNet
weights map onto the trunk key by key (see ``pretrained.py``). ``create_model`` is the one builder:
every setting is checked there (``spec.problems``), not in the modules it assembles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Literal

import torch
from torch import nn

from train.models.cost import CoST
from train.models.spec import STAGE_BLOCKS, TEMPORAL, UNITS, ModelSpec, problems

Unit = Literal["2d", "c3d", "cost_a", "cost_b"]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, *, stride: int, unit: Unit,
                 cost: dict | None = None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        t = 3 if unit == "c3d" else 1
        self.conv1 = nn.Conv3d(in_channels, planes, (t, 1, 1), padding=(t // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        if unit in ("cost_a", "cost_b"):
            self.conv2: nn.Module = CoST(planes, planes, stride=stride, mode=unit[-1], **(cost or {}))
        else:
            self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride),
                                   padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Pool2 = Literal["2x1x1", "3x1x1", "none"]


def temporal_pool2(kind: str) -> nn.Module:
    """The temporal pool after res2 that halves T: the authors' code (and the non-local baselines
    the paper follows) use max 2x1x1 /2; the paper's Table 1 writes max 3x1x1 /2 (padded here)."""
    if kind == "2x1x1":
        return nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
    if kind == "3x1x1":
        return nn.MaxPool3d((3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))
    return nn.Identity()  # "none"


class ZeroMeanConv3d(nn.Conv3d):
    """A convolution whose every (output, input channel) kernel sums to zero, so it cannot see a
    channel's local mean: a clip's colour. A small model trained from scratch on objects of any
    colour over any background learns their motion only this way (bench/RESULTS.md, motion grid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight - self.weight.mean(dim=(2, 3, 4), keepdim=True), self.bias)


class VideoResNet(nn.Module):
    """conv1 (conv1_t)x7x7 /(conv1_stride_t,s,s) - pool1 max (pool1_t)x3x3 /(pool1_stride_t,s,s) -
    res2 - pool2 (temporal, /2) - res3 - res4 - res5 - global average pool - dropout - fc.

    The defaults are the authors' published 8-frame trunk (conv1 1x7x7, pool1 1x3x3, pool2 2x1x1);
    their 32-frame models use conv1_t=5, conv1_stride_t=2, pool1_t=2, pool1_stride_t=2, so that
    res3-res5 see T/8. The paper's Table 1 writes pool1 3x3x3 (pool1_t=3) and pool2 3x1x1. The
    spatial strides s (conv1_stride_s, pool1_stride_s) are 2; 1 suits inputs of a few dozen pixels.
    ``conv1_zero_mean`` makes conv1 a ZeroMeanConv3d (small models from scratch; not ImageNet's stem)."""

    def __init__(self, *, unit: Unit, num_classes: int, blocks: Sequence[int],
                 temporal: Sequence[Sequence[int]], width: int = 64, conv1_t: int = 1, conv1_stride_t: int = 1,
                 pool1_t: int = 1, pool1_stride_t: int = 1, conv1_stride_s: int = 2, pool1_stride_s: int = 2,
                 conv1_zero_mean: bool = False, pool2: Pool2 = "2x1x1", dropout: float = 0.5,
                 cost_shared: bool = True, cost_impl: str = "auto", cost_a_init: str = "spatial",
                 frozen_bn: bool = False) -> None:
        super().__init__()
        self.unit, self.temporal = unit, tuple(tuple(s) for s in temporal)
        conv = ZeroMeanConv3d if conv1_zero_mean else nn.Conv3d
        self.conv1 = conv(3, width, (conv1_t, 7, 7), stride=(conv1_stride_t, conv1_stride_s, conv1_stride_s),
                          padding=(conv1_t // 2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        # An odd temporal kernel is padded to keep T; the authors' 2x3x3 pool (with stride 2) is not.
        self.maxpool = nn.MaxPool3d((pool1_t, 3, 3), stride=(pool1_stride_t, pool1_stride_s, pool1_stride_s),
                                    padding=(pool1_t // 2 if pool1_t % 2 else 0, 1, 1))
        self.pool2 = temporal_pool2(pool2)
        in_channels = width
        cost = {"shared": cost_shared, "impl": cost_impl, "a_init": cost_a_init}  # the CoST units' settings
        for stage, (n, marks) in enumerate(zip(blocks, self.temporal, strict=True)):
            planes = width * 2**stage
            units = []
            for i in range(n):
                kind = unit if marks[i] else "2d"
                stride = 2 if stage > 0 and i == 0 else 1
                units.append(Bottleneck(in_channels, planes, stride=stride, unit=kind,
                                        cost=cost))
                in_channels = planes * Bottleneck.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*units))
        self.num_features = in_channels
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()
        self.frozen_bn = False
        if frozen_bn:
            self.freeze_batchnorm()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, T, H, W)
        # Sizes with the default spatial strides; T' = T, or T/4 with the 32-frame stem.
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, w, T', H/4, W/4)
        x = self.pool2(self.layer1(x))  # (N, 4w, T'/2, H/4, W/4)
        x = self.layer2(x)  # (N, 8w, T'/2, H/8, W/8)
        x = self.layer3(x)  # (N, 16w, T'/2, H/16, W/16)
        return self.layer4(x)  # (N, 32w, T'/2, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x).flatten(1)  # (N, 32w)
        return x if pre_logits else self.fc(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (N, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def cost_layers(self) -> dict[str, CoST]:
        return {name: m for name, m in self.named_modules() if isinstance(m, CoST)}

    def freeze_batchnorm(self) -> None:
        """Use running statistics and stop learning BN affine parameters (paper: 32-frame
        fine-tuning). Stays frozen across ``train()`` calls."""
        self.frozen_bn = True
        for m in self.modules():
            if isinstance(m, nn.BatchNorm3d):
                for p in m.parameters():
                    p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> VideoResNet:
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm3d):
                    m.eval()
        return self


def create_model(spec: ModelSpec, num_classes: int) -> VideoResNet:
    """The model ``spec`` describes, with ``num_classes`` outputs; a ValueError names the first
    setting no model can be built with. Custom ``blocks`` without a ``temporal`` table mark every
    unit temporal."""
    wrong = problems(spec)
    if wrong:
        key, text = wrong[0]
        raise ValueError(f"model setting '{key}'{text}")
    blocks = spec.blocks or STAGE_BLOCKS[spec.depth]
    temporal = spec.temporal or (TEMPORAL[spec.depth] if spec.blocks is None else tuple((1,) * n for n in blocks))
    trunk = {f.name: getattr(spec, f.name) for f in fields(ModelSpec)
             if f.name not in ("arch", "depth", "blocks", "temporal")}
    return VideoResNet(unit=UNITS[spec.arch], num_classes=num_classes, blocks=blocks, temporal=temporal, **trunk)


def build_model(arch: str, *, num_classes: int = 400, **settings) -> VideoResNet:
    """``create_model`` by keywords, as timm's: ``build_model("cost_b", depth=101, num_classes=400)``;
    ``settings`` are ModelSpec's fields."""
    return create_model(ModelSpec(arch=arch, **settings), num_classes)


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 5-D weights (Conv3d) in channels-last-3d memory, in place. torch's
    ``model.to(memory_format=torch.channels_last_3d)`` raises on any 4-D weight, and CoST's shared
    3x3 kernel is one; it stays as it is (the op reshapes it per view anyway).

    Copied rather than ``.contiguous(memory_format=...)``: a 1x1x1 kernel is contiguous in both
    layouts, so that call would keep its row-major strides, while its gradient comes back with
    channels-last ones; DDP then warns "Grad strides do not match bucket view strides" and copies
    each such gradient into its bucket at every step."""
    for param in model.parameters():
        if param.dim() == 5:
            param.data = torch.empty_like(param.data, memory_format=torch.channels_last_3d).copy_(param.data)
    return model
