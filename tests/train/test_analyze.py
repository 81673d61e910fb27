"""View-coefficient analysis: set coefficients come out exactly; CoST(b) shares; files are valid."""

import csv

import numpy as np
import pytest
import torch

from train.analyze import VIEWS, ViewStats, write_analysis
from train.models import build_model

SMALL = dict(num_classes=3, blocks=(1, 1, 1, 1), width=8, pool1_t=1, pool2=False)


def test_cost_a_set_coefficients_are_the_shares():
    model = build_model("cost_a", **SMALL).eval()
    layers = model.cost_layers()
    wanted = {}
    for i, (name, layer) in enumerate(layers.items()):
        share = np.array([0.5 + 0.05 * i, 0.2, 0.3 - 0.05 * i])
        with torch.no_grad():
            layer.alpha_logits.copy_(torch.tensor(np.log(share)).float().expand_as(layer.alpha_logits))
        wanted[name] = share
    stats = ViewStats(model, 3)
    model(torch.zeros(2, 3, 4, 32, 32))
    stats.update(np.array([0, 2]))
    rows = stats.layer_rows()
    assert [r["layer"] for r in rows] == list(layers) + ["mean"]
    for r in rows[:-1]:
        assert [r[v] for v in VIEWS] == pytest.approx(wanted[r["layer"]], abs=1e-6)
    mean = np.mean(list(wanted.values()), axis=0)
    assert [rows[-1][v] for v in VIEWS] == pytest.approx(mean, abs=1e-6)
    by_class = stats.class_rows(["a", "b", "c"])
    assert [r["label"] for r in by_class] == ["a", "c"]  # classes seen only
    assert by_class[0]["temporal_share"] == pytest.approx(mean[1] + mean[2], abs=1e-6)


def test_cost_b_per_sample_shares_and_merging():
    torch.manual_seed(0)
    model = build_model("cost_b", **SMALL).eval()
    whole, a, b = ViewStats(model, 3), ViewStats(model, 3), ViewStats(model, 3)
    for stats, seed in ((a, 1), (b, 2)):
        torch.manual_seed(seed)
        model(torch.randn(3, 3, 4, 32, 32))
        stats.update(np.array([0, 1, 1]))
        whole.update(np.array([0, 1, 1]))
    a.add(b.totals())
    for r, w in zip(a.layer_rows(), whole.layer_rows(), strict=True):
        assert sum(r[v] for v in VIEWS) == pytest.approx(1.0, abs=1e-5)
        assert [r[v] for v in VIEWS] == pytest.approx([w[v] for v in VIEWS])
    assert a.samples == 6 and [r["samples"] for r in a.class_rows(["x", "y", "z"])] in ([2, 4], [4, 2])
    assert not ViewStats(build_model("c2d", **SMALL), 3)  # nothing to analyse without CoST layers


def test_write_analysis_files(tmp_path):
    model = build_model("cost_a", **SMALL).eval()
    stats = ViewStats(model, 3)
    model(torch.zeros(4, 3, 4, 32, 32))
    stats.update(np.array([0, 1, 2, 2]))
    files = write_analysis(stats, ["a", "b", "c"], tmp_path / "out")
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 1000
    layers = list(csv.DictReader(files[0].open()))
    initial = np.exp(0.7) / (np.exp(0.7) + 2 * np.exp(-0.7))  # CoST(a)'s starting H-W coefficient
    assert layers[-1]["layer"] == "mean" and float(layers[0]["H-W"]) == pytest.approx(initial, abs=1e-6)
    assert {r["label"] for r in csv.DictReader(files[2].open())} == {"a", "b", "c"}
