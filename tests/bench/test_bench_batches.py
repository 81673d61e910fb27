"""bench/batches.py runs end to end at a tiny size and prints batch make-up, bytes read and speed."""


def test_batches_benchmark_prints_its_figures(ray_cluster, tmp_path, capsys, bench_script):
    bench = bench_script("batches")
    assert bench.main(["--videos", "24", "--classes", "12", "--size", "48x64", "--crop", "32", "--epochs", "1",
                       "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    figures = {line.split("  ")[0]: line.split()[3] if "per clip" in line else line.split()[4]
               for line in out.splitlines() if line.startswith(("distinct", "bytes", "loader"))}
    assert set(figures) == {"distinct videos per batch", "distinct classes per batch", "bytes read per clip",
                            "loader clips/s per core"}
    assert float(figures["distinct videos per batch"]) == 8.0  # one clip per video per epoch
    assert 4 < float(figures["distinct classes per batch"]) <= 8.0
