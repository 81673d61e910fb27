"""Training-clip loading speed: this project's frame-store loader against decoding MP4s on the fly.

    python bench/loader.py                            # 16 videos, 128 frames, 360x480, long-GOP H.264
    python bench/loader.py --gpu-clips-per-s 700      # also: CPU cores one GPU needs at that rate

One run, the same videos, the paper's training clips (8 frames at stride 8, short side in
[256, 320], random 224x224 crop, flip), clips/s per CPU core of:

  (a) the loader: frame store -> Ray Data (read rows, decode the clips' JPEGs, crop, resize) ->
      batches in the driver, on the running Ray cluster or a local one with --cpus CPUs;
  (a1) the same per-task work (read shards, cut clips) in one process without Ray;
  (b) decord on the fly, one thread: open the MP4, decode the clip's frames, the same augmentation
      (what a PyTorch Dataset over raw videos does per sample).

Start-up (Ray, the first pass's worker processes) is not timed: pass 0 warms up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a bare checkout
from pipeline.prepare import main as prepare  # noqa: E402
from pipeline.session import ray_session  # noqa: E402
from pipeline.store import Store  # noqa: E402
from pipeline.synthetic import SyntheticSpec, generate  # noqa: E402
from train.augment import apply_view, train_view  # noqa: E402
from train.data import epoch_plan, shard_clips, train_dataset  # noqa: E402
from train.sampling import train_clip_indices  # noqa: E402
from train.settings import DataConfig  # noqa: E402


def loader_rate(store: Store, cfg: DataConfig, passes: int) -> tuple[float, int]:
    """(clips/s over passes 1..passes, clips per pass) of the Ray Data loader, consumed in batches of 8."""
    rates, clips = [], 0
    for epoch in range(passes + 1):
        start, clips = time.monotonic(), 0
        for batch in train_dataset(store, cfg, seed=0, epoch=epoch).iter_batches(batch_size=8, prefetch_batches=4):
            clips += len(batch["label"])
        if epoch:
            rates.append(clips / (time.monotonic() - start))
    return float(np.mean(rates)), clips


def inprocess_rate(store: Store, cfg: DataConfig) -> float:
    """clips/s of the loader's per-task work (read rows, cut clips) over one epoch, in this process."""
    start, clips = time.monotonic(), 0
    for task in epoch_plan(store, cfg, seed=0, epoch=0):
        for out in shard_clips(task["url"], task["round"], cfg, {}, num_phases=store.manifest["params"]["num_phases"],
                               seed=0, epoch=0):
            clips += len(out["label"])
    return clips / (time.monotonic() - start)


def decord_rate(videos: list[Path], cfg: DataConfig, clips: int) -> float:
    """clips/s of decoding ``clips`` training clips from the MP4s with decord (one thread) + augmentation."""
    import decord

    rng = np.random.default_rng(0)
    start = time.monotonic()
    for i in range(clips):
        vr = decord.VideoReader(str(videos[i % len(videos)]), num_threads=1)
        idx = train_clip_indices(len(vr), rng, frames=cfg.frames, stride=cfg.stride)
        frames = vr.get_batch(list(idx)).asnumpy()  # (T, H, W, 3) at the source size
        view = train_view(rng, frames.shape[1], frames.shape[2], short_side=cfg.train_short_side, crop=cfg.crop)
        apply_view(frames, view, cfg.crop)
    return clips / (time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--frames", type=int, default=128, help="frames per video (128: rows of 16, two clips each)")
    p.add_argument("--size", default="360x480", help="source HxW; the store keeps short side --short-side")
    p.add_argument("--short-side", type=int, default=320)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--intra", action="store_true", help="every frame a keyframe (decord's best case)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of a local Ray instance started here")
    p.add_argument("--passes", type=int, default=2, help="timed passes over the store (after a warm-up)")
    p.add_argument("--clips-per-video", type=int, default=16, help="clips drawn per video in a pass")
    p.add_argument("--decord-clips", type=int, default=64)
    p.add_argument("--gpu-clips-per-s", type=float, default=0.0, help="a GPU's training rate, to size CPU cores")
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)
    h, w = (int(x) for x in args.size.split("x"))
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-loader-"))
    generate(SyntheticSpec(classes=4, videos_per_class=max(1, args.videos // 4), val_videos_per_class=0,
                           height=h, width=w, frames=args.frames, fps=25, splits=("train",),
                           intra_only=args.intra), work / "src")
    import ray

    with ray_session(None, args.cpus):  # joins RAY_ADDRESS or a running cluster, else a local one
        ray.data.DataContext.get_current().enable_progress_bars = False
        cores = min(int(ray.cluster_resources()["CPU"]), os.cpu_count() or 1)  # what its tasks can really use
        prepare(["--dataset", "kinetics", "--root", str(work / "src"), "--out", str(work / "store"),
                 "--short-side", str(args.short_side), "--videos-per-shard", "2", "--overwrite"])
        store = Store(str(work / "store"))
        lo, hi = min(256, args.short_side), args.short_side
        crop = min(args.crop, lo)
        cfg = DataConfig(store=store.url, frames=8, stride=8, train_short_side=(lo, hi), crop=crop,
                         eval_short_side=lo, rows_per_task=4, clips_per_video=args.clips_per_video)
        rate, per_pass = loader_rate(store, cfg, args.passes)
    alone = inprocess_rate(store, cfg)
    videos = sorted((work / "src").rglob("*.mp4"))
    direct = decord_rate(videos, cfg, args.decord_clips)
    gop = "intra-only" if args.intra else "long-GOP"
    print(f"\n{args.videos} videos x {args.frames} frames at {h}x{w} ({gop} H.264); clips 8x{crop}x{crop}, "
          f"store short side {args.short_side}; {per_pass} clips per pass")
    print(f"{'':44} {'clips/s':>9} {'per core':>9}")
    print(f"{'(a)  frame store via Ray Data, ' + str(cores) + ' CPUs':44} {rate:9.1f} {rate / cores:9.1f}")
    print(f"{'(a1) the same work in one process, no Ray':44} {alone:9.1f} {alone:9.1f}")
    print(f"{'(b)  decord on the fly, 1 thread':44} {direct:9.1f} {direct:9.1f}")
    print(f"per core, (a) / (b) = {rate / cores / direct:.1f}x; Ray Data keeps "
          f"{rate / cores / alone:.0%} of the in-process rate")
    if args.gpu_clips_per_s:
        need = args.gpu_clips_per_s / (rate / cores)
        print(f"a GPU training at {args.gpu_clips_per_s:.0f} clips/s needs {need:.1f} CPU cores of (a), "
              f"{args.gpu_clips_per_s / direct:.1f} of (b)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
