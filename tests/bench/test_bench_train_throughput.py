"""bench/train_throughput.py runs on CPU at a tiny size and prints a row per architecture (no timing asserted)."""


def test_train_throughput_prints_every_architecture(capsys, bench_script):
    bench = bench_script("train_throughput")
    assert bench.main(["--size", "32", "--frames", "4", "--iters", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "vs eager C2D" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:2] and line.split()[1:2] == ["eager"]]
    assert [r[0] for r in rows] == ["c2d", "c3d", "cost_a", "cost_b"]
    assert rows[0][3] == "1.00" and all(float(r[2]) > 0 for r in rows)
