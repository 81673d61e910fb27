"""Parameters and FLOPs per clip, counted on the meta device: exact on a known layer, consistent on models."""

import pytest
from torch import nn

from train.models import build_model, complexity

SMALL = dict(num_classes=5, blocks=(1, 1, 1, 1), width=8, pool1_t=1, pool2="none")


def test_one_convolution_is_counted_exactly():
    params, gflops = complexity(lambda: nn.Conv3d(3, 8, (1, 3, 3), padding=(0, 1, 1), bias=False), (3, 4, 16, 16))
    assert params * 1e6 == pytest.approx(8 * 3 * 9)
    assert gflops * 1e9 == pytest.approx(2 * 8 * 3 * 9 * 4 * 16 * 16)  # a multiply-add is 2 FLOPs


@pytest.mark.parametrize("arch", ["c2d", "c3d", "cost_a", "cost_b"])
def test_parameters_match_the_built_model(arch):
    params, gflops = complexity(lambda: build_model(arch, **SMALL), (3, 4, 32, 32))
    assert params * 1e6 == pytest.approx(sum(p.numel() for p in build_model(arch, **SMALL).parameters()))
    assert gflops > 0


def test_cost_costs_three_views_of_c2d_arithmetic_in_its_temporal_units():
    c2d, cost_a, c3d = (complexity(lambda a=a: build_model(a, depth=50, num_classes=400), (3, 8, 224, 224))
                        for a in ("c2d", "cost_a", "c3d"))
    assert c2d[0] == pytest.approx(24.33, abs=0.01)  # ResNet-50 C2D with 400 classes
    assert cost_a[0] - c2d[0] < 0.01  # CoST shares one 3x3 kernel: only the coefficients are new
    assert c3d[0] > c2d[0] + 4  # C3D's 3x1x1 inflation adds millions
    assert c2d[1] < c3d[1] < cost_a[1]  # three view convolutions cost more arithmetic than one
