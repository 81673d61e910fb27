"""Decode a video dataset once into a sharded Parquet frame store, with Ray Data.

    python pipeline/prepare.py --dataset kinetics --root /data/kinetics400 --out s3://bucket/k400-store
    python pipeline/prepare.py --dataset synthetic --root demo-output/motion --out demo-output/store

Runs on the Ray cluster named by --address or RAY_ADDRESS, else on one already running here,
else on a new local one. Writes (local path or s3://):

    STORE/_plan.json                    the inputs' fingerprint and parameters (first)
    STORE/<split>/shard-NNNNN.parquet   store rows (pipeline/store.py): one per video and phase
    STORE/_quarantine/<split>-NNNNN.parquet   per-shard quarantine parts
    STORE/_summaries/<id>.json          what the shards hold, saved a thousand shards at a time
    STORE/quarantine.parquet            every video that could not be used, with its reason
    STORE/manifest.json                 counts, classes, parameters (last: the store is complete)

Re-running the same command finishes what is missing (a killed run loses only the shards in
flight); on a complete store it is a quick no-op. Different inputs or parameters against an
existing store are refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.datasets import DatasetError, DatasetIndex, VideoItem, read_dataset
from pipeline.session import git_commit, ray_session, unshared_paths
from pipeline.shards import QUARANTINE_SCHEMA, ShardSpec, quarantine_row, run_shard_row, spec_row
from pipeline.storage import (
    TMP_MARK,
    absolute,
    endpoint_options,
    filesystem,
    is_local,
    listing,
    open_ranged,
    read_json,
    read_table,
    size,
    storage_failures,
    with_connections,
    write_json,
)
from pipeline.store import SCHEMA_VERSION, shard_directory, write_table

DATASETS = ("kinetics", "moments", "folder", "synthetic")
READ_THREADS = 64  # files read at once when a resumed run finalizes
SUMMARIES_PER_FILE = 1000  # shard summaries saved together (_summaries/): a resume reads them back per file


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", required=True, help="dataset root (local or s3://); for synthetic: where to write it")
    p.add_argument("--out", required=True, help="store location (local or s3://)")
    p.add_argument("--splits", default="", help="comma-separated, e.g. train,val (default: all)")
    p.add_argument("--frame-step", type=int, default=1, help="keep every k-th frame (default 1)")
    p.add_argument("--stride", type=int, default=8,
                   help="training sampling stride in source frames; rows group frames by its phase (default 8)")
    p.add_argument("--short-side", type=int, default=320, help="scale the short side down to this (default 320)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--videos-per-shard", type=int, default=16)
    p.add_argument("--shuffle-seed", type=int, default=0,
                   help="videos are shuffled with this seed before sharding, so that no shard holds one class")
    p.add_argument("--limit", type=int, default=0, help="first N videos per split, for trials")
    p.add_argument("--workers", type=int, default=0, help="concurrent shard tasks (default: Ray decides)")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of a local Ray instance started here")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before one video's decode is abandoned")
    p.add_argument("--s3-endpoint", default=os.environ.get("COST_S3_ENDPOINT"),
                   help="S3-compatible endpoint URL for s3:// paths (default: AWS)")
    p.add_argument("--verbose", action="store_true", help="Ray's own info lines too")
    p.add_argument("--overwrite", action="store_true", help="replace a store made from other inputs or settings")
    p.add_argument("--shared-storage", action="store_true",
                   help="local --root/--out paths are on a filesystem every Ray node mounts (NFS, EFS, ...)")
    syn = p.add_argument_group("synthetic dataset (--dataset synthetic)")
    syn.add_argument("--synthetic-kind", choices=("motion", "appearance"), default="motion")
    syn.add_argument("--classes", type=int, default=4)
    syn.add_argument("--videos-per-class", type=int, default=20)
    syn.add_argument("--synthetic-frames", type=int, default=32)
    syn.add_argument("--val-videos-per-class", type=int, default=None, help="default: a quarter, at least 2")
    syn.add_argument("--object-size", type=float, default=None,
                     help="motion: the object's extent / the frame's short side (default 0.24-0.36)")
    syn.add_argument("--speed", type=float, default=None,
                     help="motion, 2 or 4 classes: px per frame, wrapping at the edges (default: one crossing)")
    syn.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    problems = []
    if args.frame_step < 1 or args.stride % args.frame_step:
        problems.append(f"--frame-step {args.frame_step} must be >= 1 and divide --stride {args.stride}")
    if not 1 <= args.quality <= 100:
        problems.append(f"--quality must be in 1..100, got {args.quality}")
    if args.short_side < 16 or args.videos_per_shard < 1 or args.limit < 0:
        problems.append("--short-side must be >= 16, --videos-per-shard >= 1, --limit >= 0")
    if problems:
        p.error("; ".join(problems))
    args.root, args.out = absolute(args.root), absolute(args.out)  # Ray Data's workers run in other folders
    return args


def params(args: argparse.Namespace) -> dict:
    return dict(frame_step=args.frame_step, stride=args.stride, num_phases=args.stride // args.frame_step,
                short_side=args.short_side, quality=args.quality, videos_per_shard=args.videos_per_shard,
                limit=args.limit, shuffle_seed=args.shuffle_seed)


def code_version() -> str:
    commit = git_commit()
    return f"store-v{SCHEMA_VERSION}" + (f"+{commit}" if commit else "")


def select(index: DatasetIndex, limit: int) -> list[VideoItem]:
    """Every item (present or missing), ordered by split and id; the first ``limit`` per split."""
    items = sorted(index.items, key=lambda it: (it.split, it.video_id))
    if not limit:
        return items
    taken: Counter = Counter()
    out = []
    for it in items:
        if taken[it.split] < limit:
            taken[it.split] += 1
            out.append(it)
    return out


def fingerprint(items: list[VideoItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.video_id, it.path, it.label, it.split]).encode() + b"\n")
    return h.hexdigest()[:16]


def make_plan(args: argparse.Namespace, index: DatasetIndex, items: list[VideoItem]) -> dict:
    """What a store is prepared from and with (its _plan.json): another plan is another store."""
    return dict(schema_version=SCHEMA_VERSION, dataset=args.dataset, root=args.root, classes=index.classes,
                params=params(args), input_fingerprint=fingerprint(items), inputs=len(items))


def plan_shards(items: list[VideoItem], out: str, args: argparse.Namespace, opts: dict) -> list[ShardSpec]:
    """Each split's videos in an order shuffled with --shuffle-seed, cut into shards. Ids often start
    with the class (Moments in Time, folder datasets): sorted shards would each hold one class."""
    shards = []
    p = params(args)
    for split in sorted({it.split for it in items}):
        videos = [asdict(it) for it in items if it.split == split and it.exists]
        order = np.random.default_rng([args.shuffle_seed, zlib.crc32(split.encode())]).permutation(len(videos))
        videos = [videos[i] for i in order]
        for i, start in enumerate(range(0, len(videos), args.videos_per_shard)):
            shards.append(ShardSpec(
                split=split, index=i, url=f"{out}/{split}/shard-{i:05d}.parquet",
                quarantine_url=f"{out}/_quarantine/{split}-{i:05d}.parquet",
                videos=videos[start:start + args.videos_per_shard], frame_step=args.frame_step,
                short_side=args.short_side, quality=args.quality, num_phases=p["num_phases"],
                timeout=args.timeout, store_options=opts, source_options=opts))
    return shards


def run_shards(todo: list[ShardSpec], workers: int, total_videos: int, done_videos: int, out: str,
               opts: dict) -> dict[str, dict]:
    """Each shard a Ray Data task; a progress bar on a terminal (else a line every few seconds) as
    their summaries arrive, saved to the store a thousand at a time. Returns them by shard name."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.from_items([spec_row(s) for s in todo], override_num_blocks=len(todo))
    # Ray Data retries a task whose worker or node was lost, not one that raised: decoder crashes
    # end in the isolated child (a quarantined video), so nothing is retried forever.
    ds = ds.map(run_shard_row, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=workers) if workers else None)
    start = last = time.monotonic()
    videos, bad = 0, 0
    summaries: dict[str, dict] = {}
    unsaved: dict[str, dict] = {}
    name = {(s.split, s.index): s.url[len(out) + 1:] for s in todo}
    bar = tqdm(total=total_videos, initial=done_videos, unit=" videos", desc="[prepare]", dynamic_ncols=True) \
        if sys.stderr.isatty() else None
    for row in ds.iter_rows():
        s = json.loads(row["summary"])
        summaries[name[s["split"], s["index"]]] = unsaved[name[s["split"], s["index"]]] = s
        if len(unsaved) == SUMMARIES_PER_FILE:
            save_summaries(out, unsaved, opts)
            unsaved = {}
        quarantined = sum(s["quarantined"].values())
        videos += s["videos"] + quarantined
        bad += quarantined
        now = time.monotonic()
        if bar:
            bar.set_postfix_str(f"{len(summaries)}/{len(todo)} shards, {bad} quarantined", refresh=False)
            bar.update(s["videos"] + quarantined)
        elif now - last > 5 or len(summaries) == len(todo):
            rate = videos / max(now - start, 1e-9)
            print(f"[prepare] {done_videos + videos}/{total_videos} videos, {len(summaries)}/{len(todo)} "
                  f"shards, {rate:.1f} videos/s, {bad} quarantined", flush=True)
            last = now
    if bar:
        bar.close()
    if unsaved:
        save_summaries(out, unsaved, opts)
    return summaries


def save_summaries(out: str, summaries: dict[str, dict], opts: dict) -> None:
    write_json({"summaries": summaries}, f"{out}/_summaries/{uuid.uuid4().hex}.json", opts)


def saved_summaries(out: str, opts: dict) -> dict[str, dict]:
    """The shard summaries earlier runs saved, by shard name: a listing and a read per thousand shards."""
    files = [f"{out}/_summaries/{n}" for n in listing(f"{out}/_summaries", opts) if n.endswith(".json")]
    return {name: s for part in read_in_parallel(out, opts, read_json, files) for name, s in part["summaries"].items()}


def read_in_parallel(out: str, opts: dict, read, things: list) -> list:
    """``read(thing, options)`` of each of ``things`` in ``out``, READ_THREADS at a time (S3 answers each
    in 10-30 ms), through a client with room for as many requests."""
    parallel = with_connections(out, opts, READ_THREADS)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(lambda thing: read(thing, parallel), things))


def read_summary(spec: ShardSpec, classes: list[str], opts: dict) -> dict:
    """The summary of a shard written by an earlier run, read back: its quarantine part, footer and size."""
    with open_ranged(spec.url, opts) as f:
        rows = shard_directory(pq.ParquetFile(f))  # the footer alone
    per_class = Counter(classes[r["label"]] for r in rows if r["phase"] == 0)  # phase 0: one row per video
    return dict(quarantine=read_table(spec.quarantine_url, opts).to_pylist(), per_class=dict(per_class), rows=len(rows),
                frames=sum(r["length"] for r in rows), bytes=size(spec.url, opts))


def written_shards(out: str, splits: set[str], opts: dict) -> set[str]:
    """The URLs of the data shards in ``out``: a listing per split (a request per 1,000 shards on S3)."""
    return {f"{out}/{split}/{name}" for split in splits for name in listing(f"{out}/{split}", opts)}


def finalize(out: str, shards: list[ShardSpec], items: list[VideoItem], index: DatasetIndex, plan: dict,
             opts: dict, summaries: dict[str, dict]) -> dict:
    """Merge the quarantine, count what the shards hold, write the manifest last, from the shards'
    summaries: ``summaries`` (this run's, by shard name), those earlier runs saved, and for the
    shards of a run killed before it saved theirs, each read back from the shard (in parallel)."""
    summaries = {**saved_summaries(out, opts), **summaries}
    names = {s.url: s.url[len(out) + 1:] for s in shards}
    earlier = [s for s in shards if names[s.url] not in summaries]
    read = read_in_parallel(out, opts, lambda s, o: read_summary(s, index.classes, o), earlier)
    summaries.update({names[s.url]: summary for s, summary in zip(earlier, read, strict=True)})
    missing = [quarantine_row(asdict(it), "missing", "annotated, but no video file at this path")
               for it in items if not it.exists]
    quarantine = pa.Table.from_pylist([q for s in shards for q in summaries[names[s.url]]["quarantine"]] + missing,
                                      schema=QUARANTINE_SCHEMA)
    write_table(quarantine, f"{out}/quarantine.parquet", opts)
    splits: dict[str, dict] = {}
    for s in shards:
        summary = summaries[names[s.url]]
        entry = splits.setdefault(s.split, dict(videos=0, rows=0, frames=0, bytes=0, shards=[], shard_bytes=[],
                                                per_class={}))
        for label, n in summary["per_class"].items():
            entry["per_class"][label] = entry["per_class"].get(label, 0) + n
            entry["videos"] += n
        for key in ("rows", "frames", "bytes"):
            entry[key] += summary[key]
        entry["shards"].append(names[s.url])
        entry["shard_bytes"].append(summary["bytes"])  # a reader tells a shard written since by its size
    manifest = dict(plan, classes=index.classes, splits=splits, code_version=code_version(),
                    quarantined=dict(Counter(quarantine.column("reason").to_pylist())),
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json(manifest, f"{out}/manifest.json", opts)
    return manifest


def check_existing(out: str, plan: dict, overwrite: bool, opts: dict) -> str:
    """'new', 'resume' or 'complete'; a store of other inputs or settings is refused (or replaced)."""
    fs, path = filesystem(out, opts)
    old = read_json(f"{out}/_plan.json", opts)
    if old != plan and listing(out, opts):
        if not overwrite:
            what = ("is not a frame store" if old is None else "was prepared from other inputs or settings ("
                    + ", ".join(sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))) + " differ)")
            raise SystemExit(f"prepare: {out} {what}; pass --overwrite to replace it, or choose another --out")
        fs.rm(path, recursive=True)
        old = None
    if old is None:
        return "new"
    if is_local(fs):  # files a killed run was writing
        for leftover in fs.glob(f"{path}/**/*{TMP_MARK}*"):
            fs.rm(leftover)
    return "complete" if read_json(f"{out}/manifest.json", opts) is not None else "resume"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with storage_failures("prepare", args.verbose):
        return prepare(args)


def prepare(args: argparse.Namespace) -> int:
    started = time.monotonic()
    opts = endpoint_options(args.s3_endpoint)
    out = args.out.rstrip("/")
    dataset = args.dataset
    if dataset == "synthetic":
        from pipeline.synthetic import SyntheticSpec, generate, val_count

        spec = SyntheticSpec(kind=args.synthetic_kind, classes=args.classes, videos_per_class=args.videos_per_class,
                             val_videos_per_class=val_count(args.videos_per_class, args.val_videos_per_class),
                             frames=args.synthetic_frames, seed=args.seed, object_size=args.object_size,
                             speed=args.speed)
        try:
            spec.validate()
        except ValueError as e:
            raise SystemExit(f"prepare: {e}") from None
        print(f"[prepare] writing the synthetic '{spec.kind}' dataset to {args.root}", flush=True)
        generate(spec, args.root)
        dataset = "kinetics"
    splits = [s for s in args.splits.split(",") if s] or None
    try:
        # Which videos are present (a listing of every video) matters only when there is work to do.
        index = read_dataset(dataset, args.root, splits=splits, storage_options=opts, check_files=False)
        items = select(index, args.limit)
        plan = make_plan(args, index, items)
        state = check_existing(out, plan, args.overwrite, opts)
        if state == "complete":
            print(f"[prepare] {out} is complete for these inputs and settings; nothing to do")
            return 0
        if not index.files_checked:
            index = read_dataset(dataset, args.root, splits=splits, storage_options=opts)
            items = select(index, args.limit)
    except DatasetError as e:
        raise SystemExit(f"prepare: {e}") from None
    shards = plan_shards(items, out, args, opts)
    written = written_shards(out, {s.split for s in shards}, opts)
    todo = [s for s in shards if s.url not in written]
    total = sum(len(s.videos) for s in shards)
    done = total - sum(len(s.videos) for s in todo)
    with ray_session(args.address, args.num_cpus, quiet=not args.verbose) if todo else contextlib.nullcontext():
        problem = None if args.shared_storage or not todo else unshared_paths({"--root": args.root, "--out": out},
                                                                               "--shared-storage")
        if problem:
            raise SystemExit(f"prepare: {problem}")
        if state == "new":  # after the checks: a refused run leaves nothing in --out
            write_json(plan, f"{out}/_plan.json", opts)
        print(f"[prepare] {len(items)} annotated videos ({sum(not it.exists for it in items)} missing), "
              f"{len(shards)} shards, {len(todo)} to do" + (" (resuming)" if state == "resume" else ""), flush=True)
        summaries = run_shards(todo, args.workers, total, done, out, opts) if todo else {}
    manifest = finalize(out, shards, items, index, plan, opts, summaries)
    print_summary(manifest, out, time.monotonic() - started)
    return 0


def print_summary(manifest: dict, out: str, seconds: float) -> None:
    splits = manifest["splits"]
    videos = sum(s["videos"] for s in splits.values())
    frames = sum(s["frames"] for s in splits.values())
    size = sum(s["bytes"] for s in splits.values())
    print(f"[prepare] done in {seconds:.1f}s: {videos} videos, {frames} frames, {size / 1e6:.1f} MB in {out}")
    for name, s in sorted(splits.items()):
        print(f"  {name}: {s['videos']} videos in {len(s['shards'])} shards")
    bad = manifest["quarantined"]
    print(f"  quarantined: {sum(bad.values())}" + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(bad.items()))
                                                   + ") - see quarantine.parquet" if bad else ""))


if __name__ == "__main__":
    sys.exit(main())
