"""Clips from the frame store: pure cutting functions, and the Ray Data pipelines that run them.

Training: an epoch reads every store row once. A row holds one temporal phase of a video (every
``stride``-th frame), so ``frames`` consecutive entries of a row are one paper clip (64-frame
window, every 8th frame); a row yields floor(len/frames) non-overlapping clips at random places
(at least one; a short video loops). An epoch thus uses every stored frame at most once (all but
fewer than ``frames`` per row). Each worker
mixes the clips in a local shuffle buffer, so a batch does not hold clips of one video.

Randomness is reproducible: a row's clips and crops come from an RNG seeded by (seed, epoch,
video, phase), whichever task and node handles it; the shuffle buffer is seeded per
(seed, epoch, worker). (The arrival order of streamed blocks is not fixed, so batches' make-up
can differ between runs; the clips themselves do not.)

Evaluation: per video, ``clips`` windows spread uniformly over the stored frames (paper: 10),
each at ``eval_short_side`` with 1 or 3 crops; every phase row of the video is read.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.store import Store, read_table
from train.augment import apply_view, decode, eval_views, train_view
from train.sampling import clips_in_row, eval_clip_indices, row_clip_positions
from train.settings import DataConfig

TRAIN_COLUMNS = ["video_id", "label", "phase", "height", "width", "frames"]
EVAL_COLUMNS = ["video_id", "label", "phase", "num_phases", "height", "width", "frames"]


def row_rng(seed: int, epoch: int, video_id: str, phase: int, resumed_at: int = 0) -> np.random.Generator:
    """``resumed_at``: the step an epoch resumed from, so the rest of a resumed epoch draws anew."""
    return np.random.default_rng([seed, epoch, resumed_at, zlib.crc32(video_id.encode()), phase])


def row_clips(jpegs: list[bytes], height: int, width: int, rng: np.random.Generator, cfg: DataConfig,
              out: np.ndarray | None = None) -> np.ndarray:
    """(k, T, crop, crop, 3) uint8 training clips cut from one phase row, each with its own view
    (k = ``clips_in_row``); written into ``out`` when given."""
    positions = row_clip_positions(len(jpegs), rng, frames=cfg.frames)  # (k, T)
    needed = np.unique(positions)
    decoded = decode([jpegs[i] for i in needed], fast=True)
    lookup = np.searchsorted(needed, positions)
    if out is None:
        out = np.empty((len(positions), cfg.frames, cfg.crop, cfg.crop, 3), np.uint8)
    for c, idx in enumerate(lookup):
        view = train_view(rng, height, width, short_side=cfg.train_short_side, crop=cfg.crop, flip=cfg.flip)
        apply_view(decoded[idx], view, cfg.crop, out=out[c])
    return out


def video_clips(rows: dict[int, list[bytes]], num_phases: int, height: int, width: int, *, frames: int,
                clips: int, crops: int, short_side: int, crop: int) -> np.ndarray:
    """(clips * crops, T, crop, crop, 3): the test protocol's views of one video, from its phase rows
    ``{phase: jpegs}``. Stored frame j sits in row j % num_phases at entry j // num_phases."""
    n = sum(len(v) for v in rows.values())
    positions = eval_clip_indices(n, frames=frames, stride=num_phases, clips=clips)  # (clips, T)
    needed = np.unique(positions)
    decoded = decode([rows[j % num_phases][j // num_phases] for j in needed])
    lookup = np.searchsorted(needed, positions)
    views = eval_views(height, width, short_side=short_side, crop=crop, crops=crops)
    return np.stack([apply_view(decoded[idx], v, crop) for idx in lookup for v in views])


# ------------------------------------------------------------------ Ray Data wiring


def _cut_shards(batch: dict[str, np.ndarray], cfg: DataConfig, storage_options: dict, seed: int, epoch: int,
                resumed_at: int) -> Iterator[dict[str, np.ndarray]]:
    """Stream a shard's rows, ``rows_per_task`` at a time, out as augmented clips."""
    for url in batch["url"]:
        fs, path = fsspec.core.url_to_fs(str(url), **storage_options)
        with fs.open(path, "rb") as f:
            for part in pq.ParquetFile(f).iter_batches(batch_size=cfg.rows_per_task, columns=TRAIN_COLUMNS):
                rows = part.to_pylist()
                counts = [clips_in_row(len(r["frames"]), cfg.frames) for r in rows]
                clips = np.empty((sum(counts), cfg.frames, cfg.crop, cfg.crop, 3), np.uint8)
                at = 0
                for r, k in zip(rows, counts, strict=True):
                    rng = row_rng(seed, epoch, r["video_id"], r["phase"], resumed_at)
                    row_clips(r["frames"], r["height"], r["width"], rng, cfg, out=clips[at:at + k])
                    at += k
                yield {"clip": clips, "label": np.repeat([r["label"] for r in rows], counts).astype(np.int64)}


def shard_dataset(urls: list[str]):  # -> ray.data.Dataset
    """One row (and task) per shard URL."""
    import ray.data

    return ray.data.from_items([{"url": u} for u in urls], override_num_blocks=len(urls))


def train_dataset(store: Store, cfg: DataConfig, *, seed: int, epoch: int, resumed_at: int = 0):  # -> ray.data.Dataset
    """One epoch of augmented training clips: columns ``clip`` (T, H, W, 3) uint8 and ``label``.
    A task per shard, in an order shuffled per epoch; it streams its clips out as it cuts them."""
    urls = store.shard_urls(cfg.train_split)
    urls = [urls[i] for i in np.random.default_rng([seed, epoch, resumed_at]).permutation(len(urls))]
    ds = shard_dataset(urls).map_batches(
        _cut_shards, batch_size=1, num_cpus=cfg.loader_cpus,
        fn_kwargs=dict(cfg=cfg, storage_options=store.storage_options, seed=seed, epoch=epoch, resumed_at=resumed_at))
    # One operator: per-operator resource reservations (against starving others) only idle CPUs here;
    # measured on 2 cores (bench/loader.py), they held the decode tasks to one at a time.
    ds.context.op_resource_reservation_enabled = False
    return ds


def shard_videos(url: str, cfg: DataConfig, storage_options: dict, *, clips: int,
                 crops: int) -> Iterator[tuple[str, int, np.ndarray]]:
    """Per video of one shard: (video_id, label, its test-protocol views (clips * crops, T, H, W, 3))."""
    by_video: dict[str, list[dict]] = {}
    for r in read_table(url, storage_options, columns=EVAL_COLUMNS).to_pylist():
        by_video.setdefault(r["video_id"], []).append(r)
    for video_id, rows in by_video.items():
        first = rows[0]
        yield video_id, first["label"], video_clips({r["phase"]: r["frames"] for r in rows}, first["num_phases"],
                                                    first["height"], first["width"], frames=cfg.frames, clips=clips,
                                                    crops=crops, short_side=cfg.eval_short_side, crop=cfg.crop)


def _shard_videos(batch: dict[str, np.ndarray], cfg: DataConfig, storage_options: dict, clips: int,
                  crops: int) -> Iterator[dict[str, np.ndarray]]:
    for url in batch["url"]:
        for video_id, label, views in shard_videos(str(url), cfg, storage_options, clips=clips, crops=crops):
            yield {"video_id": np.array([video_id]), "label": np.array([label], np.int64), "clips": views[None]}


def eval_dataset(store: Store, split: str, cfg: DataConfig, *, clips: int, crops: int = 1):  # -> ray.data.Dataset
    """One row per video: ``video_id``, ``label`` and ``clips`` (clips * crops, T, H, W, 3) uint8."""
    return shard_dataset(store.shard_urls(split)).map_batches(_shard_videos, batch_size=1, num_cpus=cfg.loader_cpus,
                          fn_kwargs=dict(cfg=cfg, storage_options=store.storage_options, clips=clips, crops=crops))


def clips_per_epoch(store: Store, split: str, frames: int) -> int:
    """Training clips one epoch yields: sum over rows of ``clips_in_row``; reads one small column."""
    total = 0
    for url in store.shard_urls(split):
        lengths = pc.list_value_length(read_table(url, store.storage_options, columns=["frame_index"])
                                       .column("frame_index"))
        total += pc.sum(pc.max_element_wise(pc.divide(lengths, frames), 1)).as_py() or 0
    return total


def split_iterator(make_dataset, rank: int, world: int, *, equal: bool):  # -> ray.data.DataIterator
    """This worker's part of a dataset built by rank 0 for this pass (the epoch is known then, so
    it can seed the pipeline): rank 0 splits it and broadcasts the split iterators to the group."""
    if world == 1:
        return make_dataset().iterator()
    import torch.distributed as dist

    box = [make_dataset().streaming_split(world, equal=equal)] if rank == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    return box[0][rank]
