"""Clip sampling as in the paper (section 4.2), as pure functions with an explicit RNG.

Training: a window of ``frames * stride`` consecutive source frames (64 = 8 x 8) at a random
start, every ``stride``-th frame kept. Testing: ``clips`` (10) windows spread uniformly over the
video. A video shorter than the window starts at its first frame and loops, as the authors'
sampler (MMAction2's SampleFrames) takes it. All indices are source frame indices.

In the frame store (pipeline/store.py) frames are grouped by phase: with ``frame_step`` k and
``stride`` S, the row of phase p holds source frames (p, p + S/k, p + 2S/k, ...) * k. A training
clip is then ``frames`` consecutive entries of one row: ``train_clip_in_rows`` draws it as
``train_clip_indices`` would and says which row and entries it is; ``eval_clip_in_rows`` places the
test clips. A ``stride`` is always in source frames (the config's, prepare's --stride); the
``_in_rows`` functions take the rows' lengths instead, so a store's reader never handles a stride
in stored frames.
"""

from __future__ import annotations

import numpy as np


def train_clip_indices(num_frames: int, rng: np.random.Generator, *, frames: int = 8, stride: int = 8) -> np.ndarray:
    """``frames`` source indices: a random ``frames*stride`` window, every ``stride``-th frame."""
    _check(num_frames, frames, stride)
    window = frames * stride
    start = int(rng.integers(0, num_frames - window + 1)) if num_frames >= window else 0
    return (start + stride * np.arange(frames)) % num_frames


def eval_clip_indices(num_frames: int, *, frames: int = 8, stride: int = 8, clips: int = 10) -> np.ndarray:
    """(clips, frames) source indices: window starts spread uniformly over the video."""
    _check(num_frames, frames, stride)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    last_start = max(num_frames - frames * stride, 0)
    starts = np.round(np.linspace(0, last_start, clips)).astype(int) if clips > 1 else np.array([last_start // 2])
    return (starts[:, None] + stride * np.arange(frames)[None, :]) % num_frames


def eval_clip_in_rows(lengths: list[int], *, frames: int = 8, clips: int = 10) -> np.ndarray:
    """(clips, frames) stored-frame indices of the test clips of a video stored as phase rows of
    ``lengths`` (stored frame j lies in row j % P at entry j // P; P = len(lengths)): the clips
    ``eval_clip_indices`` spreads over its stored frames, ``frames`` consecutive entries of a row each."""
    return eval_clip_indices(sum(lengths), frames=frames, stride=len(lengths), clips=clips)


def train_clip_in_rows(lengths: list[int], rng: np.random.Generator, *, frames: int = 8) -> tuple[int, np.ndarray]:
    """(phase, entries): a training clip of a video stored as phase rows of ``lengths`` (row p holds
    the stored frames p, p+P, p+2P, ...; P = len(lengths), 0 for a row a very short video lacks).
    The clip's first stored frame is drawn as ``train_clip_indices`` draws it: uniformly over the
    starts whose ``frames * P`` window fits, so the clip is ``frames`` consecutive entries of one
    row; a video shorter than the window starts at its first frame, as ``train_clip_indices``, and
    its clip loops within that row (docs/protocol.md: where that differs from the source frames'
    loop)."""
    num_phases, n = len(lengths), sum(lengths)
    if n < 1 or frames < 1:
        raise ValueError(f"a video needs stored frames and clips frames, got lengths {lengths}, frames {frames}")
    window = frames * num_phases
    start = int(rng.integers(0, n - window + 1)) if n >= window else 0
    phase = start % num_phases
    return phase, (start // num_phases + np.arange(frames)) % lengths[phase]


def _check(num_frames: int, frames: int, stride: int) -> None:
    if num_frames < 1 or frames < 1 or stride < 1:
        raise ValueError(f"num_frames, frames and stride must be >= 1, got {num_frames}, {frames}, {stride}")
