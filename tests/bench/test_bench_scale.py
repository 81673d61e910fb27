"""bench/scale.py at a tiny size: each stage of prepare's driver timed with its requests, on S3 behind
the delaying proxy, and a fit; the resumed run reads back only the shards whose summaries were unsaved."""


def test_scale_benchmark_prints_its_table(capsys, bench_script):
    bench = bench_script("scale")
    assert bench.main(["--sizes", "48,96", "--layouts", "moments", "--delay-ms", "5"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert {"index", "store check", "shard plan", "written shards", "finalize", "the complete run, whole",
            "driver peak memory"} <= set(rows)
    # 3 and 6 shards, none of their summaries saved (a file holds a thousand): each read back whole.
    assert "the summaries of the last 3/6 unsaved" in out and "ms a shard read back" in rows["finalize"]
    assert rows["written shards"].count(", 1 req") == 2  # one listing at either size
