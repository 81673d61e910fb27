"""C2D / C3D / CoST(a) / CoST(b) video ResNets. Imports only torch (no Ray, MLflow or data code)."""

from train.models.complexity import complexity
from train.models.cost import IMPLS, CoST, compose_kernel, formulations, mix_views, view_kernel
from train.models.pretrained import LoadReport, PretrainedError, load_2d_pretrained
from train.models.resnet import ARCHS, TEMPORAL, VideoResNet, build_model, to_channels_last

__all__ = ["ARCHS", "IMPLS", "TEMPORAL", "CoST", "LoadReport", "PretrainedError", "VideoResNet", "build_model",
           "complexity", "compose_kernel", "formulations", "load_2d_pretrained", "mix_views",
           "to_channels_last", "view_kernel"]
