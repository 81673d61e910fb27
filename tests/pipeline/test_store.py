"""Store rows: one per (video, phase), every frame exactly once, atomic shards, local and S3."""

import errno

import pyarrow.parquet as pq
import pytest

from pipeline.storage import open_ranged, read_table
from pipeline.store import SCHEMA, StoreChanged, open_shard, phase_rows, rows_to_table, shard_directory, write_shard


def video_rows(n_frames=20, num_phases=8, video_id="train/v"):
    indices = list(range(0, 2 * n_frames, 2))  # frame_step 2
    jpegs = [f"jpeg-{i}".encode() for i in indices]
    return phase_rows(video_id=video_id, label=3, label_name="abseiling", split="train", source="/d/v.mp4",
                      fps=25.0, num_frames=2 * n_frames, height=320, width=426, indices=indices, jpegs=jpegs,
                      num_phases=num_phases)


def test_each_phase_row_holds_one_stride_of_frames():
    rows = video_rows()
    assert [r["phase"] for r in rows] == list(range(8))
    assert rows[1]["frame_index"] == [2, 18, 34] and rows[1]["frames"] == [b"jpeg-2", b"jpeg-18", b"jpeg-34"]
    everything = sorted(i for r in rows for i in r["frame_index"])
    assert everything == list(range(0, 40, 2))  # every stored frame exactly once
    assert all(r["video_id"] == "train/v" and r["label"] == 3 and r["num_phases"] == 8 for r in rows)
    assert len(video_rows(n_frames=3)) == 3  # a short video has as many rows as frames
    with pytest.raises(ValueError, match="num_phases"):
        video_rows(num_phases=0)


def test_shard_round_trip_is_atomic_and_leaves_no_temp_files(tmp_path):
    table = rows_to_table(video_rows() + video_rows(video_id="train/w"))
    url = str(tmp_path / "train" / "shard-00000.parquet")
    size = write_shard(table, url)
    assert size == (tmp_path / "train" / "shard-00000.parquet").stat().st_size
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["shard-00000.parquet"]
    back = read_table(url)
    assert back.schema.equals(SCHEMA) and back.to_pylist() == table.to_pylist()
    group = pq.ParquetFile(url).metadata.row_group(0)
    codecs = {group.column(i).path_in_schema.split(".")[0]: group.column(i).compression
              for i in range(group.num_columns)}
    assert codecs["frames"] == "UNCOMPRESSED" and codecs["video_id"] == "ZSTD"  # JPEGs are compressed already


def test_each_row_is_a_row_group_listed_in_the_footer(tmp_path):
    rows = video_rows() + video_rows(video_id="train/w")
    url = str(tmp_path / "shard.parquet")
    write_shard(rows_to_table(rows), url)
    with open_ranged(url) as f:
        shard = pq.ParquetFile(f)
        directory = shard_directory(shard)
        assert shard.metadata.num_row_groups == len(rows) == len(directory)
        for i in (0, 5, len(rows) - 1):  # any row alone, as its directory entry says
            (row,) = shard.read_row_group(i).to_pylist()
            assert directory[i] == dict(video_id=row["video_id"], label=row["label"], phase=row["phase"],
                                        length=len(row["frames"]), height=row["height"], width=row["width"])
            assert row == rows[i]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_shard_of_another_size_than_expected_is_refused(where, tmp_path, s3_server):
    url, opts = str(tmp_path / "shard.parquet"), {}
    if where == "s3":
        url, opts = f"s3://{s3_server.bucket}/changed/shard.parquet", s3_server.storage_options()
    size = write_shard(rows_to_table(video_rows()), url, opts)
    for expected in (size, None):  # the manifest's size, or a store that kept none
        with open_shard(url, opts, expected) as f:
            assert len(shard_directory(pq.ParquetFile(f))) == 8
    changed = (rf"^\[Errno {errno.ESTALE}\] {url} is {size} bytes, not the {size + 1} of the store's manifest when "
               "the run started: the store was prepared again since$")
    with pytest.raises(StoreChanged, match=changed):
        open_shard(url, opts, size + 1)


def test_rejected_table_leaves_the_old_shard_intact(tmp_path):
    url = str(tmp_path / "shard.parquet")
    write_shard(rows_to_table(video_rows()), url)
    before = (tmp_path / "shard.parquet").read_bytes()
    bad = rows_to_table(video_rows()).drop_columns(["frames"])
    with pytest.raises(ValueError, match="does not match the store schema"):
        write_shard(bad.append_column("frames", bad.column("label")), url)
    assert (tmp_path / "shard.parquet").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["shard.parquet"]


def test_shard_on_s3(s3_server):
    url = f"s3://{s3_server.bucket}/store/train/shard-00000.parquet"
    table = rows_to_table(video_rows())
    write_shard(table, url, s3_server.storage_options())
    assert read_table(url, s3_server.storage_options(), columns=["video_id", "phase"]).num_rows == 8


def test_files_written_by_another_process_are_seen_after_a_listing(s3_server):
    """fsspec caches a process's listings; a checkpoint that Ray Train's workers upload after this
    process listed its folder must still be found."""
    import s3fs

    from pipeline.storage import exists, listing, write_json

    opts, run = s3_server.storage_options(), f"s3://{s3_server.bucket}/runs/late"
    write_json({"epoch": 1}, f"{run}/checkpoint_1/state.json", opts)
    assert listing(run, opts) == ["checkpoint_1"]
    other = s3fs.S3FileSystem(skip_instance_cache=True, **opts)  # another process's client
    other.pipe(f"{s3_server.bucket}/runs/late/checkpoint_2/state.json", b"{}")
    assert exists(f"{run}/checkpoint_2/state.json", opts)
    assert listing(run, opts) == ["checkpoint_1", "checkpoint_2"]


def test_node_local_paths_are_told_from_shared_ones():
    from pipeline.storage import is_node_local

    for url in ("/data/store", "relative/store", "file:///data/store", "sqlite:///home/u/mlflow.db"):
        assert is_node_local(url), url
    for url in ("s3://bucket/store", "gs://bucket/store", "http://mlflow:5000", "postgresql://db/mlflow"):
        assert not is_node_local(url), url
