"""bench/train_throughput.py runs on CPU at a tiny size and prints a row per architecture and CoST
formulation (no timing asserted)."""


def test_train_throughput_prints_every_architecture_and_formulation(capsys, bench_script):
    bench = bench_script("train_throughput")
    argv = ["--size", "32", "--frames", "4", "--iters", "1", "--warmup", "0", "--cost-impls", "views,fold,composed"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "vs eager C2D" in out
    rows = [line.split() for line in out.splitlines() if line.split()[2:3] == ["eager"]]
    assert [r[:2] for r in rows] == [["c2d", "-"], ["c3d", "-"], ["cost_a", "views"], ["cost_a", "fold"],
                                     ["cost_a", "composed"], ["cost_b", "views"], ["cost_b", "fold"]]
    assert rows[0][4] == "1.00" and all(float(r[3]) > 0 for r in rows)
