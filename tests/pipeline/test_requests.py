"""The S3 requests of prepare's driver, counted at two sizes 16x apart through a proxy in front of moto:
the Moments and Kinetics indexes, the check of which shards are written, and the finalize. None may
ask per video or per shard: a listing answers 1,000 names a request, so a size 16x larger may cost
at most a page more. (bench/scale.py measures the time of each stage at S3's latency.)"""

from __future__ import annotations

import csv
import io

import boto3
import pytest

from pipeline import prepare
from pipeline.datasets import DatasetIndex, read_dataset
from pipeline.prepare import finalize, save_summaries, written_shards
from pipeline.shards import ShardSpec
from pipeline.storage import endpoint_options, write_json

SIZES = (40, 640)
MISSING = 3  # annotated videos with no file


def allowed_growth(counts: list[int]) -> bool:
    return counts[1] - counts[0] <= 1 + (SIZES[1] - SIZES[0]) // 1000


@pytest.fixture
def proxy(s3_server, bench_script):
    with bench_script("s3proxy").S3Proxy(s3_server.endpoint_url, delay_s=0) as p:
        yield p


def csv_text(rows: list[list]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def make_root(s3, bucket: str, prefix: str, layout: str, n: int) -> None:
    """A root of ``n`` training videos (the last MISSING not uploaded) in ``layout``: 1-byte files,
    as the index reads names, not videos."""
    names = [f"abseiling/video{i:05d}.mp4" if layout == "moments" else f"yt{i:09d}_000000_000010.mp4"
             for i in range(n)]
    if layout == "moments":
        files = {"moments_categories.txt": "abseiling,0\n",
                 "trainingSet.csv": csv_text([[name, "abseiling", 3, 0] for name in names])}
        folder = "training"
    else:
        files = {"annotations/train.csv": csv_text([["label", "youtube_id", "time_start", "time_end", "split"]] +
                                                   [["abseiling", f"yt{i:09d}", 0, 10, "train"] for i in range(n)])}
        folder = "train"
    files.update({f"{folder}/{name}": "x" for name in names[:-MISSING]})
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body.encode())


@pytest.mark.parametrize("layout", ["moments", "kinetics"])
def test_an_index_asks_per_listing_page_not_per_video(layout, s3_server, proxy):
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    counts = []
    for n in SIZES:
        make_root(s3, s3_server.bucket, f"{layout}-{n}", layout, n)
        proxy.reset()
        index = read_dataset(layout, f"s3://{s3_server.bucket}/{layout}-{n}", splits=["train"],
                             storage_options=endpoint_options(proxy.url))
        counts.append(sum(proxy.reset().values()))
        assert len(index.items) == n and len(index.missing()) == MISSING
    assert allowed_growth(counts), f"{layout} index: {counts} requests for {SIZES} videos"


def test_planning_and_finalize_ask_per_listing_page_not_per_shard(s3_server, proxy):
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    opts = endpoint_options(proxy.url)
    planning, finalizing = [], []
    for n in SIZES:
        out = f"s3://{s3_server.bucket}/store-{n}"
        shards = [ShardSpec(split="train", index=i, url=f"{out}/train/shard-{i:05d}.parquet",
                            quarantine_url=f"{out}/_quarantine/train-{i:05d}.parquet", videos=[]) for i in range(n)]
        for s in shards[:-MISSING]:  # a resumed run: all but the last shards written
            s3.put_object(Bucket=s3_server.bucket, Key=s.url.removeprefix(f"s3://{s3_server.bucket}/"), Body=b"x")
        proxy.reset()
        assert written_shards(out, {"train"}, opts) == {s.url for s in shards[:-MISSING]}
        planning.append(sum(proxy.reset().values()))
        # The shards' summaries, as the decoding tasks return them to the driver: this run's, or those an
        # earlier run saved.
        summaries = {s.url.removeprefix(f"{out}/"): dict(quarantine=[], per_class={"abseiling": 2}, rows=16,
                                                         frames=64, bytes=1000) for s in shards}
        index = DatasetIndex("kinetics", out, ["abseiling"])
        for this_run in (summaries, {}):
            if not this_run:
                save_summaries(out, summaries, opts)
            proxy.reset()
            manifest = finalize(out, shards, [], index, {}, opts, this_run)
            finalizing.append(sum(proxy.reset().values()))
            assert manifest["splits"]["train"]["videos"] == 2 * n and len(manifest["splits"]["train"]["shards"]) == n
    assert allowed_growth(planning), f"which shards are written: {planning} requests for {SIZES} shards"
    fresh, resumed = finalizing[0::2], finalizing[1::2]
    assert allowed_growth(fresh) and allowed_growth(resumed), f"finalize: {fresh}, resumed {resumed}, for {SIZES}"


def test_prepare_on_a_complete_moments_store_lists_no_videos(s3_server, proxy, capsys):
    """Nothing to do: the annotations alone tell that the store was prepared from these inputs."""
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    opts = endpoint_options(proxy.url)
    counts = []
    for n in SIZES:
        root, out = f"s3://{s3_server.bucket}/done-{n}", f"s3://{s3_server.bucket}/done-{n}-store"
        make_root(s3, s3_server.bucket, f"done-{n}", "moments", n)
        argv = ["--dataset", "moments", "--root", root, "--out", out, "--splits", "train", "--s3-endpoint", proxy.url]
        index = read_dataset("moments", root, splits=["train"], storage_options=opts)
        write_json(prepare.make_plan(prepare.parse_args(argv), index, prepare.select(index, 0)), f"{out}/_plan.json",
                   opts)
        write_json({"splits": {}}, f"{out}/manifest.json", opts)
        proxy.reset()
        assert prepare.main(argv) == 0
        assert not [path for kind, path in proxy.seen if kind == "LIST" and "/training" in path]
        counts.append(sum(proxy.reset().values()))
        assert "is complete for these inputs and settings; nothing to do" in capsys.readouterr().out
    assert counts[0] == counts[1] < 15, f"prepare on a complete store: {counts} requests for {SIZES} videos"
