"""Weights files and training states read from a local path or the S3 test server."""

import io

import fsspec
import pyarrow.fs as pafs
import pytest
import torch

from pipeline.storage import endpoint_options
from train.checkpoints import CheckpointError, load_state, newest_loadable, read_state, read_weights, save_state
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
    from train.checkpoints import init_from_checkpoint

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


def write_checkpoints(fs, run: str, steps: list[int]) -> list[str]:
    """A run folder's checkpoints (Ray Train names them by time), each a state at its step."""
    paths = []
    for i, step in enumerate(steps):
        path = f"{run}/checkpoint_2026-12-05_10-00-{i:02d}.000000"
        fs.create_dir(path)
        buffer = io.BytesIO()
        torch.save(dict(model={}, config={}, classes=["a"], step=step), buffer)
        with fs.open_output_stream(f"{path}/state.pt") as f:
            f.write(buffer.getvalue())
        paths.append(path)
    return paths


@pytest.mark.parametrize("where", ["local", "s3"])
def test_resume_skips_a_damaged_checkpoint_and_keeps_it(where, s3_server, tmp_path):
    """A node lost while writing leaves a truncated state.pt: the run goes on from the one before, says
    so in one line, and keeps the damaged file. Ray Train's filesystem is pyarrow's."""
    if where == "s3":
        fs = pafs.S3FileSystem(endpoint_override=s3_server.endpoint_url, scheme="http")
        run = f"{s3_server.bucket}/runs/damaged"
    else:
        fs, run = pafs.LocalFileSystem(), str(tmp_path / "damaged")
    first, second, latest = write_checkpoints(fs, run, [10, 20, 30])
    with fs.open_input_stream(f"{latest}/state.pt") as f:
        whole = f.read()
    with fs.open_output_stream(f"{latest}/state.pt") as f:
        f.write(whole[: len(whole) // 2])
    said = []
    state, path = newest_loadable(fs, latest, said.append)
    assert (state["step"], path) == (20, second) and len(said) == 1
    assert latest in said[0] and "state.pt.damaged" in said[0] and "\n" not in said[0]
    assert fs.get_file_info(f"{latest}/state.pt.damaged").size == len(whole) // 2  # kept, not deleted
    # Ray's latest may be the moved-aside one again after a restart: the same one is found.
    assert newest_loadable(fs, latest, said.append)[1] == second and read_state(fs, second)["step"] == 20
    for path in (first, second):
        fs.move(f"{path}/state.pt", f"{path}/state.pt.damaged")
    with pytest.raises(CheckpointError, match="no checkpoint of the run .* loads; start the run again"):
        newest_loadable(fs, latest, said.append)


class Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_state_that_would_run_code_is_refused(tmp_path, capsys):
    save_state(tmp_path, dict(model={}, config={}, classes=["a"], extra=Payload()))
    with pytest.raises(CheckpointError, match="cannot read state.pt"):
        load_state(str(tmp_path))
    assert "code ran" not in capsys.readouterr().out
