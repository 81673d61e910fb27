"""Training state on disk: one ``state.pt`` per checkpoint directory, and models rebuilt from it.

    state = load_state("s3://bucket/runs/k400-cost_b/checkpoint_2026-11-24_10-00-00.000000")
    model = model_from_state(state)            # the trained network, in eval mode

A state holds the model's and optimizer's and scheduler's state dicts, the position in training
(``epoch``, ``epoch_step``, ``step``), the resolved config, the class names and the store's
preparation parameters (``store_params``: how a new video must be decoded to match). Torch's RNG is
not stored: every worker re-seeds it from (seed, rank, step) when it starts, so a resumed run
draws the same dropout masks on every worker as an uninterrupted one would from that step.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from pipeline.storage import filesystem, is_node_local, read_bytes
from train.config import TrainConfig, from_dict
from train.models import VideoResNet, create_model
from train.models.pretrained import convert

STATE_FILE = "state.pt"


class CheckpointError(ValueError):
    """A checkpoint path that holds no usable training state."""


def save_state(directory: str | os.PathLike, state: dict) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save(state, path)
    return path


def load_state(source, storage_options: dict | None = None) -> dict:
    """From a ``ray.train.Checkpoint``, a checkpoint directory or a ``state.pt`` file (local or s3://)."""
    if hasattr(source, "as_directory"):  # ray.train.Checkpoint
        with source.as_directory() as d:
            return load_state(d)
    url = str(source).rstrip("/")
    fs, path = filesystem(url, storage_options)
    if fs.isdir(path):
        path = f"{path}/{STATE_FILE}"
    if not fs.exists(path):
        raise CheckpointError(f"{url}: no {STATE_FILE} there; give a checkpoint directory of a training run "
                              f"or its {STATE_FILE}")
    with fs.open(path, "rb") as f:
        return state_from_bytes(f.read(), url)


def state_from_bytes(data: bytes, where: str) -> dict:
    """A training state from a state.pt's bytes. Tensors and plain Python values only (``weights_only``):
    a checkpoint folder others can write (a shared bucket) must not run code in every worker."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise CheckpointError(f"{where}: cannot read {STATE_FILE}: {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{where}: {STATE_FILE} is not a training state of this project")
    return state


def read_state(fs, path: str) -> dict:
    """The state of the checkpoint folder ``path`` on the pyarrow filesystem ``fs`` (Ray Train's)."""
    with fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
        return state_from_bytes(f.read(), path)


def newest_loadable(fs, latest: str, say) -> tuple[dict, str]:
    """(state, path) of the newest checkpoint of a run that loads: ``latest`` (Ray Train's latest,
    a path on the pyarrow filesystem ``fs``), else the run folder's older ``checkpoint_*`` folders,
    newest first (Ray names them by time). A damaged one - a node lost while writing it - is named
    by ``say`` in one line and its state moved aside to state.pt.damaged, not deleted."""
    import pyarrow.fs as pafs

    parent, name = latest.rstrip("/").rsplit("/", 1)
    older = sorted((i.base_name for i in fs.get_file_info(pafs.FileSelector(parent))
                    if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
                    and i.base_name < name), reverse=True)
    for path in [f"{parent}/{name}", *(f"{parent}/{n}" for n in older)]:
        file = f"{path}/{STATE_FILE}"
        try:
            return read_state(fs, path), path
        except (OSError, CheckpointError) as e:
            if fs.get_file_info(file).type == pafs.FileType.File:
                fs.move(file, f"{file}.damaged")
            say(f"checkpoint {path} does not load ({str(e).splitlines()[0]}); its {STATE_FILE} is kept "
                f"as {STATE_FILE}.damaged, and the run goes on from the one before")
    raise CheckpointError(f"no checkpoint of the run in {parent} loads; start the run again under another name")


def checkpoint_url(storage_path: str, path: str) -> str:
    """A checkpoint's URL from its path on Ray Train's storage filesystem, which for an object store
    lacks the scheme (``bucket/runs/...``) that a later read (analyze, predict, --eval-only) needs."""
    scheme = "" if is_node_local(storage_path) else storage_path.partition("://")[0]
    return f"{scheme}://{path}" if scheme else path


def read_weights(url: str, storage_options: dict | None = None) -> dict:
    """A weights file (e.g. an ImageNet state dict for ``model.pretrained``), local or s3://."""
    return torch.load(io.BytesIO(read_bytes(url, storage_options)), map_location="cpu", weights_only=True)


def model_from_state(state: dict) -> VideoResNet:
    cfg = from_dict(TrainConfig, state["config"])
    model = create_model(cfg.model, len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.eval()


def init_from_checkpoint(model: VideoResNet, source: str, opts: dict, inflate: str) -> None:
    """Fine-tuning: every weight from an earlier run's checkpoint; the classifier only if it fits. A
    temporally deeper stem (the 32-frame 5x7x7 conv1 from an 8-frame 1x7x7 one) is inflated."""
    sd = load_state(source, opts)["model"]
    if sd.get("fc.weight") is not None and sd["fc.weight"].shape != model.fc.weight.shape:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = model.state_dict()
    sd = {k: convert(k, v, own[k], inflate) if k in own and not k.startswith("fc.") else v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.startswith("fc.")] + list(unexpected)
    if bad:
        raise ValueError(f"model.finetune_from {source}: keys do not match this model: {', '.join(bad[:5])}")
