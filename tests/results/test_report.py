"""The comparison report: runs with known metrics on the MLflow test server give the expected rows."""

from __future__ import annotations

import csv
import uuid

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from results.report import RunResult, load_paper, main, mixed_settings, model_label, protocol_label, table
from train.plots import write_csv


def log_run(client: MlflowClient, exp: str, name: str, *, arch: str, seed: int = 0, metrics: dict,
            dataset: str = "kinetics", classes: str = "400", depth: str = "50", frames: int = 8,
            status: str = "FINISHED", mode: str = "train", lr: str = "0.005", speed=(40.0, 100.0, 110.0),
            protocol: str = "full", shared: str = "True", tested: str = "best") -> str:
    run = client.create_run(exp, run_name=name, tags={"mode": mode, "arch": arch, "dataset": dataset,
                                                      "classes": classes, "hardware": "8 x GPU"})
    params = {"name": name, "model.arch": arch, "model.depth": depth, "model.blocks": "None", "model.width": "64",
              "data.frames": str(frames), "trainer.seed": str(seed), "optim.lr": lr, "data.test_clips": "10",
              "data.test_protocol": protocol, "data.eval_short_side": "256", "model.cost_shared": shared,
              "trainer.test_checkpoint": tested}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()] +
                     [Metric("clips_per_s", v, 0, i) for i, v in enumerate(speed)])
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def accuracy(top1: float, top5: float) -> dict:
    return {"val_top1": top1 - 0.05, "val_top5": top5 - 0.05, "test_top1": top1, "test_top5": top5,
            "params_m": 24.33, "gflops": 39.0}


@pytest.fixture
def experiment(mlflow_server) -> tuple[MlflowClient, str, str]:
    client = MlflowClient(mlflow_server)
    name = f"report-{uuid.uuid4().hex[:8]}"
    return client, name, client.create_experiment(name)


def test_report_groups_runs_beside_the_papers_numbers(experiment, mlflow_server, tmp_path, capsys):
    client, name, exp = experiment
    log_run(client, exp, "k400-c2d-s0", arch="c2d", seed=0, metrics=accuracy(0.70, 0.89))
    log_run(client, exp, "k400-c2d-s1", arch="c2d", seed=1, metrics=accuracy(0.72, 0.91), tested="last")
    cost = log_run(client, exp, "k400-cost_b", arch="cost_b", metrics=accuracy(0.74, 0.92))
    log_run(client, exp, "k400-cost_b-3crop", arch="cost_b", metrics=accuracy(0.75, 0.93), protocol="three_crop")
    log_run(client, exp, "k400-cost_b-unshared", arch="cost_b", metrics=accuracy(0.73, 0.90), shared="False")
    log_run(client, exp, "mit-c3d-r101", arch="c3d", dataset="moments", classes="339", depth="101",
            metrics=accuracy(0.31, 0.58))
    log_run(client, exp, "crashed", arch="c3d", metrics=accuracy(0.1, 0.2), status="FAILED")
    log_run(client, exp, "an-eval", arch="c2d", metrics=accuracy(0.1, 0.2), mode="eval")
    layers = tmp_path / "artifacts"
    layers.mkdir()
    write_csv([{"layer": "layer1.0.conv2", "H-W": 0.5, "T-W": 0.3, "T-H": 0.2},
               {"layer": "mean", "H-W": 0.5, "T-W": 0.3, "T-H": 0.2}], layers / "view_coefficients_layers.csv")
    write_csv([{"label": "dancing", "temporal_share": 0.6, "samples": 10},
               {"label": "reading", "temporal_share": 0.3, "samples": 10}], layers / "temporal_share_classes.csv")
    client.log_artifacts(cost, str(layers), "analysis")

    out = tmp_path / "report"
    assert main(["--experiment", name, "--tracking-uri", mlflow_server, "--out", str(out)]) == 0
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["model"], r["arch"], r["kernels"], r["protocol"], r["runs"]) for r in rows] == [
        ("kinetics400", "R50", "c2d", "-", "10 x full @ 256", "2"),
        ("kinetics400", "R50", "cost_b", "shared", "10 x full @ 256", "1"),
        ("kinetics400", "R50", "cost_b", "shared", "10 x three_crop @ 256", "1"),
        ("kinetics400", "R50", "cost_b", "unshared", "10 x full @ 256", "1"),
        ("moments", "R101", "c3d", "-", "10 x full @ 256", "1")]
    c2d = rows[0]
    assert float(c2d["test_top1"]) == pytest.approx(71.0) and float(c2d["test_top1_std"]) == pytest.approx(1.41)
    assert float(c2d["val_top5"]) == pytest.approx(85.0) and float(c2d["clips_per_s"]) == pytest.approx(100.0)
    assert (c2d["paper_top1"], c2d["paper_top5"], c2d["paper_source"]) == ("71.5", "89.8", "Table 5")
    assert (rows[4]["paper_top1"], rows[4]["test_top1_std"]) == ("30.6", "")  # one run: no spread
    assert rows[1]["paper_source"] == "Tables 2, 3 and 5" and rows[3]["paper_top1"] == "73.2"  # Table 3: unshared
    assert rows[2]["paper_top1"] == ""  # tested otherwise than the paper: no paper numbers beside it
    printed = capsys.readouterr().out
    assert ("| kinetics400 | R50 | C2D | 8 | 10 x full @ 256, best/last | 2 | 24.3 | 39 | 100.0 | 66.0 ± 1.4 | "
            "85.0 ± 1.4 | 71.0 ± 1.4 | 90.0 ± 1.4 | 71.5 | 89.8 |") in printed
    assert "| kinetics400 | R50 | CoST(b) unshared | 8 | 10 x full @ 256, best | 1 |" in printed
    assert "its runs differ in trainer.test_checkpoint" in printed
    assert "view shares over 1 CoST layers: H-W 0.50, T-W 0.30, T-H 0.20 (temporal 0.50)" in printed
    assert "classes by temporal share: dancing 0.60, reading 0.30" in printed

    (report_run,) = client.search_runs([exp], "tags.mode = 'report'")
    logged = {f.path for f in client.list_artifacts(report_run.info.run_id)}
    assert {"report.md", "report.html", "report.csv", "analysis"} <= logged
    page = (out / "report.html").read_text()  # the table the UI's artifact viewer renders
    assert page.count("<tr>") == 1 + len(rows) and "<td>CoST(b) unshared</td>" in page
    assert "<td>71.0 ± 1.4</td>" in page and "softmax averaged per video" in page
    assert client.list_artifacts(report_run.info.run_id, "analysis/k400-cost_b")


def test_report_of_an_empty_or_unknown_experiment(experiment, mlflow_server, capsys):
    _, name, _ = experiment
    assert main(["--experiment", name, "--tracking-uri", mlflow_server, "--no-log"]) == 1
    assert main(["--experiment", "no-such-experiment", "--tracking-uri", mlflow_server]) == 2
    assert "no experiment 'no-such-experiment'" in capsys.readouterr().err


def test_groups_and_labels():
    def run(name: str, lr: str, blocks: str = "None") -> RunResult:
        params = {"name": name, "optim.lr": lr, "trainer.seed": name, "model.blocks": blocks, "model.width": "16"}
        key = ("synthetic", model_label(params), "c3d", 8, "-", "10 x full @ 256")
        return RunResult(name, name, key, {"test_top1": 0.5}, "", params)

    assert mixed_settings([run("a", "0.01"), run("b", "0.01")]) == []
    assert mixed_settings([run("a", "0.01"), run("b", "0.02")]) == [
        "synthetic / R? / c3d / 8 / - / 10 x full @ 256: its runs differ in optim.lr"]
    assert model_label({"model.blocks": "(1, 1, 1, 1)", "model.width": "16"}) == "blocks 1-1-1-1 w16"
    rows = table([run("a", "0.01", "(1, 1, 1, 1)")], load_paper())
    assert rows[0]["model"] == "blocks 1-1-1-1 w16" and rows[0]["paper_top1"] is None
    assert len(load_paper()) == 18  # Tables 2 and 4-7, and Table 3's two unshared rows
    assert protocol_label({"data.test_clips": "10", "data.test_protocol": "three_crop",
                           "data.eval_short_side": "256"}) == "10 x three_crop @ 256"
