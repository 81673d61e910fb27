"""Clips from the frame store: pure cutting functions, and the Ray Data pipelines that run them.

Training, as the paper and the authors' code sample: an epoch draws ``clips_per_video`` clips (the
authors' code: 1) from every training video, whatever its length, each at a uniformly random
start (train/sampling.py). A clip lies in one phase row of the store, so drawing it reads one row
(a Parquet row group of its own) and decodes only its frames. An epoch runs ``clips_per_video``
rounds; each round takes every shard once, in an order shuffled per round, opening the shard's
footer once, drawing one clip for each of its videos and reading just the rows drawn (a Ray Data
task per shard; beyond MAX_BLOCKS shards, per run of consecutive shards). Shards
hold videos shuffled at prepare time, so a batch holds distinct videos of random classes; the k
clips of one video come from k rounds, 1/k of an epoch apart. Each worker also mixes clips in a
local shuffle buffer. Short epochs run as one stream (``epochs_per_stream``): Ray Data starts once
for them, not once per epoch, and a worker's clips left over at an epoch's last full batch open the
next epoch. Cost: a clip reads its whole phase row, about row length / frames times the
clip's own JPEG bytes (4.6x for 10 s Kinetics videos at stride 8; bench/batches.py measures it).

Randomness is reproducible: a clip's place, crop and flip come from an RNG seeded by (seed, epoch,
video, round), whichever task and node draws it; the shuffle buffer is seeded per (seed, epoch,
worker). (The arrival order of streamed blocks is not fixed, so batches' make-up can differ between
runs; the clips themselves do not.)

Why the workers build each pass's dataset rather than take one from ``TorchTrainer(datasets=...)``
(checked against Ray 2.60): a trainer's datasets are planned once, on the driver, before any
worker runs, and every epoch re-executes that one plan. Here a pass's plan depends on its epoch
(the shard order and every clip's RNG are seeded by it), and after a failure the epoch to resume
is known only once a worker has loaded the checkpoint. So rank 0 builds the pass's dataset when it
starts it and ``split_iterator`` shares it out; the result is the same ``streaming_split`` the
trainer would make.

Evaluation: per video, ``clips`` windows spread uniformly over the stored frames (paper: 10),
each at ``eval_short_side`` as the test protocol's views (train/augment.py); every phase row of the
video is read.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import Store, open_shard, shard_directory
from train.augment import apply_view, decode, decode_view, eval_views, train_view
from train.config import DataConfig
from train.sampling import eval_clip_in_rows, train_clip_in_rows

EVAL_COLUMNS = ["video_id", "label", "phase", "num_phases", "height", "width", "frames"]
STREAM_TASKS = 2048  # most tasks in one training stream (epochs_per_stream)
# Ray Data's start costs the driver of a stream about 3 ms and 57 KB a block (bench/RESULTS.md, "An
# epoch's start at scale"): 61 s and 1.4 GB before the first batch at 20,000 shards, one block each.
# Items share blocks beyond this many.
MAX_BLOCKS = 1024


def clip_rng(seed: int, epoch: int, video_id: str, round_: int, resumed_at: int = 0) -> np.random.Generator:
    """``resumed_at``: the step an epoch resumed from, so the rest of a resumed epoch draws anew."""
    return np.random.default_rng([seed, epoch, resumed_at, video_key(video_id), round_])


def cut_clip(jpegs: list[bytes] | pa.BinaryArray, entries: np.ndarray, height: int, width: int,
             rng: np.random.Generator, cfg: DataConfig, out: np.ndarray | None = None) -> np.ndarray:
    """(T, crop, crop, 3) uint8: the ``entries`` of one phase row's ``jpegs`` decoded with a random
    view. shard_clips passes the row's Arrow array: only the clip's JPEGs are touched, uncopied (a
    list of the row's bytes copies all of them, ~2 MB for a Kinetics row)."""
    by_entry = {e: _jpeg_at(jpegs, e) for e in np.unique(entries).tolist()}
    view = train_view(rng, height, width, short_side=cfg.train_short_side, crop=cfg.crop, flip=cfg.flip)
    return decode_view([by_entry[e] for e in entries.tolist()], view, cfg.crop, out=out, fast=True)


def _jpeg_at(jpegs: list[bytes] | pa.BinaryArray, i: int) -> bytes | np.ndarray:
    item = jpegs[i]
    return item if isinstance(item, bytes) else np.frombuffer(item.as_buffer(), np.uint8)


def shard_clips(url: str, round_: int, cfg: DataConfig, storage_options: dict, *, num_phases: int, seed: int,
                epoch: int, resumed_at: int = 0, expected_bytes: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One training clip per video of a shard (a store of ``num_phases`` phase rows per video), in
    blocks of up to ``rows_per_task`` clips: the shard's footer is read once, then only the rows the
    clips lie in. ``expected_bytes``: the shard's size in the manifest (``open_shard``)."""
    with open_shard(url, storage_options, expected_bytes) as f:
        shard = pq.ParquetFile(f)
        videos: dict[str, list[dict]] = {}
        for i, row in enumerate(shard_directory(shard)):
            videos.setdefault(row["video_id"], []).append(dict(row, index=i))
        draws = []
        for video_id, rows in videos.items():
            rng = clip_rng(seed, epoch, video_id, round_, resumed_at)
            by_phase = {r["phase"]: r for r in rows}
            phase, entries = train_clip_in_rows([by_phase[p]["length"] if p in by_phase else 0
                                                 for p in range(num_phases)], rng, frames=cfg.frames)
            draws.append((by_phase[phase], entries, rng))
        for at in range(0, len(draws), cfg.rows_per_task):
            part = draws[at:at + cfg.rows_per_task]
            # One thread: a loader task is one core; through Arrow's thread pool the read is 14% slower.
            frames = shard.read_row_groups([row["index"] for row, _, _ in part], columns=["frames"],
                                           use_threads=False).column(0)
            clips = np.empty((len(part), cfg.frames, cfg.crop, cfg.crop, 3), np.uint8)
            for i, (row, entries, rng) in enumerate(part):
                cut_clip(frames[i].values, entries, row["height"], row["width"], rng, cfg, out=clips[i])
            yield {"clip": clips, "label": np.array([row["label"] for row, _, _ in part], np.int64),
                   "video": np.array([video_key(row["video_id"]) for row, _, _ in part], np.int64)}


def video_key(video_id: str) -> int:
    """A number per video (tensors hold no strings), to tell a batch's videos apart."""
    return zlib.crc32(video_id.encode())


def video_clips(rows: dict[int, list[bytes]], num_phases: int, height: int, width: int, *, frames: int,
                clips: int, protocol: str, short_side: int, crop: int) -> np.ndarray:
    """(clips * views, T, h, w, 3): one video's clips under a test ``protocol`` (``eval_views``), from
    its phase rows ``{phase: jpegs}``. Stored frame j sits in row j % num_phases at entry j // num_phases."""
    positions = eval_clip_in_rows([len(rows.get(p, ())) for p in range(num_phases)], frames=frames,
                                  clips=clips)  # (clips, T) stored frames
    needed = np.unique(positions)
    decoded = decode([rows[j % num_phases][j // num_phases] for j in needed])
    lookup = np.searchsorted(needed, positions)
    views, size = eval_views(height, width, short_side=short_side, crop=crop, protocol=protocol)
    return np.stack([apply_view(decoded[idx], v, size) for idx in lookup for v in views])


# ------------------------------------------------------------------ Ray Data wiring


def _shard_clips(batch: dict[str, np.ndarray], cfg: DataConfig, storage_options: dict, **draw) -> Iterator[dict]:
    for url, size, round_, epoch, resumed_at in zip(batch["url"], batch["bytes"], batch["round"], batch["epoch"],
                                                    batch["resumed_at"], strict=True):
        yield from shard_clips(str(url), int(round_), cfg, storage_options, epoch=int(epoch),
                               resumed_at=int(resumed_at), expected_bytes=_expected(size), **draw)


def task_dataset(items: list[dict]):  # -> ray.data.Dataset
    """One row per item, in the given order; a task per item, or per run of consecutive items where
    there are more than MAX_BLOCKS (a task then takes its items one after another)."""
    import ray.data

    return ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))


def shard_tasks(store: Store, split: str) -> list[dict]:
    """A task per shard of ``split``: its ``url`` and its size in the manifest, ``bytes`` (-1 where the
    store did not keep it: a column holds one type), which the reader checks (``open_shard``)."""
    sizes = store.shard_bytes(split)
    return [{"url": u, "bytes": -1 if b is None else b} for u, b in zip(store.shard_urls(split), sizes, strict=True)]


def _expected(size) -> int | None:
    return None if size < 0 else int(size)


def epoch_plan(store: Store, cfg: DataConfig, *, seed: int, epoch: int, resumed_at: int = 0) -> list[dict]:
    """The epoch's tasks in order: ``clips_per_video`` rounds, each every shard once, shuffled per round."""
    shards = shard_tasks(store, cfg.train_split)
    rng = np.random.default_rng([seed, epoch, resumed_at])
    return [dict(shards[i], round=r) for r in range(cfg.clips_per_video) for i in rng.permutation(len(shards))]


def stream_plan(store: Store, cfg: DataConfig, *, seed: int, epoch: int, resumed_at: int, epochs: int) -> list[dict]:
    """The tasks of ``epochs`` epochs from ``epoch`` on, each epoch's plan after the previous one's."""
    return [dict(task, epoch=e, resumed_at=r) for e in range(epoch, epoch + epochs)
            for r in [resumed_at if e == epoch else 0]
            for task in epoch_plan(store, cfg, seed=seed, epoch=e, resumed_at=r)]


def train_dataset(store: Store, cfg: DataConfig, *, seed: int, epoch: int, resumed_at: int = 0,
                  epochs: int = 1):  # -> ray.data.Dataset
    """``epochs`` epochs of augmented training clips from ``epoch`` on, as one stream: columns ``clip``
    (T, H, W, 3) uint8, ``label`` and ``video`` (``video_key``). Each epoch's clips follow the
    previous one's; ``resumed_at`` draws the first epoch anew."""
    plan = stream_plan(store, cfg, seed=seed, epoch=epoch, resumed_at=resumed_at, epochs=epochs)
    ds = task_dataset(plan).map_batches(
        _shard_clips, batch_size=1, num_cpus=cfg.loader_cpus,
        fn_kwargs=dict(cfg=cfg, storage_options=store.storage_options, seed=seed,
                       num_phases=store.manifest["params"]["num_phases"]))
    # One operator: per-operator resource reservations (against starving others) only idle CPUs here;
    # measured on 2 cores (bench/loader.py), they held the decode tasks to one at a time.
    ds.context.op_resource_reservation_enabled = False
    return ds


def epochs_per_stream(store: Store, cfg: DataConfig, *, left: int) -> int:
    """How many of the ``left`` epochs one training stream covers: as many as fit in ``STREAM_TASKS``
    tasks, at least one. A stream's start costs seconds (Ray Data's executor, the split, the first
    tasks): nothing beside an hour-long Kinetics epoch, a third of a small dataset's."""
    tasks = len(store.shard_urls(cfg.train_split)) * cfg.clips_per_video
    return max(1, min(left, STREAM_TASKS // tasks))


def shard_videos(url: str, cfg: DataConfig, storage_options: dict, *, clips: int, protocol: str,
                 expected_bytes: int | None = None) -> Iterator[tuple[str, int, np.ndarray]]:
    """Per video of one shard: (video_id, label, its clips under ``protocol`` (clips * views, T, h, w, 3))."""
    with open_shard(url, storage_options, expected_bytes) as f:
        table = pq.read_table(f, columns=EVAL_COLUMNS)
    by_video: dict[str, list[dict]] = {}
    for r in table.to_pylist():
        by_video.setdefault(r["video_id"], []).append(r)
    for video_id, rows in by_video.items():
        first = rows[0]
        yield video_id, first["label"], video_clips({r["phase"]: r["frames"] for r in rows}, first["num_phases"],
                                                    first["height"], first["width"], frames=cfg.frames, clips=clips,
                                                    protocol=protocol, short_side=cfg.eval_short_side,
                                                    crop=cfg.crop)


def _shard_videos(batch: dict[str, np.ndarray], cfg: DataConfig, storage_options: dict, clips: int,
                  protocol: str) -> Iterator[dict[str, np.ndarray]]:
    for url, size in zip(batch["url"], batch["bytes"], strict=True):
        for video_id, label, views in shard_videos(str(url), cfg, storage_options, clips=clips, protocol=protocol,
                                                   expected_bytes=_expected(size)):
            yield {"video_id": np.array([video_id]), "label": np.array([label], np.int64), "clips": views[None]}


def eval_dataset(store: Store, split: str, cfg: DataConfig, *, clips: int, protocol: str):  # -> ray.data.Dataset
    """One row per video: ``video_id``, ``label`` and ``clips`` (clips * views, T, h, w, 3) uint8; under
    the "full" protocol h x w is the video's own frame size at the test short side."""
    return task_dataset(shard_tasks(store, split)).map_batches(
        _shard_videos, batch_size=1, num_cpus=cfg.loader_cpus,
        fn_kwargs=dict(cfg=cfg, storage_options=store.storage_options, clips=clips, protocol=protocol))


def clips_per_epoch(store: Store, split: str, clips_per_video: int) -> int:
    """Training clips one epoch yields: ``clips_per_video`` from every video of the split."""
    return store.manifest["splits"][split]["videos"] * clips_per_video


def split_iterator(make_dataset, rank: int, world: int, *, equal: bool, parts: int | None = None):
    """This worker's part of a dataset built by rank 0 for this pass (the epoch is known then, so
    it can seed the pipeline): rank 0 splits it and broadcasts the split iterators to the group.
    ``parts``: split among the first ``parts`` ranks only (default all); the others get None."""
    if world == 1:
        return make_dataset().iterator()
    import torch.distributed as dist

    box = [make_dataset().streaming_split(parts or world, equal=equal)] if rank == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    return box[0][rank] if rank < len(box[0]) else None  # -> ray.data.DataIterator | None
