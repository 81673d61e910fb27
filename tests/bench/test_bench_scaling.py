"""bench/scaling.py: the all-reduce bandwidth model and its table."""

import pytest


def test_the_bandwidth_model_by_hand(bench_script):
    need = bench_script("scaling").needed_gbps
    # 2 ranks: the ring sends 2 * 1/2 = 1x the 1 GB of gradients; 50% efficiency leaves 1 s exposed: 8 Gbit/s.
    assert need(1e9, 1.0, nodes=2, gpus_per_node=1, efficiency=0.5, overlap=0.0) == pytest.approx(8.0)
    # Hidden behind a backward pass of half the step, the all-reduce has 1.5 s: 2/3 of that.
    assert need(1e9, 1.0, nodes=2, gpus_per_node=1, efficiency=0.5, overlap=0.5) == pytest.approx(8 / 1.5)


def test_the_table_for_resnet50_cost_b(bench_script, capsys):
    assert bench_script("scaling").main(["--nodes", "2,8"]) == 0
    out = capsys.readouterr().out
    assert "cost_b R50: 25.1M parameters, 100 MB of fp32 gradients; step 12.3 ms" in out
    rows = {int(line.split()[0]): [float(x.replace(",", "")) for x in line.split()[1:]]
            for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert sorted(rows) == [2, 8]
    for fp32, bf16, fp32_hidden, bf16_hidden in rows.values():
        assert bf16 == pytest.approx(fp32 / 2, abs=1) and bf16_hidden == pytest.approx(fp32_hidden / 2, abs=1)
        assert fp32_hidden < fp32 / 5  # overlap with the backward pass buys most of it
    assert rows[8][0] > rows[2][0]  # the ring's 2 (P-1) / P grows towards 2
