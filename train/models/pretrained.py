"""Initialise a video ResNet from an ImageNet-pretrained 2D ResNet state dict (torchvision keys).

    report = load_2d_pretrained(model, "resnet50-0676ba61.pth")
    print(report.summary())

Rules, key by key (names are the same in both networks):
* a 2D kernel (O, I, k, k) where the model has (O, I, 1, k, k) becomes 1xkxk; a 1xkxk kernel where
  the model has txkxk (the 32-frame stem fine-tuned from an 8-frame model) is inflated as below;
* C3D's inflated first convolution (O, I, 3, 1, 1) receives the 2D 1x1 kernel repeated over the
  3 time steps and divided by 3 (``inflate="mean"``, as I3D and the non-local networks), so a
  clip of identical frames gives the 2D response away from the clip's ends; ``inflate="center"``
  puts the 2D kernel at the central time step and zeros elsewhere (the 2D response everywhere);
* CoST's shared kernel (O, I, 3, 3) is the 2D 3x3 kernel itself (per view, when unshared);
* BatchNorm parameters and running statistics are copied as they are;
* the classifier (``fc.*``) is not loaded: it is re-initialised for the target classes.
Keys the model has but the file lacks (CoST coefficients, the classifier) and keys the file has
but the model lacks are reported; a shape that fits none of the rules is an error naming the key.
No download: the path is given by the user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn


class PretrainedError(ValueError):
    """The state dict does not fit the model; the message names the key."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    skipped: list[str] = field(default_factory=list)  # deliberately not loaded (classifier)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors; skipped {len(self.skipped)} (classifier)"]
        if self.missing:
            lines.append(f"missing from the file ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"not in the model ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        return "\n".join(lines)


def read_state_dict(source: str | os.PathLike | dict) -> dict[str, torch.Tensor]:
    """A state dict from a file (plain, or under 'state_dict' / 'model'), 'module.' prefixes removed."""
    if isinstance(source, dict):
        sd = source
    else:
        if not os.path.isfile(source):
            raise PretrainedError(f"pretrained weights file {source} does not exist")
        sd = torch.load(source, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd.get(key), dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def convert(key: str, src: torch.Tensor, dst: torch.Tensor, inflate: str) -> torch.Tensor:
    """``src`` (2D, or a 3D kernel one step deep) reshaped/inflated to ``dst``'s shape, or a
    PretrainedError naming ``key``."""
    if src.shape == dst.shape:
        return src
    if src.dim() == 5 and src.shape[2] == 1 and dst.dim() == 5:  # e.g. an 8-frame model's 1x7x7 conv1
        src = src[:, :, 0]
    is_2d_of = src.dim() == 4 and dst.dim() == 5 and dst.shape[:2] == src.shape[:2]
    if is_2d_of and dst.shape[3:] == src.shape[2:]:
        t = dst.shape[2]
        if t == 1:
            return src.unsqueeze(2)
        if inflate == "mean":
            return src.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
        out = torch.zeros_like(dst, dtype=src.dtype)
        out[:, :, t // 2] = src
        return out
    if dst.dim() == 5 and dst.shape[0] == 3 and dst.shape[1:] == src.shape:  # unshared CoST kernels
        return src.expand_as(dst).clone()
    raise PretrainedError(f"pretrained key '{key}': shape {tuple(src.shape)} does not fit the model's "
                          f"{tuple(dst.shape)}; is this a 2D ResNet of the same depth and width?")


@torch.no_grad()
def load_2d_pretrained(model: nn.Module, source: str | os.PathLike | dict, *,
                       inflate: Literal["mean", "center"] = "mean") -> LoadReport:
    if inflate not in ("mean", "center"):
        raise ValueError(f"inflate must be 'mean' or 'center', got {inflate!r}")
    sd = read_state_dict(source)
    own = model.state_dict()
    report = LoadReport()
    for key, src in sd.items():
        if key.startswith("fc."):
            report.skipped.append(key)
        elif key not in own:
            report.unexpected.append(key)
        else:
            own[key].copy_(convert(key, src, own[key], inflate))
            report.loaded.append(key)
    report.missing = [k for k in own if k not in sd and not k.startswith("fc.")]
    return report
