"""Training-clip loading speed on Kinetics-like sources: the frame store against decoding MP4s on the fly.

    python bench/loader.py                              # 340x256, 640x360 and 1280x720 sources, 16 videos each
    python bench/loader.py --sizes 640x360 --gpu-clips-per-s 650

For each source size (width x height, as video sizes are written): 10 s videos at 25-30 fps,
long-GOP H.264 (one keyframe per 250 frames, x264's default), of a camera panning over a textured
scene; prepared into a store at the paper's settings (short side 320, JPEG quality 90). Then the
paper's training clips (8 frames at stride 8, short side in [256, 320], random 224x224 crop, flip)
in clips/s per CPU core of:

  (a) the loader: frame store -> Ray Data (read rows, decode the clips' JPEGs, crop, resize) ->
      batches in the driver, on the running Ray cluster or a local one with --cpus CPUs;
  (a1) the same per-task work (read shards, cut clips) in one process without Ray;
  (b) decord on the fly, one thread: open the MP4, decode the clip's frames, the same augmentation
      (what a PyTorch Dataset over raw videos does per sample).

Beside them, ``decode``: the clips' JPEG decoding alone, one core, the bytes already in memory - the
ceiling of (a1) and (a) on this CPU, printed so that a goal above it reads as out of reach here.

Goals on this project's 2-core machine: (a) >= 150 per core, (a1) >= 250, (a) / (b) >= 10. (a) is
timed in steady state, as a training stream runs for an epoch or more; its start-up (seconds, once
per stream) is not. Also printed: the store's JPEG bits per pixel (decode time grows with them),
the peak memory of one loader task (a fresh process that runs one shard's task: its peak RSS, and
the part above the process after its imports), and of a training worker's loader (Ray Data and
the local shuffle buffer, batches of 8) at 8 and 32 frames, on the last size's store.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from pipeline.decode import scaled_size
from pipeline.prepare import main as prepare
from pipeline.session import connect_ray, ray_session
from pipeline.storage import read_table
from pipeline.store import Store
from pipeline.synthetic import write_video
from train.augment import apply_view, train_view
from train.config import DataConfig
from train.data import clips_per_epoch, epoch_plan, shard_clips, train_dataset
from train.sampling import train_clip_in_rows, train_clip_indices

ROOT = Path(__file__).resolve().parents[1]

SIZES = "340x256,640x360,1280x720"
WARM_BATCHES = 4  # batches of a stream before its timing starts
GOALS = {"ray": 150.0, "alone": 250.0, "ratio": 10.0}  # (a) and (a1) clips/s per core, (a) / (b)


def scene_video(rng: np.random.Generator, height: int, width: int, frames: int) -> np.ndarray:
    """(frames, H, W, 3) uint8: a camera panning about one pixel per frame over a scene of
    low-frequency colour and band-limited texture (its grain scales with the frame, so that every
    source size stores JPEGs of similar bits per pixel)."""
    sigma = 1.2 * max(1.0, min(height, width) / 320)
    canvas_h, canvas_w = height + 16, width + frames
    colour = cv2.resize(rng.uniform(0, 255, (6, 10, 3)).astype(np.float32), (canvas_w, canvas_h),
                        interpolation=cv2.INTER_CUBIC)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (canvas_h, canvas_w, 3)).astype(np.float32), (0, 0), sigma)
    canvas = np.clip(colour + texture * (16 / texture.std()), 0, 255).astype(np.uint8)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        top = int(8 + 7 * np.sin(t / 20))
        out[t] = canvas[top:top + height, t:t + width]
    return out


def write_sources(root: Path, width: int, height: int, videos: int, seed: int) -> list[Path]:
    """``videos`` MP4s of 10 s at 25-30 fps, long-GOP H.264, in the Kinetics layout's folders. Each
    video is drawn from its own seed, so a file already there from an earlier run is kept."""
    paths = []
    for i in range(videos):
        rng = np.random.default_rng([seed, i])
        fps = int(rng.integers(25, 31))
        paths.append(root / "train" / f"class-{i % 4}" / f"video-{i:03d}.mp4")
        if not paths[-1].exists():  # written under another name first: an interrupted run leaves no half video
            part = paths[-1].with_name(paths[-1].name + ".part")
            write_video(part, scene_video(rng, height, width, 10 * fps), fps, intra_only=False)
            part.rename(paths[-1])
    return paths


def loader_config(store: Store, crop: int, clips_per_video: int) -> DataConfig:
    """The paper's training clips: 8 frames at stride 8, short side in [256, 320], ``crop`` square."""
    short = store.manifest["params"]["short_side"]
    lo = min(256, short)
    return DataConfig(store=store.url, frames=8, stride=8, train_short_side=(lo, short), crop=min(crop, lo),
                      eval_short_side=lo, clips_per_video=clips_per_video)


def loader_rate(store: Store, cfg: DataConfig, clips: int) -> float:
    """clips/s of the Ray Data loader as training reads it: one stream of epochs (train/loop.py),
    at least ``clips`` clips in batches of 8, timed from its WARM_BATCHES-th batch on. The stream's
    start (Ray Data's executor, the first tasks' latency) is paid once per stream, and a stream
    holds at least one epoch: seconds beside a Kinetics epoch."""
    clips = max(clips, 8 * (WARM_BATCHES + 4))  # a few timed batches at least
    epochs = -(-clips // clips_per_epoch(store, cfg.train_split, cfg.clips_per_video))
    stream = train_dataset(store, cfg, seed=0, epoch=0, epochs=epochs)
    start, timed = 0.0, 0
    for i, batch in enumerate(stream.iter_batches(batch_size=8, prefetch_batches=4)):
        if i == WARM_BATCHES:
            start = time.monotonic()
        elif i > WARM_BATCHES:  # batches that arrived after the clock started
            timed += len(batch["label"])
    return timed / (time.monotonic() - start)


def task_clips(store: Store, cfg: DataConfig, epoch: int, tasks: int | None = None) -> int:
    """Run the loader's per-task work (read a shard's rows, cut its clips) for the epoch's first
    ``tasks`` tasks (all by default) here; the clips cut."""
    phases = store.manifest["params"]["num_phases"]
    return sum(len(block["label"]) for task in epoch_plan(store, cfg, seed=0, epoch=epoch)[:tasks]
               for block in shard_clips(task["url"], task["round"], cfg, {}, num_phases=phases, seed=0,
                                        epoch=epoch))


def inprocess_rate(store: Store, cfg: DataConfig, clips: int) -> float:
    """clips/s of the per-task work of enough epochs for ``clips`` clips, in this process, without Ray."""
    epochs = -(-clips // clips_per_epoch(store, cfg.train_split, cfg.clips_per_video))
    start = time.monotonic()
    done = sum(task_clips(store, cfg, e) for e in range(epochs))
    return done / (time.monotonic() - start)


def decode_rate(store: Store, cfg: DataConfig, clips: int) -> float:
    """clips/s of JPEG decoding alone, one core: ``clips`` clips of ``cfg.frames`` consecutive entries
    of the first shard's phase rows, decoded as the loader decodes them (fast mode, into one buffer),
    the bytes already in memory. No loader that decodes on this CPU can beat it, so it bounds (a1)."""
    rows = read_table(store.shard_urls(cfg.train_split)[0], store.storage_options, columns=["frames"]).column(0)
    rows = [r for r in rows.to_pylist() if r]
    rng = np.random.default_rng(0)
    picks = []
    for i in range(clips):
        row = rows[i % len(rows)]
        _, entries = train_clip_in_rows([len(row)], rng, frames=cfg.frames)  # the loader's draw within a row
        picks.append([row[e] for e in np.unique(entries)])  # a looped entry decoded once, as in cut_clip
    frame = None
    start = time.monotonic()
    for jpegs in picks:
        for jpeg in jpegs:
            frame = simplejpeg.decode_jpeg(jpeg, fastdct=True, fastupsample=True, buffer=frame)
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


def child_memory(*args: str) -> tuple[float, float]:
    """(peak RSS in MB of a fresh process running this script with ``args`` during its work, and how
    much of it the work added above the process after its imports), as the child prints them."""
    import ray

    env = dict(os.environ)
    if ray.is_initialized():  # the child joins this cluster, not another one running here
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return float(out[-2]), float(out[-1])


def print_peak(work) -> int:
    """In the child of ``child_memory``: run ``work()``, print the peak RSS during it and the part of
    that above the RSS before it, in MB (the kernel's high-water mark is reset first)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak RSS, to the current RSS
    before = rss_kb("VmRSS")
    work()
    peak = rss_kb("VmHWM")
    print(f"{peak / 1024:.1f} {(peak - before) / 1024:.1f}")
    return 0


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def one_task(store_url: str, crop: int) -> None:
    """One loader task: the store's first shard, one clip per video."""
    store = Store(store_url)
    cfg = loader_config(store, crop, 1)
    task_clips(store, cfg, 0, tasks=1)


def worker_batches(store_url: str, crop: int, frames: int, batches: int) -> None:
    """What a training worker's loader holds: ``batches`` batches of 8 ``frames``-frame clips through
    Ray Data and the default local shuffle buffer, read as train/loop.py reads them."""
    connect_ray(None, 0, quiet=True)
    store = Store(store_url)
    cfg = dataclasses.replace(loader_config(store, crop, 64), frames=frames)
    it = train_dataset(store, cfg, seed=0, epoch=0).iterator()
    for _ in itertools.islice(it.iter_torch_batches(batch_size=8, drop_last=True,
                                                    local_shuffle_buffer_size=cfg.shuffle_buffer), batches):
        pass


def measure(work: Path, width: int, height: int, args: argparse.Namespace, cores: int) -> dict[str, float]:
    """One source size: write the sources and prepare the store (or keep those an earlier run left in
    ``work``: prepare redoes nothing for the same inputs and settings), then time (a), (a1) and (b)."""
    videos = write_sources(work / "src", width, height, args.videos, args.seed)
    prepare(["--dataset", "folder", "--root", str(work / "src"), "--out", str(work / "store"),
             "--short-side", str(args.short_side), "--videos-per-shard", str(args.videos_per_shard)])
    store = Store(str(work / "store"))
    cfg = loader_config(store, args.crop, args.clips_per_video)
    split = store.manifest["splits"]["train"]
    stored_h, stored_w = scaled_size(height, width, args.short_side)
    return {"bpp": 8 * split["bytes"] / split["frames"] / (stored_h * stored_w),
            "ray": loader_rate(store, cfg, args.clips) / cores, "alone": inprocess_rate(store, cfg, args.clips),
            "floor": decode_rate(store, cfg, args.clips),
            "decord": decord_rate(videos, cfg, args.decord_clips),
            **dict(zip(("peak", "task"), child_memory("--task-memory", store.url, "--crop", str(args.crop)),
                       strict=True))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=SIZES, help=f"source sizes, width x height (default {SIZES})")
    p.add_argument("--videos", type=int, default=16, help="source videos per size")
    p.add_argument("--videos-per-shard", type=int, default=16, help="the store's (default 16, prepare's)")
    p.add_argument("--short-side", type=int, default=320, help="the store's short side (default 320, the paper's)")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of a local Ray instance started here")
    p.add_argument("--clips", type=int, default=1024, help="clips (a) and (a1) read per size")
    p.add_argument("--clips-per-video", type=int, default=8, help="clips drawn per video in an epoch")
    p.add_argument("--decord-clips", type=int, default=32)
    p.add_argument("--gpu-clips-per-s", type=float, default=0.0, help="a GPU's training rate, to size CPU cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--worker-frames", default="8,32", help="clip lengths of the training worker's memory")
    p.add_argument("--worker-batches", type=int, default=128, help="batches a worker reads for its memory")
    p.add_argument("--task-memory", metavar="STORE", help=argparse.SUPPRESS)  # child_memory's children
    p.add_argument("--worker-memory", metavar="STORE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.task_memory:
        return print_peak(lambda: one_task(args.task_memory, args.crop))
    if args.worker_memory:
        return print_peak(lambda: worker_batches(args.worker_memory, args.crop, int(args.worker_frames),
                                                 args.worker_batches))
    sizes = [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")]
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-loader-"))
    import ray

    rows = {}
    with ray_session(None, args.cpus):  # joins RAY_ADDRESS or a running cluster, else a local one
        ray.data.DataContext.get_current().enable_progress_bars = False
        cores = min(int(ray.cluster_resources()["CPU"]), os.cpu_count() or 1)  # what its tasks can really use
        for width, height in sizes:
            rows[width, height] = measure(work / f"{width}x{height}", width, height, args, cores)
        last = "{}x{}".format(*sizes[-1])
        worker = {int(f): child_memory("--worker-memory", str(work / last / "store"), "--crop",
                                       str(args.crop), "--worker-frames", f, "--worker-batches",
                                       str(args.worker_batches)) for f in args.worker_frames.split(",")}
    print(f"\n{args.videos} videos of 10 s per size (long-GOP H.264); store short side {args.short_side}, quality 90; "
          f"clips 8x{args.crop}x{args.crop} at stride 8; clips/s per core, {cores} cores")
    print(f"{'source':>9} {'JPEG bpp':>8} {'(a) Ray Data':>12} {'(a1) alone':>10} {'decode':>7} {'(b) decord':>10} "
          f"{'(a)/(b)':>7} {'task MB':>7} {'peak MB':>7}")
    failed = 0
    for (width, height), r in rows.items():
        ratio = r["ray"] / r["decord"]
        marks = [r["ray"] >= GOALS["ray"], r["alone"] >= GOALS["alone"], ratio >= GOALS["ratio"]]
        failed += marks.count(False)
        m = ["" if ok else "!" for ok in marks]
        print(f"{f'{width}x{height}':>9} {r['bpp']:8.2f} {r['ray']:11.1f}{m[0]:1} {r['alone']:9.1f}{m[1]:1} "
              f"{r['floor']:7.1f} {r['decord']:10.1f} {ratio:6.2f}{m[2]:1} {r['task']:7.0f} {r['peak']:7.0f}")
        for goal in ("alone", "ray"):
            if r["floor"] < GOALS[goal]:
                print(f"{'':9} decoding alone ({r['floor']:.0f}) is below the goal of "
                      f"{'(a1)' if goal == 'alone' else '(a)'} ({GOALS[goal]:.0f}): no loader decoding these "
                      "JPEGs on this CPU can meet it")
        if args.gpu_clips_per_s:
            print(f"{'':9} a GPU training at {args.gpu_clips_per_s:.0f} clips/s needs "
                  f"{args.gpu_clips_per_s / r['ray']:.1f} CPU cores of (a), {args.gpu_clips_per_s / r['decord']:.1f} "
                  f"of (b)")
    print(f"a training worker's loader ({last} store, batches of 8, {args.worker_batches} read, "
          f"{DataConfig.shuffle_buffer}-clip shuffle buffer): " + ", ".join(
              f"{f} frames {peak:.0f} MB peak ({task:.0f} above its imports)" for f, (peak, task) in worker.items()))
    print(f"goals: (a) >= {GOALS['ray']:.0f}, (a1) >= {GOALS['alone']:.0f} clips/s per core, (a)/(b) >= "
          f"{GOALS['ratio']:.0f}; {failed} miss (marked !). decode: the clips' JPEG decoding alone, one core, "
          "the ceiling of (a1) and (a); task MB: one loader task's peak above its process's; peak MB: that process's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
