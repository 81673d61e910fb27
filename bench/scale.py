"""What prepare's driver does besides the decoding, as the dataset grows, at S3's latency and on a
local disk.

    python bench/scale.py                                  # 1,000 to 16,000 videos, 20 ms a request
    python bench/scale.py --sizes 1000,4000 --delay-ms 30 --layouts moments --storage s3

For each storage, layout (Kinetics: 400 classes, Moments in Time: 339) and size N, a root of N
training videos, on S3 (moto, behind bench/s3proxy.py's delay, which every client pays) or in a
local folder: one small real H.264 file under N names, and annotation files of N rows. Its store
already holds every shard (a small real shard under each name), as a run killed after its last
shard leaves it: the shards' summaries saved but for the last thousand or fewer, which the resume
reads back shard by shard. Then, in a process of its own (for its peak memory), prepare's own
command runs twice on it, timed stage by stage with the S3 requests each sent: the resumed run
(index, plan, the check of which shards are written, the finalize that reads every shard back),
then the run on the complete store (nothing to do). The decoding tasks are not run:
bench/prepare.py and bench/RESULTS.md measure them. Each stage's time is fitted as a + b N and
extrapolated to Kinetics-400 (240,000 videos) and Moments in Time (800,000).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa

from bench.s3proxy import S3Proxy
from cluster.local import start_moto, stop
from pipeline import prepare
from pipeline.shards import QUARANTINE_SCHEMA, ShardSpec
from pipeline.storage import endpoint_options, write_json
from pipeline.store import phase_rows, rows_to_table, write_shard, write_table
from pipeline.synthetic import SyntheticSpec, generate

ROOT = Path(__file__).resolve().parents[1]

BUCKET = "scale"
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
CLASSES = {"kinetics": 400, "moments": 339}
FULL = {"Kinetics-400": 240_000, "Moments in Time": 800_000}
VIDEOS_PER_SHARD = 16
# The stages of prepare.main, each the function it calls, timed with the requests it sent.
STAGES = {"index": "read_dataset", "store check": "check_existing", "shard plan": "plan_shards",
          "written shards": "written_shards", "finalize": "finalize"}


def annotation_files(layout: str, n: int) -> tuple[dict[str, str], list[str]]:
    """The annotation files of ``n`` training videos and the videos' names under the root."""
    out, names = io.StringIO(), []
    w = csv.writer(out)
    if layout == "kinetics":
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for i in range(n):
            w.writerow([f"class {i % CLASSES[layout]:03d}", f"y{i:010d}", 0, 10, "train"])
            names.append(f"train/y{i:010d}_000000_000010.mp4")
        return {"annotations/train.csv": out.getvalue()}, names
    for i in range(n):
        rel = f"class_{i % CLASSES[layout]:03d}/v{i:07d}.mp4"
        w.writerow([rel, f"class_{i % CLASSES[layout]:03d}", 3, 0])
        names.append(f"training/{rel}")
    cats = "".join(f"class_{c:03d},{c}\n" for c in range(CLASSES[layout]))
    return {"trainingSet.csv": out.getvalue(), "moments_categories.txt": cats}, names


def small_files(tmp: Path) -> tuple[bytes, bytes, bytes, dict]:
    """(a small real H.264 video, a store shard of 16 such videos' rows, an empty quarantine part, and
    the shard's summary)."""
    generate(SyntheticSpec(classes=2, videos_per_class=1, val_videos_per_class=0, splits=("train",)), tmp / "v")
    video = next((tmp / "v" / "train").glob("*.mp4")).read_bytes()
    rows = [r for i in range(VIDEOS_PER_SHARD) for r in phase_rows(
        video_id=f"train/v{i}", label=i % 2, label_name=f"class {i % 2}", split="train", source="s3://x", fps=16.0,
        num_frames=32, height=64, width=80, indices=list(range(32)), jpegs=[b"\xff\xd8jpeg"] * 32, num_phases=8)]
    write_shard(rows_to_table(rows), str(tmp / "shard.parquet"))
    write_table(pa.Table.from_pylist([], schema=QUARANTINE_SCHEMA), str(tmp / "quarantine.parquet"))
    spec = ShardSpec(split="train", index=0, url=str(tmp / "shard.parquet"),
                     quarantine_url=str(tmp / "quarantine.parquet"), videos=[])
    summary = prepare.read_summary(spec, ["class 0", "class 1"], {})
    return video, (tmp / "shard.parquet").read_bytes(), (tmp / "quarantine.parquet").read_bytes(), summary


def build(put, base: str, layout: str, n: int, files: tuple[bytes, bytes, bytes, dict]) -> tuple[str, str]:
    """(root, store) under ``base`` for ``n`` videos, the store holding every shard but no manifest;
    ``put(key, bytes)`` writes a file under ``base``."""
    video, shard, quarantine, summary = files
    root, out = f"{layout}-{n}/root", f"{layout}-{n}/store"
    annotations, names = annotation_files(layout, n)
    for key, text in annotations.items():
        put(f"{root}/{key}", text.encode())
    for name in names:
        put(f"{root}/{name}", video)
    shards = -(-n // VIDEOS_PER_SHARD)
    for i in range(shards):
        put(f"{out}/train/shard-{i:05d}.parquet", shard)
        put(f"{out}/_quarantine/train-{i:05d}.parquet", quarantine)
    # The summaries the run saved, a thousand shards at a time: those of its last shards it had not
    # saved yet when it was killed, so the resume reads them back from the shards themselves.
    for start in range(0, shards - prepare.SUMMARIES_PER_FILE + 1, prepare.SUMMARIES_PER_FILE):
        saved = {f"train/shard-{i:05d}.parquet": summary for i in range(start, start + prepare.SUMMARIES_PER_FILE)}
        put(f"{out}/_summaries/{start:08d}.json", json.dumps({"summaries": saved}).encode())
    return f"{base}/{root}", f"{base}/{out}"


def local_put(folder: Path):
    def put(key: str, body: bytes) -> None:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(body)
    return put


def one(layout: str, root: str, out: str, endpoint: str | None, delay_ms: float) -> dict:
    """In this process: prepare resumed on the built store, then again on the complete store (on S3
    through the delaying proxy in front of ``endpoint``; without one, local)."""
    with S3Proxy(endpoint, delay_ms / 1000) if endpoint else contextlib.nullcontext() as proxy:
        timings: dict[str, list] = {}  # stage -> [(run, seconds, requests)] of every call
        run = "resumed"

        def requests() -> int:
            return sum(proxy.reset().values()) if proxy else 0

        def timed(stage: str, f):
            def call(*a, **k):
                requests()
                start = time.monotonic()
                try:
                    return f(*a, **k)
                finally:
                    timings.setdefault(stage, []).append((run, time.monotonic() - start, requests()))
            return call

        for stage, name in STAGES.items():
            setattr(prepare, name, timed(stage, getattr(prepare, name)))
        argv = ["--dataset", layout, "--root", root, "--out", out, "--splits", "train"]
        argv += ["--s3-endpoint", proxy.url] if proxy else []
        opts = endpoint_options(proxy.url if proxy else None)
        args = prepare.parse_args(argv)
        index = prepare.read_dataset(layout, root, splits=["train"], storage_options=opts)
        write_json(prepare.make_plan(args, index, prepare.select(index, 0)), f"{out}/_plan.json", opts)
        timings.clear()
        runs = {}
        for run in ("resumed", "complete"):
            start = time.monotonic()
            assert prepare.main(argv) == 0
            runs[run] = time.monotonic() - start
    # A stage's cost in the resumed run, all its calls (the index: once from the annotations, once
    # with the listing of the videos, where the annotations alone name their paths).
    resumed = {stage: [sum(c[1] for c in calls if c[0] == "resumed"), sum(c[2] for c in calls if c[0] == "resumed")]
               for stage, calls in timings.items()}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(layout=layout, timings=resumed, runs=runs, peak_mb=peak_mb)


def fit(ns: list[int], ys: list[float]) -> tuple[float, float]:
    """(a, b) of y = a + b n, least squares."""
    b, a = np.polyfit(np.array(ns, float), np.array(ys, float), 1)
    return float(a), float(b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,4000,16000", help="videos per root, comma-separated")
    p.add_argument("--layouts", default="kinetics,moments")
    p.add_argument("--delay-ms", type=float, default=20.0, help="added to every S3 request")
    p.add_argument("--storage", default="s3,local", help="where the roots and stores are: s3, local or both")
    p.add_argument("--one", help=argparse.SUPPRESS)  # JSON: one measurement, in a process of its own
    args = p.parse_args(argv)
    if args.one:
        job = json.loads(args.one)
        print(json.dumps(one(job["layout"], job["root"], job["out"], job["endpoint"], args.delay_ms)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        moto, endpoint = start_moto(Path(tmp), BUCKET, KEYS)
        try:
            env = {**os.environ, **KEYS}
            s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
            files = small_files(Path(tmp))
            places = {"s3": (lambda key, body: s3.put_object(Bucket=BUCKET, Key=key, Body=body), f"s3://{BUCKET}",
                             endpoint),
                      "local": (local_put(Path(tmp) / "local"), str(Path(tmp) / "local"), None)}
            for storage, layout in [(s, la) for s in args.storage.split(",") for la in args.layouts.split(",")]:
                put, base, server = places[storage]
                rows = []
                for n in sizes:
                    root, out = build(put, base, layout, n, files)
                    job = json.dumps(dict(layout=layout, root=root, out=out, endpoint=server))
                    done = subprocess.run([sys.executable, __file__, "--one", job, "--delay-ms", str(args.delay_ms)],
                                          capture_output=True, text=True, env=env)
                    if done.returncode:
                        raise SystemExit(f"scale: {layout} at {n} on {storage} failed:\n{done.stderr[-3000:]}")
                    rows.append((n, json.loads(done.stdout.strip().splitlines()[-1])))
                report(layout, rows, args.delay_ms if server else None)
        finally:
            stop(moto)
    return 0


def report(layout: str, rows: list[tuple[int, dict]], delay_ms: float | None) -> None:
    """A markdown table: each stage's time (and S3 requests) per size, its fit, and the fit at full
    size; ``delay_ms`` None: a local disk. The finalize reads back only the shards whose summaries
    were not saved: at most a file's worth whatever N, so its row gives that bound instead of a fit."""
    ns = [n for n, _ in rows]
    per_file = prepare.SUMMARIES_PER_FILE
    read_back = [-(-n // VIDEOS_PER_SHARD) % per_file for n in ns]
    where = "on a local disk" if delay_ms is None else f"at {delay_ms:g} ms a request"
    print(f"\n{layout}: prepare's driver {where} (resumed run: every shard written, "
          f"{VIDEOS_PER_SHARD} videos a shard, the summaries of the last {'/'.join(map(str, read_back))} unsaved)")
    print("| stage | " + " | ".join(f"N={n:,}" for n in ns) + " | fit | " + " | ".join(FULL) + " |")
    print("|---" * (len(ns) + 2 + len(FULL)) + "|")
    req = "" if delay_ms is None else ", {} req"
    lines = {stage: ([r["timings"][stage][0] for _, r in rows],
                     [f"{r['timings'][stage][0]:.2f} s" + req.format(r["timings"][stage][1]) for _, r in rows])
             for stage in STAGES}
    ys = [r["runs"]["complete"] for _, r in rows]
    lines["the complete run, whole"] = ys, [f"{y:.2f} s" for y in ys]
    for stage, (ys, cells) in lines.items():
        if stage == "finalize":
            per_shard = max((y / k for y, k in zip(ys, read_back, strict=True) if k), default=0.0)
            bound = f"<= {per_shard * (per_file - 1):.0f} s"
            print(f"| {stage} | " + " | ".join(cells) + f" | {per_shard * 1000:.1f} ms a shard read back | "
                  + " | ".join(bound for _ in FULL) + " |")
            continue
        a, b = fit(ns, ys)
        print(f"| {stage} | " + " | ".join(cells) + f" | {a:.2f} s + {b * 1000:.3f} ms x N | "
              + " | ".join(f"{a + b * n:.0f} s" for n in FULL.values()) + " |")
    peaks = [r["peak_mb"] for _, r in rows]
    a, b = fit(ns, peaks)
    at = [max(a + b * n, max(peaks)) for n in FULL.values()]  # a slope below zero is noise: no less than seen
    print("| driver peak memory | " + " | ".join(f"{p:.0f} MB" for p in peaks)
          + f" | {a:.0f} MB + {b * 1000:.1f} MB per 1,000 | " + " | ".join(f"{m:.0f} MB" for m in at) + " |")


if __name__ == "__main__":
    sys.exit(main())
