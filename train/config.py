"""The training config (what `configs/*.yaml` hold) as typed dataclasses, and its loading.

    cfg = load_config(TrainConfig, "configs/kinetics400_r50_8f.yaml", ["model.arch=cost_a"])

A YAML may build on another: ``_base_: other.yaml`` (beside it) takes that file's keys, with its own
on top. Overrides are dotted YAML scalars (``trainer.lr=0.01``, ``model.blocks=[1, 1, 1, 1]``,
``model.pretrained=null``); a string field keeps the text as given. Every key is checked against
the dataclass it lands in, and pydantic checks every value's type (strictly: no "8" for 8, no 1
for true). Each problem is a ``ConfigError`` naming the dotted key. The ranges and the rules
between keys are train/checks.py's; ``to_dict`` / ``to_yaml`` / ``flatten`` dump a config back,
for logging with a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import TypeAdapter, ValidationError

from pipeline.storage import absolute, endpoint_options
from train.models.spec import ModelSpec

T = TypeVar("T")


HOME = os.path.expanduser(os.environ.get("COST_HOME", "~/cost-on-ray"))


@dataclass(kw_only=True)
class DataConfig:
    store: str  # frame store written by pipeline/prepare.py: a local path or s3://bucket/prefix
    s3_endpoint: str | None = None  # an S3-compatible server instead of AWS
    train_split: str = "train"
    val_split: str = "val"
    test_split: str | None = None  # the multi-clip test protocol's split (default: val_split)
    frames: int = 8  # frames per clip
    # Source frames between clip frames: null takes the store's (prepare --stride); a number must match it.
    stride: int | None = None
    train_short_side: tuple[int, int] = (256, 320)  # short side: a whole number of pixels drawn from this range
    eval_short_side: int = 256
    crop: int = 224
    flip: bool = True  # random horizontal flips in training; off where a mirror image is another class
    clips_per_video: int = 1  # training clips per video per epoch (the authors' code: 1): every video counts equally
    test_clips: int = 10
    # The multi-clip test's spatial views, each at short side eval_short_side: "full" the whole frame (the
    # paper's fully-convolutional inference), "three_crop" three squares of that side along the long side
    # (the authors' code), "center_crop" one `crop` square (what validation always uses).
    test_protocol: Literal["full", "three_crop", "center_crop"] = "full"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    shuffle_buffer: int = 512  # clips mixed in each worker's local shuffle buffer
    rows_per_task: int = 4  # store rows per Ray Data map call (each row yields several clips)
    loader_cpus: float = 1.0  # CPUs a Ray Data decode task asks for


@dataclass(kw_only=True)
class ModelConfig(ModelSpec):  # the architecture (train/models/spec.py), and where its weights start
    # ImageNet 2D ResNet state dict (torchvision names) to inflate from, local or s3://. Every paper result
    # starts from one: a Kinetics or Moments run without it is refused unless this says "none" (from scratch).
    pretrained: str | None = None
    inflate: Literal["mean", "center"] = "mean"
    finetune_from: str | None = None  # a checkpoint of this project to start from (classifier re-made)


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 0.005  # for `lr_batch` clips; scaled linearly with the global batch
    lr_batch: int = 32  # the paper: 0.005 for its synchronous batch of 32 clips (4 GPUs x 8)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of all steps where lr drops by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from lr/10
    clip_grad: float | None = 40.0  # max gradient norm (the published code's value); null: off
    # CoST(a)'s view coefficients learn at lr x this (the authors': 1, one lr for all). A small model
    # from scratch needs more: at 1 they barely move in a short run (bench/RESULTS.md, motion grid).
    cost_a_lr_scale: float = 1.0


@dataclass(kw_only=True)
class TrainerConfig:
    epochs: int = 10  # an epoch draws data.clips_per_video clips from every training video (train/data.py)
    batch_size: int = 8  # clips per worker per forward pass: BatchNorm's batch, as the paper's 8 per GPU
    # Ray Train workers (one per GPU); a range [min, max] trains elastically: the run starts with what
    # fits (at least min), goes on with fewer when nodes go and grows back when they return.
    num_workers: int | tuple[int, int] = 1
    # Clips per iteration, whatever the workers: a smaller group accumulates gradients over several
    # batches to reach it, so the lr and its schedule do not change. null: batch_size x num_workers.
    global_batch: int | None = None
    resize_interval_s: float = 60.0  # elastic: how often Ray Train looks for room to grow the group
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    placement: Literal["PACK", "SPREAD"] = "PACK"  # workers on as few nodes as fit, or over as many
    # auto: bf16 autocast on GPU, fp32 on CPU; bf16: autocast on any device (CPU too); fp32: never.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool | None = None  # channels-last-3d memory; null: on GPU only (on CPU: bench/RESULTS.md)
    compile: bool = False
    # Gradient all-reduce (DDP, 2+ workers): "bf16" sends gradients as bfloat16, half the bytes
    # between nodes (bench/RESULTS.md, scaling); bucket_mb is DDP's bucket size (its default, 25).
    grad_compression: Literal["none", "bf16"] = "none"
    bucket_mb: float = 25.0
    seed: int = 0
    log_every: int = 20  # steps between metric logs and progress lines
    checkpoint_every: int = 1000  # steps between checkpoints (and one at each epoch end)
    val_every: int = 1  # epochs between single-clip validations (and one after the last epoch)
    keep_checkpoints: int = 3  # best by val top-1; the latest is always kept too
    max_failures: int = 3  # worker-group restarts from the latest checkpoint
    test_at_end: bool = True  # run the multi-clip test protocol after the last epoch
    # Which weights that test scores: the best single-clip validation's (as the authors test their
    # best_top1_acc checkpoint), or the last epoch's.
    test_checkpoint: Literal["best", "last"] = "best"
    storage_path: str = os.path.join(HOME, "runs")  # checkpoints: a shared path or s3:// on a cluster
    shared_storage: bool = False  # local paths are on a filesystem every node mounts (NFS, EFS, Lustre)

    def worker_range(self) -> tuple[int, int]:
        """(fewest, most) workers: a fixed number is both."""
        return tuple(self.num_workers) if isinstance(self.num_workers, tuple) else (self.num_workers,) * 2

    def clips_per_iteration(self) -> int:
        """The global batch: clips per optimiser step, at any number of workers."""
        return self.global_batch or self.batch_size * self.worker_range()[1]

    def batches_per_iteration(self) -> int:
        """The global batch in batches of ``batch_size`` (BatchNorm's batch)."""
        return self.clips_per_iteration() // self.batch_size

    def training_workers(self, world: int) -> int:
        """Of a group of ``world`` workers, how many train: the most that share the iteration's
        batches evenly (each adds up as many). An elastic group of another size leaves the rest
        waiting for the group to grow or shrink to one that divides them: 64 clips in batches of 8
        train on 1, 2, 4 or 8 workers, so 6 workers train as 4."""
        batches = self.batches_per_iteration()
        return max(w for w in range(1, min(world, batches) + 1) if batches % w == 0)


@dataclass(kw_only=True)
class TrackingConfig:
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else a SQLite store under ~/cost-on-ray
    experiment: str = "cost"
    log_model: bool = True
    # Seconds between MLflow's system metrics of rank 0's node (CPU, memory, disk, network; GPU
    # utilisation and memory where there is an NVIDIA GPU); 0 logs none.
    system_metrics_s: float = 10.0


@dataclass(kw_only=True)
class TrainConfig:
    name: str | None = None  # the run's name; running a name again resumes it (default: from the settings)
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SCRATCH = "none"  # model.pretrained's word for training from random initialisation on purpose


def storage_options(cfg: TrainConfig) -> dict:
    return endpoint_options(cfg.data.s3_endpoint)


def pretrained_path(m: ModelConfig) -> str | None:
    """The ImageNet weights to inflate from, or None (unset, or "none": from scratch)."""
    return None if m.pretrained in (None, SCRATCH) else m.pretrained


def init_kind(m: ModelConfig) -> str:
    """How a run's weights start: "finetune", "imagenet" or "scratch" (the run's tag ``init``)."""
    return "finetune" if m.finetune_from else "imagenet" if pretrained_path(m) else "scratch"


def absolute_paths(cfg: TrainConfig) -> None:
    """Local paths made absolute in place: Ray Train workers run in other folders than the driver."""
    cfg.data.store = absolute(cfg.data.store)
    cfg.model.pretrained = absolute(pretrained_path(cfg.model)) or cfg.model.pretrained
    cfg.model.finetune_from = absolute(cfg.model.finetune_from)
    cfg.trainer.storage_path = absolute(cfg.trainer.storage_path)


# ---------------------------------------------------------------- loading


class ConfigError(ValueError):
    """A config problem; the message names the dotted key and what was expected."""


BASE_KEY = "_base_"  # a YAML's base config, as MMAction2's: the base's keys, with this file's on top


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build ``cls`` from a YAML file (optional) with ``key.sub=value`` overrides applied on top."""
    data = read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        apply_override(cls, data, item)
    return from_dict(cls, data)


def read_yaml(path: Path, below: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a YAML config, merged over its ``_base_`` (a path relative to its folder) and
    that file's base in turn; ``below`` holds the files that named this one, to refuse a cycle."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" + (f" (the {BASE_KEY} of {below[-1]})" if below else ""))
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(loaded).__name__}")
    data = loaded or {}
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: '{BASE_KEY}' must name one YAML file, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in {p.resolve() for p in (*below, path)}:
        raise ConfigError(f"config file {path}: its {BASE_KEY} chain comes back to {base_path}")
    return merged(read_yaml(base_path, (*below, path)), data)


def merged(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top``'s keys on it: sections merge key by key, any other value is replaced."""
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def apply_override(cls: type, data: dict[str, Any], item: str) -> None:
    """Set ``key.sub=value`` in the raw mapping ``data``, typed by the field it names in ``cls``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    hint: Any = cls
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = _fields(hint)
        if fields is None:
            raise ConfigError(f"config key '{'.'.join(parts[:depth])}' is a value, not a section "
                              f"(override {item!r})")
        if part not in fields:
            raise ConfigError(_unknown(".".join(parts[:depth]), part, fields))
        hint = fields[part]
        if depth < len(parts) - 1:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
    node[parts[-1]] = raw if _is_str(hint) and raw.strip() != "null" else _parse_scalar(raw, key)


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """``data`` checked against dataclass ``cls`` (every key known, every value of its type) and built."""
    check_keys(cls, data)
    try:  # as JSON, where a list stands for a tuple and an int for a float, and nothing else converts
        return _adapter(cls).validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as e:
        raise ConfigError(_describe(cls, e.errors()[0])) from None


def check_keys(cls: type, data: Any, prefix: str = "") -> None:
    """Every key of ``data`` is a field of ``cls``, and every section a mapping, down the tree."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a section (a mapping), got "
                          f"{type(data).__name__} {data!r}")
    fields = _fields(cls)
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(_unknown(prefix, key, fields))
        if _fields(fields[key]) is not None:
            check_keys(fields[key], value, f"{prefix}.{key}" if prefix else key)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that ``from_dict`` accepts back."""
    return _adapter(type(cfg)).dump_python(cfg, mode="json")


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(cfg: Any) -> dict[str, Any]:
    """``{"trainer.lr": 0.005, ...}``: one entry per leaf, e.g. for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        else:
            out[prefix] = v
    walk("", to_dict(cfg))
    return out


# ---------------------------------------------------------------- type names for messages

@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _describe(cls: type, error: dict) -> str:
    """A pydantic error as one line naming the dotted key (list positions as [i]; the names pydantic
    gives a union's members left out) and the type the field takes there."""
    key, hint, loc = "", cls, error["loc"]
    if error["type"] == "missing" and loc and isinstance(loc[-1], int):  # a tuple one item short: say so
        loc = loc[:-1]
    for part in loc:
        fields = _fields(hint)
        if fields is not None and part in fields:
            key, hint = (f"{key}.{part}" if key else part), fields[part]
        elif isinstance(part, int):
            args = get_args(hint)
            key, hint = f"{key}[{part}]", args[0] if len(args) == 2 and args[1] is Ellipsis else args[part]
    if error["type"] == "missing" and loc == error["loc"]:
        return f"config key '{key}' is required but missing"
    value = error["input"]
    return f"config key '{key}': expected {_type_name(hint)}, got {type(value).__name__} {value!r}"


def _fields(cls: Any) -> dict[str, Any] | None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return None
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown(prefix: str, key: str, fields: Mapping[str, Any]) -> str:
    dotted = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{dotted}'{hint} (known: {', '.join(fields)})"


def _is_str(hint: Any) -> bool:
    return hint is str or (get_origin(hint) in (Union, types.UnionType) and str in get_args(hint))


def _parse_scalar(raw: str, key: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"config key '{key}': cannot parse {raw!r}: {e}") from e


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, get_args(hint)))
    return str(hint).replace("typing.", "")
