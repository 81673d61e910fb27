"""Dataset readers: Kinetics (CSV and per-class folders), Moments in Time, folder trees, S3 roots."""

import csv
import json

import pytest

from pipeline.datasets import DatasetError, read_dataset
from pipeline.synthetic import SyntheticSpec, generate


def touch(path, data=b"video"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def kinetics_tree(root):
    """Two splits, a quoted label with a comma, an is_cc column, a per-class folder, a missing file."""
    rows = {
        "train": [("passing American football (in game)", "aaaaaaaaaaa", 10, 20),
                  ("eating, drinking", "bbbbbbbbbbb", 0, 10),
                  ("eating, drinking", "ccccccccccc", 5, 15)],
        "val": [("abseiling", "ddddddddddd", 1, 11), ("abseiling", "eeeeeeeeeee", 3, 13)],
    }
    (root / "annotations").mkdir(parents=True)
    for split, items in rows.items():
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
            for label, yid, s, e in items:
                w.writerow([label, yid, s, e, split, 0])
    touch(root / "train" / "aaaaaaaaaaa_000010_000020.mp4")
    touch(root / "train" / "eating, drinking" / "bbbbbbbbbbb_000000_000010.mp4")  # per-class layout
    # ccccccccccc is missing
    touch(root / "val" / "ddddddddddd_000001_000011.mkv")
    touch(root / "val" / "eeeeeeeeeee_000003_000013.mp4")
    return rows


def test_kinetics_csv_with_quoted_labels_and_missing_files(tmp_path):
    kinetics_tree(tmp_path)
    raw = (tmp_path / "annotations" / "train.csv").read_text()
    assert '"eating, drinking"' in raw  # the real format quotes such labels
    index = read_dataset("kinetics", str(tmp_path))
    assert index.classes == ["abseiling", "eating, drinking", "passing American football (in game)"]
    by_id = {it.video_id: it for it in index.items}
    assert sorted(by_id) == ["train/aaaaaaaaaaa_000010_000020", "train/bbbbbbbbbbb_000000_000010",
                             "train/ccccccccccc_000005_000015", "val/ddddddddddd_000001_000011",
                             "val/eeeeeeeeeee_000003_000013"]
    per_class = by_id["train/bbbbbbbbbbb_000000_000010"]
    assert per_class.path.endswith("eating, drinking/bbbbbbbbbbb_000000_000010.mp4")
    assert by_id["train/bbbbbbbbbbb_000000_000010"].label_index == 1
    assert by_id["val/ddddddddddd_000001_000011"].path.endswith(".mkv")
    assert [it.video_id for it in index.missing()] == ["train/ccccccccccc_000005_000015"]
    only_val = read_dataset("kinetics", str(tmp_path), splits=["val"])
    assert {it.split for it in only_val.items} == {"val"} and only_val.classes == index.classes


def test_kinetics_reads_the_synthetic_dataset(tmp_path):
    generate(SyntheticSpec(classes=2, videos_per_class=2, val_videos_per_class=1, height=32, width=40,
                           frames=8, broken=True), tmp_path)
    index = read_dataset("kinetics", str(tmp_path))
    meta = json.loads((tmp_path / "synthetic.json").read_text())
    assert index.classes == sorted(meta["classes"])
    assert len(index.items) == 2 * (2 + 1) + 2 * 5
    missing = {b["path"].removesuffix(".mp4") for b in meta["broken"] if b["broken"] == "missing"}
    assert {it.video_id for it in index.missing()} == missing


@pytest.mark.parametrize("problem, message", [
    ("no_root", "does not exist"),
    ("no_annotations", "no annotations/ folder"),
    ("bad_header", "lacks column"),
    ("bad_time", "line 2"),
    ("no_split", r"split\(s\) test not found"),
])
def test_kinetics_errors_name_the_path(tmp_path, problem, message):
    kinetics_tree(tmp_path / "k")
    root = tmp_path / "k"
    splits = None
    if problem == "no_root":
        root = tmp_path / "nope"
    elif problem == "no_annotations":
        root = tmp_path / "k" / "train"
    elif problem == "bad_header":
        (root / "annotations" / "train.csv").write_text("name,id\nx,y\n")
    elif problem == "bad_time":
        header = "label,youtube_id,time_start,time_end,split\n"
        (root / "annotations" / "val.csv").write_text(header + "a,b,x,1,val\n")
    else:
        splits = ["test"]
    with pytest.raises(DatasetError, match=message) as err:
        read_dataset("kinetics", str(root), splits=splits)
    assert str(root) in str(err.value)


def test_moments_layout(tmp_path):
    (tmp_path / "moments_categories.txt").write_text("clapping,0\nrunning,1\nopening,2\n")
    (tmp_path / "trainingSet.csv").write_text(
        "clapping/a.mp4,clapping,3,0\nrunning/b.mp4,running,2,1\nrunning/c.mp4,running,3,0\n")
    (tmp_path / "validationSet.csv").write_text("opening/d.mp4,opening,3,0\n")
    for rel in ("training/clapping/a.mp4", "training/running/b.mp4", "validation/opening/d.mp4"):
        touch(tmp_path / rel)
    index = read_dataset("moments", str(tmp_path))
    assert index.classes == ["clapping", "running", "opening"]  # the file's own indices
    assert [(it.video_id, it.label_index, it.exists) for it in index.items] == [
        ("train/clapping/a", 0, True), ("train/running/b", 1, True), ("train/running/c", 1, False),
        ("val/opening/d", 2, True)]
    (tmp_path / "validationSet.csv").write_text("opening/d.mp4,dancing,3,0\n")
    with pytest.raises(DatasetError, match="validationSet.csv line 1"):
        read_dataset("moments", str(tmp_path))
    (tmp_path / "moments_categories.txt").unlink()
    with pytest.raises(DatasetError, match="category file .*moments_categories.txt is missing"):
        read_dataset("moments", str(tmp_path))


@pytest.mark.parametrize("with_splits", [True, False])
def test_folder_layouts(tmp_path, with_splits):
    prefix = "train/" if with_splits else ""
    for rel in ("cat/1.mp4", "cat/2.avi", "dog/x/3.webm", "dog/notes.txt"):
        touch(tmp_path / f"{prefix}{rel}")
    if with_splits:
        touch(tmp_path / "validation" / "dog" / "4.mp4")
    index = read_dataset("folder", str(tmp_path))
    assert index.classes == ["cat", "dog"]
    got = sorted((it.split, it.video_id, it.label) for it in index.items)
    expected = [("train", f"{prefix}cat/1", "cat"), ("train", f"{prefix}cat/2", "cat"),
                ("train", f"{prefix}dog/x/3", "dog")]
    if with_splits:
        expected.append(("val", "validation/dog/4", "dog"))
    assert got == sorted(expected)


def test_kinetics_root_on_s3(s3_server, tmp_path):
    import s3fs

    kinetics_tree(tmp_path)
    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    fs.put(str(tmp_path) + "/", f"{s3_server.bucket}/k400/", recursive=True)
    index = read_dataset("kinetics", f"s3://{s3_server.bucket}/k400",
                         storage_options=s3_server.storage_options())
    assert len(index.items) == 5 and len(index.missing()) == 1
    assert all(it.path.startswith(f"s3://{s3_server.bucket}/k400/") for it in index.items)
