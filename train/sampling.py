"""Clip sampling as in the paper (section 4.2), as pure functions with an explicit RNG.

Training: a window of ``frames * stride`` consecutive source frames (64 = 8 x 8) at a random
start, every ``stride``-th frame kept. Testing: ``clips`` (10) windows spread uniformly over the
video. A video shorter than the window loops. All indices are source frame indices.

In the frame store (pipeline/store.py) frames are grouped by phase: with ``frame_step`` k and
``stride`` S, the row of phase p holds source frames (p, p + S/k, p + 2S/k, ...) * k. A training
clip is then ``frames`` consecutive entries of one row: ``row_clip_positions`` cuts
floor(len/frames) non-overlapping clips from a row at random places (at least one; a row shorter
than a clip loops), so one row read serves several clips, which a shuffle buffer then mixes
across videos.
"""

from __future__ import annotations

import numpy as np


def train_clip_indices(num_frames: int, rng: np.random.Generator, *, frames: int = 8, stride: int = 8) -> np.ndarray:
    """``frames`` source indices: a random ``frames*stride`` window, every ``stride``-th frame."""
    _check(num_frames, frames, stride)
    window = frames * stride
    start = int(rng.integers(0, num_frames - window + 1)) if num_frames >= window else \
        int(rng.integers(0, num_frames))
    return (start + stride * np.arange(frames)) % num_frames


def eval_clip_indices(num_frames: int, *, frames: int = 8, stride: int = 8, clips: int = 10) -> np.ndarray:
    """(clips, frames) source indices: window starts spread uniformly over the video."""
    _check(num_frames, frames, stride)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    last_start = max(num_frames - frames * stride, 0)
    starts = np.round(np.linspace(0, last_start, clips)).astype(int) if clips > 1 else np.array([last_start // 2])
    return (starts[:, None] + stride * np.arange(frames)[None, :]) % num_frames


def row_clip_positions(row_len: int, rng: np.random.Generator, *, frames: int = 8) -> np.ndarray:
    """(k, frames) positions within a phase row: k = max(1, row_len // frames) non-overlapping runs
    of consecutive entries, in order, with the row's spare entries spread as random gaps around
    them. No clip wraps around the row's end (that would join its last frame to its first); a row
    shorter than ``frames`` loops from a random start, like a short video."""
    if row_len < 1 or frames < 1:
        raise ValueError(f"row_len and frames must be >= 1, got {row_len}, {frames}")
    if row_len < frames:
        return ((int(rng.integers(0, row_len)) + np.arange(frames)) % row_len)[None]
    k = clips_in_row(row_len, frames)
    # The spare entries fall into k + 1 gaps (before, between and after the clips) at random.
    cuts = np.sort(rng.integers(0, row_len - k * frames + 1, size=k))
    starts = cuts + frames * np.arange(k)
    return starts[:, None] + np.arange(frames)[None, :]


def clips_in_row(row_len: int, frames: int) -> int:
    return max(1, row_len // frames)


def _check(num_frames: int, frames: int, stride: int) -> None:
    if num_frames < 1 or frames < 1 or stride < 1:
        raise ValueError(f"num_frames, frames and stride must be >= 1, got {num_frames}, {frames}, {stride}")
