"""Decoding and spatial augmentation: the paper's scale/crop/flip ranges, exact flips, layout."""

import numpy as np
import pytest
import simplejpeg

from train.augment import View, apply_view, decode, decode_view, eval_views, train_view


def test_train_view_follows_the_scale_and_crop_ranges():
    rng = np.random.default_rng(0)
    h, w = 320, 427  # a stored frame, short side 320
    views = [train_view(rng, h, w, short_side=(256, 320), crop=224) for _ in range(2000)]
    sides = np.array([v.height for v in views])
    # 224 pixels at short side s in [256, 320] cover 224 * 320 / s stored pixels: 224 .. 280
    assert all(v.height == v.width for v in views)
    assert sides.min() >= 224 and sides.max() <= 280 and sides.min() < 230 and sides.max() > 274
    assert all(0 <= v.top <= h - v.height and 0 <= v.left <= w - v.width for v in views)
    assert max(v.left for v in views) > 140 and min(v.left for v in views) < 10  # crops spread over the frame
    assert 0.45 < np.mean([v.flip for v in views]) < 0.55
    assert not any(train_view(rng, h, w, flip=False).flip for _ in range(100))  # data.flip=false
    # The short side is a whole number of pixels, both ends included: on a frame this large each
    # one gives a crop of its own.
    big = 20000
    drawn = {train_view(rng, big, big, short_side=(256, 320), crop=224).height for _ in range(2000)}
    assert drawn == {round(224 * big / s) for s in range(256, 321)}


def test_eval_views_of_each_test_protocol():
    (full,), size = eval_views(320, 427, short_side=256, crop=224, protocol="full")
    assert (full.top, full.left, full.height, full.width) == (0, 0, 320, 427) and size == (256, 342)  # whole frame
    (c,), size = eval_views(320, 427, short_side=256, crop=224, protocol="center_crop")
    assert (c.height, c.width, c.top, c.left) == (280, 280, 20, (427 - 280) // 2) and size == (224, 224)
    three, size = eval_views(320, 427, short_side=256, crop=224, protocol="three_crop")
    assert size == (256, 256) and {(v.top, v.height, v.width) for v in three} == {(0, 320, 320)}  # full short side
    assert [v.left for v in three] == [0, (427 - 320) // 2, 427 - 320]
    tall, _ = eval_views(427, 320, short_side=256, crop=224, protocol="three_crop")
    assert [v.top for v in tall] == [0, (427 - 320) // 2, 427 - 320]
    _, size = eval_views(360, 640, short_side=256, protocol="full")  # 16:9
    assert size == (256, 455)
    with pytest.raises(ValueError, match="test protocol"):
        eval_views(320, 427, protocol="ten_crop")


def test_apply_view_resizes_the_region_and_flips_exactly():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (3, 60, 80, 3), dtype=np.uint8)
    view = View(top=5, left=10, height=40, width=40)
    out = apply_view(frames, view, 40)  # same size: the region itself
    assert out.shape == (3, 40, 40, 3) and np.array_equal(out, frames[:, 5:45, 10:50])
    flipped = apply_view(frames, View(5, 10, 40, 40, flip=True), 40)
    assert np.array_equal(flipped, out[:, :, ::-1])
    small = apply_view(frames, view, 20)
    assert small.shape == (3, 20, 20, 3)
    assert abs(float(small.mean()) - float(out.mean())) < 2  # a resize, not a crop of a corner
    wide = apply_view(frames, View(0, 0, 60, 80), (30, 40))  # a whole frame, halved
    assert wide.shape == (3, 30, 40, 3) and abs(float(wide.mean()) - float(frames.mean())) < 2


def test_decode_returns_the_frames():
    rng = np.random.default_rng(2)
    frames = np.repeat(np.repeat(rng.integers(0, 255, (4, 8, 10, 3), dtype=np.uint8), 8, 1), 8, 2)
    jpegs = [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=95) for f in frames]
    for fast in (False, True):
        out = decode(jpegs, fast=fast)
        assert out.shape == (4, 64, 80, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - frames).mean() < 6


def test_decode_view_is_decode_then_apply_view():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    jpegs = [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=90, colorsubsampling="420") for f in frames]
    looped = [jpegs[2], jpegs[0], jpegs[1], jpegs[2]]  # a short video's clip: one JPEG twice
    for view, size in ((View(3, 5, 40, 50, flip=True), (20, 24)), (View(0, 0, 48, 64), 32)):
        for fast in (False, True):
            expected = apply_view(decode(looped, fast=fast), view, size)
            assert np.array_equal(decode_view(looped, view, size, fast=fast), expected)
