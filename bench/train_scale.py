"""What starting an epoch costs as the store grows, up to Moments in Time's 50,000 shards; and what
MLflow receives over a paper schedule.

    python bench/train_scale.py                          # 1,250 to 50,000 shards
    python bench/train_scale.py --shards 1000,4000 --kinds train

The store: N training shards and N validation shards, one small real shard (16 videos of real
JPEGs) linked under every name. A shard's own work is then the same at any N; what grows is the
work per shard on the driver of the stream, which is what this measures. Per kind and N, in a
process of its own (for its peak memory) on a local Ray cluster, a pass starts as in a 2-worker
run (train/loop.py, train/evaluate.py): rank 0 builds the pass's dataset (``train_dataset``, or
``eval_dataset`` under the paper's 10-clip test) and splits it as ``split_iterator`` does, and
each rank takes its first batch; rank 1 is an actor of its own. Recorded: the epoch's plan, the
seconds from the pass's start to each rank's first batch, and the peak memory of rank 0's process,
of rank 1's and of Ray Data's split coordinator (the actor that runs the stream).

MLflow: rank 0's logging of 1,000 iterations at the paper configs' ``trainer.log_every``, through
``train.tracking`` against an MLflow server on SQLite, the points a system-metrics sample holds,
and the totals over the paper's Kinetics-400 and Moments in Time schedules.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.scale import fit
from pipeline.store import SCHEMA_VERSION, phase_rows, rows_to_table, write_shard
from train.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]

VIDEOS_PER_SHARD, PHASES = 16, 8
# Shards at 16 videos a shard: (training, validation); the validation sets hold about 20,000 and 33,900 videos.
FULL = {"Kinetics-400": (15_000, 1_250), "Moments in Time": (50_000, 2_119)}
# The paper configs' schedules (configs/*_r50_8f.yaml): training videos, epochs, validation every n epochs.
SCHEDULES = {"Kinetics-400": (240_000, 160, 5), "Moments in Time": (800_000, 48, 1)}
GLOBAL_BATCH, LOG_EVERY = 64, 20
STEP_METRICS = ("loss", "lr", "clips_per_s", "data_wait", "gpu_mem_gb")  # train/loop.py, on a GPU
EPOCH_METRICS, VAL_METRICS = 3, 4  # train/loop.py's end_epoch: epoch, train_loss, epoch_seconds; val_*


def cfg(store: str) -> DataConfig:
    """The paper's sampling (8 frames, stride 8, 10 test clips, whole frames) on small frames."""
    return DataConfig(store=store, frames=8, stride=8, train_short_side=(32, 40), eval_short_side=32, crop=32,
                      test_clips=10, test_protocol="full", shuffle_buffer=0)


def build(folder: Path, shards: int) -> str:
    """A store of ``shards`` training and validation shards, all one real shard, and its manifest."""
    import simplejpeg

    jpeg = simplejpeg.encode_jpeg(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    one = folder / "one.parquet"
    if not one.exists():
        rows = [r for i in range(VIDEOS_PER_SHARD) for r in phase_rows(
            video_id=f"v{i}", label=i % 2, label_name=f"class {i % 2}", split="train", source="v.mp4", fps=25.0,
            num_frames=128, height=40, width=48, indices=list(range(128)), jpegs=[jpeg] * 128, num_phases=PHASES)]
        write_shard(rows_to_table(rows), str(one))
    store = folder / f"store-{shards}"
    splits = {}
    for split in ("train", "val"):
        (store / split).mkdir(parents=True)
        names = [f"{split}/shard-{i:05d}.parquet" for i in range(shards)]
        for name in names:
            os.symlink(one, store / name)
        splits[split] = {"shards": names, "videos": shards * VIDEOS_PER_SHARD}
    manifest = {"schema_version": SCHEMA_VERSION, "classes": ["class 0", "class 1"], "splits": splits,
                "params": {"num_phases": PHASES, "stride": 8}}
    (store / "manifest.json").write_text(json.dumps(manifest))
    return str(store)


def peak_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one(kind: str, url: str) -> dict:
    """In this process, as rank 0 of 2: a pass's start, to each rank's first batch."""
    import psutil
    import ray

    from pipeline.store import Store
    from train.data import eval_dataset, stream_plan, train_dataset

    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False

    @ray.remote(num_cpus=0)
    class Rank:
        def first(self, it) -> tuple[float, float]:
            next(iter(it.iter_batches(batch_size=2)))
            return time.time(), peak_mb()

    rank1 = Rank.remote()
    ray.get(rank1.__ray_ready__.remote())
    store, data = Store(url), cfg(url)
    start = time.monotonic()
    stream_plan(store, data, seed=0, epoch=0, resumed_at=0, epochs=1)
    plan_s = time.monotonic() - start
    start = time.time()
    ds = (train_dataset(store, data, seed=0, epoch=0) if kind == "train"
          else eval_dataset(store, "val", data, clips=data.test_clips, protocol=data.test_protocol))
    splits = ds.streaming_split(2, equal=kind == "train")
    other = rank1.first.remote(splits[1])
    next(iter(splits[0].iter_batches(batch_size=2)))
    rank0_s = time.time() - start
    at, rank1_mb = ray.get(other)
    coordinators = [p.pid for p in psutil.process_iter(["cmdline"]) if "SplitCoordinator" in " ".join(
        p.info["cmdline"] or [])]
    return dict(plan_s=plan_s, rank0_s=rank0_s, rank1_s=at - start, rank0_mb=peak_mb(), rank1_mb=rank1_mb,
                coordinator_mb=max((peak_mb(p) for p in coordinators), default=0.0))


def mlflow_logging(folder: Path, url: str | None) -> dict:
    """Rank 0's logging of 1,000 iterations, and the points of one system-metrics sample, on the server
    at ``url``, else on one started here."""
    from cluster.local import start_mlflow, stop
    from train import tracking

    tracking.quiet_mlflow()
    proc = None
    if not url:
        proc, url = start_mlflow(folder, f"sqlite:///{folder}/mlflow.db", str(folder / "artifacts"), {})
    try:
        c = tracking.client(url)
        run_id = c.create_run(tracking.experiment_id(url, "scale")).info.run_id
        timed = {}
        for background in (False, True):  # each call answered; queued, as train/loop.py logs a window
            start = time.monotonic()
            queued = [tracking.log_metrics(url, run_id, {k: 1.0 for k in STEP_METRICS}, step, background=background)
                      for step in range(LOG_EVERY, 1001, LOG_EVERY)]
            timed[background] = time.monotonic() - start
            for op in queued:
                if op:
                    op.wait()
        history = len(c.get_metric_history(run_id, STEP_METRICS[0]))
        with tracking.system_metrics(url, run_id, every_s=1.0):
            time.sleep(3.5)
        system = [k for k in c.get_run(run_id).data.metrics if k.startswith("system/")]
        samples = max(len(c.get_metric_history(run_id, k)) for k in system)
    finally:
        if proc:
            stop(proc)
    return dict(per_1000_s=timed[False], queued_s=timed[True], calls=1000 // LOG_EVERY, logged=history,
                system_metrics=len(system), samples=samples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", default="1250,5000,20000,50000", help="shards per split, comma-separated")
    p.add_argument("--kinds", default="train,eval,mlflow")
    p.add_argument("--tracking-uri", help="an MLflow server to log to (default: one on SQLite, started here)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # JSON: one measurement, in a process of its own
    args = p.parse_args(argv)
    if args.one:
        job = json.loads(args.one)
        print(json.dumps(one(job["kind"], job["store"])))
        return 0
    sizes, kinds = [int(s) for s in args.shards.split(",")], args.kinds.split(",")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {n: build(Path(tmp), n) for n in sizes} if {"train", "eval"} & set(kinds) else {}
        for kind in [k for k in kinds if k != "mlflow"]:
            rows = []
            for n in sizes:
                job = json.dumps(dict(kind=kind, store=stores[n]))
                done = subprocess.run([sys.executable, __file__, "--one", job], capture_output=True, text=True,
                                      env=env)
                if done.returncode:
                    raise SystemExit(f"train_scale: {kind} at {n} shards failed:\n{done.stderr[-3000:]}")
                rows.append((n, json.loads(done.stdout.strip().splitlines()[-1])))
            report(kind, rows)
        if "mlflow" in kinds:
            report_mlflow(mlflow_logging(Path(tmp), args.tracking_uri))
    return 0


def report(kind: str, rows: list[tuple[int, dict]]) -> None:
    """A markdown table: each figure per size, its fit a + b N, and the fit at the datasets' shard counts
    (no less than the least measured: a slope below zero is noise)."""
    ns = [n for n, _ in rows]
    what = "a training epoch (2 workers)" if kind == "train" else "the 10-clip test (2 workers)"
    print(f"\n{kind}: the start of {what}, {VIDEOS_PER_SHARD} videos a shard, "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    at = {name: shards[kind == "eval"] for name, shards in FULL.items()}
    print("| figure | " + " | ".join(f"{n:,} shards" for n in ns) + " | fit | "
          + " | ".join(f"{name} ({n:,})" for name, n in at.items()) + " |")
    print("|---" * (len(ns) + 2 + len(FULL)) + "|")
    figures = {"rank 0's first batch": ("rank0_s", "s"), "rank 1's first batch": ("rank1_s", "s"),
               "rank 0's peak memory": ("rank0_mb", "MB"), "rank 1's peak memory": ("rank1_mb", "MB"),
               "split coordinator's peak memory": ("coordinator_mb", "MB")}
    if kind == "train":
        figures = {"the epoch's plan": ("plan_s", "s"), **figures}
    for name, (key, unit) in figures.items():
        ys = [r[key] for _, r in rows]
        a, b = fit(ns, ys)
        digits = 2 if unit == "s" else 0
        print(f"| {name} | " + " | ".join(f"{y:.{digits}f} {unit}" for y in ys)
              + f" | {a:.{digits}f} {unit} + {b * 1000:.3f} {unit} per 1,000 | "
              + " | ".join(f"{max(a + b * n, min(ys)):.{digits}f} {unit}" for n in at.values()) + " |")


def report_mlflow(m: dict) -> None:
    per_call, queued = m["per_1000_s"] / m["calls"], m["queued_s"] / m["calls"]
    points = m["calls"] * len(STEP_METRICS)
    print(f"\nMLflow (SQLite server, {time.strftime('%Y-%m-%d')}): per 1,000 iterations at log_every {LOG_EVERY}, "
          f"{m['calls']} calls, {points} points ({m['logged']} of each metric logged in all); each call "
          f"answered: {m['per_1000_s']:.2f} s ({per_call * 1000:.1f} ms a call); queued, as rank 0 logs: "
          f"{m['queued_s'] * 1000:.0f} ms ({queued * 1000:.2f} ms a call); a system-metrics sample: "
          f"{m['system_metrics']} points ({m['samples']} samples in 3.5 s at 1 s)")
    print("| schedule | iterations | step-metric points | epoch and validation points | the server's time | "
          "rank 0's time |")
    print("|---|---|---|---|---|---|")
    for name, (videos, epochs, val_every) in SCHEDULES.items():
        iterations = epochs * (videos // GLOBAL_BATCH)
        calls = iterations // LOG_EVERY
        other = epochs * EPOCH_METRICS + epochs // val_every * VAL_METRICS
        print(f"| {name}: {epochs} epochs | {iterations:,} | {calls * len(STEP_METRICS):,} | {other:,} | "
              f"{calls * per_call / 60:.0f} min | {calls * queued:.0f} s |")


if __name__ == "__main__":
    sys.exit(main())
