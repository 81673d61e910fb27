"""Clip sampling follows the paper's rules: 64-frame window at stride 8, 10 uniform test clips, loops."""

import numpy as np
import pytest

from train.sampling import eval_clip_indices, row_clip_positions, train_clip_indices


def test_train_clip_is_a_64_frame_window_at_stride_8():
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(500):
        idx = train_clip_indices(300, rng)
        assert len(idx) == 8 and np.all(np.diff(idx) == 8)
        assert idx[0] >= 0 and idx[-1] <= 299 and idx[-1] - idx[0] == 56  # inside a 64-frame window
        starts.append(idx[0])
    assert min(starts) < 20 and max(starts) > 216 and max(starts) <= 300 - 64  # spread over the video


def test_train_clip_of_a_short_video_loops():
    rng = np.random.default_rng(1)
    for n in (1, 5, 30, 63):
        idx = train_clip_indices(n, rng)
        assert len(idx) == 8 and idx.min() >= 0 and idx.max() < n
        assert np.all((idx[1:] - idx[:-1]) % n == 8 % n)


def test_train_sampling_is_reproducible_from_the_seed():
    a = [train_clip_indices(300, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(*a)


def test_ten_test_clips_spread_uniformly():
    idx = eval_clip_indices(300)
    assert idx.shape == (10, 8) and np.all(np.diff(idx, axis=1) == 8)
    starts = idx[:, 0]
    assert starts[0] == 0 and starts[-1] == 300 - 64
    assert np.all(np.abs(np.diff(starts) - (300 - 64) / 9) <= 1)
    short = eval_clip_indices(20, frames=8, stride=8)
    assert short.shape == (10, 8) and short.max() < 20 and np.all(short[:, 0] == 0)
    assert eval_clip_indices(256, frames=32, stride=8).shape == (10, 32)  # the 32-frame models


def test_row_clips_cover_a_row_without_overlap():
    rng = np.random.default_rng(3)
    pos = row_clip_positions(37, rng)  # a 300-frame video's phase row at stride 8
    assert pos.shape == (4, 8) and len(set(pos.ravel())) == 32 and pos.max() < 37
    assert np.all(np.diff(pos, axis=1) == 1)  # consecutive entries, none wrapping around the row's end
    assert np.all(pos[1:, 0] > pos[:-1, -1])  # in order, not overlapping
    starts = {tuple(row_clip_positions(37, rng)[:, 0]) for _ in range(50)}
    assert len(starts) > 10  # the 5 spare entries fall in random gaps
    assert row_clip_positions(16, rng).tolist() == [list(range(8)), list(range(8, 16))]  # no spare entries
    assert row_clip_positions(4, rng).tolist()[0] in ([0, 1, 2, 3, 0, 1, 2, 3], [1, 2, 3, 0, 1, 2, 3, 0],
                                                      [2, 3, 0, 1, 2, 3, 0, 1], [3, 0, 1, 2, 3, 0, 1, 2])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        train_clip_indices(0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        eval_clip_indices(10, clips=0)
