"""Weights files and training states read from a local path or the S3 test server."""

import fsspec
import pytest
import torch

from pipeline.storage import endpoint_options
from train.checkpoints import CheckpointError, load_state, read_weights, save_state
from train.models import build_model, load_2d_pretrained


def test_imagenet_weights_and_states_load_from_s3(s3_server, tmp_path):
    weights = {"conv1.weight": torch.randn(8, 3, 7, 7)}
    torch.save(weights, tmp_path / "resnet.pth")
    opts = endpoint_options(s3_server.endpoint_url)
    url = f"s3://{s3_server.bucket}/weights/resnet.pth"
    fsspec.filesystem("s3", **opts).put(str(tmp_path / "resnet.pth"), url)
    got = read_weights(url, opts)
    assert torch.equal(got["conv1.weight"], weights["conv1.weight"])
    model = build_model("c2d", num_classes=3, blocks=(1, 1, 1, 1), width=8)
    assert "conv1.weight" in load_2d_pretrained(model, got).loaded
    assert torch.equal(model.conv1.weight[:, :, 0], weights["conv1.weight"])

    save_state(tmp_path, dict(model=model.state_dict(), config={}, classes=["a"]))
    fsspec.filesystem("s3", **opts).put(str(tmp_path / "state.pt"), f"s3://{s3_server.bucket}/run/ckpt/state.pt")
    assert load_state(f"s3://{s3_server.bucket}/run/ckpt", opts)["classes"] == ["a"]
    with pytest.raises(CheckpointError, match="no state.pt"):
        load_state(f"s3://{s3_server.bucket}/run/missing", opts)


def test_a_32_frame_model_is_fine_tuned_from_an_8_frame_checkpoint(tmp_path):
    from train.loop import init_from_checkpoint

    small = dict(blocks=(1, 1, 1, 1), width=8)
    eight = build_model("cost_b", num_classes=5, **small)
    save_state(tmp_path, dict(model=eight.state_dict(), config={}, classes=list("abcde")))
    thirty_two = build_model("cost_b", num_classes=3, conv1_t=5, conv1_stride_t=2, pool1_t=2, pool1_stride_t=2,
                             **small)
    init_from_checkpoint(thirty_two, str(tmp_path), {}, "mean")
    assert torch.allclose(thirty_two.conv1.weight, eight.conv1.weight.repeat(1, 1, 5, 1, 1) / 5)  # inflated
    assert torch.equal(thirty_two.layer2[0].conv2.weight, eight.layer2[0].conv2.weight)
    # On a clip of identical frames the inflated stem answers as the 8-frame one did.
    x = torch.randn(1, 3, 1, 32, 32).repeat(1, 1, 16, 1, 1)
    a, b = eight.eval().conv1(x), thirty_two.eval().conv1(x)
    assert torch.allclose(a[:, :, 4], b[:, :, 2], atol=1e-5)


def test_checkpoints_from_before_the_renamed_keys_still_load(tmp_path):
    from train.checkpoints import model_from_state
    from train.config import from_dict, to_dict
    from train.settings import TrainConfig

    model = build_model("c3d", num_classes=2, blocks=(1, 1, 1, 1), width=8, pool1_t=3, pool2="3x1x1")
    config = to_dict(from_dict(TrainConfig, {"data": {"store": "s"}}))
    del config["data"]["test_protocol"], config["model"]["pool2"]
    config["data"]["test_crops"], config["model"]["pool2"] = 3, True
    config["model"].update(arch="c3d", blocks=[1, 1, 1, 1], width=8, pool1_t=3)
    save_state(tmp_path, dict(model=model.state_dict(), config=config, classes=["a", "b"]))
    state = load_state(tmp_path)
    assert state["config"]["data"]["test_protocol"] == "three_crop"
    rebuilt = model_from_state(state)
    assert isinstance(rebuilt.pool2, torch.nn.MaxPool3d) and rebuilt.pool2.kernel_size == (3, 1, 1)
