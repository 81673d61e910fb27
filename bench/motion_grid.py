"""Does the motion result hold off the project's own generator? A grid of motion datasets, four models each.

    python bench/motion_grid.py                       # the full grid (about 7 minutes a cell on 2 cores)
    python bench/motion_grid.py --cells hardest       # its hardest cell alone (about 7 minutes on 2 cores)

Each cell is a 4-class motion dataset (left / right / up / down) with one object size (its side
against the frame's short side), one speed (pixels per source frame) and one video length, in one
of two layouts:

  * ``folder``: written here, independently of pipeline/synthetic.py - a small bright square over
    a dark background with fresh noise in every frame, 64x64, long-GOP H.264, laid out as
    <root>/<split>/<class>/<video>.mp4 and prepared with ``--dataset folder``;
  * ``synthetic``: pipeline/synthetic.py's time-reversal pairs (asymmetric shapes over a textured
    field, intra-only H.264) with its --object-size and --speed, prepared with ``--dataset synthetic``.

An object that reaches an edge re-enters from the opposite one, so any speed fits any length.
Every cell is prepared with ``--stride 4`` and trained with configs/tiny_synthetic.yaml unchanged,
with the project's own clip cutting, augmentation and test protocol, ``--jobs`` models at a time. Goal: C3D,
CoST(a) and CoST(b) reach test top-1 >= 0.9 in every cell and C2D stays <= 0.6 (within a
direction's reversal, frame order is the only clue).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipeline.prepare import main as prepare
from pipeline.session import ray_session
from pipeline.synthetic import write_video
from train.config import TrainConfig, load_config
from train.fit import fit as train_in_process

ROOT = Path(__file__).resolve().parents[1]

ARCHS = ("c2d", "c3d", "cost_a", "cost_b")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SIZES = (1 / 8, 1 / 4)
SPEEDS = (0.5, 2.0)
LENGTHS = (32, 64)
LAYOUTS = ("folder", "synthetic")
# Videos per class: 75 teach the tiny model the slowest, smallest synthetic objects only at the
# edge (bench/RESULTS.md); 150 do in every cell.
TRAIN, VAL = 150, 25
# The synthetic layout's smallest, slowest objects in its shortest videos: where CoST(a) has the
# least margin (bench/RESULTS.md).
HARDEST_CELL = ("synthetic", 1 / 8, 0.5, 32)


def default_jobs() -> int:
    """Fits at a time: one per core this process may use (any core where that is not known)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def square_video(direction: str, rng: np.random.Generator, *, size: float, speed: float, frames: int,
                 side: int = 64) -> np.ndarray:
    """(frames, side, side, 3) uint8: one bright square of side ``size * side`` moving ``speed``
    px per frame in ``direction`` over a dark background with fresh noise in every frame."""
    s = max(2, round(size * side))
    dx, dy = DIRECTIONS[direction]
    # The centre moves on a loop one square longer than the frame, so it leaves and re-enters whole.
    loop = side + s
    x0, y0 = rng.uniform(0, loop, size=2)
    t = np.arange(frames)
    xs = (x0 + dx * speed * t) % loop - s / 2 if dx else np.full(frames, rng.uniform(s / 2, side - s / 2))
    ys = (y0 + dy * speed * t) % loop - s / 2 if dy else np.full(frames, rng.uniform(s / 2, side - s / 2))
    colour = rng.uniform(150, 255, size=3)
    base = rng.uniform(10, 40)
    video = rng.normal(base, 8, size=(frames, side, side, 3)).clip(0, 255).astype(np.uint8)
    for i in range(frames):  # drawn at whole pixels, as a first script would: slow steps come in jumps
        top, left = round(ys[i] - s / 2), round(xs[i] - s / 2)
        video[i, max(top, 0):max(top + s, 0), max(left, 0):max(left + s, 0)] = colour
    return video


def write_squares(root: Path, *, size: float, speed: float, frames: int, train: int, val: int, seed: int) -> None:
    """``train`` and ``val`` videos per direction under root/{train,val}/<direction>/."""
    for s, (split, count) in enumerate((("train", train), ("val", val))):
        for d, direction in enumerate(DIRECTIONS):
            for i in range(count):
                rng = np.random.default_rng([seed, s, d, i])
                video = square_video(direction, rng, size=size, speed=speed, frames=frames)
                write_video(root / split / direction / f"{direction}-{i:04d}.mp4", video, 16, intra_only=False)


def make_store(work: Path, layout: str, size: float, speed: float, frames: int, *, train: int, val: int,
               seed: int) -> str:
    """Write one cell's videos and prepare them with --stride 4; returns the store's path."""
    src, out = work / "src", work / "store"
    common = ["--stride", "4", "--out", str(out)]
    if layout == "folder":
        write_squares(src, size=size, speed=speed, frames=frames, train=train, val=val, seed=seed)
        args = ["--dataset", "folder", "--root", str(src)]
    else:
        args = ["--dataset", "synthetic", "--synthetic-kind", "motion", "--classes", "4", "--root", str(src),
                "--videos-per-class", str(train), "--val-videos-per-class", str(val), "--synthetic-frames",
                str(frames), "--object-size", str(size), "--speed", str(speed), "--seed", str(seed)]
    if prepare([*args, *common]) != 0:
        raise RuntimeError(f"prepare failed for {layout} {size} {speed} {frames}")
    return str(out)


def fit(store_url: str, arch: str, *, seed: int = 1, overrides: tuple[str, ...] = ()
        ) -> tuple[torch.nn.Module, TrainConfig, float]:
    """(model, config, test top-1) of configs/tiny_synthetic.yaml on ``store_url``, trained in this
    process by the product's own run without Ray (train/fit.py)."""
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny_synthetic.yaml",
                      [f"data.store={store_url}", f"model.arch={arch}", *overrides])
    model, top1 = train_in_process(cfg, seed=seed)
    return model, cfg, top1


def fit_many(runs: list[tuple[str, str]], *, jobs: int, seed: int = 1, overrides: tuple[str, ...] = ()
             ) -> list[tuple[torch.nn.Module, TrainConfig, float]]:
    """``fit`` of each (store, arch) in ``runs``, ``jobs`` at a time in fresh processes of one torch
    thread each: on 2 cores, two such fits side by side do more per second than one on both cores
    (bench/RESULTS.md). jobs=1 fits here, in order, with this process's threads."""
    if jobs <= 1:
        return [fit(url, arch, seed=seed, overrides=overrides) for url, arch in runs]
    # spawn, not fork: a forked child inherits the parent's OpenMP state and can hang in torch.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = [pool.submit(fit, url, arch, seed=seed, overrides=overrides) for url, arch in runs]
        return [f.result() for f in futures]


def passes(arch: str, top1: float) -> bool:
    return top1 <= 0.6 if arch == "c2d" else top1 >= 0.9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", choices=("all", "hardest"), default="all", help="hardest: the hardest cell alone")
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="object side / frame side, e.g. 0.125,0.25")
    p.add_argument("--speeds", default=",".join(map(str, SPEEDS)), help="px per source frame")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="frames per video")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--train", type=int, default=TRAIN, help=f"training videos per class (default {TRAIN})")
    p.add_argument("--val", type=int, default=VAL, help=f"test videos per class (default {VAL})")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; training uses seed + 1")
    p.add_argument("--set", action="append", default=[], help="a config override, e.g. trainer.epochs=12")
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--jobs", type=int, default=default_jobs(),
                   help="fits at a time, one torch thread each (default: one per core; 1: in this process)")
    args = p.parse_args(argv)
    archs = args.archs.split(",")
    floats = lambda text: [float(x) for x in text.split(",")]  # noqa: E731
    cells = [HARDEST_CELL] if args.cells == "hardest" else list(itertools.product(
        args.layouts.split(","), floats(args.sizes), floats(args.speeds), [int(x) for x in args.lengths.split(",")]))
    failed = 0
    with ray_session(None, 0), tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"{'layout':<10} {'size':>5} {'px/frame':>8} {'frames':>6}  " + "  ".join(f"{a:>6}" for a in archs)
              + "  seconds")
        for n, (layout, size, speed, frames) in enumerate(cells):
            start = time.perf_counter()
            url = make_store(Path(tmp) / f"cell-{n}", layout, size, speed, frames, train=args.train, val=args.val,
                             seed=args.seed)
            fits = fit_many([(url, a) for a in archs], jobs=args.jobs, seed=args.seed + 1, overrides=tuple(args.set))
            top1 = {a: top1 for a, (_, _, top1) in zip(archs, fits, strict=True)}
            failed += sum(not passes(a, v) for a, v in top1.items())
            marks = "  ".join(f"{v:>5.2f}{' ' if passes(a, v) else '!'}" for a, v in top1.items())
            print(f"{layout:<10} {f'1/{round(1 / size)}':>5} {speed:>8.1f} {frames:>6}  {marks}  "
                  f"{time.perf_counter() - start:7.0f}", flush=True)
    print(f"goal: C3D, CoST(a), CoST(b) >= 0.9 and C2D <= 0.6 in every cell; {failed} result(s) miss it "
          "(marked !)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
