"""Clip cutting from store rows: which stored frames a training or test clip holds, and how an
epoch draws them (one clip per video per round, whatever the video's length)."""

import json

import numpy as np
import pyarrow as pa
import simplejpeg

from pipeline.store import SCHEMA_VERSION, Store, phase_rows, rows_to_table, write_shard
from train import data
from train.config import DataConfig
from train.data import (
    STREAM_TASKS,
    clip_rng,
    cut_clip,
    epoch_plan,
    epochs_per_stream,
    eval_dataset,
    shard_clips,
    stream_plan,
    train_dataset,
    video_clips,
)
from train.sampling import eval_clip_indices


def coded(values):
    """One flat grey JPEG per value: the decoded frame's mean tells which frame it was."""
    return [simplejpeg.encode_jpeg(np.full((32, 40, 3), v, np.uint8), quality=95) for v in values]


def frame_codes(clip):  # (T, H, W, 3) -> per-frame values
    return np.round(clip.reshape(len(clip), -1).mean(1)).astype(int)


CFG = DataConfig(store="unused", frames=4, train_short_side=(32, 40), crop=24, eval_short_side=32, rows_per_task=3)


def test_cut_clip_decodes_the_entries_it_is_given():
    row = coded(range(10, 10 + 12 * 10, 10))  # 12 entries of one phase row
    clip = cut_clip(row, np.array([5, 6, 7, 8]), 32, 40, np.random.default_rng(0), CFG)
    assert clip.shape == (4, 24, 24, 3) and frame_codes(clip).tolist() == [60, 70, 80, 90]
    looped = cut_clip(row[:3], np.array([2, 0, 1, 2]), 32, 40, np.random.default_rng(0), CFG)
    assert frame_codes(looped).tolist() == [30, 10, 20, 30]
    arrow = pa.array([row], pa.list_(pa.binary()))[0].values  # a store row as shard_clips reads it, uncopied
    assert np.array_equal(cut_clip(arrow, np.array([5, 6, 7, 8]), 32, 40, np.random.default_rng(0), CFG), clip)


def write_videos(url, lengths, phases=4, prefix="v"):
    """A shard of videos 'v0', 'v1', ... with ``lengths`` stored frames; frame j of video i has code 2j+1
    (frame codes below 250) and label i."""
    rows = []
    for i, n in enumerate(lengths):
        rows += phase_rows(video_id=f"{prefix}{i}", label=i, label_name=f"c{i}", split="train", source="/x.mp4",
                           fps=25.0, num_frames=n, height=32, width=40, indices=list(range(n)),
                           jpegs=coded([2 * j % 250 + 1 for j in range(n)]), num_phases=phases)
    write_shard(rows_to_table(rows), url)


def test_a_shard_gives_one_clip_per_video_whatever_its_length(tmp_path):
    url = str(tmp_path / "shard.parquet")
    lengths = [16, 120, 40, 5, 70]  # short, long and one shorter than a clip's 16-frame window
    write_videos(url, lengths)
    blocks = list(shard_clips(url, 0, CFG, {}, num_phases=4, seed=3, epoch=1))
    assert [len(b["label"]) for b in blocks] == [3, 2]  # rows_per_task clips per block
    labels = np.concatenate([b["label"] for b in blocks])
    assert sorted(labels.tolist()) == list(range(len(lengths)))  # every video exactly once
    for clip, label in zip(np.concatenate([b["clip"] for b in blocks]), labels, strict=True):
        stored = (frame_codes(clip) - 1) // 2  # the stored frame index of each clip frame
        if lengths[label] >= 16:  # a clip is every 4th stored frame of a 16-frame window
            assert np.all(np.diff(stored) == 4) and stored[-1] < lengths[label]
    again = np.concatenate([b["clip"] for b in shard_clips(url, 0, CFG, {}, num_phases=4, seed=3, epoch=1)])
    assert np.array_equal(again, np.concatenate([b["clip"] for b in blocks]))  # reproducible
    other = np.concatenate([b["clip"] for b in shard_clips(url, 1, CFG, {}, num_phases=4, seed=3, epoch=1)])
    assert not np.array_equal(other, again)  # the next round draws anew


def test_clips_of_a_long_video_start_all_over_it(tmp_path):
    url = str(tmp_path / "shard.parquet")
    write_videos(url, [120])
    starts = {int((frame_codes(b["clip"][0])[0] - 1) // 2) for r in range(60)
              for b in shard_clips(url, r, CFG, {}, num_phases=4, seed=0, epoch=0)}
    assert min(starts) < 15 and max(starts) > 90 and len({s % 4 for s in starts}) == 4  # every phase row


class FakeStore(Store):
    """A store's manifest of ``shards`` training shards, and no files."""

    def __init__(self, shards: int = 5):
        self.url, self.storage_options = "store", {}
        self.manifest = {"splits": {"train": {"shards": [f"train/shard-{i:05d}.parquet" for i in range(shards)]}}}


def test_an_epoch_is_rounds_over_every_shard(tmp_path):
    cfg = DataConfig(store="store", clips_per_video=3)
    plan = epoch_plan(FakeStore(), cfg, seed=0, epoch=0)
    assert [t["round"] for t in plan] == [0] * 5 + [1] * 5 + [2] * 5
    assert all(sorted(t["url"] for t in plan[r * 5:(r + 1) * 5]) == FakeStore().shard_urls("train") for r in range(3))
    assert [t["url"] for t in plan[:5]] != [t["url"] for t in plan[5:10]]  # each round in its own order
    assert plan != epoch_plan(FakeStore(), cfg, seed=0, epoch=1)
    draws = {clip_rng(*key).random() for key in [(1, 2, "v", 3), (1, 3, "v", 3), (1, 2, "w", 3), (1, 2, "v", 4),
                                                  (1, 2, "v", 3, 5), (2, 2, "v", 3)]}
    assert len(draws) == 6  # seed, epoch, video, round and a resumed epoch's step each draw anew


def test_short_epochs_share_one_stream_and_long_ones_do_not():
    cfg = DataConfig(store="store", clips_per_video=2)
    small, large = FakeStore(19), FakeStore(STREAM_TASKS)  # the demo's 19 shards; Kinetics-sized
    assert epochs_per_stream(small, cfg, left=8) == 8 and epochs_per_stream(small, cfg, left=100) == 53
    assert epochs_per_stream(large, cfg, left=100) == 1  # 4,096 tasks an epoch: a stream each
    # A stream is its epochs' own plans one after another, a resumed first epoch drawn anew.
    plan = stream_plan(small, cfg, seed=4, epoch=2, resumed_at=7, epochs=3)
    assert [(t["epoch"], t["resumed_at"]) for t in plan] == [(2, 7)] * 38 + [(3, 0)] * 38 + [(4, 0)] * 38
    for i, (e, r) in enumerate([(2, 7), (3, 0), (4, 0)]):
        own = epoch_plan(small, cfg, seed=4, epoch=e, resumed_at=r)
        assert [(t["url"], t["round"]) for t in plan[38 * i:38 * (i + 1)]] == [(t["url"], t["round"]) for t in own]


def test_shards_sharing_a_task_give_the_same_clips_as_a_task_each(ray_cluster, tmp_path, monkeypatch):
    """Beyond MAX_BLOCKS shards a task takes several (Ray Data's start costs ~1 ms a block): an epoch
    still draws every video once, the same clips, and the test still sees every video once."""
    names = [f"{split}/shard-{i:05d}.parquet" for split in ("train", "val") for i in range(5)]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_videos(str(tmp_path / name), [20, 33, 48], prefix=name[:-8] + "/v")
    splits = {s: {"shards": [n for n in names if n.startswith(s)], "videos": 15} for s in ("train", "val")}
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "classes": ["a", "b", "c"],
                                                        "splits": splits, "params": {"num_phases": 4}}))
    store, cfg = Store(str(tmp_path)), DataConfig(store=str(tmp_path), frames=4, train_short_side=(32, 32), crop=24,
                                                  eval_short_side=32, test_clips=2)

    def epoch():
        rows = train_dataset(store, cfg, seed=1, epoch=2).take_all()
        return {int(r["video"]): r["clip"] for r in rows}, len(rows)

    one_each, n = epoch()
    monkeypatch.setattr(data, "MAX_BLOCKS", 2)
    shared, m = epoch()
    assert n == m == len(one_each) == 15 and one_each.keys() == shared.keys()
    assert all(np.array_equal(one_each[v], shared[v]) for v in one_each)
    tested = [r["video_id"] for r in eval_dataset(store, "val", cfg, clips=2, protocol="center_crop").take_all()]
    assert sorted(tested) == sorted(f"val/shard-{i:05d}/v{j}" for i in range(5) for j in range(3))


def test_video_clips_follow_the_test_protocol():
    num_phases, n = 4, 50  # 50 stored frames, stride 4
    rows = {p: [] for p in range(num_phases)}
    for j in range(n):  # stored frame j is row j % P, entry j // P
        rows[j % num_phases] += coded([4 * j + 2])
    want = eval_clip_indices(n, frames=4, stride=num_phases, clips=5)
    for protocol, shape in (("three_crop", (15, 4, 32, 32, 3)), ("full", (5, 4, 32, 40, 3)),
                            ("center_crop", (5, 4, 24, 24, 3))):
        views = video_clips(rows, num_phases, 32, 40, frames=4, clips=5, protocol=protocol, short_side=32, crop=24)
        assert views.shape == shape, protocol
        step = 3 if protocol == "three_crop" else 1
        got = np.array([frame_codes(v) for v in views[::step]]) // 4  # one view per clip
        assert np.array_equal(got, want)
