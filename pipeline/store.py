"""The frame store: its row layout, its shard writes and its reader (files through pipeline/storage.py).

One row per (video, temporal phase): with a training sampling stride of P stored frames, the
row of phase p holds the video's stored frames p, p+P, p+2P, ... - every frame that any clip
sampled at stride P starting at phase p needs, and nothing else. A training clip (8 frames at
stride 8) is 8 consecutive entries of one row, so a training read is one row, not a video.

Each row is a Parquet row group of its own, so one row can be read without the rest of its
shard, and the shard's footer holds a directory of its rows (video, label, phase, length, frame
size): a reader opens the footer once and reads exactly the rows it draws (train/data.py).
Rows carry the video's metadata so that any row stands alone. JPEG bytes are stored
uncompressed (they are compressed already). A shard appears atomically (``storage.atomic_write``).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage import arrow_filesystem, atomic_write, filesystem, open_ranged, read_json, read_table

# v2: one row group per store row, a row directory in each shard's footer, shards of shuffled videos.
SCHEMA_VERSION = 2
ROW_GROUP_BYTES = 64 << 20
DIRECTORY_KEY = b"cost.rows"  # the shard footer's row directory: JSON, one list of DIRECTORY fields per row
DIRECTORY = ("video_id", "label", "phase", "length", "height", "width")

SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("split", pa.string()),
    ("source", pa.string()),
    ("fps", pa.float32()),
    ("num_frames", pa.int32()),  # frames in the source video
    ("height", pa.int32()),  # of the stored frames
    ("width", pa.int32()),
    ("phase", pa.int16()),
    ("num_phases", pa.int16()),
    ("frame_index", pa.list_(pa.int32())),  # source frame index of each frame in this row
    ("frames", pa.list_(pa.binary())),  # JPEG bytes
])


def phase_rows(*, video_id: str, label: int, label_name: str, split: str, source: str, fps: float,
               num_frames: int, height: int, width: int, indices: Sequence[int], jpegs: Sequence[bytes],
               num_phases: int) -> list[dict]:
    """Split one video's stored frames into ``num_phases`` rows (fewer when it has fewer frames)."""
    if num_phases < 1:
        raise ValueError(f"num_phases must be >= 1, got {num_phases}")
    if len(indices) != len(jpegs):
        raise ValueError(f"{video_id}: {len(indices)} frame indices but {len(jpegs)} frames")
    meta = dict(video_id=video_id, label=label, label_name=label_name, split=split, source=source,
                fps=fps, num_frames=num_frames, height=height, width=width, num_phases=num_phases)
    return [dict(meta, phase=p, frame_index=list(indices[p::num_phases]), frames=list(jpegs[p::num_phases]))
            for p in range(min(num_phases, len(jpegs)))]


def rows_to_table(rows: Sequence[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


def write_table(table: pa.Table, url: str, storage_options: dict | None = None, row_group_size: int = 0) -> int:
    """Any table as one Parquet file, atomically; JPEG bytes stay uncompressed, the rest zstd. Row
    groups of ``row_group_size`` rows, by default as many as fit in ROW_GROUP_BYTES."""
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    options = dict(row_group_size=row_group_size or max(1, ROW_GROUP_BYTES // row_bytes),
                   compression={n: ("none" if n == "frames" else "zstd") for n in table.column_names})
    return atomic_write(url, lambda f: pq.write_table(table, f, **options), storage_options)


def write_shard(table: pa.Table, url: str, storage_options: dict | None = None) -> int:
    """A shard of store rows at ``url``, atomically, one row group per row, with its row directory;
    returns the bytes written."""
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"shard {url}: table schema does not match the store schema v{SCHEMA_VERSION}:\n"
                         f"{table.schema}")
    lengths = pc.list_value_length(table.column("frames")).to_pylist()
    columns = [table.column(n).to_pylist() if n != "length" else lengths for n in DIRECTORY]
    directory = json.dumps([list(r) for r in zip(*columns, strict=True)], separators=(",", ":"))
    return write_table(table.replace_schema_metadata({DIRECTORY_KEY: directory}), url, storage_options,
                       row_group_size=1)


def shard_directory(shard: pq.ParquetFile) -> list[dict]:
    """The rows of an open shard, from its footer: row i (row group i) as a dict of DIRECTORY fields."""
    return [dict(zip(DIRECTORY, r, strict=True)) for r in json.loads(shard.schema_arrow.metadata[DIRECTORY_KEY])]


def open_shard(url: str, storage_options: dict | None = None, expected_bytes: int | None = None) -> IO[bytes]:
    """A shard opened for ranged reads (``storage.open_ranged``). ``expected_bytes``, its size in the
    manifest that a reader started with: a shard of another size was written since (StoreChanged)."""
    f = open_ranged(url, storage_options)
    size = f.seek(0, os.SEEK_END)  # known at open: no request
    f.seek(0)
    if expected_bytes is not None and size != expected_bytes:
        f.close()
        raise StoreChanged(errno.ESTALE, f"{url} is {size} bytes, not the {expected_bytes} of the store's "
                                         "manifest when the run started: the store was prepared again since")
    return f


class StoreError(ValueError):
    """The store is missing, incomplete or asked for something it does not hold."""


class StoreChanged(OSError):
    """A shard is not the one the store's manifest named when reading began: the store was prepared
    again meanwhile, and what was read before and after belong to two stores."""


class Store:
    """Read a prepared frame store (local or ``s3://``): manifest, classes, splits and rows.

        store = Store("s3://bucket/k400-store", {"client_kwargs": {"endpoint_url": ...}})
        ds = store.dataset("train")        # a Ray Dataset of store rows, streamed from Parquet
        row = store.row("val/abc_000001_000011", phase=0)
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url, self.storage_options = url.rstrip("/"), storage_options or {}
        manifest = read_json(f"{self.url}/manifest.json", self.storage_options)
        if manifest is None:
            raise StoreError(f"{self.url} holds no manifest.json: it is not a complete frame store "
                             "(run pipeline/prepare.py, or re-run it to finish an interrupted one)")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{self.url}: store schema v{manifest.get('schema_version')} is not "
                             f"v{SCHEMA_VERSION}, which this code reads; prepare it again")
        self.manifest = manifest

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def splits(self) -> list[str]:
        return sorted(self.manifest["splits"])

    def shard_urls(self, split: str) -> list[str]:
        if split not in self.manifest["splits"]:
            raise StoreError(f"{self.url} has no split {split!r}; it has {', '.join(self.splits)}")
        return [f"{self.url}/{name}" for name in self.manifest["splits"][split]["shards"]]

    def shard_bytes(self, split: str) -> list[int | None]:
        """The size of each of ``shard_urls(split)`` as prepared (None in stores made before it was kept)."""
        entry = self.manifest["splits"][split]
        return entry.get("shard_bytes") or [None] * len(entry["shards"])

    def dataset(self, split: str, columns: Sequence[str] | None = None):  # -> ray.data.Dataset
        import ray.data

        fs, _ = arrow_filesystem(self.url, self.storage_options)
        paths = [filesystem(u, self.storage_options)[1] for u in self.shard_urls(split)]
        ds = ray.data.read_parquet(paths, filesystem=fs)
        return ds.select_columns(list(columns)) if columns else ds  # pushed down into the read

    def row(self, video_id: str, phase: int = 0) -> dict:
        """One row by video id and phase (a scan of the split's shards: for tests and prediction)."""
        for split in self.splits:
            for url in self.shard_urls(split):
                table = read_table(url, self.storage_options,
                                   filters=[("video_id", "=", video_id), ("phase", "=", phase)])
                if table.num_rows:
                    return table.to_pylist()[0]
        raise StoreError(f"{self.url} has no row for video {video_id!r} phase {phase}")

    def quarantine(self) -> pa.Table:
        return read_table(f"{self.url}/quarantine.parquet", self.storage_options)
