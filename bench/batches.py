"""Are training batches made of independent videos? Batch make-up, bytes read and speed of the loader.

    python bench/batches.py                  # 256 videos of 250-300 frames in 64 classes, stride 8
    python bench/batches.py --classes 100 --videos 400 --epochs 4

A Kinetics-shaped source (10 s videos at 25-30 fps, long-GOP H.264) in the folder layout, whose
video ids start with their class, so that sorting them would sort the classes; prepared with the
defaults (stride 8, videos shuffled before sharding). Then the training loader with the default
settings (one clip per video per epoch), through Ray Data and each worker's local shuffle buffer
as training consumes it, in 8-clip batches. It prints:

  * the mean number of distinct videos and of distinct classes per 8-clip batch (goals: >= 7.8
    and, with >= 64 classes, >= 7.5; a random draw of 8 from the epoch's clips gives the expectation
    printed beside it);
  * bytes read per clip against the clip's own JPEG bytes (one epoch in this process, counted by
    the kernel: /proc/self/io's rchar);
  * loader clips/s per core, through Ray Data and in one process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.prepare import main as prepare
from pipeline.session import ray_session
from pipeline.store import Store
from pipeline.synthetic import write_video
from train.config import DataConfig
from train.data import epoch_plan, shard_clips, train_dataset


def write_source(root: Path, classes: int, videos: int, size: tuple[int, int], seed: int) -> None:
    """``videos`` MP4s of 250-300 frames at 25-30 fps under root/train/<class>/, classes in turn."""
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(videos):
        fps = int(rng.integers(25, 31))
        n = int(rng.integers(250, 301))
        base = rng.integers(20, 230, size=3)
        drift = np.linspace(0, rng.uniform(-40, 40), n)[:, None, None, None]
        noise = rng.integers(-12, 13, size=(1, h, w, 3))
        frames = np.clip(base + drift + noise, 0, 255).astype(np.uint8)
        write_video(root / "train" / f"class-{i % classes:03d}" / f"video-{i:05d}.mp4", frames, fps, intra_only=False)


def rchar() -> int:
    """Bytes this process has read through the kernel (files and page cache alike)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


def batch_makeup(store: Store, cfg: DataConfig, epochs: int) -> tuple[list[int], list[int], float]:
    """(distinct videos per batch, distinct classes per batch, clips/s): the loader as a worker reads it."""
    videos, classes, clips = [], [], 0
    start = time.monotonic()
    for epoch in range(epochs):
        it = train_dataset(store, cfg, seed=0, epoch=epoch).iterator()
        for b in it.iter_batches(batch_size=8, drop_last=True, local_shuffle_buffer_size=cfg.shuffle_buffer,
                                 local_shuffle_seed=epoch):
            videos.append(len(set(b["video"].tolist())))
            classes.append(len(set(b["label"].tolist())))
            clips += len(b["label"])
    return videos, classes, clips / (time.monotonic() - start)


def expected_distinct(labels: list[int], draws: int = 8) -> float:
    """Mean distinct values among ``draws`` drawn at random without replacement from ``labels``."""
    counts = np.bincount(labels)
    n = len(labels)
    absent = [np.prod([(n - c - i) / (n - i) for i in range(draws)]) for c in counts if c]
    return float(sum(1 - a for a in absent))


def inprocess(store: Store, cfg: DataConfig) -> tuple[float, float]:
    """(bytes read per clip, clips/s) of one epoch's per-task work in this process."""
    phases = store.manifest["params"]["num_phases"]
    clips, read, start = 0, rchar(), time.monotonic()
    for task in epoch_plan(store, cfg, seed=0, epoch=0):
        for block in shard_clips(task["url"], task["round"], cfg, {}, num_phases=phases, seed=0, epoch=0):
            clips += len(block["label"])
    seconds = time.monotonic() - start
    return (rchar() - read) / clips, clips / seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=256)
    p.add_argument("--classes", type=int, default=64)
    p.add_argument("--size", default="128x170", help="source HxW (the store keeps it: short side under 320)")
    p.add_argument("--crop", type=int, default=112, help="training crop (short side drawn in [crop, 1.25 crop])")
    p.add_argument("--epochs", type=int, default=6, help="epochs of batches to count")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of a local Ray instance started here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)
    h, w = (int(x) for x in args.size.split("x"))
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-batches-"))
    write_source(work / "src", args.classes, args.videos, (h, w), args.seed)
    import ray

    with ray_session(None, args.cpus):  # joins RAY_ADDRESS or a running cluster, else a local one
        ray.data.DataContext.get_current().enable_progress_bars = False
        cores = min(int(ray.cluster_resources()["CPU"]), os.cpu_count() or 1)
        prepare(["--dataset", "folder", "--root", str(work / "src"), "--out", str(work / "store"), "--overwrite"])
        store = Store(str(work / "store"))
        cfg = DataConfig(store=store.url, train_short_side=(args.crop, args.crop * 5 // 4), crop=args.crop,
                         eval_short_side=args.crop)
        videos, classes, rate = batch_makeup(store, cfg, args.epochs)
    per_clip, alone = inprocess(store, cfg)
    split = store.manifest["splits"]["train"]
    own = cfg.frames * split["bytes"] / split["frames"]  # a clip's frames at the store's mean bytes per frame
    labels = [store.classes.index(c) for c, n in split["per_class"].items() for _ in range(n)]
    print(f"\n{split['videos']} videos of 250-300 frames at {h}x{w} in {len(split['per_class'])} classes (ids "
          f"sorted by class), stride {cfg.stride}, {cfg.clips_per_video} clip per video per epoch; "
          f"{len(videos)} batches of 8 over {args.epochs} epochs")
    print(f"distinct videos per batch   {np.mean(videos):5.2f}  (goal >= 7.8; min {min(videos)})")
    print(f"distinct classes per batch  {np.mean(classes):5.2f}  (goal >= 7.5; a random draw of 8 videos: "
          f"{expected_distinct(labels):.2f})")
    print(f"bytes read per clip         {per_clip / 1e3:7.1f} KB = {per_clip / own:.2f}x the clip's own "
          f"{own / 1e3:.1f} KB of JPEG")
    print(f"loader clips/s per core     {rate / cores:7.1f} via Ray Data ({cores} CPUs), {alone:.1f} in one process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
