"""The frame store's row layout and its atomic Parquet shard writes.

One row per (video, temporal phase): with a training sampling stride of P stored frames, the
row of phase p holds the video's stored frames p, p+P, p+2P, ... - every frame that any clip
sampled at stride P starting at phase p needs, and nothing else. A training read of one row
therefore serves clips (an 8-frame stride-8 clip is 8 consecutive entries of one row), and
bytes read per clip stay near the clip's own JPEG bytes instead of a whole video's.

Rows carry the video's metadata so that any row stands alone. JPEG bytes are stored
uncompressed (they are compressed already); row groups are bounded in bytes, far from Arrow's
2 GiB limits. A shard appears atomically: written under a temporary name and renamed (local),
or uploaded as one object (S3 and other object stores publish an object only when complete).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

SCHEMA_VERSION = 1
ROW_GROUP_BYTES = 64 << 20

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


def write_shard(table: pa.Table, url: str, storage_options: dict | None = None) -> int:
    """Write ``table`` as one Parquet file at ``url``, atomically; returns the bytes written."""
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"shard {url}: table schema does not match the store schema v{SCHEMA_VERSION}:\n"
                         f"{table.schema}")
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    options = dict(row_group_size=max(1, ROW_GROUP_BYTES // row_bytes),
                   compression={n: ("none" if n == "frames" else "zstd") for n in table.column_names})
    local = isinstance(fs, LocalFileSystem)
    target = f"{path}.tmp-{uuid.uuid4().hex}" if local else path
    try:
        with fs.open(target, "wb") as f:
            pq.write_table(table, f, **options)
        if local:
            os.replace(target, path)  # atomic on one file system
    finally:
        if local and os.path.exists(target):
            os.remove(target)
    return fs.size(path)


def read_shard(url: str, storage_options: dict | None = None,
               columns: Sequence[str] | None = None) -> pa.Table:
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=list(columns) if columns else None)
