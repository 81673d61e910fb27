"""Clip decoding and spatial augmentation as pure functions over numpy arrays, with an explicit RNG.

Training (paper section 4.2): the short side is scaled to a random size in [256, 320], a random
224x224 crop is taken and flipped horizontally at random. Evaluation: short side 256, the centre
crop (or three crops along the long side). A crop is computed in stored-frame pixels first, so
only its region is resized (the frame is never scaled whole): one ``cv2.resize`` per frame.

Clips leave the loader as uint8 (T, H, W, 3); ``normalize`` turns a batch into the model's float
(N, 3, T, H, W) on the training device, where mean/std subtraction costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
import torch

cv2.setNumThreads(1)  # a loader task is one core; OpenCV's own threads would oversubscribe it


@dataclass(frozen=True)
class View:
    """A square region of a stored frame (top, left, side, in stored pixels) and a horizontal flip."""
    top: int
    left: int
    side: int
    flip: bool = False


def decode(jpegs: Sequence[bytes], *, fast: bool = False) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB. ``fast`` trades a little accuracy in the IDCT and chroma upsampling
    for ~10% speed (training only)."""
    first = simplejpeg.decode_jpeg(jpegs[0], fastdct=fast, fastupsample=fast)
    out = np.empty((len(jpegs),) + first.shape, np.uint8)
    out[0] = first
    for i, j in enumerate(jpegs[1:], 1):
        simplejpeg.decode_jpeg(j, fastdct=fast, fastupsample=fast, buffer=out[i])
    return out


def train_view(rng: np.random.Generator, height: int, width: int, *, short_side: tuple[int, int] = (256, 320),
               crop: int = 224, flip: bool = True) -> View:
    """Scale to a random short side in ``short_side``, a random ``crop`` square, a random flip
    (unless ``flip`` is off: classes such as "moving left" / "moving right" are mirror images)."""
    scale = rng.uniform(short_side[0], short_side[1]) / min(height, width)
    side = min(round(crop / scale), height, width)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return View(top, left, side, flip and bool(rng.random() < 0.5))


def eval_views(height: int, width: int, *, short_side: int = 256, crop: int = 224, crops: int = 1) -> list[View]:
    """The centre crop, or with ``crops=3`` three crops spread along the long side (start, centre, end)."""
    side = min(round(crop * min(height, width) / short_side), height, width)
    top, left = (height - side) // 2, (width - side) // 2
    if crops == 1:
        return [View(top, left, side)]
    if crops != 3:
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    if height > width:
        return [View(t, left, side) for t in (0, top, height - side)]
    return [View(top, lf, side) for lf in (0, left, width - side)]


def apply_view(frames: np.ndarray, view: View, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """(T, H, W, 3) -> (T, size, size, 3): the view's region resized (bilinear), flipped if asked;
    written into ``out`` when given."""
    if out is None:
        out = np.empty((frames.shape[0], size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        region = frame[view.top:view.top + view.side, view.left:view.left + view.side]
        cv2.resize(region, (size, size), dst=out[i], interpolation=cv2.INTER_LINEAR)
        if view.flip:
            cv2.flip(out[i], 1, dst=out[i])
    return out


def normalize(clips: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) -> float (N, 3, T, H, W), (x/255 - mean) / std. The result is a
    permuted view of channels-last memory, i.e. already in ``torch.channels_last_3d`` layout."""
    x = clips.permute(0, 4, 1, 2, 3).float()
    shape = (1, 3, 1, 1, 1)
    m = torch.tensor(mean, device=x.device).view(shape) * 255
    s = torch.tensor(std, device=x.device).view(shape) * 255
    return (x - m) / s
