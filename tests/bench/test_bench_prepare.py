"""bench/prepare.py runs end to end at a tiny size and prints throughput and bytes per clip."""


def test_prepare_benchmark_prints_its_table(ray_cluster, tmp_path, capsys, bench_script):
    bench = bench_script("prepare")
    assert bench.main(["--videos", "4", "--frames", "24", "--size", "48x64", "--short-side", "32",
                       "--workers", "1,2", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "videos/s" in out and "phase rows (this store)" in out and "one row per video" in out
    lines = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert [ln[0] for ln in lines] == ["1", "2"]
