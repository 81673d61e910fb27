"""What a synthetic video shows: one object, of a shape and a colour, moving over a textured
background. pipeline/synthetic.py writes these frames as datasets.

    frames = motion_video(0, False, np.random.default_rng(0), 64, 80, 32)  # (32, 64, 80, 3) uint8, moving right
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MOTION_PAIRS: tuple[tuple[str, str, str], ...] = (
    # (motion rendered forward, forward class, reversed class)
    ("right", "moving right", "moving left"),
    ("down", "moving down", "moving up"),
    ("clockwise", "rotating clockwise", "rotating counterclockwise"),
    ("grow", "approaching", "receding"),
    ("down_right", "moving down and right", "moving up and left"),
    ("down_left", "moving down and left", "moving up and right"),
)

# Asymmetric shapes only, so that a rotation is visible whatever the object.
MOTION_SHAPES = ("triangle", "ell", "half_disk", "tee")
APPEARANCE_SHAPES = ("disk", "square", "triangle", "ring", "cross", "ell")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40),
    "magenta": (210, 50, 200), "cyan": (40, 200, 210), "white": (240, 240, 240), "orange": (240, 130, 30),
}


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-size shape in its own coordinates (u right, v down)."""
    if shape == "disk":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if shape == "triangle":  # isosceles, pointing right
        return (u >= -0.8) & (np.abs(v) <= 0.5 * (1.0 - u))
    if shape == "ell":
        return ((u >= -0.9) & (u <= -0.3) & (np.abs(v) <= 1.0)) | ((v >= 0.4) & (v <= 1.0) & (u >= -0.9)
                                                                     & (u <= 0.9))
    if shape == "half_disk":
        return (u * u + v * v <= 1.0) & (u >= 0.0)
    if shape == "tee":
        return ((v >= -1.0) & (v <= -0.45) & (np.abs(u) <= 1.0)) | ((np.abs(u) <= 0.3) & (v <= 1.0)
                                                                     & (v >= -1.0))
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A static smooth colour field with fine texture, (H, W, 3) float32."""
    coarse = rng.uniform(30, 200, size=(3, 4, 3)).astype(np.float32)
    ys = np.linspace(0, coarse.shape[0] - 1, h)
    xs = np.linspace(0, coarse.shape[1] - 1, w)
    y0 = np.clip(ys.astype(int), 0, coarse.shape[0] - 2)
    x0 = np.clip(xs.astype(int), 0, coarse.shape[1] - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    smooth = top * (1 - fy) + bottom * fy
    return smooth + rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)


@dataclass
class _Track:
    """Object pose per frame: centre (x, y) in pixels, angle in radians, radius in pixels."""
    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray
    radius: np.ndarray


def _motion_track(motion: str, rng: np.random.Generator, h: int, w: int, n: int, *,
                  size: float | None = None, speed: float | None = None) -> _Track:
    t = np.linspace(0.0, 1.0, n)
    short = min(h, w)
    radius = rng.uniform(0.12, 0.18) * short if size is None else size * short / 2  # shapes span [-1, 1]
    angle0 = rng.uniform(0, 2 * np.pi)
    const = np.ones(n)
    if motion == "grow":
        r0 = rng.uniform(0.07, 0.10) * short if size is None else 0.6 * radius
        r1 = r0 * rng.uniform(2.0, 2.6)
        cx, cy = rng.uniform(r1, w - r1), rng.uniform(r1, h - r1)
        return _Track(cx * const, cy * const, angle0 * const, r0 + (r1 - r0) * t)
    if motion == "clockwise":
        turn = rng.uniform(0.5, 0.9) * np.pi  # less than half a turn: the direction is unambiguous
        cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
        # Image y points down, so a growing angle turns clockwise on screen.
        return _Track(cx * const, cy * const, angle0 + turn * t, radius * const)
    dx, dy = {"right": (1, 0), "down": (0, 1), "down_right": (1, 1), "down_left": (-1, 1)}[motion]
    if speed is not None:
        # The centre runs on a loop one object longer than the frame: it leaves whole and re-enters
        # at the opposite edge, so any speed fits any video length.
        def axis(d: int, extent: int) -> np.ndarray:
            loop = extent + 2 * radius
            if not d:
                return np.full(n, rng.uniform(radius, extent - radius))
            return (rng.uniform(0, loop) + d * speed * np.arange(n)) % loop - radius
        return _Track(axis(dx, w), axis(dy, h), angle0 * const, radius * const)
    span_x, span_y = w - 2 * radius, h - 2 * radius
    dist = rng.uniform(0.45, 0.75)
    travel_x, travel_y = dist * span_x * abs(dx), dist * span_y * abs(dy)
    x0 = radius + rng.uniform(0, span_x - travel_x) + (travel_x if dx < 0 else 0)
    y0 = radius + rng.uniform(0, span_y - travel_y)
    return _Track(x0 + dx * travel_x * t, y0 + dy * travel_y * t, angle0 * const, radius * const)


def _random_track(rng: np.random.Generator, h: int, w: int, n: int) -> _Track:
    """Appearance kind: a random direction and speed, so that motion carries no class signal."""
    short = min(h, w)
    radius = rng.uniform(0.14, 0.2) * short
    x = np.linspace(*rng.uniform(radius, w - radius, size=2), n)
    y = np.linspace(*rng.uniform(radius, h - radius, size=2), n)
    return _Track(x, y, np.full(n, rng.uniform(0, 2 * np.pi)), np.full(n, radius))


def render(track: _Track, shape: str, colour: Sequence[float], background: np.ndarray) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of ``shape`` following ``track`` over ``background``."""
    h, w, _ = background.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    frames = np.empty((len(track.x), h, w, 3), dtype=np.uint8)
    col = np.asarray(colour, dtype=np.float32)
    for i in range(len(track.x)):
        c, s, r = math.cos(track.angle[i]), math.sin(track.angle[i]), track.radius[i]
        px, py = xx - track.x[i], yy - track.y[i]
        u = (c * px + s * py) / r
        v = (-s * px + c * py) / r
        mask = _shape_mask(shape, u, v)[..., None]
        frames[i] = np.clip(np.where(mask, col, background), 0, 255).astype(np.uint8)
    return frames


def motion_video(pair: int, reverse: bool, rng: np.random.Generator, h: int, w: int, n: int, *,
                 size: float | None = None, speed: float | None = None) -> np.ndarray:
    """One ``motion`` video. The twin class is the same draw with its frames reversed."""
    track = _motion_track(MOTION_PAIRS[pair][0], rng, h, w, n, size=size, speed=speed)
    shape = MOTION_SHAPES[rng.integers(len(MOTION_SHAPES))]
    colour = list(COLOURS.values())[rng.integers(len(COLOURS))]
    frames = render(track, shape, colour, _background(rng, h, w))
    return frames[::-1].copy() if reverse else frames


def appearance_video(label: str, rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    colour_name, shape = label.split(" ")
    colour = np.asarray(COLOURS[colour_name]) + rng.normal(0, 8, size=3)
    return render(_random_track(rng, h, w, n), shape, colour, _background(rng, h, w))
