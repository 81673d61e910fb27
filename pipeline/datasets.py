"""Read a dataset's own annotation files and layout into one list of videos.

    index = read_dataset("kinetics", "/data/kinetics400", splits=("train", "val"))
    index.items      # every annotated video: path, label, split - present on disk or not
    index.missing()  # annotated videos whose file is not there (reported, not fatal)
    index.classes    # class names; the class index is the position

Layouts (local paths or any fsspec URL such as s3://bucket/prefix):

* ``kinetics`` (400/600/700 as distributed): ``annotations/{train,val,test}.csv`` with columns
  ``label,youtube_id,time_start,time_end,split[,is_cc]`` and videos at
  ``{split}/<youtube_id>_<start:06d>_<end:06d>.<ext>`` or ``{split}/<label>/<same name>``.
  Classes: sorted label names over all annotation files present.
* ``moments`` (Moments in Time): ``moments_categories.txt`` (``name,index``), header-less
  ``trainingSet.csv`` / ``validationSet.csv`` (``<category>/<file>.mp4,<label>,...``), videos
  under ``training/`` and ``validation/`` (splits ``train`` and ``val``).
* ``folder``: ``<root>/<split>/<class>/<video>`` or ``<root>/<class>/<video>`` (split ``train``).
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from pipeline.storage import filesystem, is_local

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
FOLDER_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


class DatasetError(ValueError):
    """The dataset root or an annotation file is not what the layout expects; names the path."""


@dataclass(frozen=True)
class VideoItem:
    video_id: str  # unique in the dataset: the file's path under the root, without extension
    path: str  # full local path or URL where the video is expected
    label: str
    label_index: int
    split: str
    exists: bool = True


@dataclass
class DatasetIndex:
    dataset: str
    root: str
    classes: list[str]
    items: list[VideoItem] = field(default_factory=list)
    files_checked: bool = True  # False: every item counts as present, unchecked (read_dataset's check_files)

    def missing(self) -> list[VideoItem]:
        return [it for it in self.items if not it.exists]

    def present(self) -> list[VideoItem]:
        return [it for it in self.items if it.exists]


def read_dataset(dataset: str, root: str, *, splits: Sequence[str] | None = None,
                 storage_options: dict | None = None, check_files: bool = True) -> DatasetIndex:
    """The videos of ``splits`` (all splits when None) of a dataset laid out as ``dataset``.

    ``check_files=False``: where the annotations alone name every video's path (Moments in Time),
    the video folders are not listed and every item counts as present (``index.files_checked`` is
    then False): enough to tell whether a store was prepared from these inputs."""
    readers = {"kinetics": _kinetics, "moments": _moments, "folder": _folder}
    if dataset not in readers:
        raise DatasetError(f"unknown dataset layout {dataset!r}; choose one of {', '.join(readers)}")
    fs, base = filesystem(root, storage_options)
    if not fs.isdir(base):
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    if dataset == "moments":
        index = _moments(fs, base.rstrip("/"), set(splits) if splits else None, check_files)
    else:  # the listing is how their videos are found
        index = readers[dataset](fs, base.rstrip("/"), set(splits) if splits else None)
    index.root = root
    if not is_local(fs):  # object-store paths need their scheme back
        index.items = [replace(it, path=fs.unstrip_protocol(it.path)) for it in index.items]
    return index


def _read_text(fs, path: str, what: str) -> str:
    try:
        with fs.open(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    except FileNotFoundError as e:
        raise DatasetError(f"{what} {path} is missing") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {what} {path}: {e}") from e


def _video_files(fs, folder: str) -> dict[str, str]:
    """Every video file under ``folder`` (any depth), keyed by its file name without extension."""
    if not fs.isdir(folder):
        return {}
    files = {}
    for path in fs.find(folder):
        name = posixpath.basename(path)
        stem, ext = posixpath.splitext(name)
        if ext.lower() in VIDEO_EXTENSIONS:
            files.setdefault(stem, path)
    return files


def _kinetics(fs, root: str, splits: set[str] | None) -> DatasetIndex:
    ann_dir = f"{root}/annotations"
    if not fs.isdir(ann_dir):
        raise DatasetError(f"{root} has no annotations/ folder: a Kinetics root holds "
                           "annotations/{train,val,test}.csv and the split folders")
    tables: dict[str, list[dict]] = {}
    for path in sorted(fs.ls(ann_dir, detail=False)):
        split, ext = posixpath.splitext(posixpath.basename(path))
        if ext == ".csv":
            tables[split] = _kinetics_rows(_read_text(fs, path, "annotation file"), path)
    if not tables:
        raise DatasetError(f"{ann_dir} holds no .csv annotation files (expected train.csv, val.csv, ...)")
    classes = sorted({r["label"] for rows in tables.values() for r in rows if r["label"]})
    class_index = {c: i for i, c in enumerate(classes)}
    index = DatasetIndex("kinetics", root, classes)
    for split, rows in tables.items():
        if splits is not None and split not in splits:
            continue
        files = _video_files(fs, f"{root}/{split}")
        for r in rows:
            if not r["label"]:
                continue  # unlabelled (e.g. a test split released without labels)
            stem = f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}"
            path = files.get(stem)
            index.items.append(VideoItem(
                f"{split}/{stem}", path or f"{root}/{split}/{stem}.mp4", r["label"], class_index[r["label"]],
                split, exists=path is not None))
    _check_splits(index, splits, sorted(tables))
    return index


def _kinetics_rows(text: str, path: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in KINETICS_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"annotation file {path} lacks column(s) {', '.join(missing)}; expected the "
                           f"Kinetics header {','.join(KINETICS_COLUMNS)}[,is_cc]")
    rows = []
    for line, row in enumerate(reader, start=2):
        try:
            int(row["time_start"]), int(row["time_end"])
        except (TypeError, ValueError) as e:
            raise DatasetError(f"annotation file {path} line {line}: time_start/time_end must be whole "
                               f"seconds, got {row['time_start']!r}, {row['time_end']!r}") from e
        rows.append(row)
    return rows


def _moments(fs, root: str, splits: set[str] | None, check_files: bool = True) -> DatasetIndex:
    cat_path = f"{root}/moments_categories.txt"
    names: dict[int, str] = {}
    for line, row in enumerate(csv.reader(io.StringIO(_read_text(fs, cat_path, "category file"))), 1):
        if not row:
            continue
        try:
            names[int(row[-1])] = ",".join(row[:-1])
        except (ValueError, IndexError) as e:
            raise DatasetError(f"category file {cat_path} line {line}: expected 'name,index', "
                               f"got {row}") from e
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"category file {cat_path}: indices must run 0..{len(names) - 1}")
    classes = [names[i] for i in range(len(names))]
    class_index = {c: i for i, c in enumerate(classes)}
    index = DatasetIndex("moments", root, classes)
    for split, csv_name, folder in (("train", "trainingSet.csv", "training"),
                                    ("val", "validationSet.csv", "validation")):
        if splits is not None and split not in splits:
            continue
        ann = f"{root}/{csv_name}"
        if not fs.exists(ann):
            continue
        # One listing of the split's folder (a request per 1,000 files on S3), not a request per video.
        present = set(fs.find(f"{root}/{folder}")) if check_files and fs.isdir(f"{root}/{folder}") else set()
        for line, row in enumerate(csv.reader(io.StringIO(_read_text(fs, ann, "annotation file"))), 1):
            if not row:
                continue
            if len(row) < 2 or row[1] not in class_index:
                raise DatasetError(f"annotation file {ann} line {line}: expected '<category>/<file>.mp4,"
                                   f"<label>,...' with a label from {cat_path}, got {row[:2]}")
            rel = row[0]
            path = f"{root}/{folder}/{rel}"
            index.items.append(VideoItem(f"{split}/{posixpath.splitext(rel)[0]}", path, row[1],
                                         class_index[row[1]], split, exists=path in present or not check_files))
    _check_splits(index, splits, ["train", "val"])
    index.files_checked = check_files
    return index


def _folder(fs, root: str, splits: set[str] | None) -> DatasetIndex:
    top = sorted(p for p in fs.ls(root, detail=False) if fs.isdir(p))
    names = [posixpath.basename(p) for p in top]
    if not top:
        raise DatasetError(f"{root} holds no folders: expected <root>/<class>/<video> or "
                           "<root>/<split>/<class>/<video>")
    split_dirs = ({FOLDER_SPLITS[n]: p for n, p in zip(names, top, strict=True)}
                  if all(n in FOLDER_SPLITS for n in names) else {"train": root})
    per_split = {s: sorted(p for p in fs.ls(d, detail=False) if fs.isdir(p)) for s, d in split_dirs.items()}
    classes = sorted({posixpath.basename(p) for dirs in per_split.values() for p in dirs})
    class_index = {c: i for i, c in enumerate(classes)}
    index = DatasetIndex("folder", root, classes)
    for split, dirs in per_split.items():
        if splits is not None and split not in splits:
            continue
        for class_dir in dirs:
            label = posixpath.basename(class_dir)
            for path in sorted(fs.find(class_dir)):
                if posixpath.splitext(path)[1].lower() in VIDEO_EXTENSIONS:
                    rel = posixpath.relpath(path, root)
                    index.items.append(VideoItem(posixpath.splitext(rel)[0], path, label,
                                                 class_index[label], split))
    _check_splits(index, splits, sorted(split_dirs))
    return index


def _check_splits(index: DatasetIndex, wanted: set[str] | None, available: Iterable[str]) -> None:
    found = {it.split for it in index.items}
    absent = sorted((wanted or set()) - found)
    if absent:
        raise DatasetError(f"split(s) {', '.join(absent)} not found under {index.root}; "
                           f"this {index.dataset} root has: {', '.join(available) or 'none'}")
