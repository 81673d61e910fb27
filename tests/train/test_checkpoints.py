"""Weights files and training states read from a local path or the S3 test server."""

import fsspec
import pytest
import torch

from pipeline.store import endpoint_options
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
