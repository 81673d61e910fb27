"""bench/models.py runs on CPU at a tiny size and prints every architecture and formulation."""


def test_models_benchmark_prints_all_rows(capsys, bench_script):
    bench = bench_script("models")
    assert bench.main(["--size", "32", "--frames", "4", "--iters", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for row in ("c2d", "c3d", "cost_a", "cost_b", "cost_a (composed)", "CoST(a) fold", "CoST(a) composed",
                "CoST(b) views", "CoST(b) stacked", "CoST(b) fold"):
        assert f"\n{row} " in out, row
