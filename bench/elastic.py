"""Does the demo still learn when a spot node goes and comes back, and how much time does each change
of group cost? On the local multi-node cluster (cluster/local.py: a Ray head and one worker node on
this machine, one training worker on each), configs/tiny_synthetic.yaml on the demo's motion store:

    python bench/elastic.py                      # 3 fixed runs, then 1 elastic run (32 minutes on 2 cores)
    python bench/elastic.py --seeds 5 --down-s 120

The fixed runs train on 2 workers (seeds 0..N-1) and give the range of test top-1 a run of this
config reaches. The elastic run (trainer.num_workers=[1, 2], seed 0) is interrupted as a spot reclaim
interrupts it: after its first registered checkpoint the worker node gets a reclaim notice (Ray's
node drain, as cluster/spot_notice.py gives it on EC2), the run checkpoints, the node is killed; the
run goes on with one worker adding up 2 batches per iteration; --down-s later the node is started
again (its replacement) and the group grows back to 2. Its test top-1 should fall within the fixed
runs' range, and its restarts' `restart_lost_s` (from the checkpoint resumed from to training again)
is the time a reclaim and a replacement cost. Ray Train's own start timeout is left at its default.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import s3fs

from bench.two_nodes import motion_store, two_node_cluster
from cluster import local
from train import tracking

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = "elastic"


def checkpoint_step(fs: s3fs.S3FileSystem, run_dir: str) -> int | None:
    """The step of the latest checkpoint Ray Train's controller has registered (its snapshot in the
    run folder names one), if any. One only written to storage is not yet what a restarted group
    resumes from (docs/training.md, "Checkpoints")."""
    fs.invalidate_cache()
    snapshots = [json.loads(fs.cat(p))["latest_checkpoint_result"] for p in fs.find(run_dir)
                 if p.endswith("checkpoint_manager_snapshot.json")]
    return max((latest["metrics"]["step"] for latest in snapshots if latest), default=None)


def wait_for(proc: subprocess.Popen, log: Path, done: Callable[[], object], timeout: float) -> None:
    """Until ``done()``; the run's log in the error if it ends or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"elastic: the run {'ended' if proc.poll() is not None else 'took too long'} "
                               f"before the next event:\n{log.read_text()[-5000:]}")
        time.sleep(0.5)


def reclaim(cluster: Path, proc: subprocess.Popen, log: Path, fs: s3fs.S3FileSystem, run_dir: str,
            down_s: float) -> int:
    """A spot reclaim of worker node 1 and its replacement ``down_s`` after the group of one trains,
    during the run ``proc`` writes ``log`` of: the notice, the run's checkpoint on it (registered),
    the kill, the group of one, the node again, the group of two. Returns the notice's step."""
    wait_for(proc, log, lambda: checkpoint_step(fs, run_dir) is not None, 600)
    local.drain_node(cluster, 1, deadline_s=60)
    notice = r"to be reclaimed, \d+ s from now: a checkpoint at step (\d+)"
    wait_for(proc, log, lambda: re.search(notice, log.read_text()), 120)
    noticed = int(re.search(notice, log.read_text())[1])
    wait_for(proc, log, lambda: (checkpoint_step(fs, run_dir) or 0) >= noticed, 60)
    local.kill_node(cluster, 1)
    wait_for(proc, log, lambda: "restarted on 1 worker(s)" in log.read_text(), 600)
    time.sleep(down_s)
    local.start_node(cluster, 1)
    wait_for(proc, log, lambda: "restarted on 2 worker(s)" in log.read_text(), 600)
    return noticed


def train_args(state: dict, store: str, name: str, arch: str, seed: int, workers: str) -> list[str]:
    return ["train/main.py", "--config", "configs/tiny_synthetic.yaml", f"name={name}", f"model.arch={arch}",
            f"trainer.seed={seed}", f"trainer.num_workers={workers}", f"data.store={store}",
            f"data.s3_endpoint={state['s3_endpoint']}", f"trainer.storage_path=s3://{state['bucket']}/runs",
            f"tracking.experiment={EXPERIMENT}", "model.pretrained=none",  # the Kinetics layout asks for weights
            "trainer.cpus_per_worker=2", "trainer.max_failures=3", "trainer.resize_interval_s=10"]


def within(value: float, fixed: list[float]) -> bool:
    """Whether ``value`` lies in the range the fixed runs reached (ends included)."""
    return min(fixed) <= value <= max(fixed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cost_b")
    p.add_argument("--seeds", type=int, default=3, help="fixed runs, trainer.seed 0..N-1 (default 3)")
    p.add_argument("--videos-per-class", type=int, default=75, help="4 motion classes (default 75: the demo's)")
    p.add_argument("--down-s", type=float, default=30.0, help="seconds the node stays away (default 30)")
    args = p.parse_args(argv)
    with two_node_cluster("elastic-", head_cpus=3) as (root, state, env):
        store = motion_store(env, state, root / "videos", args.videos_per_class)
        uri = state["mlflow"]
        top1: dict[str, float] = {}
        for seed in range(args.seeds):
            name = f"{args.arch}-fixed-s{seed}"
            done = subprocess.run([sys.executable, *train_args(state, store, name, args.arch, seed, "2")],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise SystemExit(f"elastic: {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            top1[name] = tracking.training_run(uri, name).data.metrics["test_top1"]
        name = f"{args.arch}-elastic-s0"
        log = root / "elastic.log"
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": state["s3_endpoint"]})
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, *train_args(state, store, name, args.arch, 0, "[1, 2]")],
                                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                noticed = reclaim(root / "c", proc, log, fs, f"{state['bucket']}/runs/{name}", args.down_s)
                if proc.wait(timeout=3600) != 0:
                    raise SystemExit(f"elastic: {name} failed:\n{log.read_text()[-5000:]}")
            finally:
                if proc.poll() is None:
                    proc.kill()
        run = tracking.training_run(uri, name)
        client = tracking.client(uri)
        sizes = [int(m.value) for m in client.get_metric_history(run.info.run_id, "world_size")]
        lost = [m.value for m in client.get_metric_history(run.info.run_id, "restart_lost_s")]
    fixed = list(top1.values())
    print(f"{args.arch}, configs/tiny_synthetic.yaml, {4 * args.videos_per_class} motion videos, 32 clips an "
          f"iteration; the elastic run: a reclaim notice after step {noticed}, the node away {args.down_s:.0f} s")
    print(f"{'run':<24}{'test top-1':>11}")
    for n, v in top1.items():
        print(f"{n:<24}{v:>11.3f}")
    elastic = run.data.metrics["test_top1"]
    print(f"{name:<24}{elastic:>11.3f}   group sizes {sizes}, restarts lost "
          f"{', '.join(f'{v:.0f} s' for v in lost)}")
    print(f"elastic within the fixed runs' range [{min(fixed):.3f}, {max(fixed):.3f}]: "
          f"{'yes' if within(elastic, fixed) else 'NO'}")
    return 0 if within(elastic, fixed) else 1


if __name__ == "__main__":
    sys.exit(main())
