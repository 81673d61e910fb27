"""The video ResNet trunk: parameter counts from the formula, shapes, model API, frozen BN."""

import pytest
import torch

from train.models import ARCHS, TEMPORAL, build_model

ARCH_NAMES = list(ARCHS)
TINY = dict(blocks=(1, 1, 1, 1), width=8)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def units(depth):
    """(stage, index, in_channels, planes, marked) for every residual unit of the ResNet."""
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    in_ch = 64
    for stage, n in enumerate(blocks):
        planes = 64 * 2**stage
        for i in range(n):
            yield stage, i, in_ch, planes, TEMPORAL[depth][stage][i]
            in_ch = 4 * planes


def resnet2d_params(depth: int, num_classes: int) -> int:
    """The 2D ResNet trunk + a num_classes-way fc, from the layer shapes."""
    total = 3 * 64 * 7 * 7 + 2 * 64  # conv1, bn1
    for _, i, in_ch, p, _ in units(depth):
        total += in_ch * p + 9 * p * p + p * 4 * p  # 1x1, 3x3, 1x1
        total += 2 * (p + p + 4 * p)  # three BN
        if i == 0:
            total += in_ch * 4 * p + 2 * 4 * p  # projection shortcut + BN
    return total + 2048 * num_classes + num_classes


@pytest.mark.parametrize("depth", [50, 101])
def test_parameter_counts_match_the_formula(depth):
    base = resnet2d_params(depth, 400)
    marked = [u for u in units(depth) if u[4]]
    expected = {
        "c2d": base,
        "c3d": base + sum(2 * in_ch * p for _, _, in_ch, p, _ in marked),  # 1x1 -> 3x1x1
        "cost_a": base + sum(3 * p for *_, p, _ in marked),
        "cost_b": base + sum(p * p + 9 for *_, p, _ in marked),
    }
    for arch, n in expected.items():
        assert count(build_model(arch, depth=depth, num_classes=400)) == n, arch
    if depth == 50:
        assert round(base / 1e6, 2) == 24.33


def test_temporal_table_marks_the_right_units():
    model = build_model("cost_a", depth=50, num_classes=10)
    marks = tuple(tuple(int(type(b.conv2).__name__ == "CoST") for b in getattr(model, f"layer{s}"))
                  for s in range(1, 5))
    assert marks == ((0, 1, 0), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (1, 0, 1))
    c3d = build_model("c3d", depth=50, num_classes=10)
    assert [b.conv1.kernel_size for b in c3d.layer1] == [(1, 1, 1), (3, 1, 1), (1, 1, 1)]
    with pytest.raises(ValueError, match="does not match blocks"):
        build_model("c3d", blocks=(1, 1, 1, 1), temporal=((1,), (1,), (1,), (1, 0)))
    with pytest.raises(ValueError, match="unknown arch 'i3d'"):
        build_model("i3d")


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_resnet50_forward_backward_on_cpu(arch):
    model = build_model(arch, depth=50, num_classes=7)
    x = torch.randn(2, 3, 8, 112, 112)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_tiny_model_follows_the_model_api(arch):
    model = build_model(arch, num_classes=5, **TINY)
    x = torch.randn(2, 3, 8, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 256, 4, 2, 2)  # T halved by pool2; 32x spatial stride
    assert model.forward_head(feats, pre_logits=True).shape == (2, 256)
    model.reset_classifier(11)
    assert model(x).shape == (2, 11)


def test_pool_settings():
    x = torch.randn(1, 3, 8, 32, 32)
    assert build_model("c2d", num_classes=2, pool2="none", **TINY).forward_features(x).shape[2] == 8
    assert build_model("c2d", num_classes=2, pool1_t=1, **TINY).maxpool.kernel_size == (1, 3, 3)
    # Table 1's padded 3x1x1 pool2 and the authors' 2x1x1 both halve T; only the padded one takes odd T.
    for pool2, t_in, t_out in (("2x1x1", 8, 4), ("3x1x1", 8, 4), ("2x1x1", 7, 3), ("3x1x1", 7, 4)):
        model = build_model("c2d", num_classes=2, pool2=pool2, **TINY)
        assert model.forward_features(torch.randn(1, 3, t_in, 32, 32)).shape[2] == t_out, pool2
    with pytest.raises(ValueError, match="pool2"):
        build_model("c2d", num_classes=2, pool2="4x1x1", **TINY)
    with pytest.raises(ValueError, match="'conv1_t' must be odd"):
        build_model("c2d", num_classes=2, conv1_t=4, **TINY)


@pytest.mark.parametrize("conv1_s, pool1_s, res2_side", [(2, 2, 8), (1, 2, 16), (2, 1, 16), (1, 1, 32)])
def test_stem_spatial_strides_set_the_resolution_res2_sees(conv1_s, pool1_s, res2_side):
    model = build_model("c3d", num_classes=2, conv1_stride_s=conv1_s, pool1_stride_s=pool1_s, **TINY)
    seen = {}
    model.layer1.register_forward_pre_hook(lambda module, args: seen.update(shape=args[0].shape[-2:]))
    assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 2)
    assert tuple(seen["shape"]) == (res2_side, res2_side)
    with pytest.raises(ValueError, match="'conv1_stride_s' must be 1 or 2"):
        build_model("c2d", num_classes=2, conv1_stride_s=4, **TINY)


@pytest.mark.parametrize("conv1_t", [1, 3])
def test_a_zero_mean_stem_is_blind_to_a_clips_colour_but_not_to_its_edges(conv1_t):
    torch.manual_seed(conv1_t)
    x = torch.randn(2, 3, 4, 24, 24)
    colour = torch.tensor([0.9, -0.4, 0.3]).view(1, 3, 1, 1, 1)
    for zero_mean in (True, False):
        conv1 = build_model("c3d", num_classes=2, conv1_t=conv1_t, conv1_zero_mean=zero_mean, **TINY).conv1
        change = (conv1(x + colour) - conv1(x))[:, :, conv1_t // 2:4 - conv1_t // 2, 2:-2, 2:-2]  # unpadded
        assert (change.abs().max() < 1e-5) == zero_mean
        assert conv1(x).std() > 0.1  # edges and texture still pass
    # The raw weights keep their names: checkpoints and exported state dicts are unchanged in layout.
    assert "conv1.weight" in build_model("c3d", num_classes=2, conv1_zero_mean=True, **TINY).state_dict()


def frames_entering(model, x) -> dict[str, int]:
    """T of the input of each stage, from forward pre-hooks."""
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].shape[2]
        return hook

    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_pre_hook(record(name))
    model(x)
    return seen


def test_the_authors_32_frame_stem_gives_res3_four_frames_like_the_8_frame_model():
    authors_32 = dict(conv1_t=5, conv1_stride_t=2, pool1_t=2, pool1_stride_t=2)
    model = build_model("cost_b", num_classes=2, **authors_32, **TINY)
    assert model.conv1.kernel_size == (5, 7, 7) and model.conv1.stride == (2, 2, 2)
    assert model.maxpool.kernel_size == (2, 3, 3) and model.maxpool.stride == (2, 2, 2)
    assert frames_entering(model, torch.randn(1, 3, 32, 32, 32)) == dict(layer1=8, layer2=4, layer3=4, layer4=4)
    assert frames_entering(build_model("cost_b", num_classes=2, **TINY), torch.randn(1, 3, 8, 32, 32)) == \
        dict(layer1=8, layer2=4, layer3=4, layer4=4)
    # Without that stem, 32 frames keep T=16 from res3 on: about 4x the arithmetic (ResNet-50, 224x224).
    from train.models import complexity

    def gflops(frames, **kw):
        return complexity(lambda: build_model("cost_b", depth=50, num_classes=400, **kw), (3, frames, 224, 224))[1]

    eight = gflops(8)
    assert gflops(32, **authors_32) < 1.5 * eight < 3.5 * eight < gflops(32)


def test_frozen_batchnorm_keeps_statistics_and_stays_frozen():
    model = build_model("cost_b", num_classes=3, frozen_bn=True, **TINY)
    model.train()
    bn = model.layer1[0].bn1
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 4, 32, 32) + 5.0).sum().backward()
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert bn.weight.grad is None and not bn.weight.requires_grad
    assert model.layer1[0].conv1.weight.grad is not None
    free = build_model("c2d", num_classes=3, **TINY).train()
    free(torch.randn(2, 3, 4, 32, 32) + 5.0)
    assert not torch.equal(free.layer1[0].bn1.running_mean, before)


def test_cost_layers_expose_view_coefficients():
    from train.models.views import ViewStats

    model = build_model("cost_b", num_classes=3, **TINY)
    with ViewStats(model, 3) as stats:
        model(torch.randn(2, 3, 4, 32, 32))
    coeffs = stats.latest
    assert len(coeffs) == 4 and all(c.shape[0] == 2 and c.shape[2] == 3 for c in coeffs.values())


@pytest.mark.parametrize("stride", [1, 2])
def test_cost_a_unit_with_alpha_hw_only_is_exactly_a_c2d_unit(stride):
    from train.models.resnet import Bottleneck

    c2d = Bottleneck(32, 8, stride=stride, unit="2d").eval()
    cost = Bottleneck(32, 8, stride=stride, unit="cost_a", cost={"impl": "views"}).eval()
    state = c2d.state_dict()
    state["conv2.weight"] = state["conv2.weight"].squeeze(2)  # (C, C, 1, 3, 3) -> shared 3x3 kernel
    state["conv2.alpha_logits"] = torch.tensor([100.0, -100.0, -100.0]).repeat(8, 1)  # softmax = (1, 0, 0)
    cost.load_state_dict(state)
    x = torch.randn(2, 32, 4, 10, 10)
    assert torch.equal(cost(x), c2d(x))
