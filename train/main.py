"""Train C2D / C3D / CoST(a) / CoST(b) video ResNets on a frame store with Ray Train, tracked in MLflow.

    python train/main.py --config configs/tiny_synthetic.yaml data.store=demo-output/store
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python train/main.py --config configs/kinetics400_r50_8f.yaml model.arch=cost_b name=k400-cost_b
    python train/main.py --eval-only --checkpoint RUNS/NAME/checkpoint_... [key=value ...]

The same command runs on a laptop CPU (a local Ray instance is started if none is running) and on
a multi-node GPU cluster (``trainer.num_workers=8 trainer.use_gpu=true``). Every setting is checked
against the store before Ray starts. Running a name again resumes it from its latest checkpoint;
``--stop-at-epoch N`` ends a run cleanly after epoch N, to be resumed later.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.session import connect_ray, git_commit
from pipeline.storage import arrow_filesystem, endpoint_options, is_node_local, storage_failures
from pipeline.store import Store, StoreError
from train import tracking
from train.checks import check_against_store, check_files, check_init, check_shared, check_values
from train.config import (
    ConfigError,
    TrainConfig,
    absolute_paths,
    apply_override,
    flatten,
    from_dict,
    init_kind,
    load_config,
    storage_options,
    to_dict,
    to_yaml,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="a YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. trainer.epochs=2")
    p.add_argument("--eval-only", action="store_true", help="run the test protocol on --checkpoint, no training")
    p.add_argument("--checkpoint", help="with --eval-only: a checkpoint directory (or its state.pt)")
    p.add_argument("--stop-at-epoch", type=int, default=None, help="end cleanly after this epoch (resumable)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, a running one, "
                                                   "or a new local one)")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of a local Ray instance started here")
    p.add_argument("--verbose", action="store_true", help="Ray's own lines too: connecting, Ray Train's reports "
                                                          "and checkpoints, Ray Data's executions")
    args = p.parse_args(argv)
    if args.eval_only != bool(args.checkpoint):
        p.error("--eval-only and --checkpoint go together")
    if not args.config and not args.eval_only:
        p.error("--config is required for training")
    return args


def resolve(args: argparse.Namespace) -> tuple[TrainConfig, dict | None]:
    """(config, checkpoint state for --eval-only): with --eval-only, the config is the checkpoint's,
    or the command line's file, with the command line's overrides on top."""
    if not args.eval_only:
        return load_config(TrainConfig, args.config, args.overrides), None
    from train.checkpoints import CheckpointError, load_state

    def overridden(data: dict) -> dict:
        for item in args.overrides:
            apply_override(TrainConfig, data, item)
        return data

    given = overridden(to_dict(load_config(TrainConfig, args.config)) if args.config else {})
    try:  # an s3:// checkpoint is read through the endpoint the command line gives
        state = load_state(args.checkpoint, endpoint_options(given.get("data", {}).get("s3_endpoint")))
    except CheckpointError as e:
        raise ConfigError(f"--checkpoint: {e}") from None
    return from_dict(TrainConfig, given if args.config else overridden(state["config"])), state


def default_name(cfg: TrainConfig, store: Store) -> str:
    m = cfg.model
    size = f"r{m.depth}" if m.blocks is None else "b" + "".join(map(str, m.blocks))
    return f"{store.manifest['dataset']}-{m.arch}-{size}-{cfg.data.frames}f-{time.strftime('%Y%m%d-%H%M%S')}"


def schedule(cfg: TrainConfig, store: Store, clips: int, steps_per_epoch: int) -> str:
    """What the run will do, in the units the paper and the authors' code count: clips and iterations."""
    d, t = cfg.data, cfg.trainer
    videos, batch = store.manifest["splits"][d.train_split]["videos"], t.global_batch
    steps = steps_per_epoch * t.epochs
    drops = ", ".join(f"{int(m * steps):,}" for m in cfg.optim.milestones)
    lo, hi = t.worker_range()
    adds = "-".join(map(str, sorted({t.batches_per_iteration() // t.training_workers(w) for w in (hi, lo)})))
    return (f"{videos:,} videos x {d.clips_per_video} clip(s) = {clips:,} clips per epoch; "
            f"{t.epochs} epochs = {steps * batch:,} clips in {steps:,} iterations of {batch} clips "
            f"({lo if lo == hi else f'{lo}-{hi}'} workers x {t.batch_size}"
            f"{'' if adds == '1' else f' x {adds} batches added up'}); lr drops at iterations {drops or 'none'}")


def run_config(cfg: TrainConfig, name: str, verbose: bool):
    """Where checkpoints go and how many are kept; without ``verbose``, only Ray Train's and Ray
    Data's warnings reach the console (the workers and the actors they start inherit the level)."""
    import ray.train

    t = cfg.trainer
    path, fs = t.storage_path, None
    if not is_node_local(path):  # the client and endpoint every other read uses, not one of Ray's own
        fs, path = arrow_filesystem(path, storage_options(cfg))
    return ray.train.RunConfig(
        name=name, storage_path=path, storage_filesystem=fs,
        failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints,
                                                     checkpoint_score_attribute="checkpoint_score",
                                                     checkpoint_score_order="max"),
        logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        worker_runtime_env={} if verbose else {"env_vars": {"RAY_DATA_LOG_LEVEL": "ERROR"}})


def log_complexity(uri: str, run_id: str, cfg: TrainConfig, num_classes: int) -> None:
    """The model's size and FLOPs per clip (metrics ``params_m``, ``gflops``), for the report's tables."""
    from train.models import complexity, create_model

    d = cfg.data
    params_m, gflops = complexity(lambda: create_model(cfg.model, num_classes), (3, d.frames, d.crop, d.crop))
    tracking.log_metrics(uri, run_id, {"params_m": params_m, "gflops": gflops}, 0)
    print(f"[train] {cfg.model.arch}: {params_m:.2f} M parameters, {gflops:.2f} GFLOPs per "
          f"{d.frames}x{d.crop}x{d.crop} clip", flush=True)


def log_model(uri: str, run_id: str, checkpoint) -> None:
    """The best checkpoint's network as an MLflow PyTorch model of the run (``runs:/RUN/model``)."""
    import mlflow
    import torch

    from train.checkpoints import load_state, model_from_state

    state = load_state(checkpoint)
    model = model_from_state(state)
    d = state["config"]["data"]
    example = torch.zeros(1, 3, d["frames"], d["crop"], d["crop"]).numpy()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=tracking.client(uri).get_run(run_id).info.experiment_id)
    with mlflow.start_run(run_id=run_id):
        # Pickled with the model code beside it, so `mlflow.pytorch.load_model` needs no checkout.
        mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", input_example=example,
                                 code_paths=[str(Path(__file__).resolve().parent)],
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


def checked(args: argparse.Namespace) -> tuple[TrainConfig, dict | None, Store, int, int]:
    """(config, --eval-only state, store, clips per epoch, steps per epoch), every check passed: all
    that can be refused is refused here, before Ray starts."""
    cfg, state = resolve(args)
    absolute_paths(cfg)  # as resolved here, recorded in MLflow, and read by the workers
    check_values(cfg)
    try:
        store = Store(cfg.data.store, storage_options(cfg))
    except (StoreError, OSError) as e:
        raise ConfigError(f"config key 'data.store': {e}") from None
    check_against_store(cfg, store)
    if not args.eval_only:
        check_init(cfg, store)
    check_files(cfg)
    if cfg.model.finetune_from and not args.eval_only:  # damaged, it would fail in every worker
        from train.checkpoints import CheckpointError, load_state

        try:
            load_state(cfg.model.finetune_from, storage_options(cfg))
        except CheckpointError as e:
            raise ConfigError(f"config key 'model.finetune_from': {e}") from None
    from train.data import clips_per_epoch

    clips = clips_per_epoch(store, cfg.data.train_split, cfg.data.clips_per_video)
    t = cfg.trainer
    key = "trainer.batch_size" if t.global_batch is None else "trainer.global_batch"
    t.global_batch = t.clips_per_iteration()  # what MLflow records: the clips of each iteration, on any group
    steps_per_epoch = clips // t.global_batch
    if steps_per_epoch < 1 and not args.eval_only:
        raise ConfigError(f"config key '{key}': an epoch of the store's {clips} training clips holds no full "
                          f"iteration of {t.global_batch} clips")
    return cfg, state, store, clips, steps_per_epoch


def open_run(args: argparse.Namespace, cfg: TrainConfig, state: dict | None, store: Store, uri: str
             ) -> tuple[str, str, bool]:
    """(name, MLflow run id, resumed): the run opened, or found again under its name."""
    name = cfg.name or default_name(cfg, store)
    if args.eval_only:
        name = f"{state['config'].get('name') or 'checkpoint'}-eval-{time.strftime('%Y%m%d-%H%M%S')}"
    m = cfg.model
    tags = {"arch": m.arch, "depth": str(m.depth), "frames": str(cfg.data.frames),
            "dataset": store.manifest["dataset"], "classes": str(len(store.classes)), "store": store.url,
            "store_fingerprint": store.manifest["input_fingerprint"], "git_commit": git_commit() or "unknown",
            "mode": "eval" if args.eval_only else "train", "init": init_kind(m),
            "test_protocol": cfg.data.test_protocol}
    run_id, resumed = tracking.open_run(uri, cfg, name, flatten(cfg), tags, to_yaml(cfg))
    if not resumed:
        tracking.log_store(uri, run_id, store.manifest, store.url, "evaluation" if args.eval_only else "training")
    return name, run_id, resumed


def fit(args: argparse.Namespace, cfg: TrainConfig, name: str, ctx) -> str:  # ctx: train.loop.RunContext
    """Ray Train runs the workers; the run's final status: FINISHED, or KILLED when stopped early."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from train.loop import eval_loop, train_loop

    t = cfg.trainer
    scaling = ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, placement_strategy=t.placement,
                                      resources_per_worker={"CPU": t.cpus_per_worker},
                                      elastic_resize_monitor_interval_s=t.resize_interval_s)
    trainer = TorchTrainer(eval_loop if args.eval_only else train_loop, train_loop_config={"run": ctx},
                           scaling_config=scaling,
                           run_config=run_config(cfg, name, args.verbose))
    result = trainer.fit()
    epoch = int(result.metrics.get("epoch", 0)) if result.metrics else 0
    if args.eval_only:
        return "FINISHED"
    if epoch < t.epochs:
        print(f"[train] stopped after epoch {epoch} of {t.epochs}; run again with name={name} to continue")
        return "KILLED"
    best = result.get_best_checkpoint("checkpoint_score", "max") or result.checkpoint
    from train.checkpoints import checkpoint_url

    url = checkpoint_url(t.storage_path, best.path)
    tracking.client(ctx.tracking_uri).set_tag(ctx.run_id, "best_checkpoint", url)
    if cfg.tracking.log_model:
        log_model(ctx.tracking_uri, ctx.run_id, best)
    print(f"[train] done: best checkpoint {url}")
    return "FINISHED"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with storage_failures("train", args.verbose):
        return run(args)


def run(args: argparse.Namespace) -> int:
    if not args.verbose:
        tracking.quiet_mlflow()
    started_here = False
    try:
        cfg, state, store, clips, steps_per_epoch = checked(args)
        uri = tracking.tracking_uri(cfg.tracking.uri)
        tracking.check_answers(uri)
        started_here = connect_ray(args.address, args.num_cpus, log_to_driver=True, quiet=not args.verbose)
        check_shared(cfg, uri)
        name, run_id, resumed = open_run(args, cfg, state, store, uri)
    except ConfigError as e:
        print(f"train: {e}", file=sys.stderr)
        if started_here:
            import ray

            ray.shutdown()
        return 2
    print(f"[train] run {name!r} ({'resuming' if resumed else 'new'}), MLflow {uri} run {run_id}", flush=True)
    if uri.startswith(("http://", "https://")):
        exp_id = tracking.client(uri).get_run(run_id).info.experiment_id
        print(f"[train] in the MLflow UI: {tracking.ui_url(uri, exp_id, run_id)}", flush=True)
    if not args.eval_only:
        print(f"[train] {schedule(cfg, store, clips, steps_per_epoch)}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `ray job stop`: end the MLflow run as KILLED
    status = "FAILED"
    try:
        if not resumed and not args.eval_only:
            log_complexity(uri, run_id, cfg, len(store.classes))
        from train.loop import RunContext

        ctx = RunContext(config=to_dict(cfg), run_id=run_id, tracking_uri=uri, steps_per_epoch=steps_per_epoch,
                         stop_at_epoch=args.stop_at_epoch, checkpoint=args.checkpoint,
                         verbose=args.verbose, progress_bar=sys.stderr.isatty())
        status = fit(args, cfg, name, ctx)
        return 0
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except SystemExit as e:
        status = "KILLED" if e.code == 143 else status
        raise
    finally:
        tracking.close_run(uri, run_id, status)
        if started_here:
            import ray

            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
