"""Clip decoding and spatial augmentation as pure functions over numpy arrays, with an explicit RNG.

Training (paper section 4.2): the short side is scaled to a random size in [256, 320], a random
224x224 crop is taken and flipped horizontally at random. Testing, at short side 256 (``eval_views``):
"full", the whole frame (the paper's "spatially fully convolutional inference": the network's global
average pool takes any size); "three_crop", three 256x256 squares along the long side (the authors'
code); "center_crop", the centre 224x224 crop (the single-clip validation's view). A view is
computed in stored-frame pixels first, so only its region is resized: one ``cv2.resize`` per frame.

Clips leave the loader as uint8 (T, H, W, 3); ``train.core.normalize`` turns a batch into the
model's float (N, 3, T, H, W) on the training device, where mean/std subtraction costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

cv2.setNumThreads(1)  # a loader task is one core; OpenCV's own threads would oversubscribe it


PROTOCOLS = ("full", "three_crop", "center_crop")


@dataclass(frozen=True)
class View:
    """A region of a stored frame (top, left, height, width, in stored pixels) and a horizontal flip."""
    top: int
    left: int
    height: int
    width: int
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
    """Scale to a random short side in ``short_side``, a whole number of pixels from either end as
    the authors draw it (MMAction2's RandomRescale), a random ``crop`` square, a random flip (unless
    ``flip`` is off: classes such as "moving left" / "moving right" are mirror images)."""
    scale = int(rng.integers(short_side[0], short_side[1], endpoint=True)) / min(height, width)
    side = min(round(crop / scale), height, width)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return View(top, left, side, side, flip and bool(rng.random() < 0.5))


def eval_views(height: int, width: int, *, short_side: int = 256, crop: int = 224,
               protocol: str = "center_crop") -> tuple[list[View], tuple[int, int]]:
    """(views, their output size (h, w)) of a stored frame under a test ``protocol`` (PROTOCOLS), the
    frame scaled to ``short_side``: the whole frame; three short-side squares along the long side
    (start, centre, end); or the centre ``crop`` square."""
    short = min(height, width)
    if protocol == "full":
        scale = short_side / short
        return [View(0, 0, height, width)], (round(height * scale), round(width * scale))
    if protocol not in PROTOCOLS:
        raise ValueError(f"test protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "three_crop":
        side, out = short, short_side
    else:
        side, out = min(round(crop * short / short_side), short), crop
    top, left = (height - side) // 2, (width - side) // 2
    if protocol == "center_crop":
        views = [View(top, left, side, side)]
    elif height > width:
        views = [View(t, left, side, side) for t in (0, top, height - side)]
    else:
        views = [View(top, lf, side, side) for lf in (0, left, width - side)]
    return views, (out, out)


def apply_view(frames: np.ndarray, view: View, size: int | tuple[int, int],
               out: np.ndarray | None = None) -> np.ndarray:
    """(T, H, W, 3) -> (T, h, w, 3): the view's region resized (bilinear) to ``size`` (h, w), or a
    square of that side, flipped if asked; written into ``out`` when given."""
    out = _output(len(frames), size, out)
    for i, frame in enumerate(frames):
        _view_into(frame, view, out[i])
    return out


def decode_view(jpegs: Sequence, view: View, size: int | tuple[int, int], out: np.ndarray | None = None, *,
                fast: bool = False) -> np.ndarray:
    """``apply_view`` of the decoded ``jpegs`` (bytes or uint8 arrays of one video), decoded one at a
    time into one buffer: the full-size frame is resized while it is still in the CPU's cache, and
    the clip's full-size frames are never held together. A JPEG object given twice (a short video's
    looping clip) is decoded once."""
    out = _output(len(jpegs), size, out)
    frame, done = None, {}
    for i, jpeg in enumerate(jpegs):
        if id(jpeg) in done:
            out[i] = out[done[id(jpeg)]]
            continue
        done[id(jpeg)] = i
        # A video's frames share one size, so each is decoded into the first one's buffer.
        frame = simplejpeg.decode_jpeg(jpeg, fastdct=fast, fastupsample=fast, buffer=frame)
        _view_into(frame, view, out[i])
    return out


def _output(frames: int, size: int | tuple[int, int], out: np.ndarray | None) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    return np.empty((frames, h, w, 3), np.uint8) if out is None else out


def _view_into(frame: np.ndarray, view: View, dst: np.ndarray) -> None:
    region = frame[view.top:view.top + view.height, view.left:view.left + view.width]
    cv2.resize(region, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=cv2.INTER_LINEAR)
    if view.flip:
        cv2.flip(dst, 1, dst=dst)
