"""What each Ray Train worker runs: ``TorchTrainer(train_loop, train_loop_config=...)``.

One loop for CPU and GPU, one worker or many (DDP). Per step: a batch of augmented clips from
this worker's split of a Ray Data stream (one per epoch, or one for several short epochs), then
the training core's step (train/core.py: forward with bf16 autocast on GPU, backward, gradient
clipping, SGD). Every ``log_every`` steps rank 0 logs metrics to MLflow and moves the driver's
progress bar (a line, where the driver's console is not a terminal); every ``checkpoint_every``
steps and at each epoch end rank 0 saves the training state through ``ray.train.report``; every
``val_every`` epochs (and after the last one) the single-clip validation runs, and after the last
epoch the multi-clip test protocol. A restarted worker group (FailureConfig) and a re-run of the
same run name both continue from the latest checkpoint.

``eval_loop`` runs only the test protocol on a given checkpoint (``train/main.py --eval-only``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from pipeline.session import quiet_ray_logs
from pipeline.storage import naming
from pipeline.store import Store
from train import tracking
from train.checkpoints import (
    CheckpointError,
    checkpoint_url,
    init_from_checkpoint,
    load_state,
    newest_loadable,
    read_state,
    read_weights,
    save_state,
)
from train.config import TrainConfig, from_dict, pretrained_path, storage_options
from train.core import Step, TrainState, compress_gradients, optimizer
from train.data import epochs_per_stream, split_iterator, train_dataset
from train.elastic import log_group, next_iteration, notice_of_preemption
from train.evaluate import evaluate
from train.models import create_model, load_2d_pretrained
from train.models.views import ViewStats
from train.plots import write_analysis


@dataclass(frozen=True)
class RunContext:
    """What the driver (train/main.py) hands every worker, as ``train_loop_config={"run": RunContext}``."""
    config: dict  # the resolved TrainConfig as plain data, rebuilt on the worker
    run_id: str  # the MLflow run, opened and closed by the driver
    tracking_uri: str
    steps_per_epoch: int
    stop_at_epoch: int | None = None  # end the job after this epoch (main.py --stop-at-epoch)
    checkpoint: str | None = None  # eval_loop: the checkpoint to test
    verbose: bool = False  # main.py --verbose: Ray's own info lines on the console too
    progress_bar: bool = False  # the driver's console is a terminal: a bar there, not a line per window
    started: float = field(default_factory=time.time)  # when the driver started the workers (restart_lost_s)


class Worker:
    """The per-worker setting: rank, device, store, training step, and rank-0-only MLflow logging."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.cfg = from_dict(TrainConfig, ctx.config)
        if not ctx.verbose:  # Ray 2.60 logs each report under a file path, which LoggingConfig does not reach
            logging.getLogger().setLevel(logging.WARNING)
            quiet_ray_logs()
            tracking.quiet_mlflow()
        info = ray.train.get_context()
        self.rank, self.world = info.get_world_rank(), info.get_world_size()
        self.device = ray.train.torch.get_device()
        self.store = Store(self.cfg.data.store, storage_options(self.cfg))
        data_context = ray.data.DataContext.get_current()  # travels with the datasets rank 0 builds
        data_context.enable_progress_bars = False
        data_context.print_on_execution_start = False
        self.step = Step.for_config(self.cfg, self.device)
        self.queued: list = []  # rank 0's metrics logged in the background, not yet confirmed (log)
        self.noticed = False  # a preemption notice acted on (notice_of_preemption)

    def tag_placement(self) -> None:
        """Tags: ``hardware``, where the throughput was measured ("8 x NVIDIA H100 80GB HBM3", "2 x CPU"),
        and ``worker_nodes``, the Ray node ID of each rank in order (rewritten when the group restarts)."""
        node = ray.get_runtime_context().get_node_id()
        nodes = [node] * self.world
        if self.world > 1:
            dist.all_gather_object(nodes, node)
        if self.rank == 0:
            what = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
            client = tracking.client(self.ctx.tracking_uri)
            client.set_tag(self.ctx.run_id, "hardware", f"{self.world} x {what}")
            client.set_tag(self.ctx.run_id, "worker_nodes", ",".join(nodes))
            self.say(f"{self.world} workers on {len(set(nodes))} node(s): " + ", ".join(n[:8] for n in nodes))

    def log(self, metrics: dict[str, float], step: int, *, background: bool = False) -> None:
        """Rank 0's metrics to MLflow. ``background``: queued, so that training does not wait on the
        server (~37 ms a call: 18 minutes of a 600,000-iteration run, bench/RESULTS.md);
        any other call first waits for those queued, and raises if one failed."""
        if self.rank != 0:
            return
        if background:
            self.queued.append(tracking.log_metrics(self.ctx.tracking_uri, self.ctx.run_id, metrics, step,
                                                    background=True))
            return
        for op in self.queued:
            op.wait()
        self.queued.clear()
        tracking.log_metrics(self.ctx.tracking_uri, self.ctx.run_id, metrics, step)

    def progress_bar(self, **tqdm_args):
        """Rank 0's bar, which Ray draws on the driver's console; None where the driver prints lines
        instead (its console is not a terminal) and on the other ranks."""
        if not (self.ctx.progress_bar and self.rank == 0):
            return None
        from ray.experimental import tqdm_ray

        return tqdm_ray.tqdm(**tqdm_args)

    def say(self, text: str) -> None:
        if self.rank == 0:  # not print(): Ray Train's patched print would show the line twice
            sys.stdout.write(f"[train] {text}\n")
            sys.stdout.flush()

    def resume_state(self) -> tuple[dict | None, str | None]:
        """(state, path) of the run's newest checkpoint that loads (none on a new run): rank 0 finds
        it, moving damaged ones aside (``newest_loadable``), and every rank loads that one."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None, None
        fs = checkpoint.filesystem
        state, path = newest_loadable(fs, checkpoint.path, self.say) if self.rank == 0 else (None, None)
        if self.world > 1:
            box = [path]
            dist.broadcast_object_list(box, src=0)
            path = box[0]
            if self.rank:
                state = read_state(fs, path)
        return state, path

    def report(self, ts: TrainState, checkpoint: bool, validated: bool = False, extra: dict | None = None) -> None:
        """``ray.train.report`` from every rank; with ``checkpoint``, rank 0 attaches the training state.
        Only ``validated`` weights carry a val_top1 (else -1). Ray Train keeps (``keep_checkpoints``)
        and ranks checkpoints by ``checkpoint_score``: val_top1, less a trace per step, so that of
        equal ones the earlier ranks first, as ``end_epoch`` and the authors' code choose the best."""
        top1 = ts.val["val_top1"] if validated else -1.0
        metrics = {"epoch": ts.epoch, "step": ts.step, "val_top1": top1,
                   "checkpoint_score": top1 - 1e-9 * ts.step if validated else -1.0, **(extra or {})}
        if not (checkpoint and self.rank == 0):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save_state(d, dict(ts.state_dict(), config=self.ctx.config, classes=self.store.classes,
                               store_params=self.store.manifest["params"], world=self.world, saved_at=time.time()))
            with naming(self.cfg.trainer.storage_path):  # a full disk there names it
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        if ts.best.get("step") == ts.step:  # the best so far: where it now lies, for the test at the end
            ts.best["path"] = ray.train.get_checkpoint().path

    def test(self, model: nn.Module, step: int, tested: str) -> dict[str, float]:
        """The multi-clip test protocol on ``model`` (``tested`` says which weights: the run's tag
        ``tested_checkpoint``); rank 0 logs the metrics and the per-video scores."""
        d = self.cfg.data
        split = d.test_split or d.val_split
        # Rank 0 sees its own share of the videos: the bar counts it times the workers.
        bar = self.progress_bar(total=self.store.manifest["splits"][split]["videos"], unit=" videos",
                                desc=f"test ({split}, {d.test_clips} clips, {d.test_protocol})")
        with ViewStats(model, len(self.store.classes)) as views:  # empty for C2D and C3D
            scores = evaluate(model, self.store, split, self.cfg, clips=d.test_clips, protocol=d.test_protocol,
                              rank=self.rank, world=self.world, device=self.device, autocast=self.step.autocast,
                              views=views, progress=None if bar is None else lambda n: bar.update(n * self.world))
        if bar is not None:
            bar.n = bar.total  # every worker's share is scored and gathered
            bar.close()
        metrics = scores.metrics("test")
        self.log(metrics, step)
        if self.rank == 0:
            import pyarrow.parquet as pq

            client = tracking.client(self.ctx.tracking_uri)
            client.set_tag(self.ctx.run_id, "tested_checkpoint", tested)
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "test_scores.parquet")
                pq.write_table(scores.table(self.store.classes), path)
                with naming(client.get_run(self.ctx.run_id).info.artifact_uri):  # a full disk there names it
                    client.log_artifact(self.ctx.run_id, path)
                    if views:
                        for f in write_analysis(views, self.store.classes, os.path.join(tmp, "analysis")):
                            client.log_artifact(self.ctx.run_id, str(f), "analysis")
        self.say(f"test ({split}, {d.test_clips} clips, {d.test_protocol}) of {tested}: top-1 "
                 f"{metrics['test_top1']:.4f} top-5 {metrics['test_top5']:.4f} on {len(scores.labels)} videos")
        return metrics


def build(w: Worker, state: dict | None) -> TrainState:
    """The model (from the checkpoint's state, a fine-tuning source, ImageNet weights or scratch), the
    network that trains it (DDP-wrapped, maybe compiled), optimiser and scheduler; counters from ``state``."""
    cfg = w.cfg
    model = create_model(cfg.model, len(w.store.classes))
    if state is not None:
        model.load_state_dict(state["model"])
    elif cfg.model.finetune_from:
        init_from_checkpoint(model, cfg.model.finetune_from, storage_options(cfg), cfg.model.inflate)
    elif pretrained_path(cfg.model):
        weights = read_weights(cfg.model.pretrained, storage_options(cfg))  # a shared path or s3://
        report = load_2d_pretrained(model, weights, inflate=cfg.model.inflate)
        w.say(f"ImageNet initialisation from {cfg.model.pretrained}: {report.summary()}")
    model = w.step.place(model)
    net = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"bucket_cap_mb": cfg.trainer.bucket_mb})
    if cfg.trainer.grad_compression == "bf16" and isinstance(net, nn.parallel.DistributedDataParallel):
        compress_gradients(net)
    if cfg.trainer.compile:
        net = torch.compile(net)
    ts = TrainState(model, net, *optimizer(model, cfg, w.ctx.steps_per_epoch))
    if state is not None:
        ts.restore(state)
    return ts


def progress_bar(w: Worker, ts: TrainState):
    """Rank 0's bar over the whole run in clips, so its rate is clips/s and its ETA the run's."""
    t = w.cfg.trainer
    per_step = t.clips_per_iteration()
    bar = w.progress_bar(total=w.ctx.steps_per_epoch * t.epochs * per_step, unit=" clips",
                         desc=f"epoch {ts.epoch + 1}/{t.epochs}")
    if bar:
        bar.n = ts.step * per_step  # resumed: what is done already
    return bar


def train_loop(config: dict) -> None:
    ctx: RunContext = config["run"]
    w = Worker(ctx)
    w.tag_placement()
    t = w.cfg.trainer
    saved, saved_path = w.resume_state()
    ts = build(w, saved)
    if ts.best.get("step") == ts.step and saved_path:  # resumed from the best's own checkpoint
        ts.best["path"] = saved_path
    torch.manual_seed(hash((t.seed, w.rank, ts.step)) % 2**31)
    if saved:
        w.say(f"resumed from checkpoint at epoch {ts.epoch + 1}, step {ts.step}")
    log_group(w, ts, saved)
    every_s = w.cfg.tracking.system_metrics_s if w.rank == 0 else 0
    bar = progress_bar(w, ts)
    last = min(t.epochs, ctx.stop_at_epoch or t.epochs)
    stream_end = ts.epoch
    with tracking.system_metrics(ctx.tracking_uri, ctx.run_id, every_s):
        while ts.epoch < last:
            if ts.epoch == stream_end:
                batches, stream_end = training_stream(w, ts, last)
            started = time.monotonic()
            losses = train_epoch(w, ts, batches, bar)
            short = ts.epoch_step < w.ctx.steps_per_epoch
            end_epoch(w, ts, losses, time.monotonic() - started)
            if short:  # the stream ran out: the next epoch starts one of its own
                stream_end = ts.epoch
        if bar:
            bar.close()
        if ts.epoch >= t.epochs and t.test_at_end:
            tested = weights_to_test(w, ts)
            w.report(ts, checkpoint=False, extra=w.test(ts.model, ts.step, tested))


def training_stream(w: Worker, ts: TrainState, last: int) -> tuple[Iterator[dict] | None, int]:
    """This worker's part of each iteration (the batches it adds up, in one) of the epochs from
    ``ts.epoch`` on, as one Ray Data stream (``epochs_per_stream`` of them, up to epoch ``last``),
    and the epoch the stream ends before; None for a worker that waits (``training_workers``). A
    run resumed inside an epoch finishes that epoch on a stream of its own."""
    cfg, t = w.cfg, w.cfg.trainer
    epochs = 1 if ts.epoch_step else epochs_per_stream(w.store, cfg.data, left=last - ts.epoch)
    parts = t.training_workers(w.world)
    it = split_iterator(functools.partial(train_dataset, w.store, cfg.data, seed=t.seed, epoch=ts.epoch,
                                          resumed_at=ts.epoch_step, epochs=epochs), w.rank, w.world, equal=True,
                        parts=parts)
    if it is None:
        return None, ts.epoch + epochs
    batches = it.iter_torch_batches(batch_size=t.clips_per_iteration() // parts, drop_last=True, device=w.device,
                                    local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                                    local_shuffle_seed=hash((t.seed, ts.epoch, ts.epoch_step, w.rank)) % 2**31)
    return iter(batches), ts.epoch + epochs


def train_epoch(w: Worker, ts: TrainState, batches: Iterator[dict] | None, bar) -> list[torch.Tensor]:
    """The rest of the epoch ``ts.epoch`` (all of it unless resumed inside it) from ``batches``; its
    steps' losses. Every ``log_every`` steps rank 0 logs the window's metrics and shows them on
    ``bar`` (or prints them as a line, without one)."""
    t, steps_per_epoch = w.cfg.trainer, w.ctx.steps_per_epoch
    total = steps_per_epoch * t.epochs
    ts.net.train()
    window_start, waited, losses, logged = time.monotonic(), 0.0, [], 0
    fetch = time.monotonic()
    while ts.epoch_step < steps_per_epoch:
        got = next_iteration(w, batches)
        if got is None:
            break
        waited += time.monotonic() - fetch
        batch, n, weight = got
        losses.append(ts.train_step(w.step, batch["clip"], batch["label"], n, weight))
        if bar:
            bar.update(t.clips_per_iteration())
        if ts.step % t.log_every == 0 or ts.epoch_step == steps_per_epoch:
            n = len(losses) - logged  # steps since the last log
            window_loss = mean_over_workers(torch.stack(losses[logged:]).mean(), w.world)
            now = time.monotonic()
            seconds = now - window_start
            metrics = {"loss": window_loss, "lr": ts.sched.get_last_lr()[0],
                       "clips_per_s": n * t.clips_per_iteration() / seconds, "data_wait": waited / seconds}
            if w.device.type == "cuda":
                metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            w.log(metrics, ts.step, background=True)
            if bar:
                bar.set_description(f"epoch {ts.epoch + 1}/{t.epochs} loss {window_loss:.4f}")
            else:
                eta = (total - ts.step) * seconds / n
                w.say(f"epoch {ts.epoch + 1}/{t.epochs} step {ts.step}/{total} loss {window_loss:.4f} "
                      f"lr {metrics['lr']:.2e} {metrics['clips_per_s']:.1f} clips/s data wait "
                      f"{metrics['data_wait']:.0%} eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
            window_start, waited, logged = now, 0.0, len(losses)
        if ts.step % t.checkpoint_every == 0 and ts.epoch_step < steps_per_epoch:
            w.report(ts, checkpoint=True)
        elif ts.step % t.log_every == 0 and ts.epoch_step < steps_per_epoch and notice_of_preemption(w, ts):
            w.report(ts, checkpoint=True)  # just in time: the restart resumes from here
        fetch = time.monotonic()
    if ts.epoch_step < steps_per_epoch:
        w.say(f"epoch {ts.epoch + 1} ended after {ts.epoch_step} of {steps_per_epoch} steps: the stream ran short")
    return losses


def end_epoch(w: Worker, ts: TrainState, losses: list[torch.Tensor], seconds: float) -> None:
    """The epoch's train loss, the validation when due, its metrics logged and a checkpoint reported."""
    cfg, t = w.cfg, w.cfg.trainer
    train_loss = mean_over_workers(torch.stack(losses).mean(), w.world) if losses else float("nan")
    ts.epoch, ts.epoch_step = ts.epoch + 1, 0
    metrics = {"epoch": ts.epoch, "train_loss": train_loss, "epoch_seconds": seconds}
    text = f"epoch {ts.epoch}/{t.epochs} done: train loss {train_loss:.4f}"
    validated = ts.epoch % t.val_every == 0 or ts.epoch == t.epochs
    if validated:
        scores = evaluate(ts.model, w.store, cfg.data.val_split, cfg, clips=1, protocol="center_crop", rank=w.rank,
                          world=w.world, device=w.device, autocast=w.step.autocast)
        ts.val = scores.metrics("val")
        metrics.update(ts.val)
        text += (f", val top-1 {ts.val['val_top1']:.4f} top-5 {ts.val['val_top5']:.4f} "
                 f"loss {ts.val['val_loss']:.4f} ({len(scores.labels)} videos)")
        if ts.val["val_top1"] > ts.best.get("val_top1", -1.0):  # a later equal one is not better
            ts.best = {"val_top1": ts.val["val_top1"], "epoch": ts.epoch, "step": ts.step}
    w.log(metrics, ts.step)
    w.say(text)
    w.report(ts, checkpoint=True, validated=validated)


def weights_to_test(w: Worker, ts: TrainState) -> str:
    """Puts the weights that the test protocol scores into ``ts.model`` and says which they are:
    with ``trainer.test_checkpoint=best``, the best validation's checkpoint (the authors test their
    ``best_top1_acc_epoch_*``), which rank 0 reads and sends to the others; else the last epoch's."""
    best, last = ts.best, f"the last epoch's weights (epoch {ts.epoch})"
    if w.cfg.trainer.test_checkpoint == "last":
        return last
    label = f"the best checkpoint (epoch {best['epoch']}, val top-1 {best['val_top1']:.4f})"
    if best["step"] == ts.step:
        return f"{label}, the last epoch's"
    box = [None]
    if w.rank == 0:
        try:
            box = [read_state(ray.train.get_checkpoint().filesystem, best["path"])["model"]]
        except (OSError, CheckpointError) as e:
            w.say(f"{label} {best['path']} does not load ({str(e).splitlines()[0]}); the test scores {last}")
    if w.world > 1:
        dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        return last
    ts.model.load_state_dict(box[0])
    return f"{label} {checkpoint_url(w.cfg.trainer.storage_path, best['path'])}"


def mean_over_workers(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def eval_loop(config: dict) -> None:
    """Only the test protocol, on the checkpoint ``RunContext.checkpoint``."""
    ctx: RunContext = config["run"]
    w = Worker(ctx)
    state = load_state(ctx.checkpoint, storage_options(w.cfg))
    model = create_model(w.cfg.model, len(state["classes"]))
    model.load_state_dict(state["model"])
    model = model.to(w.device)
    if state["classes"] != w.store.classes:
        raise ValueError(f"the checkpoint's classes differ from the store {w.store.url}'s")
    ray.train.report(w.test(model, state["step"], f"the checkpoint {ctx.checkpoint}"))

