"""The training config's own rules: each key's range, the rules between keys, and the checks against
the store, the weights and the cluster. The types are train/config.py's; the model's settings are
checked by train/models/spec.py's ``problems``, named here as ``model.<key>``.

    check_values(cfg)
    check_against_store(cfg, Store(cfg.data.store, storage_options(cfg)))

Every check here runs in the driver before Ray starts, so a bad value costs seconds, not a
cluster start, and the message names the dotted key.
"""

from __future__ import annotations

from pipeline.session import unshared_paths
from pipeline.storage import exists
from train.config import SCRATCH, ConfigError, TrainConfig, TrainerConfig, pretrained_path, storage_options
from train.models.spec import problems

PAPER_DATASETS = ("kinetics", "moments")  # stores whose runs the paper's ImageNet-initialised results describe


def value_ranges(cfg: TrainConfig) -> dict[str, tuple[object, bool, str]]:
    """Every key with a range of its own: key -> (value, whether it holds, the range in words)."""
    d, t, o = cfg.data, cfg.trainer, cfg.optim
    positive = {"data.frames": d.frames, "data.crop": d.crop,
                "data.eval_short_side": d.eval_short_side, "data.test_clips": d.test_clips,
                "data.clips_per_video": d.clips_per_video,
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
    """Every value range, the model's (train/models/spec.py), then the rules that tie keys together."""
    for key, (value, holds, words) in value_ranges(cfg).items():
        if not holds:
            raise ConfigError(f"config key '{key}' must be {words}, got {value}")
    wrong = problems(cfg.model)
    if wrong:
        raise ConfigError("config key 'model.{}'{}".format(*wrong[0]))
    check_workers(cfg.trainer)
    d, m = cfg.data, cfg.model
    lo, hi = d.train_short_side
    if not d.crop <= lo <= hi:
        raise ConfigError(f"config key 'data.train_short_side' must be a range [lo, hi] with "
                          f"data.crop ({d.crop}) <= lo <= hi, got {list(d.train_short_side)}")
    if d.eval_short_side < d.crop:
        raise ConfigError(f"config key 'data.eval_short_side' ({d.eval_short_side}) must be >= data.crop ({d.crop})")
    if m.conv1_zero_mean and pretrained_path(m):
        raise ConfigError("config key 'model.conv1_zero_mean': true takes each conv1 filter's mean out, so the "
                          "ImageNet conv1 of model.pretrained would no longer compute what it learned; set it "
                          "false with pretrained weights")


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
