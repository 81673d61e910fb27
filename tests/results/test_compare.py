"""results/compare.py on the session's Ray cluster and MLflow server: two archs side by side, the
report, and a second call that trains only the member that did not finish."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import results.compare
from results.compare import main

ROOT = Path(__file__).resolve().parents[2]
# The demo's model, one short epoch of 4-frame clips.
TINY = ["data.frames=4", "data.stride=8", "data.test_clips=2", "data.clips_per_video=2", "trainer.epochs=1",
        "trainer.val_every=1", "tracking.log_model=false", "tracking.system_metrics_s=0"]


@pytest.fixture
def store(appearance_store) -> str:
    return appearance_store


def args(store: str, mlflow_server: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "tiny_synthetic.yaml"), "--archs", "c2d,c3d", "--name", "cmp",
            f"data.store={store}", f"tracking.uri={mlflow_server}", "tracking.experiment=compare",
            f"trainer.storage_path={tmp_path / 'runs'}", *TINY, *extra]


def members(uri: str) -> dict[str, object]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("compare").experiment_id
    return {r.data.tags["cost.run_name"]: r for r in client.search_runs([exp], "tags.mode = 'train'")}


def test_the_comparison_trains_each_member_once_and_reports(store, mlflow_server, tmp_path, capsys):
    assert main(args(store, mlflow_server, tmp_path)) == 0
    runs = members(mlflow_server)
    assert sorted(runs) == ["cmp-c2d-s0", "cmp-c3d-s0"]
    assert {r.data.tags["arch"] for r in runs.values()} == {"c2d", "c3d"}
    assert all(r.info.status == "FINISHED" and r.data.params["trainer.seed"] == "0" for r in runs.values())
    # The test cluster's 4 CPUs hold both members (2 workers x 0.5 CPU + 0.5 for the loader each).
    a, b = runs.values()
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
    printed = capsys.readouterr().out
    assert "2 run(s), 2 at a time" in printed and "[cmp-c3d-s0] [train]" in printed
    assert "| synthetic | blocks 1-1-1-1 w16 | C3D |" in printed  # the report's table

    # A member that did not finish is trained again by the same command; the finished one is not.
    client = MlflowClient(mlflow_server)
    client.set_terminated(runs["cmp-c3d-s0"].info.run_id, status="FAILED")
    assert main(args(store, mlflow_server, tmp_path)) == 0
    again = members(mlflow_server)
    assert sorted(again) == ["cmp-c2d-s0", "cmp-c3d-s0"]  # resumed under its name, not a new run
    assert again["cmp-c2d-s0"].info.end_time == runs["cmp-c2d-s0"].info.end_time
    assert again["cmp-c3d-s0"].info.status == "FINISHED"
    printed = capsys.readouterr().out
    assert "already finished, not trained again: cmp-c2d-s0" in printed and "1 run(s), 1 at a time" in printed
    (report,) = client.search_runs([again["cmp-c2d-s0"].info.experiment_id], "tags.mode = 'report'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    assert "report.html" in {f.path for f in client.list_artifacts(report.info.run_id)}


def test_a_bad_member_fails_before_ray_starts(store, mlflow_server, tmp_path, monkeypatch, capsys):
    def no_ray(*a, **k):
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr(results.compare, "ray_session", no_ray)
    assert main(args(store, mlflow_server, tmp_path, "trainer.epochs=0")) == 2
    assert "'trainer.epochs'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(ROOT / "configs" / "tiny_synthetic.yaml"), "--archs", "c2d,resnet"])
    assert "--archs takes c2d, c3d, cost_a, cost_b (got resnet)" in capsys.readouterr().err
