"""Clip sampling follows the paper's rules: 64-frame window at stride 8, 10 uniform test clips, loops."""

import numpy as np
import pytest

from train.sampling import eval_clip_indices, train_clip_in_rows, train_clip_indices


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
    for n in (1, 5, 30, 63):  # as the authors' SampleFrames: start 0, frame indices 8j mod n
        assert np.array_equal(train_clip_indices(n, rng), 8 * np.arange(8) % n)


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


def phase_lengths(n: int, phases: int) -> list[int]:
    """Row lengths of an n-frame video stored in ``phases`` phase rows."""
    return [len(range(p, n, phases)) for p in range(phases)]


@pytest.mark.parametrize("n, phases, frames", [(300, 8, 8), (301, 8, 8), (250, 4, 32), (64, 8, 8), (90, 2, 32)])
def test_a_clip_in_phase_rows_is_the_papers_clip(n, phases, frames):
    lengths = phase_lengths(n, phases)
    for seed in range(200):
        phase, entries = train_clip_in_rows(lengths, np.random.default_rng(seed), frames=frames)
        want = train_clip_indices(n, np.random.default_rng(seed), frames=frames, stride=phases)
        assert np.array_equal(phase + phases * entries, want)  # the same stored frames
        assert np.all(np.diff(entries) == 1) and entries[-1] < lengths[phase]  # consecutive, no wrap


def test_clip_starts_cover_every_phase_and_the_whole_window_range():
    lengths, rng = phase_lengths(300, 8), np.random.default_rng(0)
    starts = [p + 8 * e[0] for p, e in (train_clip_in_rows(lengths, rng) for _ in range(4000))]
    assert min(starts) == 0 and max(starts) == 300 - 64 and len(set(np.array(starts) % 8)) == 8
    counts = np.bincount(starts, minlength=237)
    assert counts.max() < 3 * counts.mean()  # uniform, not favouring one row or one end


def test_a_short_video_loops_within_one_row():
    rng = np.random.default_rng(1)
    for n, phases in ((30, 8), (5, 8), (1, 8), (9, 4)):
        lengths = phase_lengths(n, phases)
        for _ in range(50):  # from its first frame, as train_clip_indices
            phase, entries = train_clip_in_rows(lengths, rng, frames=8)
            assert phase == 0 and np.array_equal(entries, np.arange(8) % lengths[0])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        train_clip_indices(0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        eval_clip_indices(10, clips=0)
