"""Prepare throughput with 1 and 2 workers, store bytes per video, and bytes read per training clip.

    python bench/prepare.py                       # 16 synthetic videos, 360x480, 96 frames
    python bench/prepare.py --videos 64 --frames 300 --workers 1,2,4

Writes a synthetic dataset (short side above --short-side, so the resize path runs), prepares it
once per worker count on one Ray instance (its start-up not timed), and prints videos/s and frames/s. Then, for the
paper's sampling (8 frames at stride 8), it compares bytes read per clip with the clip's own
JPEG bytes: the loader reads the one phase row a clip lies in (train/data.py), versus one row per
whole video, which a clip would read whole. (bench/batches.py measures what the loader reads.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from pipeline.prepare import main as prepare
from pipeline.session import connect_ray
from pipeline.storage import read_table
from pipeline.store import Store
from pipeline.synthetic import SyntheticSpec, generate


def clip_bytes(store: Store, split: str, clip_len: int) -> tuple[float, float, float]:
    """(clip JPEG bytes, bytes read per clip with phase rows, bytes read per clip with whole-video rows)."""
    own, phase_read, video_read, clips = 0.0, 0.0, 0.0, 0
    video_bytes: dict[str, int] = {}
    rows = [r for url in store.shard_urls(split) for r in read_table(url, store.storage_options).to_pylist()]
    for r in rows:
        video_bytes[r["video_id"]] = video_bytes.get(r["video_id"], 0) + sum(map(len, r["frames"]))
    for r in rows:  # a clip in each row, as likely as in any other
        sizes = [len(f) for f in r["frames"]]
        own += sum(sizes[i % len(sizes)] for i in range(clip_len))
        phase_read += sum(sizes)
        video_read += video_bytes[r["video_id"]]
        clips += 1
    return own / clips, phase_read / clips, video_read / clips


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=16, help="training videos (spread over 4 classes)")
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--size", default="360x480")
    p.add_argument("--short-side", type=int, default=320)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)
    h, w = (int(x) for x in args.size.split("x"))
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-prepare-"))
    start = time.monotonic()
    generate(SyntheticSpec(classes=4, videos_per_class=max(1, args.videos // 4), val_videos_per_class=0,
                           height=h, width=w, frames=args.frames, fps=25, splits=("train",)), work / "src")
    print(f"synthetic source: {args.videos} videos of {args.frames} frames at {h}x{w} "
          f"({time.monotonic() - start:.1f}s to write)")
    connect_ray(None, 0)  # once, so that Ray's start-up is not timed
    print(f"{'workers':>7} {'seconds':>8} {'videos/s':>9} {'frames/s':>9} {'MB/video':>9}")
    store = None
    for n in (int(x) for x in args.workers.split(",")):
        out = work / f"store-{n}"
        t = time.monotonic()
        prepare(["--dataset", "kinetics", "--root", str(work / "src"), "--out", str(out), "--workers", str(n),
                 "--short-side", str(args.short_side), "--videos-per-shard", "2", "--overwrite"])
        sec = time.monotonic() - t
        store = Store(str(out))
        s = store.manifest["splits"]["train"]
        print(f"{n:7d} {sec:8.1f} {s['videos'] / sec:9.2f} {s['frames'] / sec:9.1f} "
              f"{s['bytes'] / s['videos'] / 1e6:9.2f}")
    own, phase, whole = clip_bytes(store, "train", 8)
    print(f"\nbytes read per 8-frame stride-8 training clip (clip's own JPEG bytes {own / 1e3:.1f} KB):")
    print(f"  phase rows (this store): {phase / 1e3:8.1f} KB  = {phase / own:.2f}x the clip")
    print(f"  one row per video:       {whole / 1e3:8.1f} KB  = {whole / own:.2f}x the clip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
