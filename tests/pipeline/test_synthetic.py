"""Synthetic datasets: real decodable MP4s, deterministic, and a fair time-reversal test."""

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.scenes import _motion_track, motion_video, render
from pipeline.synthetic import BROKEN_KINDS, SyntheticSpec, generate, main

decord = pytest.importorskip("decord")

# Width 48 hits a decord bug (it returns 4 channels), so tests use 40.
SMALL = dict(height=32, width=40, fps=8, frames=16)


def decode(path: Path) -> tuple[np.ndarray, float]:
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy(), vr.get_avg_fps()


def read_rows(root: Path, split: str) -> list[dict]:
    with open(root / "annotations" / f"{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


def video_path(root: Path, row: dict) -> Path:
    start, end = int(row["time_start"]), int(row["time_end"])
    return root / row["split"] / f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"


@pytest.fixture(scope="module")
def motion(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("motion")
    spec = SyntheticSpec(kind="motion", classes=4, videos_per_class=16, val_videos_per_class=2, **SMALL)
    generate(spec, root)
    return root


@pytest.mark.parametrize("kind", ["motion", "appearance"])
def test_videos_decode_with_requested_frames_size_fps(tmp_path, kind):
    main(["--out", str(tmp_path), "--kind", kind, "--classes", "4", "--videos-per-class", "2",
          "--size", "32x40", "--fps", "8", "--frames", "12"])
    for split, per_class in (("train", 2), ("val", 2)):
        rows = read_rows(tmp_path, split)
        assert list(rows[0]) == ["label", "youtube_id", "time_start", "time_end", "split"]
        assert len(rows) == 4 * per_class and {r["split"] for r in rows} == {split}
        for row in rows:
            frames, fps = decode(video_path(tmp_path, row))
            assert frames.shape == (12, 32, 40, 3) and fps == pytest.approx(8.0)
            assert int(row["time_end"]) - int(row["time_start"]) == 2  # ceil(12 / 8) seconds
    assert json.loads((tmp_path / "synthetic.json").read_text())["spec"]["kind"] == kind


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    spec = dict(kind="motion", classes=2, videos_per_class=3, val_videos_per_class=1, broken=True, **SMALL)
    generate(SyntheticSpec(seed=5, **spec), tmp_path / "a")
    generate(SyntheticSpec(seed=5, **spec), tmp_path / "b")
    generate(SyntheticSpec(seed=6, **spec), tmp_path / "c")
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert len(a) > 10 and a == b
    broken = {b["path"] for b in json.loads((tmp_path / "c" / "synthetic.json").read_text())["broken"]}
    good_c = [v for k, v in c.items() if k.endswith(".mp4") and k not in broken]
    assert len(good_c) == 8 and set(a.values()).isdisjoint(good_c)


def test_twin_is_the_same_draw_reversed_in_time():
    fwd = motion_video(0, False, np.random.default_rng(3), 32, 40, 10)
    rev = motion_video(0, True, np.random.default_rng(3), 32, 40, 10)
    assert np.array_equal(rev, fwd[::-1]) and not np.array_equal(rev, fwd)


def class_videos(root: Path, label: str) -> list[np.ndarray]:
    return [decode(video_path(root, r))[0].astype(np.float32) for r in read_rows(root, "train")
            if r["label"] == label]


def frame_features(videos: list[np.ndarray]) -> np.ndarray:
    """One row per single frame: mean and spread of each colour channel."""
    frames = np.concatenate(videos)  # (N*T, H, W, 3)
    return np.concatenate([frames.mean(axis=(1, 2)), frames.std(axis=(1, 2))], axis=1)


def motion_slope(video: np.ndarray, axis: int) -> float:
    """Slope over time of the centre of mass of frame-to-frame change along ``axis`` (1=H, 2=W)."""
    change = np.abs(np.diff(video, axis=0)).sum(axis=-1)  # (T-1, H, W)
    weights = change.sum(axis=3 - axis)  # (T-1, W) for axis=2
    pos = (weights * np.arange(weights.shape[1])).sum(1) / weights.sum(1)
    return float(np.polyfit(np.arange(len(pos)), pos, 1)[0])


@pytest.mark.parametrize("fwd, rev, axis", [("moving right", "moving left", 2),
                                            ("moving down", "moving up", 1)])
def test_twins_share_single_frames_but_not_order(motion, fwd, rev, axis):
    a, b = class_videos(motion, fwd), class_videos(motion, rev)
    fa, fb = frame_features(a), frame_features(b)
    # Same distribution of single frames: feature means agree within sampling error of the
    # per-video spread (frames of one video are not independent, so count videos, not frames).
    n = len(a)
    se = np.sqrt(frame_features(a + b).var(axis=0) * 2 / n)
    assert np.all(np.abs(fa.mean(0) - fb.mean(0)) < 4 * se)
    # Different order: the motion runs one way in every video of one class, the other way in its twin.
    assert all(motion_slope(v, axis) > 0.1 for v in a)
    assert all(motion_slope(v, axis) < -0.1 for v in b)


def test_broken_files_are_written_with_annotation_rows(tmp_path):
    generate(SyntheticSpec(kind="appearance", classes=2, videos_per_class=1, val_videos_per_class=0,
                           broken=True, splits=("train",), **SMALL), tmp_path)
    meta = json.loads((tmp_path / "synthetic.json").read_text())
    broken = {b["broken"]: tmp_path / b["path"] for b in meta["broken"]}
    assert sorted(broken) == sorted(BROKEN_KINDS)
    annotated = {str(video_path(tmp_path, r)) for r in read_rows(tmp_path, "train")}
    assert {str(p) for p in broken.values()} <= annotated and len(annotated) == 2 + len(BROKEN_KINDS)
    assert not broken["missing"].exists()
    assert broken["zero_bytes"].stat().st_size == 0
    assert broken["not_video"].read_bytes().startswith(b"this is a text file")
    # Every broken file fails a full decord decode (in a child process: decoders may crash).
    for kind, path in broken.items():
        code = "import decord,sys; vr=decord.VideoReader(sys.argv[1]); vr.get_batch(list(range(len(vr))))"
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
        assert proc.returncode != 0, f"{kind} decoded without error"


def test_bad_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--out", "x", "--kind", "motion", "--classes", "3"])
    assert "even" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", "x", "--size", "31x48"])
    for args, words in ((["--kind", "appearance", "--speed", "1"], "motion only"),
                        (["--classes", "6", "--speed", "1"], "--classes must be 2 or 4"),
                        (["--object-size", "0.9"], "0.02..0.5")):
        with pytest.raises(SystemExit):
            main(["--out", "x", *args])
        assert words in capsys.readouterr().err


def object_boxes(frames: np.ndarray) -> dict[int, tuple[float, float, int]]:
    """Frame index -> (centre x, centre y, width) of the drawn pixels over a black background, for
    the frames where the object is in sight and not cut by an edge."""
    boxes = {}
    for t, frame in enumerate(frames):
        ys, xs = np.nonzero(frame.max(-1))
        h, w = frame.shape[:2]
        if len(xs) and xs.min() > 0 and ys.min() > 0 and xs.max() < w - 1 and ys.max() < h - 1:
            boxes[t] = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2, xs.max() - xs.min() + 1)
    return boxes


@pytest.mark.parametrize("size, speed, direction", [(0.125, 0.5, "right"), (0.25, 2.0, "right"),
                                                    (0.2, 1.25, "down")])
def test_object_size_and_speed_are_what_was_asked(size, speed, direction):
    """A square (its side 1.6 radii) of the asked size moves the asked px per frame; past an edge it leaves
    whole and re-enters at the opposite one, so 40 frames at 2 px/frame fit a 64x80 frame."""
    h, w, n = 64, 80, 40
    axis, other = (0, 1) if direction == "right" else (1, 0)
    steps, wraps = [], 0
    for seed in range(5):
        track = _motion_track(direction, np.random.default_rng(seed), h, w, n, size=size, speed=speed)
        track.angle[:] = 0  # upright, so that the box's width is the square's side
        boxes = object_boxes(render(track, "square", (255, 255, 255), np.zeros((h, w, 3), np.float32)))
        assert all(abs(b[2] - 0.8 * size * h) <= 1 for b in boxes.values())
        assert len({b[other] for b in boxes.values()}) == 1  # no drift across the motion
        steps += [boxes[t + 1][axis] - boxes[t][axis] for t in boxes if t + 1 in boxes]
        wraps += int(np.any(np.diff([track.x, track.y][axis]) < 0))
    assert len(steps) >= 2 * n and abs(np.mean(steps) - speed) < 0.05 * speed
    loop = (w, h)[axis] + size * h
    if speed * (n - 1) > loop:
        assert wraps == 5  # it could not have stayed in the frame
