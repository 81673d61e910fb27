"""bench/loader.py runs end to end at a tiny size and prints both loaders' rates and their ratio."""


def test_loader_benchmark_prints_its_table(ray_cluster, tmp_path, capsys, bench_script):
    bench = bench_script("loader")
    assert bench.main(["--videos", "4", "--frames", "24", "--size", "48x64", "--short-side", "40", "--crop", "32",
                       "--passes", "1", "--decord-clips", "4", "--gpu-clips-per-s", "100",
                       "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line[:4]: line.split() for line in out.splitlines() if line.startswith("(")}
    assert set(rows) == {"(a) ", "(a1)", "(b) "}
    assert all(float(r[-1]) > 0 for r in rows.values())
    assert "(a) / (b) =" in out and "CPU cores of (a)" in out
