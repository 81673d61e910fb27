"""View-coefficient analysis: set coefficients come out exactly; CoST(b) shares; files are valid;
``results/analyze.py --run`` and ``results/predict.py --run`` on a run logged to the MLflow test server."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.prepare import main as prepare
from pipeline.storage import read_table
from pipeline.store import Store
from results.analyze import main as analyze
from results.predict import main as predict
from train.checkpoints import save_state
from train.config import TrainConfig, load_config, to_dict
from train.models import build_model, create_model
from train.models.views import VIEWS, ViewStats
from train.plots import write_analysis

SMALL = dict(num_classes=3, blocks=(1, 1, 1, 1), width=8, pool1_t=1, pool2="none")


def set_coefficients(model) -> dict[str, np.ndarray]:
    """Each CoST(a) layer's coefficients set to known shares (different per layer)."""
    wanted = {}
    for i, (name, layer) in enumerate(model.cost_layers().items()):
        share = np.array([0.5 + 0.05 * i, 0.2, 0.3 - 0.05 * i])
        with torch.no_grad():
            layer.alpha_logits.copy_(torch.tensor(np.log(share)).float().expand_as(layer.alpha_logits))
        wanted[name] = share
    return wanted


def test_cost_a_set_coefficients_are_the_shares():
    model = build_model("cost_a", **SMALL).eval()
    layers = model.cost_layers()
    wanted = set_coefficients(model)
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


@pytest.fixture(scope="module")
def trained_run(ray_cluster, mlflow_server, tmp_path_factory) -> tuple[str, str, dict]:
    """(run id, store, wanted shares): a finished run whose best checkpoint is a tiny CoST(a) model
    with set coefficients, on a small synthetic store."""
    root = tmp_path_factory.mktemp("analyze")
    assert prepare(["--dataset", "synthetic", "--synthetic-kind", "appearance", "--classes", "3",
                    "--videos-per-class", "8", "--stride", "4", "--root", str(root / "src"),
                    "--out", str(root / "store")]) == 0
    store = Store(str(root / "store"))
    cfg = load_config(TrainConfig, Path(__file__).parents[2] / "configs" / "tiny_synthetic.yaml",
                      [f"data.store={store.url}", "model.arch=cost_a"])
    model = create_model(cfg.model, len(store.classes)).eval()
    wanted = set_coefficients(model)
    checkpoint = root / "checkpoint"
    checkpoint.mkdir()
    save_state(checkpoint, dict(model=model.state_dict(), config=to_dict(cfg), classes=store.classes,
                                store_params=store.manifest["params"]))
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("analyze-tests"), run_name="tiny-cost_a",
                            tags={"mode": "train", "arch": "cost_a", "best_checkpoint": str(checkpoint),
                                  "cost.run_name": "tiny-cost_a"})
    client.log_param(run.info.run_id, "data.s3_endpoint", "None")
    client.set_terminated(run.info.run_id)
    return run.info.run_id, store.url, wanted


def test_analyze_run_writes_and_logs_the_set_shares(trained_run, mlflow_server, tmp_path, capsys):
    run_id, store_url, wanted = trained_run
    assert analyze(["--run", run_id, "--tracking-uri", mlflow_server, "--out", str(tmp_path), "--clips", "2"]) == 0
    with open(tmp_path / "view_coefficients_layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == list(wanted) + ["mean"]
    for r in rows[:-1]:
        assert [float(r[v]) for v in VIEWS] == pytest.approx(wanted[r["layer"]], abs=1e-6)
    with open(tmp_path / "temporal_share_classes.csv") as f:
        by_class = list(csv.DictReader(f))
    val_videos = len({r["video_id"] for r in read_table(Store(store_url).shard_urls("val")[0]).to_pylist()})
    assert sum(int(r["samples"]) for r in by_class) == 2 * val_videos  # 2 clips of every val video
    assert "view shares over 4 CoST layers" in capsys.readouterr().out
    logged = {f.path for f in MlflowClient(mlflow_server).list_artifacts(run_id, "analysis")}
    assert {"analysis/view_coefficients_layers.png", "analysis/temporal_share_classes.csv"} <= logged


def test_analyze_refuses_a_run_without_a_checkpoint(mlflow_server, capsys):
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("analyze-unfinished"), run_name="unfinished")
    assert analyze(["--run", run.info.run_id, "--tracking-uri", mlflow_server, "--no-log"]) == 2
    assert "no best_checkpoint tag" in capsys.readouterr().err


def test_predict_run_prints_top_classes_and_temporal_share(trained_run, mlflow_server, capsys):
    run_id, store_url, wanted = trained_run
    video = read_table(Store(store_url).shard_urls("val")[0], columns=["source"]).column("source")[0].as_py()
    assert predict(["--run", run_id, "--tracking-uri", mlflow_server, "--top", "3", video]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{video}: ") and [line[:5] for line in out[1:4]] == ["  1. ", "  2. ", "  3. "]
    temporal = np.mean([w[1] + w[2] for w in wanted.values()])
    assert out[4].startswith(f"  temporal views: {temporal:.0%} of the coefficients")


def test_run_takes_the_name_the_console_printed(trained_run, mlflow_server, capsys):
    run_id, store_url, _ = trained_run
    video = read_table(Store(store_url).shard_urls("val")[0], columns=["source"]).column("source")[0].as_py()
    assert predict(["--run", "tiny-cost_a", "--tracking-uri", mlflow_server, "--top", "1", video]) == 0
    assert capsys.readouterr().out.startswith(f"{video}: ")
    assert predict(["--run", "no-such-run", "--tracking-uri", mlflow_server, video]) == 2
    assert "--run no-such-run: no training run of that name or id" in capsys.readouterr().err
    # The same name in a second experiment: the id, not a guess.
    client = MlflowClient(mlflow_server)
    client.create_run(client.create_experiment("analyze-twin"), tags={"mode": "train", "cost.run_name": "tiny-cost_a"})
    assert analyze(["--run", "tiny-cost_a", "--tracking-uri", mlflow_server, "--no-log"]) == 2
    assert "2 training runs have that name (experiments analyze-tests, analyze-twin)" in capsys.readouterr().err
    assert analyze(["--run", run_id, "--tracking-uri", mlflow_server, "--no-log", "--clips", "1"]) == 0
