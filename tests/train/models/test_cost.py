"""The CoST operation is exactly the paper's: axis mapping, C2D limit, CoST(b) branch, and every
formulation (stacked, fold, composed) equal to three view convolutions, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from train.models import CoST, build_model, compose_kernel, formulations, view_kernel
from train.models.views import ViewStats

torch.manual_seed(0)


def one_hot_alpha(layer: CoST, view: int) -> None:
    """Logits whose float32 softmax is exactly one-hot."""
    with torch.no_grad():
        layer.alpha_logits.fill_(-100.0)
        layer.alpha_logits[:, view] = 100.0


@pytest.mark.parametrize("impl", ["views", "composed"])
@pytest.mark.parametrize("stride", [1, 2])
def test_cost_a_with_alpha_100_is_a_c2d_convolution(impl, stride):
    layer = CoST(4, 6, stride=stride, mode="a", impl=impl)
    one_hot_alpha(layer, 0)
    assert torch.equal(layer.coefficients(), torch.tensor([[1.0, 0.0, 0.0]]).repeat(6, 1))
    x = torch.randn(2, 4, 5, 9, 9)
    c2d = F.conv3d(x, layer.weight.unsqueeze(2), stride=(1, stride, stride), padding=(0, 1, 1))
    tol = 0 if impl == "views" else 1e-5
    torch.testing.assert_close(layer(x), c2d, atol=tol, rtol=tol)


def test_composed_kernel_has_19_taps_and_zero_corners():
    w = torch.randn(3, 5, 4, 3, 3) + 3.0  # no accidental zeros
    k = compose_kernel(w, torch.softmax(torch.randn(5, 3), -1))
    assert k.shape == (5, 4, 3, 3, 3)
    nonzero = (k != 0).all(dim=(0, 1))
    assert int(nonzero.sum()) == 19
    for t in (0, 2):
        for h in (0, 2):
            for w_ in (0, 2):
                assert not nonzero[t, h, w_]


def test_cost_a_equals_one_conv3d_with_composed_kernel():
    layer = CoST(4, 6, mode="a", impl="views")
    with torch.no_grad():
        layer.alpha_logits.normal_()
    x = torch.randn(2, 4, 6, 8, 8)
    alpha = torch.softmax(layer.alpha_logits, -1)
    kernel = compose_kernel(layer.weight.expand(3, *layer.weight.shape), alpha)
    torch.testing.assert_close(layer(x), F.conv3d(x, kernel, padding=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["a", "b"])
def test_unshared_with_equal_views_equals_shared(mode):
    shared = CoST(4, 6, mode=mode, impl="views")
    unshared = CoST(4, 6, mode=mode, shared=False, impl="views")
    state = shared.state_dict()
    state["weight"] = shared.weight.detach().expand(3, -1, -1, -1, -1).clone()
    unshared.load_state_dict(state)
    x = torch.randn(2, 4, 5, 7, 7)
    torch.testing.assert_close(unshared(x), shared(x))


FORMULATIONS = [(mode, impl) for mode in "ab" for impl in formulations(mode) if impl != "views"]


def random_pair(mode: str, impl: str, **kwargs) -> tuple[CoST, CoST]:
    """The reference (three view convolutions) and ``impl`` with the same random parameters."""
    ref = CoST(3, 5, mode=mode, impl="views", **kwargs)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    other = CoST(3, 5, mode=mode, impl=impl, **kwargs)
    other.load_state_dict(ref.state_dict())
    return ref, other


def outputs_and_grads(layer: CoST, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    (y * g).sum().backward()
    params = {n.removeprefix("_orig_mod."): p.grad for n, p in layer.named_parameters()}  # compiled too
    return {"output": y.detach(), "input grad": x.grad, **params}


@pytest.mark.parametrize("mode,impl", FORMULATIONS)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_every_formulation_equals_the_views_forward_and_backward(mode, impl, shared, stride, layout):
    ref, other = random_pair(mode, impl, shared=shared, stride=stride)
    ref, other = ref.double(), other.double()  # float64: any real difference is far above rounding
    x = torch.randn(2, 3, 5, 9, 8, dtype=torch.float64)  # odd sizes: strided views keep row / column 0
    if layout == "channels_last_3d":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    g = torch.randn_like(ref(x))
    with ViewStats(ref, 1) as want_alpha, ViewStats(other, 1) as got_alpha:
        want, got = outputs_and_grads(ref, x, g), outputs_and_grads(other, x, g)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-10, rtol=1e-10,
                                   msg=lambda m, name=name: f"{name}: {m}")
    if mode == "b":
        torch.testing.assert_close(got_alpha.latest[""], want_alpha.latest[""])


def test_cost_b_fold_compiles_without_graph_breaks():
    """fullgraph=True fails on any graph break; the compiled layer matches eager, with gradients."""
    ref, other = random_pair("b", "fold", stride=2)
    compiled = torch.compile(other.double(), fullgraph=True)
    x, g = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64), torch.randn(2, 5, 4, 4, 4, dtype=torch.float64)
    want, got = outputs_and_grads(ref.double(), x, g), outputs_and_grads(compiled, x, g)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-9, rtol=1e-9, msg=name)


def expected_offsets(view: str, i: int, j: int) -> tuple[int, int, int]:
    """The documented mapping of kernel tap (i, j) to (dt, dh, dw) per view."""
    return {"hw": (0, i, j), "tw": (i, 0, j), "th": (i, j, 0)}[view]


@pytest.mark.parametrize("view", ["hw", "tw", "th"])
def test_axis_mapping_with_an_impulse(view):
    w = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # distinct taps
    x = torch.zeros(1, 1, 7, 7, 7)
    t0, h0, w0 = 3, 2, 4
    x[0, 0, t0, h0, w0] = 1.0
    padding = {"hw": (0, 1, 1), "tw": (1, 0, 1), "th": (1, 1, 0)}[view]
    out = F.conv3d(x, view_kernel(w, view), padding=padding)[0, 0]  # (T, H, W)
    layer = CoST(1, 1, mode="a", impl="views")
    with torch.no_grad():
        layer.weight.copy_(w)
    one_hot_alpha(layer, ("hw", "tw", "th").index(view))
    assert torch.equal(layer(x)[0, 0], out)  # the layer's view is this convolution
    nz = out.nonzero().tolist()
    plane_axis = {"hw": 0, "tw": 1, "th": 2}[view]
    assert {p[plane_axis] for p in nz} == {(t0, h0, w0)[plane_axis]}  # one frame / row / column
    assert len(nz) == 9
    for i in range(3):
        for j in range(3):
            dt, dh, dw = expected_offsets(view, i, j)
            # cross-correlation: an impulse at p answers K[d] at p + 1 - d on each padded axis
            pos = tuple(p + (1 - d if a != plane_axis else 0) for a, (p, d) in
                        enumerate(zip((t0, h0, w0), (dt, dh, dw), strict=True)))
            assert out[pos] == w[0, 0, i, j], (view, i, j)


def test_cost_b_coefficients_follow_the_paper_branch():
    layer = CoST(4, 6, mode="b")
    assert layer.coefficients() is None
    assert abs(layer.channel_fc.weight.std().item() - 0.01) < 0.005 and layer.channel_fc.bias is None
    assert layer.view_fc.weight.shape == (3, 3) and layer.view_fc.bias is None
    with torch.no_grad():  # larger weights so that the coefficients differ visibly between samples
        layer.channel_fc.weight.normal_(std=0.5)
        layer.view_fc.weight.normal_(std=0.5)
    x = torch.randn(3, 4, 5, 8, 8)
    with ViewStats(layer, 1) as stats:
        y = layer(x)
    views = layer.views(x)
    pooled = torch.stack([v.flatten(2).max(-1).values for v in views], dim=-1)  # (N, C, 3)
    mixed = torch.einsum("dc,ncv->ndv", layer.channel_fc.weight, pooled)
    alpha = torch.softmax(torch.einsum("uv,ncv->ncu", layer.view_fc.weight, mixed), dim=-1)
    coeff = stats.latest[""]
    torch.testing.assert_close(coeff, alpha)
    torch.testing.assert_close(coeff.sum(-1), torch.ones(3, 6))
    assert not torch.allclose(coeff[0], coeff[1])  # per sample
    manual = sum(alpha[:, :, v, None, None, None] * views[v] for v in range(3))
    torch.testing.assert_close(y, manual)


def test_cost_a_starts_spatial_as_the_authors_or_equal_from_scratch():
    shares = CoST.coefficients
    torch.testing.assert_close(shares(CoST(4, 8)), torch.tensor([[0.670, 0.165, 0.165]]).expand(8, 3),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(shares(CoST(4, 8, a_init="equal")), torch.full((8, 3), 1 / 3))
    # a whole model carries the setting to every CoST(a) layer
    model = build_model("cost_a", blocks=(1, 1, 1, 1), width=8, num_classes=2, cost_a_init="equal")
    layers = [m for m in model.modules() if isinstance(m, CoST)]
    assert layers and all(torch.allclose(shares(m), torch.tensor(1 / 3)) for m in layers)
    with pytest.raises(ValueError, match="a_init"):
        CoST(4, 4, a_init="uniform")
    with pytest.raises(ValueError, match="'cost_a_init' must be one of spatial, equal"):  # the builder: the same check
        build_model("cost_a", blocks=(1, 1, 1, 1), width=8, num_classes=2, cost_a_init="uniform")


def test_cost_b_rejects_composed_and_modes_are_checked():
    assert formulations("a") == ("views", "stacked", "fold", "composed")
    assert formulations("b") == ("views", "stacked", "fold")
    with pytest.raises(ValueError, match="CoST\\(a\\) only"):
        CoST(4, 4, mode="b", impl="composed")
    with pytest.raises(ValueError, match="mode"):
        CoST(4, 4, mode="c")
    with pytest.raises(ValueError, match="'cost_impl' must be one of"):
        CoST(4, 4, impl="einsum")
    for arch in ("cost_b", "c3d"):  # the builder, by the same check
        with pytest.raises(ValueError, match="'cost_impl': 'composed' is for CoST\\(a\\) only"):
            build_model(arch, blocks=(1, 1, 1, 1), width=8, num_classes=2, cost_impl="composed")


@pytest.mark.gpu
@pytest.mark.parametrize("mode,impl", FORMULATIONS + [("a", "auto"), ("b", "auto")])
def test_cuda_formulations_agree(mode, impl):
    """On the GPU every formulation matches the three-view reference: fp32 with gradients, then bf16."""
    ref = CoST(16, 16, mode=mode, impl="views").cuda()
    fast = CoST(16, 16, mode=mode, impl=impl).cuda()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 4, 14, 14, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    g = torch.randn(2, 16, 4, 14, 14, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # exact fp32 comparison
        want, got = outputs_and_grads(ref, x, g), outputs_and_grads(fast, x, g)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-3, rtol=1e-4, msg=name)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(fast(x).float(), ref(x).float(), atol=0.1, rtol=0.05)
