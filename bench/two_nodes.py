"""Step time of 2 workers on 2 nodes against 1 worker on 1 node: what data-parallel training pays
to cross a node, measured on the local multi-node cluster (cluster/local.py: a Ray head and a
worker node as separate processes on this machine, DDP over gloo on loopback TCP).

    python bench/two_nodes.py                      # start the cluster, train 3 runs, print, stop it
    python bench/two_nodes.py --arch c3d --epochs 4

The runs train configs/tiny_synthetic.yaml on the same store (on the cluster's S3) with the same
clips per worker and one CPU (one torch thread) per worker: one worker, two workers packed on one
node, and two spread over both nodes (trainer.placement=SPREAD). A step's time is its clips (batch
x workers) over the seconds of its logging window (the runs' `clips_per_s` in MLflow), the median
over the windows after the first epoch, which holds the data pipeline's start. Weak scaling: 1.00
is perfect. The two nodes share this machine's cores, memory and loader CPUs, so on a small machine
the ratio holds that contention as well as the all-reduce; the packed run has the same contention
without crossing a node, so spread / packed is what crossing the node costs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import s3fs

from cluster import local
from pipeline.synthetic import SyntheticSpec, generate, val_count
from train import tracking

ROOT = Path(__file__).resolve().parents[1]

BATCH = 16  # clips per worker per step
CLASSES, CLIPS_PER_VIDEO = 4, 4  # motion classes; training clips per video per epoch
# (workers, placement): the baseline, both workers on one node (the same contention for the
# machine's cores, no node crossing), and spread over the two nodes.
RUNS = ((1, "PACK"), (2, "PACK"), (2, "SPREAD"))


def step_seconds(clips_per_s: list[float], clips_per_step: int) -> float:
    """The median step time of a run's logging windows, from their clips per second."""
    return statistics.median(clips_per_step / c for c in clips_per_s)


def run(env: dict[str, str], *cmd: str) -> None:
    done = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{Path(sys.argv[0]).stem}: {cmd[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")


@contextlib.contextmanager
def two_node_cluster(prefix: str, head_cpus: float) -> Iterator[tuple[Path, dict, dict[str, str]]]:
    """(a work folder, the cluster's state, the drivers' environment) of cluster/local.py's cluster -
    a Ray head and one worker node of 2 CPUs - in a temporary folder, stopped after. This process
    signs in to its MLflow, to read the runs back."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # the cluster's S3 is a local moto: any key
        os.environ.setdefault(key, "bench")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        state = local.up(root / "c", workers=1, head_cpus=head_cpus, worker_cpus=2)
        try:
            os.environ.update(local.mlflow_credentials(state))
            yield root, state, {**os.environ, "PYTHONPATH": str(ROOT), **local.client_env(state)}
        finally:
            local.down(root / "c")


def motion_store(env: dict[str, str], state: dict, videos: Path, videos_per_class: int,
                 val_videos_per_class: int | None = None) -> str:
    """A synthetic motion dataset of CLASSES classes, written to ``videos``, put on the cluster's S3
    (every node reads it there) and prepared into s3://BUCKET/store at the demo's stride (4). Val
    videos per class: prepare's default (a quarter, at least 2) unless given."""
    bucket = state["bucket"]
    generate(SyntheticSpec(kind="motion", classes=CLASSES, videos_per_class=videos_per_class,
                           val_videos_per_class=val_count(videos_per_class, val_videos_per_class)), videos)
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": state["s3_endpoint"]}).put(f"{videos}/", f"{bucket}/videos/",
                                                                                recursive=True)
    run(env, "pipeline/prepare.py", "--dataset", "kinetics", "--root", f"s3://{bucket}/videos",
        "--out", f"s3://{bucket}/store", "--stride", "4", "--splits", "train,val")
    return f"s3://{bucket}/store"


def measured(uri: str, name: str, clips_per_step: int, after_step: int) -> tuple[float, float, int, int]:
    """(step seconds, median data wait, windows, nodes the workers ran on) of the run ``name``."""
    client = tracking.client(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("two-nodes").experiment_id],
                                  filter_string=f"tags.`cost.run_name` = '{name}'")
    cps, wait = ([m.value for m in client.get_metric_history(found.info.run_id, key) if m.step > after_step]
                 for key in ("clips_per_s", "data_wait"))
    nodes = len(set(found.data.tags["worker_nodes"].split(",")))
    return step_seconds(cps, clips_per_step), statistics.median(wait), len(cps), nodes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cost_b")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--videos-per-class", type=int, default=32, help=f"{CLASSES} motion classes")
    args = p.parse_args(argv)
    with two_node_cluster("two-nodes-", head_cpus=2) as (root, state, env):
        bucket, s3 = state["bucket"], state["s3_endpoint"]
        store = motion_store(env, state, root / "videos", args.videos_per_class, val_videos_per_class=2)
        clips = CLASSES * args.videos_per_class * CLIPS_PER_VIDEO  # an epoch's
        result = {}
        for workers, placement in RUNS:
            name = f"{args.arch}-{workers}w-{placement.lower()}"
            run(env, "train/main.py", "--config", "configs/tiny_synthetic.yaml", f"name={name}",
                f"model.arch={args.arch}", f"data.store={store}", f"data.s3_endpoint={s3}",
                f"trainer.storage_path=s3://{bucket}/runs", "tracking.experiment=two-nodes",
                "model.pretrained=none",  # the Kinetics layout asks for weights: from scratch on purpose
                f"trainer.epochs={args.epochs}", f"trainer.num_workers={workers}",
                f"data.clips_per_video={CLIPS_PER_VIDEO}", f"trainer.placement={placement}",
                f"trainer.batch_size={BATCH}", "trainer.cpus_per_worker=1",
                "trainer.log_every=4", f"trainer.val_every={args.epochs + 1}", "optim.warmup_epochs=1")
            step, wait, windows, nodes = measured(state["mlflow"], name, BATCH * workers,
                                                  after_step=clips // (BATCH * workers))  # epoch 1
            if nodes != (2 if placement == "SPREAD" else 1):
                raise SystemExit(f"two_nodes: {name}'s workers ran on {nodes} node(s), not as placed")
            result[workers, placement] = (step, wait, windows)
    print(f"{args.arch}, configs/tiny_synthetic.yaml, {BATCH} clips per worker, 1 CPU per worker; "
          f"median over the windows after epoch 1")
    print(f"{'run':<26}{'step ms':>9}{'data wait':>11}{'windows':>9}")
    for run_key, label in zip(RUNS, ("1 worker, 1 node", "2 workers, 1 node", "2 workers, 2 nodes"), strict=True):
        step, wait, n = result[run_key]
        print(f"{label:<26}{step * 1000:>9.0f}{wait:>11.1%}{n:>9}")
    one, packed, spread = (result[k][0] for k in RUNS)
    print(f"ratio, 2 workers on 2 nodes / 1 worker on 1 node: {spread / one:.2f}")
    print(f"ratio, 2 workers on 2 nodes / 2 workers on 1 node (the node crossing alone): {spread / packed:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
