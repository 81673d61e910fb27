"""ImageNet 2D initialisation from a state dict in torchvision's key layout, made by the test."""

import pytest
import torch

from train.models import PretrainedError, build_model, load_2d_pretrained

TINY = dict(blocks=(1, 2, 1, 1), width=8, temporal=((1,), (1, 0), (1,), (1,)))


def imagenet_like_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The 2D ResNet with this trunk's keys and 2D shapes, random values, a 1000-way fc."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, t in build_model("c2d", num_classes=1000, **TINY).state_dict().items():
        shape = t.shape[:2] + t.shape[3:] if t.dim() == 5 else t.shape
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif "running_var" in key:
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.1
    return sd


@pytest.mark.parametrize("arch", ["c2d", "c3d", "cost_a", "cost_b"])
def test_every_trunk_weight_is_initialised(tmp_path, arch):
    sd = imagenet_like_state_dict()
    path = tmp_path / "resnet2d.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = build_model(arch, num_classes=5, **TINY)
    report = load_2d_pretrained(model, path)
    own = model.state_dict()
    for key, src in sd.items():
        if key.startswith("fc."):
            continue
        dst = own[key]
        if dst.dim() == 5 and dst.shape[2] == 3:  # C3D's inflated 3x1x1: the 2D kernel / 3 per step
            for t in range(3):
                torch.testing.assert_close(dst[:, :, t], src / 3)
        else:
            torch.testing.assert_close(dst.reshape(src.shape), src)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert model.fc.weight.shape == (5, 256)
    # Only CoST's own parameters are new; they are reported, not silently left out.
    new = {"c2d": set(), "c3d": set(), "cost_a": {"alpha_logits"},
           "cost_b": {"channel_fc.weight", "view_fc.weight"}}[arch]
    assert {k.split(".conv2.")[-1] for k in report.missing} == new
    assert report.unexpected == []


def test_c2d_on_identical_frames_gives_identical_features_per_time_step():
    model = build_model("c2d", num_classes=5, **TINY)
    load_2d_pretrained(model, imagenet_like_state_dict())
    model.eval()
    frame = torch.randn(1, 3, 1, 64, 64)
    feats = model.forward_features(frame.expand(1, 3, 8, 64, 64).contiguous())  # (1, C, 4, 2, 2)
    for t in range(1, feats.shape[2]):
        torch.testing.assert_close(feats[:, :, t], feats[:, :, 0])


def test_center_inflated_c3d_equals_c2d():
    sd = imagenet_like_state_dict()
    c2d, c3d = build_model("c2d", num_classes=5, **TINY), build_model("c3d", num_classes=5, **TINY)
    load_2d_pretrained(c2d, sd)
    load_2d_pretrained(c3d, sd, inflate="center")
    c3d.fc.load_state_dict(c2d.fc.state_dict())
    x = torch.randn(2, 3, 8, 64, 64)
    torch.testing.assert_close(c3d.eval()(x), c2d.eval()(x), atol=1e-5, rtol=1e-4)


def test_wrong_shape_names_the_key_and_extra_keys_are_reported():
    sd = imagenet_like_state_dict()
    sd["layer2.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(PretrainedError, match="'layer2.0.conv1.weight'"):
        load_2d_pretrained(build_model("c2d", num_classes=5, **TINY), sd)
    sd = imagenet_like_state_dict()
    sd["layer9.0.conv1.weight"] = torch.zeros(1)
    del sd["layer1.0.bn1.bias"]
    report = load_2d_pretrained(build_model("c2d", num_classes=5, **TINY), sd)
    assert report.unexpected == ["layer9.0.conv1.weight"] and report.missing == ["layer1.0.bn1.bias"]
    assert "layer9.0.conv1.weight" in report.summary()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PretrainedError, match="does not exist"):
        load_2d_pretrained(build_model("c2d", num_classes=5, **TINY), tmp_path / "nope.pth")
