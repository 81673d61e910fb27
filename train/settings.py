"""The training config (what `configs/*.yaml` hold) and its checks against a frame store.

    cfg = load_config(TrainConfig, "configs/kinetics400_r50_8f.yaml", ["model.arch=cost_a"])
    check_against_store(cfg, Store(cfg.data.store, storage_options(cfg)))

Every check here runs in the driver before Ray starts, so a bad value costs seconds, not a
cluster start, and the message names the dotted key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from pipeline.session import unshared_paths
from pipeline.storage import absolute, endpoint_options, exists
from train.config import ConfigError

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
class ModelConfig:
    arch: Literal["c2d", "c3d", "cost_a", "cost_b"] = "cost_b"
    depth: Literal[50, 101] = 50
    blocks: tuple[int, ...] | None = None  # per-stage units instead of depth (small models)
    width: int = 64
    # The stem and temporal pools (train/models/resnet.py); defaults: the authors' 8-frame trunk. Their
    # 32-frame models: conv1_t 5, conv1_stride_t 2, pool1_t 2, pool1_stride_t 2. Table 1: pool1_t 3, pool2 3x1x1.
    conv1_t: int = 1  # conv1's temporal kernel (odd)
    conv1_stride_t: Literal[1, 2] = 1
    pool1_t: Literal[1, 2, 3] = 1
    pool1_stride_t: Literal[1, 2] = 1
    # Spatial strides of conv1 and pool1 (2 and 2: the paper's H/4 at res2). 1 keeps detail in small
    # inputs, where objects and their steps between frames are a few pixels (bench/RESULTS.md, motion grid).
    conv1_stride_s: Literal[1, 2] = 2
    pool1_stride_s: Literal[1, 2] = 2
    # conv1's kernels sum to zero: blind to a clip's colour, for small models trained from scratch on
    # objects of any colour over any background (bench/RESULTS.md, motion grid). Not with ImageNet weights.
    conv1_zero_mean: bool = False
    pool2: Literal["2x1x1", "3x1x1", "none"] = "2x1x1"  # the temporal pool after res2
    dropout: float = 0.5
    cost_shared: bool = True  # false: each view its own 3x3 kernel (the paper's Table 3 ablation)
    # CoST(a)'s coefficients at the start: "spatial" H-W 0.67 / T-W 0.17 / T-H 0.17 (the authors', close
    # to the 2D network of ImageNet weights); "equal" a third each, for small models from scratch
    # (bench/RESULTS.md, motion grid). Other archs have no such coefficients.
    cost_a_init: Literal["spatial", "equal"] = "spatial"
    cost_impl: Literal["auto", "views", "stacked", "fold", "composed"] = "auto"  # train/models/cost.py
    # ImageNet 2D ResNet state dict (torchvision names) to inflate from, local or s3://. Every paper result
    # starts from one: a Kinetics or Moments run without it is refused unless this says "none" (from scratch).
    pretrained: str | None = None
    inflate: Literal["mean", "center"] = "mean"
    finetune_from: str | None = None  # a checkpoint of this project to start from (classifier re-made)
    frozen_bn: bool = False  # BatchNorm statistics and affine frozen (fine-tuning)


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
PAPER_DATASETS = ("kinetics", "moments")  # stores whose runs the paper's ImageNet-initialised results describe


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


def value_ranges(cfg: TrainConfig) -> dict[str, tuple[object, bool, str]]:
    """Every key with a range of its own: key -> (value, whether it holds, the range in words)."""
    d, t, o, m = cfg.data, cfg.trainer, cfg.optim, cfg.model
    positive = {"data.frames": d.frames, "data.crop": d.crop,
                "data.eval_short_side": d.eval_short_side, "data.test_clips": d.test_clips,
                "data.clips_per_video": d.clips_per_video, "model.width": m.width,
                "data.rows_per_task": d.rows_per_task, "trainer.epochs": t.epochs,
                "trainer.batch_size": t.batch_size, "trainer.log_every": t.log_every,
                "trainer.checkpoint_every": t.checkpoint_every, "trainer.val_every": t.val_every,
                "trainer.keep_checkpoints": t.keep_checkpoints, "optim.lr_batch": o.lr_batch}
    ranges = {key: (value, value >= 1, ">= 1") for key, value in positive.items()}
    return ranges | {
        "data.stride": (d.stride, d.stride is None or d.stride >= 1, ">= 1, or null for the store's"),
        "optim.lr": (o.lr, o.lr > 0, "> 0"),
        "optim.momentum": (o.momentum, 0 <= o.momentum < 1, "in [0, 1)"),
        "optim.weight_decay": (o.weight_decay, o.weight_decay >= 0, ">= 0"),
        "optim.gamma": (o.gamma, 0 < o.gamma <= 1, "in (0, 1]"),
        "optim.warmup_epochs": (o.warmup_epochs, 0 <= o.warmup_epochs < t.epochs,
                                f"in [0, trainer.epochs) = [0, {t.epochs})"),
        "optim.clip_grad": (o.clip_grad, o.clip_grad is None or o.clip_grad > 0, "> 0, or null for none"),
        "optim.milestones": (list(o.milestones), all(0 < f < 1 for f in o.milestones)
                             and list(o.milestones) == sorted(o.milestones), "increasing fractions in (0, 1)"),
        "model.dropout": (m.dropout, 0 <= m.dropout < 1, "in [0, 1)"),
        "model.blocks": (m.blocks, m.blocks is None or (len(m.blocks) == 4 and min(m.blocks) >= 1),
                         "four stages of >= 1 units each, or null for model.depth's"),
        "model.conv1_t": (m.conv1_t, m.conv1_t >= 1 and m.conv1_t % 2 == 1, "odd and >= 1 (padded to keep T)"),
        "data.std": (d.std, min(d.std) > 0, "> 0 in every channel"),
        "data.loader_cpus": (d.loader_cpus, d.loader_cpus > 0, "> 0"),
        "data.shuffle_buffer": (d.shuffle_buffer, d.shuffle_buffer >= 0, ">= 0"),
        "trainer.num_workers": (list(t.num_workers) if isinstance(t.num_workers, tuple) else t.num_workers,
                                1 <= t.worker_range()[0] <= t.worker_range()[1], ">= 1, or a range [min, max] of them"),
        "trainer.global_batch": (t.global_batch, t.global_batch is None or t.global_batch >= 1,
                                 ">= 1, or null for batch_size x num_workers"),
        "trainer.resize_interval_s": (t.resize_interval_s, t.resize_interval_s > 0, "> 0"),
        "trainer.cpus_per_worker": (t.cpus_per_worker, t.cpus_per_worker > 0, "> 0"),
        "trainer.bucket_mb": (t.bucket_mb, t.bucket_mb > 0, "> 0"),
        "trainer.max_failures": (t.max_failures, t.max_failures >= -1, ">= -1 (-1: without end)"),
        "tracking.system_metrics_s": (cfg.tracking.system_metrics_s, cfg.tracking.system_metrics_s >= 0,
                                      ">= 0 (0: none)"),
    }


def check_workers(t: TrainerConfig) -> None:
    """The global batch splits into whole batches, and a fixed group shares them evenly."""
    lo, hi = t.worker_range()
    clips, batches = t.clips_per_iteration(), t.batches_per_iteration()
    if clips % t.batch_size:
        raise ConfigError(f"config key 'trainer.global_batch' ({clips}) must be a whole number of batches of "
                          f"trainer.batch_size ({t.batch_size}), BatchNorm's batch on each worker")
    if hi > batches:
        raise ConfigError(f"config key 'trainer.num_workers': {hi} workers, but an iteration of {clips} clips holds "
                          f"{batches} batches of {t.batch_size}: at most {batches} workers train")
    if lo == hi and t.training_workers(lo) != lo:  # a fixed group that cannot all train is a mistake
        fits = [w for w in range(1, batches + 1) if batches % w == 0]
        raise ConfigError(f"config key 'trainer.num_workers': {lo} workers cannot share the {batches} batches of "
                          f"{t.batch_size} clips of an iteration ({clips} clips) evenly; choose "
                          f"{', '.join(map(str, fits))}, or another trainer.global_batch")


def check_values(cfg: TrainConfig) -> None:
    """Every value range, then the rules that tie keys together."""
    for key, (value, holds, words) in value_ranges(cfg).items():
        if not holds:
            raise ConfigError(f"config key '{key}' must be {words}, got {value}")
    check_workers(cfg.trainer)
    d, m = cfg.data, cfg.model
    lo, hi = d.train_short_side
    if not d.crop <= lo <= hi:
        raise ConfigError(f"config key 'data.train_short_side' must be a range [lo, hi] with "
                          f"data.crop ({d.crop}) <= lo <= hi, got {list(d.train_short_side)}")
    if d.eval_short_side < d.crop:
        raise ConfigError(f"config key 'data.eval_short_side' ({d.eval_short_side}) must be >= data.crop ({d.crop})")
    if not m.cost_shared and not m.arch.startswith("cost"):
        raise ConfigError(f"config key 'model.cost_shared': false unshares CoST's view kernels; arch "
                          f"{m.arch!r} has no CoST layer (use cost_a or cost_b)")
    if m.conv1_zero_mean and pretrained_path(m):
        raise ConfigError("config key 'model.conv1_zero_mean': true takes each conv1 filter's mean out, so the "
                          "ImageNet conv1 of model.pretrained would no longer compute what it learned; set it "
                          "false with pretrained weights")
    if m.cost_impl == "composed" and m.arch != "cost_a":
        raise ConfigError(f"config key 'model.cost_impl': 'composed' is for arch cost_a only, got arch "
                          f"{m.arch!r}; use auto, views, stacked or fold")


def check_against_store(cfg: TrainConfig, store) -> None:  # store: pipeline.store.Store
    """The store holds the splits, the stride and the frame size this config asks for; a config
    without ``data.stride`` takes the store's (the store is the one source of it)."""
    params = store.manifest["params"]
    d = cfg.data
    if d.stride is None:
        d.stride = params["stride"]
    if d.stride != params["stride"]:
        raise ConfigError(f"config key 'data.stride' is {d.stride} but the store {store.url} was prepared with "
                          f"--stride {params['stride']} (its rows group frames by that stride): set "
                          f"data.stride={params['stride']} or prepare a store with --stride {d.stride}")
    for key in ("train_split", "val_split", "test_split"):
        split = getattr(d, key)
        if split is not None and split not in store.manifest["splits"]:
            raise ConfigError(f"config key 'data.{key}': the store {store.url} has no split {split!r}; "
                              f"it has {', '.join(store.splits)}")
    if params["short_side"] < d.crop:
        raise ConfigError(f"config key 'data.crop' ({d.crop}) is larger than the store's frames (short side "
                          f"{params['short_side']}): lower data.crop or prepare with a larger --short-side")


def check_init(cfg: TrainConfig, store) -> None:  # store: pipeline.store.Store
    """A training run on Kinetics or Moments starts from weights, or says it trains from scratch."""
    m, dataset = cfg.model, store.manifest["dataset"]
    if m.pretrained is None and not m.finetune_from and dataset in PAPER_DATASETS:
        raise ConfigError(
            f"config key 'model.pretrained' is not set, and every result of the paper on {dataset} starts from "
            f"ImageNet weights: give torchvision's original ImageNet ResNet-{m.depth} state dict, e.g. "
            f"model.pretrained=s3://BUCKET/weights/resnet{m.depth}-imagenet.pth "
            f"(docs/training.md, \"ImageNet weights\"), "
            f"or model.finetune_from=CHECKPOINT to fine-tune a trained run (the 32-frame models), or write "
            f"model.pretrained={SCRATCH} to train from random initialisation on purpose")


def check_shared(cfg: TrainConfig, tracking_uri: str) -> None:
    """On a multi-node Ray cluster, everything the workers read or write must be shared storage."""
    if cfg.trainer.shared_storage:
        return
    m = cfg.model
    problem = unshared_paths({"data.store": cfg.data.store, "trainer.storage_path": cfg.trainer.storage_path,
                              "model.pretrained": pretrained_path(m), "model.finetune_from": m.finetune_from,
                              "the MLflow tracking URI": tracking_uri}, "trainer.shared_storage=true")
    if problem:
        raise ConfigError(problem)


def check_files(cfg: TrainConfig) -> None:
    """The weights a run starts from exist (local or s3://)."""
    for key, path in (("pretrained", pretrained_path(cfg.model)), ("finetune_from", cfg.model.finetune_from)):
        if path and not exists(path, storage_options(cfg)):
            raise ConfigError(f"config key 'model.{key}': {path} does not exist")
