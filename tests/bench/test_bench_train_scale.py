"""bench/train_scale.py at tiny sizes: a training epoch's start on 2 workers, timed to each rank's first
batch with each process's peak memory, and rank 0's MLflow logging over 1,000 iterations, answered and queued."""

import pytest


@pytest.mark.slow
def test_train_scale_benchmark_prints_its_tables(capsys, bench_script, mlflow_server):
    bench = bench_script("train_scale")
    assert bench.main(["--shards", "24,48", "--kinds", "train,mlflow", "--tracking-uri", mlflow_server]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in out.splitlines()
            if line.startswith("| ")}
    for name in ("the epoch's plan", "rank 0's first batch", "rank 1's first batch", "rank 0's peak memory",
                 "rank 1's peak memory", "split coordinator's peak memory"):
        measured = [float(cell.split()[0]) for cell in rows[name][:2]]
        assert all(m >= 0 for m in measured) and "per 1,000" in rows[name][2], (name, rows[name])
    assert float(rows["rank 0's first batch"][0].split()[0]) > 0
    # 1,000 iterations at log_every 20, 5 metrics a call, logged once answered and once queued: all arrive.
    assert "50 calls, 250 points (100 of each metric logged in all)" in out
    assert rows["Kinetics-400: 160 epochs"][0] == "600,000" and rows["Kinetics-400: 160 epochs"][1] == "150,000"
