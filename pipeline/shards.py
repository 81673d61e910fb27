"""One shard of a prepare job: decode its videos into store rows, quarantine the ones that fail.

``process_shard`` is what each Ray Data task of ``prepare.py`` runs. It decodes every video of the
shard in the worker's reusable ``IsolatedDecoder`` (a crash or hang costs that video only),
copies object-store inputs to a local temporary file first (decord reads from paths), writes the
shard's quarantine part and then its data shard, each atomically. The data shard is written
last: its presence marks the shard done, so a re-run after a kill redoes exactly the shards that
are absent.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from pipeline.decode import DecodeError, reusable_decoder
from pipeline.storage import filesystem, is_local
from pipeline.store import phase_rows, rows_to_table, write_shard, write_table

QUARANTINE_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("split", pa.string()), ("label", pa.string()),
    ("label_index", pa.int32()), ("reason", pa.string()), ("detail", pa.string()),
])


@dataclass
class ShardSpec:
    split: str
    index: int
    url: str  # the data shard
    quarantine_url: str  # the shard's quarantine part
    videos: list[dict]  # VideoItem fields: video_id, path, label, label_index, split
    frame_step: int = 1
    short_side: int = 320
    quality: int = 90
    num_phases: int = 8
    timeout: float = 300.0
    store_options: dict = field(default_factory=dict)
    source_options: dict = field(default_factory=dict)


def quarantine_row(video: dict, reason: str, detail: str) -> dict:
    return dict(video_id=video["video_id"], path=video["path"], split=video["split"], label=video["label"],
                label_index=video["label_index"], reason=reason, detail=detail)


def _local_copy(path: str, options: dict, tmp: str) -> str:
    """``path`` itself when local, else a copy under ``tmp``; DecodeError('missing') if absent."""
    fs, remote = filesystem(path, options)
    if is_local(fs):
        return remote
    local = os.path.join(tmp, "video" + os.path.splitext(remote)[1])
    try:
        fs.get(remote, local)
    except FileNotFoundError as e:
        raise DecodeError("missing", f"no object at {path}") from e
    return local


def process_shard(spec: ShardSpec) -> dict:
    """Write the shard; return a summary (videos, per class, quarantined by reason and its rows, frames,
    rows, bytes, seconds)."""
    start = time.monotonic()
    rows: list[dict] = []
    quarantined: list[dict] = []
    frames = 0
    decoder = reusable_decoder(spec.timeout)
    with tempfile.TemporaryDirectory() as tmp:
        for video in spec.videos:
            try:
                local = _local_copy(video["path"], spec.source_options, tmp)
                enc = decoder.encode_video(local, frame_step=spec.frame_step, short_side=spec.short_side,
                                           quality=spec.quality)
            except DecodeError as e:
                quarantined.append(quarantine_row(video, e.reason, e.detail))
                continue
            frames += len(enc.jpegs)
            rows += phase_rows(video_id=video["video_id"], label=video["label_index"],
                               label_name=video["label"], split=video["split"], source=video["path"],
                               fps=enc.fps, num_frames=enc.num_frames, height=enc.height, width=enc.width,
                               indices=enc.indices, jpegs=enc.jpegs, num_phases=spec.num_phases)
    write_table(pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA), spec.quarantine_url,
                spec.store_options)
    size = write_shard(rows_to_table(rows), spec.url, spec.store_options)
    reasons: dict[str, int] = {}
    for q in quarantined:
        reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
    per_class = Counter(r["label_name"] for r in rows if r["phase"] == 0)  # phase 0: one row per video
    # What the manifest needs of the shard, so that prepare's driver reads nothing back per shard.
    return dict(split=spec.split, index=spec.index, videos=len(spec.videos) - len(quarantined),
                quarantined=reasons, quarantine=quarantined, per_class=dict(per_class), frames=frames, rows=len(rows),
                bytes=size, seconds=time.monotonic() - start)


def run_shard_row(row: dict) -> dict:
    """Ray Data map function: ``{"spec": JSON of a ShardSpec}`` -> ``{"summary": JSON}``. JSON keeps
    Arrow from guessing types for nested, ragged values."""
    return {"summary": json.dumps(process_shard(ShardSpec(**json.loads(row["spec"]))))}


def spec_row(spec: ShardSpec) -> dict:
    return {"spec": json.dumps(asdict(spec))}
