"""bench/scale.py at a tiny size: each stage of prepare's driver timed with its requests, on S3 behind
the delaying proxy and on a local disk, and a fit; the resumed run reads back only the shards whose
summaries were unsaved."""

import pytest


@pytest.mark.slow
def test_scale_benchmark_prints_its_tables(capsys, bench_script):
    bench = bench_script("scale")
    assert bench.main(["--sizes", "48,96", "--layouts", "moments", "--delay-ms", "5"]) == 0
    out = capsys.readouterr().out
    tables = {}  # its heading -> its rows by stage
    for line in out.splitlines():
        if line.startswith("moments: "):
            heading = line
        elif line.startswith("| "):
            tables.setdefault(heading, {})[line.split(" | ")[0].lstrip("| ")] = line
    (s3,) = [rows for heading, rows in tables.items() if "at 5 ms a request" in heading]
    (local,) = [rows for heading, rows in tables.items() if "on a local disk" in heading]
    for rows in (s3, local):
        assert {"index", "store check", "shard plan", "written shards", "finalize", "the complete run, whole",
                "driver peak memory"} <= set(rows)
        assert "ms a shard read back" in rows["finalize"]
    # 3 and 6 shards, none of their summaries saved (a file holds a thousand): each read back whole.
    assert "the summaries of the last 3/6 unsaved" in out
    assert s3["written shards"].count(", 1 req") == 2  # one listing at either size
    assert " req" not in local["index"]
