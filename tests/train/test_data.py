"""Clip cutting from store rows: which stored frames a training or test clip holds."""

import numpy as np
import simplejpeg

from train.data import row_clips, row_rng, video_clips
from train.sampling import eval_clip_indices
from train.settings import DataConfig


def coded(values):
    """One flat grey JPEG per value: the decoded frame's mean tells which frame it was."""
    return [simplejpeg.encode_jpeg(np.full((32, 40, 3), v, np.uint8), quality=95) for v in values]


def frame_codes(clip):  # (T, H, W, 3) -> per-frame values
    return np.round(clip.reshape(len(clip), -1).mean(1)).astype(int)


CFG = DataConfig(store="unused", frames=4, train_short_side=(32, 40), crop=24, eval_short_side=32)


def test_row_clips_are_consecutive_row_entries_and_cover_the_row():
    row = coded(range(10, 10 + 12 * 10, 10))  # 12 entries of one phase row
    clips = row_clips(row, 32, 40, np.random.default_rng(0), CFG)
    assert clips.shape == (3, 4, 24, 24, 3)  # floor(12 / 4) non-overlapping clips
    codes = np.array([frame_codes(c) for c in clips]) // 10 - 1  # entry index of each frame
    assert np.all(np.diff(codes, axis=1) == 1)  # consecutive entries (a row is every stride-th frame)
    assert sorted(codes.ravel().tolist()) == list(range(12))  # every entry used exactly once


def test_a_short_row_loops_and_rows_are_reproducible():
    row = coded([50, 100, 150])
    a = row_clips(row, 32, 40, row_rng(1, 2, "v", 3), CFG)
    b = row_clips(row, 32, 40, row_rng(1, 2, "v", 3), CFG)
    assert a.shape == (1, 4, 24, 24, 3) and np.array_equal(a, b)
    codes = frame_codes(a[0])
    assert codes[0] == codes[3] and len(set(codes.tolist())) == 3
    draws = {row_rng(*key).random() for key in [(1, 2, "v", 3), (1, 3, "v", 3), (1, 2, "w", 3), (1, 2, "v", 4),
                                                  (1, 2, "v", 3, 5), (2, 2, "v", 3)]}
    assert len(draws) == 6  # seed, epoch, video, phase and a resumed epoch's step each draw anew


def test_video_clips_follow_the_test_protocol():
    num_phases, n = 4, 50  # 50 stored frames, stride 4
    rows = {p: [] for p in range(num_phases)}
    for j in range(n):  # stored frame j is row j % P, entry j // P
        rows[j % num_phases] += coded([4 * j + 2])
    views = video_clips(rows, num_phases, 32, 40, frames=4, clips=5, crops=3, short_side=32, crop=24)
    assert views.shape == (15, 4, 24, 24, 3)
    want = eval_clip_indices(n, frames=4, stride=num_phases, clips=5)
    got = np.array([frame_codes(v) for v in views[::3]]) // 4  # one view per clip
    assert np.array_equal(got, want)
