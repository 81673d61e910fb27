"""Synthetic video datasets written as real H.264 MP4 files in the Kinetics layout.

Run:  python pipeline/synthetic.py --out DIR --kind motion --classes 4 --videos-per-class 20

Two kinds:

* ``motion`` - the project's scientific smoke test. Classes come in time-reversal pairs
  (moving left/right, up/down, rotating clockwise/counter-clockwise, approaching/receding,
  and two diagonal pairs). Every video is rendered as a "forward" motion from one parameter
  distribution shared by both classes of a pair; a video of the twin class is that rendering
  with its frames in reverse order. So a video and its twin's counterpart hold the very same
  set of frames, and the single-frame distribution of a class equals its twin's exactly:
  only frame order tells them apart. Frames are encoded intra-only (every frame a key
  frame), so no compression artefact correlates with the direction of time either.
  A model that ignores frame order (C2D) can at best tell which pair a clip belongs to -
  a temporal max-pool smears the object along the motion axis - so its ceiling is 50%.
* ``appearance`` - classes differ by object shape and colour, motion is random: a sanity
  control that any model can learn.

Layout (as Kinetics is distributed)::

    DIR/annotations/{train,val}.csv   label,youtube_id,time_start,time_end,split
    DIR/{train,val}/<youtube_id>_<start:06d>_<end:06d>.mp4
    DIR/synthetic.json                parameters, classes, and the broken files written

``--broken`` also writes, per split, annotation rows for a missing file, a zero-byte file,
a truncated MP4, a text file named .mp4 and an MP4 with no frames.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.scenes import APPEARANCE_SHAPES, COLOURS, MOTION_PAIRS, appearance_video, motion_video

SPLITS = ("train", "val")
BROKEN_KINDS = ("missing", "zero_bytes", "truncated", "not_video", "no_frames")


@dataclass(kw_only=True)
class SyntheticSpec:
    kind: str = "motion"
    classes: int = 4
    videos_per_class: int = 20
    val_videos_per_class: int = 5
    height: int = 64
    width: int = 80
    fps: int = 16
    frames: int = 32
    seed: int = 0
    broken: bool = False
    splits: tuple[str, ...] = SPLITS
    intra_only: bool = True  # every frame a keyframe; False: the encoder's usual long GOP, as in the wild
    object_size: float | None = None  # motion: the object's extent / the frame's short side (default 0.24-0.36)
    speed: float | None = None  # motion, 2 or 4 classes: px per frame, wrapping (default: one 45-75% crossing)

    def validate(self) -> None:
        if self.kind not in ("motion", "appearance"):
            raise ValueError(f"--kind must be 'motion' or 'appearance', got {self.kind!r}")
        if self.kind == "motion":
            if self.classes % 2 or not 2 <= self.classes <= 2 * len(MOTION_PAIRS):
                raise ValueError(
                    f"--classes for kind 'motion' must be even and between 2 and {2 * len(MOTION_PAIRS)} "
                    f"(classes come in time-reversal pairs), got {self.classes}")
        elif not 2 <= self.classes <= len(APPEARANCE_SHAPES) * len(COLOURS):
            raise ValueError(f"--classes for kind 'appearance' must be in 2..48, got {self.classes}")
        if self.height % 2 or self.width % 2 or min(self.height, self.width) < 16:
            raise ValueError(f"--size must be even and at least 16x16 (H.264 4:2:0), got "
                             f"{self.height}x{self.width}")
        if self.frames < 2 or self.fps < 1:
            raise ValueError(f"--frames must be >= 2 and --fps >= 1, got {self.frames}, {self.fps}")
        if self.videos_per_class < 1 or self.val_videos_per_class < 0:
            raise ValueError("--videos-per-class must be >= 1 and --val-videos-per-class >= 0")
        if (self.object_size is not None or self.speed is not None) and self.kind != "motion":
            raise ValueError("--object-size and --speed apply to --kind motion only")
        if self.object_size is not None and not 0.02 <= self.object_size <= 0.5:
            raise ValueError(f"--object-size is a fraction of the frame's short side, in 0.02..0.5; got "
                             f"{self.object_size}")
        if self.speed is not None and (self.speed <= 0 or self.classes > 4):
            raise ValueError(f"--speed (px per frame, > 0, got {self.speed}) sets how fast the moving left/right/up/"
                             f"down objects go; rotation and scaling pairs have none: --classes must be 2 or 4, "
                             f"got {self.classes}")
        unknown = set(self.splits) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"--splits may hold train, val, test; got {sorted(unknown)}")


def val_count(videos_per_class: int, val_videos_per_class: int | None) -> int:
    """Validation videos per class: as asked, else a quarter of the training ones (at least 2)."""
    return max(2, videos_per_class // 4) if val_videos_per_class is None else val_videos_per_class


def class_names(kind: str, classes: int) -> list[str]:
    """Class names in generation order; motion twins are adjacent (2k, 2k+1)."""
    if kind == "motion":
        return [name for _, fwd, rev in MOTION_PAIRS[: classes // 2] for name in (fwd, rev)]
    combos = [f"{colour} {shape}" for shape in APPEARANCE_SHAPES for colour in COLOURS]
    # Spread classes over shapes first so that few classes still differ by shape and colour.
    order = [combos[(i % len(APPEARANCE_SHAPES)) * len(COLOURS) + (i * 3) % len(COLOURS)]
             for i in range(len(combos))]
    return order[:classes]


# ---------------------------------------------------------------- files

def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int, *, intra_only: bool = True,
                faststart: bool = False) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as an H.264 MP4 with PyAV (deterministic bytes)."""
    try:
        import av
    except ImportError as e:  # PyAV is in the `dev` extra
        raise RuntimeError("writing videos needs PyAV: pip install 'av==18.1.0' (in the dev extra)") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=opts) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "16", "preset": "veryfast", "bf": "0", **({"g": "1"} if intra_only else {})}
        stream.thread_count = 1  # one thread gives byte-identical files for one seed
        container.start_encoding()  # writes the header even when there are no frames
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _youtube_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[i] for i in rng.integers(len(alphabet), size=11))


@dataclass
class VideoRecord:
    label: str
    youtube_id: str
    time_start: int
    time_end: int
    split: str
    path: str  # relative to the dataset root
    broken: str = ""  # empty for a good video, else one of BROKEN_KINDS


def _write_broken(kind: str, path: Path, spec: SyntheticSpec, rng: np.random.Generator) -> None:
    if kind == "missing":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "not_video":
        path.write_text("this is a text file, not a video\n")
    elif kind == "no_frames":
        write_video(path, np.zeros((0, spec.height, spec.width, 3), np.uint8), spec.fps)
    elif kind == "truncated":
        # The header (moov at the front) still promises every frame, but most frame data is cut.
        frames = motion_video(0, False, rng, spec.height, spec.width, spec.frames)
        write_video(path, frames, spec.fps, faststart=True)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 5])
    else:
        raise ValueError(f"unknown broken kind {kind!r}")


def generate(spec: SyntheticSpec, out: str | os.PathLike,
             progress: Callable[[int, int], None] | None = None) -> list[VideoRecord]:
    """Write the dataset under ``out``; the same spec gives byte-identical files."""
    spec.validate()
    out = Path(out)
    names = class_names(spec.kind, spec.classes)
    duration = math.ceil(spec.frames / spec.fps)
    counts = {"train": spec.videos_per_class, "val": spec.val_videos_per_class,
              "test": spec.val_videos_per_class}
    jobs: list[tuple[VideoRecord, np.random.Generator, int]] = []
    for s, split in enumerate(spec.splits):
        for c, label in enumerate(names):
            for i in range(counts[split]):
                rng = np.random.default_rng([spec.seed, s, c, i])
                yid, start = _youtube_id(rng), int(rng.integers(0, 300))
                rel = f"{split}/{yid}_{start:06d}_{start + duration:06d}.mp4"
                jobs.append((VideoRecord(label, yid, start, start + duration, split, rel), rng, c))
        if spec.broken:
            for b, kind in enumerate(BROKEN_KINDS):
                rng = np.random.default_rng([spec.seed, s, 10_000 + b])
                yid, start = _youtube_id(rng), int(rng.integers(0, 300))
                rel = f"{split}/{yid}_{start:06d}_{start + duration:06d}.mp4"
                jobs.append((VideoRecord(names[b % len(names)], yid, start, start + duration, split, rel,
                                         broken=kind), rng, -1))
    for done, (rec, rng, c) in enumerate(jobs, 1):
        path = out / rec.path
        if rec.broken:
            _write_broken(rec.broken, path, spec, rng)
        else:
            if spec.kind == "motion":
                frames = motion_video(c // 2, bool(c % 2), rng, spec.height, spec.width, spec.frames,
                                      size=spec.object_size, speed=spec.speed)
            else:
                frames = appearance_video(rec.label, rng, spec.height, spec.width, spec.frames)
            write_video(path, frames, spec.fps, intra_only=spec.intra_only)
        if progress:
            progress(done, len(jobs))
    _write_annotations(out, spec.splits, [r for r, _, _ in jobs])
    meta = {"spec": asdict(spec), "classes": names,
            "broken": [asdict(r) for r, _, _ in jobs if r.broken]}
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return [r for r, _, _ in jobs]


def _write_annotations(out: Path, splits: Sequence[str], records: list[VideoRecord]) -> None:
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split in splits:
        with open(out / "annotations" / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for r in records:
                if r.split == split:
                    writer.writerow([r.label, r.youtube_id, r.time_start, r.time_end, r.split])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--kind", choices=("motion", "appearance"), default="motion")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--videos-per-class", type=int, default=20, help="training videos per class")
    p.add_argument("--val-videos-per-class", type=int, default=None, help="default: a quarter, at least 2")
    p.add_argument("--size", default="64x80", help="HxW in pixels, even numbers (default 64x80)")
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--frames", type=int, default=32, help="frames per video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--object-size", type=float, default=None,
                   help="motion: the object's extent as a fraction of the frame's short side (default 0.24-0.36)")
    p.add_argument("--speed", type=float, default=None,
                   help="motion, 2 or 4 classes: px per frame; objects wrap at the edges (default: they cross "
                        "45-75%% of the frame once)")
    p.add_argument("--splits", default="train,val")
    p.add_argument("--broken", action="store_true",
                   help="also write broken files (missing, zero bytes, truncated, not a video, no frames)")
    args = p.parse_args(argv)
    try:
        h, w = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must look like 64x80, got {args.size!r}")
    spec = SyntheticSpec(kind=args.kind, classes=args.classes, videos_per_class=args.videos_per_class,
                         val_videos_per_class=val_count(args.videos_per_class, args.val_videos_per_class),
                         height=h, width=w, fps=args.fps, frames=args.frames, seed=args.seed,
                         object_size=args.object_size, speed=args.speed,
                         broken=args.broken, splits=tuple(s for s in args.splits.split(",") if s))
    try:
        spec.validate()
    except ValueError as e:
        p.error(str(e))

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            print(f"\r  wrote {done}/{total} videos", end="\n" if done == total else "", flush=True)

    records = generate(spec, args.out, progress)
    good = [r for r in records if not r.broken]
    print(f"synthetic '{spec.kind}' dataset in {args.out}: {spec.classes} classes, "
          f"{h}x{w} px, {spec.frames} frames at {spec.fps} fps")
    for split in spec.splits:
        n = sum(r.split == split for r in good)
        nb = sum(r.split == split and bool(r.broken) for r in records)
        print(f"  {split}: {n} videos" + (f" + {nb} broken" if nb else "")
              + f"  (annotations/{split}.csv)")
    print("  classes: " + ", ".join(class_names(spec.kind, spec.classes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
