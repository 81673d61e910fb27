"""The paper's comparison in one command: one training run per (arch, seed), then the report.

    python results/compare.py --config configs/tiny_synthetic.yaml --archs c2d,c3d,cost_a,cost_b --seeds 1 \\
        data.store=demo-output/store
    ray job submit --address http://HEAD:8265 --working-dir . -- python results/compare.py \\
        --config configs/kinetics400_r50_8f.yaml --seeds 3 model.pretrained=s3://BUCKET/weights/resnet50.pth

Each member is ``train/main.py`` with ``model.arch=ARCH trainer.seed=SEED name=PREFIX-ARCH-sSEED``, so
it is tracked, checkpointed, stopped and resumed like any run. A member already FINISHED in MLflow is
not trained again: the same command re-runs only what failed or was stopped, then reports. Members
run side by side as far as the cluster's CPUs and GPUs hold them (``--parallel`` caps that),
one after another otherwise, all on one Ray cluster: the one named, a running one, or one started
here for the whole comparison.

Why processes and not a Ray Tune ``Tuner``: with Ray Train V2 (2.60's default) a ``TorchTrainer`` is
not a Tune trainable; Tune would run each ``fit()`` inside a function trial of its own, and the
driver's part of a run (config checks, the MLflow run opened and closed, the model logged) would
move there. As ``train/main.py`` processes, a member is exactly the run a user starts by hand.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.session import ray_session
from results.report import main as report
from train import main as train
from train import tracking
from train.config import ConfigError, TrainConfig
from train.models import ARCHS

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for every member")
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated (default: all four)")
    p.add_argument("--seeds", type=int, default=1, help="runs per arch, trainer.seed 0..N-1 (default 1)")
    p.add_argument("--name", default=None, help="members' name prefix (default: the experiment's name)")
    p.add_argument("--parallel", type=int, default=0, help="at most this many members at once (default: as "
                                                            "many as the cluster's resources hold)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, a running one, "
                                                   "or a new local one for the whole comparison)")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of a local Ray instance started here")
    p.add_argument("--out", default=None, help="the report's folder (default: under the home, "
                                               "reports/EXPERIMENT)")
    p.add_argument("--verbose", action="store_true", help="the members' Ray lines too")
    args = p.parse_args(argv)
    unknown = sorted(set(args.archs.split(",")) - set(ARCHS))
    if unknown or args.seeds < 1:
        p.error(f"--archs takes {', '.join(ARCHS)} (got {', '.join(unknown)})" if unknown else "--seeds must be >= 1")
    return args


def members(args: argparse.Namespace) -> tuple[TrainConfig, list[tuple[str, list[str]]]]:
    """(the first member's config, (name, train/main.py arguments) per member), every member checked
    against the store before Ray starts."""
    out, cfgs = [], []
    for arch in args.archs.split(","):
        for seed in range(args.seeds):
            argv = ["--config", args.config, *args.overrides, f"model.arch={arch}", f"trainer.seed={seed}"]
            cfgs.append(train.checked(train.parse_args(argv))[0])
            name = f"{args.name or cfgs[-1].tracking.experiment}-{arch}-s{seed}"
            out.append((name, [*argv, f"name={name}", *(["--verbose"] if args.verbose else [])]))
    return cfgs[0], out


def finished(uri: str, experiment: str, name: str) -> bool:
    run = tracking.find_run(uri, tracking.experiment_id(uri, experiment), name)
    return run is not None and run.info.status == "FINISHED"


def side_by_side(cfg: TrainConfig, cap: int, todo: int) -> int:
    """How many members the cluster's CPUs and GPUs hold at once (at least 1, at most ``cap``). Its
    capacity, not what is free this instant: a member that finds the room taken waits for it."""
    import ray

    t = cfg.trainer
    room, workers = ray.cluster_resources(), t.worker_range()[1]  # an elastic member grows to its most
    fits = [room.get("CPU", 0) / (workers * t.cpus_per_worker + cfg.data.loader_cpus)]
    if t.use_gpu:
        fits.append(room.get("GPU", 0) / workers)
    return max(1, min(math.floor(min(fits)), cap or todo, todo))


def run_member(name: str, argv: list[str], env: dict[str, str], alone: bool) -> int:
    """``train/main.py`` in its own process; its exit status. Alone, it has the console to itself (a
    terminal keeps its progress bar); side by side, its lines are passed on prefixed with its name."""
    cmd = [sys.executable, str(ROOT / "train" / "main.py"), *argv]
    if alone:
        return subprocess.call(cmd, env=env)
    proc = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    for line in proc.stdout:
        sys.stdout.write(f"[{name}] {line}")
        sys.stdout.flush()
    return proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        tracking.quiet_mlflow()
    try:
        cfg, todo = members(args)
        uri, experiment = tracking.tracking_uri(cfg.tracking.uri), cfg.tracking.experiment
        tracking.check_answers(uri)
    except ConfigError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    done = [name for name, _ in todo if finished(uri, experiment, name)]
    todo = [(name, argv) for name, argv in todo if name not in done]
    if done:
        print(f"[compare] already finished, not trained again: {', '.join(done)}")
    failed = []
    if todo:
        with ray_session(args.address, args.num_cpus, quiet=not args.verbose):
            import ray

            width = side_by_side(cfg, args.parallel, len(todo))
            env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # one Ray for them all
            print(f"[compare] {len(todo)} run(s), {width} at a time: {', '.join(name for name, _ in todo)}",
                  flush=True)
            with ThreadPoolExecutor(width) as pool:
                codes = list(pool.map(lambda m: run_member(*m, env, width == 1), todo))
            failed = [name for (name, _), code in zip(todo, codes, strict=True) if code != 0]
    if failed:
        print(f"[compare] failed or stopped: {', '.join(failed)}; run the same command again to finish them",
              file=sys.stderr)
    code = report(["--experiment", experiment, "--tracking-uri", uri, *(["--out", args.out] if args.out else [])])
    return 1 if failed or code else 0


if __name__ == "__main__":
    sys.exit(main())
