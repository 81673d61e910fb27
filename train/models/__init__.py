"""C2D / C3D / CoST(a) / CoST(b) video ResNets. Imports only torch (no Ray, MLflow or data code).

    model = create_model(ModelSpec(arch="cost_b", depth=50), num_classes=400)

The spec and its check import no torch, so a driver checks a config before torch loads: the torch
names below load with their module on first use.
"""

import importlib

from train.models.spec import ARCHS, IMPLS, TEMPORAL, ModelSpec, problems

_MODULES = {"complexity": "complexity", "CoST": "cost", "compose_kernel": "cost", "formulations": "cost",
            "mix_views": "cost", "view_kernel": "cost", "LoadReport": "pretrained", "PretrainedError": "pretrained",
            "load_2d_pretrained": "pretrained", "VideoResNet": "resnet", "build_model": "resnet",
            "create_model": "resnet", "to_channels_last": "resnet"}

__all__ = ["ARCHS", "IMPLS", "TEMPORAL", "ModelSpec", "problems", *_MODULES]


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module 'train.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"train.models.{_MODULES[name]}"), name)
    globals()[name] = value  # kept: loading train.models.complexity set the name to that module
    return value
