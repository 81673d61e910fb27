"""prepare.py end to end on the session's Ray cluster: inputs -> store rows, manifest, quarantine,
resume after a real kill, S3 in and out."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import s3fs
import simplejpeg

from cluster.local import free_port, start_moto, stop
from pipeline.prepare import main as prepare
from pipeline.storage import read_table
from pipeline.store import Store
from pipeline.synthetic import SyntheticSpec, generate

decord = pytest.importorskip("decord")
PREPARE = str(Path(__file__).resolve().parents[2] / "pipeline" / "prepare.py")
COMMA_LABEL = "eating, drinking"


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    """Synthetic Kinetics tree (two splits, all broken kinds) with one label renamed to hold a comma."""
    root = tmp_path_factory.mktemp("k")
    generate(SyntheticSpec(classes=4, videos_per_class=3, val_videos_per_class=2, height=32, width=40, frames=16,
                           broken=True), root)
    for split in ("train", "val"):
        path = root / "annotations" / f"{split}.csv"
        rows = list(csv.reader(path.open()))
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([[COMMA_LABEL if c == "moving up" else c for c in r] for r in rows])
    assert f'"{COMMA_LABEL}"' in (root / "annotations" / "train.csv").read_text()
    return root


def expected_quarantine(root: Path) -> set:
    meta = json.loads((root / "synthetic.json").read_text())
    return {(b["path"].removesuffix(".mp4"), b["broken"]) for b in meta["broken"]}


def store_rows(store: Store) -> list[tuple]:
    rows = []
    for split in store.splits:
        for url in store.shard_urls(split):
            for r in read_table(url).to_pylist():
                rows.append((r["video_id"], r["phase"], tuple(r["frame_index"]), tuple(r["frames"])))
    return sorted(rows)


def test_kinetics_tree_prepares_into_an_exact_store(kinetics, tmp_path, ray_cluster, capsys):
    out = tmp_path / "store"
    assert prepare(["--dataset", "kinetics", "--root", str(kinetics), "--out", str(out), "--short-side", "24",
                    "--videos-per-shard", "3"]) == 0
    printed = capsys.readouterr().out
    assert "done in" in printed and " 20 videos, 320 frames" in printed and "quarantined: 10" in printed
    store = Store(str(out))
    labels = {"moving right", "moving left", "moving down", COMMA_LABEL}
    assert store.classes == sorted(labels)
    m = store.manifest["splits"]
    assert m["train"]["videos"] == 12 and m["val"]["videos"] == 8
    assert m["train"]["per_class"] == {c: 3 for c in labels} and m["val"]["per_class"] == {c: 2 for c in labels}
    assert m["train"]["frames"] == 12 * 16 and m["train"]["rows"] == 12 * 8  # 8 phases of 2 frames
    for split in store.splits:  # what a reader checks each shard against (pipeline/store.open_shard)
        assert store.shard_bytes(split) == [Path(u).stat().st_size for u in store.shard_urls(split)]
    q = store.quarantine().to_pylist()
    assert {(r["video_id"], r["reason"]) for r in q} == expected_quarantine(kinetics)
    assert all(r["detail"] for r in q)
    rows = store_rows(store)
    assert len(rows) == len({r[:2] for r in rows})  # no duplicate (video, phase)
    assert {r[0] for r in rows}.isdisjoint(v for v, _ in expected_quarantine(kinetics))
    assert store.dataset("val").count() == m["val"]["rows"]


def test_stored_frames_match_a_direct_decode(kinetics, tmp_path, ray_cluster):
    out = tmp_path / "store"
    prepare(["--dataset", "kinetics", "--root", str(kinetics), "--out", str(out), "--short-side", "24",
             "--splits", "val", "--frame-step", "2", "--stride", "8"])
    store = Store(str(out))
    vid = store.dataset("val", columns=["video_id"]).take(1)[0]["video_id"]
    rows = [store.row(vid, p) for p in range(4)]  # stride 8 / frame step 2 = 4 phases
    assert rows[1]["frame_index"] == [2, 10] and rows[0]["num_phases"] == 4
    by_index = {i: f for r in rows for i, f in zip(r["frame_index"], r["frames"], strict=True)}
    assert sorted(by_index) == list(range(0, 16, 2))
    source = kinetics / f"{vid}.mp4"
    direct = decord.VideoReader(str(source), height=24, width=30).get_batch(sorted(by_index)).asnumpy()
    stored = np.stack([simplejpeg.decode_jpeg(by_index[i]) for i in sorted(by_index)])
    assert stored.shape == direct.shape == (8, 24, 30, 3)
    luma = np.abs((stored.astype(float) - direct) @ [0.299, 0.587, 0.114])  # chroma is stored 4:2:0
    assert luma.mean() < 3.0 and np.percentile(luma, 99) < 24
    pooled = [x.reshape(8, 12, 2, 15, 2, 3).mean((2, 4)) for x in (stored, direct)]
    assert np.abs(pooled[0] - pooled[1]).mean() < 3.0


def copy_videos(kinetics: Path, dest_of) -> Counter:
    """Copy the good synthetic videos to dest_of(split, label, stem); return counts per (split, label)."""
    counts: Counter = Counter()
    broken = {p for p, _ in expected_quarantine(kinetics)}
    for split in ("train", "val"):
        for r in csv.DictReader((kinetics / "annotations" / f"{split}.csv").open()):
            stem = f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}"
            if f"{split}/{stem}" in broken:
                continue
            dest = dest_of(split, r["label"], stem)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(kinetics / split / f"{stem}.mp4", dest)
            counts[split, r["label"]] += 1
    return counts


def test_moments_tree(kinetics, tmp_path, ray_cluster):
    root = tmp_path / "mit"
    names = {"train": "training", "val": "validation"}
    counts = copy_videos(kinetics, lambda s, label, stem: root / names[s] / label.replace(", ", "_") / f"{stem}.mp4")
    classes = sorted({label for _, label in counts})
    (root / "moments_categories.txt").write_text("".join(f'"{c}",{i}\n' for i, c in enumerate(classes)))
    for split, csv_name in (("train", "trainingSet.csv"), ("val", "validationSet.csv")):
        with (root / csv_name).open("w", newline="") as f:
            w = csv.writer(f)
            for p in sorted((root / names[split]).rglob("*.mp4")):
                label = next(c for c in classes if c.replace(", ", "_") == p.parent.name)
                w.writerow([f"{p.parent.name}/{p.name}", label, 3, 0])
            w.writerow(["ghost/missing.mp4", classes[0], 3, 0])
    (root / "training" / "ghost").mkdir()
    (root / "training" / "ghost" / "bad.mp4").write_text("not a video")
    with (root / "trainingSet.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["ghost/bad.mp4", classes[0], 3, 0])
    prepare(["--dataset", "moments", "--root", str(root), "--out", str(tmp_path / "store")])
    store = Store(str(tmp_path / "store"))
    assert store.classes == classes
    for split in ("train", "val"):
        assert store.manifest["splits"][split]["per_class"] == {lbl: n for (s, lbl), n in counts.items() if s == split}
    assert sorted((r["video_id"], r["reason"]) for r in store.quarantine().to_pylist()) == [
        ("train/ghost/bad", "not_video"), ("train/ghost/missing", "missing"), ("val/ghost/missing", "missing")]


def test_folder_tree(kinetics, tmp_path, ray_cluster):
    root = tmp_path / "folder"
    counts = copy_videos(kinetics, lambda s, label, stem: root / s / label / f"{stem}.mp4")
    (root / "train" / "moving left" / "empty.mp4").write_bytes(b"")
    prepare(["--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "store"), "--workers", "1"])
    store = Store(str(tmp_path / "store"))
    assert store.manifest["splits"]["train"]["per_class"] == {lbl: n for (s, lbl), n in counts.items() if s == "train"}
    assert [(r["video_id"], r["reason"]) for r in store.quarantine().to_pylist()] == [
        ("train/moving left/empty", "zero_bytes")]


def test_relative_paths_name_the_callers_folder_on_a_running_cluster(kinetics, tmp_path, ray_cluster,
                                                                     monkeypatch):
    """The session's Ray head runs its workers in folders of its own: relative paths must still mean
    the caller's folder, as in the docs' `--root demo-output/motion --out demo-output/store`."""
    shutil.copytree(kinetics, tmp_path / "videos")
    monkeypatch.chdir(tmp_path)
    assert prepare(["--dataset", "kinetics", "--root", "videos", "--out", "store", "--splits", "val"]) == 0
    store = Store(str(tmp_path / "store"))
    assert store.manifest["root"] == str(tmp_path / "videos") and store.manifest["splits"]["val"]["videos"] > 0


def test_shards_hold_videos_shuffled_with_a_recorded_seed(kinetics, tmp_path, ray_cluster):
    root = tmp_path / "folder"
    copy_videos(kinetics, lambda s, label, stem: root / s / label / f"{stem}.mp4")  # ids start with the class

    def shard_classes(seed: int) -> list[list[str]]:
        out = tmp_path / f"store-{seed}"
        prepare(["--dataset", "folder", "--root", str(root), "--out", str(out), "--splits", "train",
                 "--videos-per-shard", "3", "--shuffle-seed", str(seed)])
        store = Store(str(out))
        assert store.manifest["params"]["shuffle_seed"] == seed
        tables = [read_table(url, columns=["label_name", "phase"]).to_pylist() for url in store.shard_urls("train")]
        return [[r["label_name"] for r in rows if r["phase"] == 0] for rows in tables]

    first, second = shard_classes(0), shard_classes(1)
    assert sorted(sum(first, [])) == sorted(sum(second, [])) and first != second
    for shards in (first, second):  # sorted ids would give 4 shards of one class each
        assert len(shards) == 4 and sum(len(set(s)) for s in shards) > 4


def test_rerun_is_a_noop_and_other_settings_are_refused(kinetics, tmp_path, ray_cluster, capsys):
    args = ["--dataset", "kinetics", "--root", str(kinetics), "--out", str(tmp_path / "s"), "--splits", "val"]
    prepare(args)
    manifest = (tmp_path / "s" / "manifest.json").read_bytes()
    capsys.readouterr()
    assert prepare(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "s" / "manifest.json").read_bytes() == manifest
    with pytest.raises(SystemExit, match="quality|params differ"):
        prepare(args + ["--quality", "70"])
    assert (tmp_path / "s" / "manifest.json").read_bytes() == manifest  # nothing was touched
    prepare(args + ["--quality", "70", "--overwrite"])
    assert Store(str(tmp_path / "s")).manifest["params"]["quality"] == 70
    with pytest.raises(SystemExit, match="does not exist"):
        prepare(["--dataset", "kinetics", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])


def test_bad_synthetic_options_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(SystemExit, match="prepare: --speed.*--classes must be 2 or 4"):
        prepare(["--dataset", "synthetic", "--classes", "6", "--speed", "1", "--root", str(tmp_path / "src"),
                 "--out", str(tmp_path / "store")])
    assert not any(tmp_path.iterdir())


def test_a_terminal_shows_a_progress_bar_and_not_rays_info_lines(kinetics, tmp_path, ray_cluster, in_terminal):
    code, out = in_terminal([sys.executable, PREPARE, "--dataset", "kinetics", "--root", str(kinetics),
                             "--videos-per-shard", "2", "--out", str(tmp_path / "store")], timeout=300)
    assert code == 0, out[-3000:]
    store = Store(str(tmp_path / "store"))
    quarantined = sum(1 for r in read_table(f"{store.url}/quarantine.parquet").to_pylist() if r["reason"] != "missing")
    videos = sum(s["videos"] for s in store.manifest["splits"].values()) + quarantined
    shards = sum(len(s["shards"]) for s in store.manifest["splits"].values())
    bar = re.findall(r"\[prepare\]: 100%\|.*?\| (\d+)/(\d+) \[[\d:]+<[\d:]+, +[\d.]+ videos/s, (\d+)/(\d+) shards, "
                     r"(\d+) quarantined\]", out)
    assert bar and bar[-1] == (str(videos), str(videos), str(shards), str(shards), str(quarantined)), out[-3000:]
    assert f"[prepare] {videos}/{videos} videos" not in out  # the line that a console without a terminal gets
    for line in ("Started a local Ray instance", "Connecting to existing Ray cluster", "Progress bars disabled",
                 "execution finished in", "authentication token"):
        assert line not in out, f"{line!r} shows without --verbose"


def test_killed_run_resumes_to_the_same_rows(kinetics, tmp_path, ray_cluster):
    base = ["--dataset", "kinetics", "--root", str(kinetics), "--videos-per-shard", "1", "--workers", "1"]
    prepare(base + ["--out", str(tmp_path / "whole")])
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, PREPARE, *base, "--out", str(killed)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while len(list(killed.glob("*/shard-*.parquet"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list(killed.glob("*/shard-*.parquet"))
    assert 3 <= len(done) < 20 and not (killed / "manifest.json").exists(), "the kill did not land part-way"
    prepare(base + ["--out", str(killed)])
    assert store_rows(Store(str(killed))) == store_rows(Store(str(tmp_path / "whole")))
    assert not list(killed.rglob("*.tmp-*"))


def test_store_and_sources_on_s3(kinetics, s3_server, ray_cluster):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    fs.put(str(kinetics) + "/", f"{s3_server.bucket}/src/", recursive=True)
    src, out = f"s3://{s3_server.bucket}/src", f"s3://{s3_server.bucket}/store"
    prepare(["--dataset", "kinetics", "--root", src, "--out", out, "--splits", "val",
             "--s3-endpoint", s3_server.endpoint_url])
    store = Store(out, s3_server.storage_options())
    assert store.manifest["splits"]["val"]["videos"] == 8
    assert {r["reason"] for r in store.quarantine().to_pylist()} == {
        "missing", "zero_bytes", "truncated", "not_video", "no_frames"}
    vid = store.dataset("val", columns=["video_id"]).take(1)[0]["video_id"]
    assert len(store.row(vid, 0)["frames"]) == 2


def test_limit_takes_the_first_videos_of_each_split(kinetics, tmp_path, ray_cluster):
    prepare(["--dataset", "kinetics", "--root", str(kinetics), "--out", str(tmp_path / "s"), "--limit", "3"])
    m = Store(str(tmp_path / "s")).manifest
    assert m["inputs"] == 6 and m["params"]["limit"] == 3
    handled = sum(s["videos"] for s in m["splits"].values()) + sum(m["quarantined"].values())
    assert handled == 6


@pytest.mark.parametrize("case", ["no credentials", "unreachable endpoint", "missing bucket", "not an S3 endpoint"])
def test_a_store_that_cannot_be_reached_is_one_line(case, kinetics, s3_server, mlflow_server, tmp_path):
    """Before any work: one line naming what is wrong and what to do, exit 1, no traceback; --verbose
    keeps the traceback."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    endpoint = s3_server.endpoint_url
    if case == "no credentials":
        none = str(tmp_path / "none")
        env = {k: v for k, v in env.items() if not k.startswith("AWS_")} | {"AWS_CONFIG_FILE": none,
                                                                            "AWS_SHARED_CREDENTIALS_FILE": none}
    elif case == "unreachable endpoint":
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    elif case == "not an S3 endpoint":
        endpoint = mlflow_server  # an HTTP server of another kind
    bucket = "no-such-bucket" if case == "missing bucket" else s3_server.bucket
    cmd = [sys.executable, PREPARE, "--dataset", "kinetics", "--root", str(kinetics),
           "--out", f"s3://{bucket}/unreached", "--s3-endpoint", endpoint]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    (line,) = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1 and line.startswith("prepare: ")
    assert {"no credentials": "no AWS credentials found", "unreachable endpoint": "cannot reach http://127.0.0.1",
            "missing bucket": "the S3 bucket 'no-such-bucket' does not exist: check its name",
            "not an S3 endpoint": "not as an S3 server does: check the endpoint"}[case] in line
    if case == "missing bucket":  # a mistyped bucket is not created
        assert not s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).exists("no-such-bucket")
    if case == "no credentials":  # (the endpoint's retries take seconds: once is enough)
        verbose = subprocess.run([*cmd, "--verbose"], env=env, capture_output=True, text=True, timeout=300)
        assert verbose.returncode == 1 and "Traceback" in verbose.stderr


@pytest.fixture(scope="module")
def refusing_s3(tmp_path_factory):
    """A moto server that checks every request against IAM (its first 3 are let through: the bucket
    ``locked`` and a user without any permission, with an access key), and that user's keys."""
    import boto3

    keys = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"  # read by moto_server as it starts
    try:
        proc, url = start_moto(tmp_path_factory.mktemp("refusing-s3"), "locked", keys)
    finally:
        del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
    try:
        iam = boto3.client("iam", endpoint_url=url, aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"], region_name=keys["AWS_DEFAULT_REGION"])
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        yield url, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        stop(proc, grace=1)


def test_a_bucket_that_refuses_the_credentials_is_one_line(kinetics, refusing_s3):
    url, keys = refusing_s3
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AWS_SESSION_TOKEN")} | keys
    done = subprocess.run([sys.executable, PREPARE, "--dataset", "kinetics", "--root", str(kinetics), "--out",
                           "s3://locked/store", "--s3-endpoint", url], env=env, capture_output=True, text=True,
                          timeout=300)
    (line,) = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1 and line == ("prepare: permission denied: s3://locked/store/_plan.json: give this "
                                             "user (or these AWS credentials) access, or choose another path")


def test_two_prepares_into_one_store_at_once_end_in_one_complete_store(kinetics, tmp_path, ray_cluster):
    """No lock: the plan is fixed by the inputs and settings, a shard appears whole, and the manifest is
    built from whichever summaries either run saved, so both runs end in the store one run makes."""
    base = ["--dataset", "kinetics", "--root", str(kinetics), "--videos-per-shard", "1", "--workers", "1"]
    prepare(base + ["--out", str(tmp_path / "alone")])
    both = [subprocess.Popen([sys.executable, PREPARE, *base, "--out", str(tmp_path / "shared")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
            for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in both]
    assert [proc.returncode for proc in both] == [0, 0], outputs
    assert not any("nothing to do" in out for out in outputs)  # both found work: they overlapped
    shared, alone = Store(str(tmp_path / "shared")), Store(str(tmp_path / "alone"))
    assert store_rows(shared) == store_rows(alone)
    assert shared.manifest["splits"] == alone.manifest["splits"]
    quarantined = [sorted((r["video_id"], r["reason"]) for r in s.quarantine().to_pylist()) for s in (shared, alone)]
    assert quarantined[0] == quarantined[1] != []  # (their details carry decord's clock)
    assert not list((tmp_path / "shared").rglob("*.tmp-*"))


def test_a_place_without_permission_is_one_line(kinetics, tmp_path, ray_cluster):
    locked = tmp_path / "locked"
    locked.mkdir()
    # Root passes any mode bits, but not an immutable folder; others are refused by the mode.
    lock, unlock = (["chattr", "+i"], ["chattr", "-i"]) if os.geteuid() == 0 else (["chmod", "500"], ["chmod", "700"])
    if subprocess.run([*lock, str(locked)], capture_output=True).returncode:
        pytest.skip("this machine cannot lock a folder here (chattr needs an ext or xfs filesystem)")
    try:
        with pytest.raises(SystemExit) as e:
            prepare(["--dataset", "kinetics", "--root", str(kinetics), "--out", str(locked / "store")])
        assert e.value.code == (f"prepare: permission denied: {locked / 'store'}: give this user (or these AWS "
                                "credentials) access, or choose another path")
    finally:
        subprocess.run([*unlock, str(locked)], check=True)


def test_a_full_disk_is_one_line_and_the_same_command_then_finishes(kinetics, tmp_path, ray_cluster, small_disk):
    disk, filler = small_disk(4, 96)  # 96 KB left; the store takes ~1.8 MB
    base = ["--dataset", "kinetics", "--root", str(kinetics), "--videos-per-shard", "1", "--workers", "1"]
    full = rf"^prepare: no space left on the device writing {disk}/store/\S+: free space .* the same command "
    with pytest.raises(SystemExit, match=full):
        prepare(base + ["--out", str(disk / "store")])
    assert not (disk / "store" / "manifest.json").exists()
    filler.unlink()
    assert prepare(base + ["--out", str(disk / "store")]) == 0  # what was written whole is kept and used
    prepare(base + ["--out", str(tmp_path / "alone")])
    assert store_rows(Store(str(disk / "store"))) == store_rows(Store(str(tmp_path / "alone")))
    assert not list((disk / "store").rglob("*.tmp-*"))
