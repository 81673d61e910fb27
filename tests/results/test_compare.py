"""results/compare.py on the session's Ray cluster and MLflow server: two archs side by side, the
report, a second call that trains only the member that did not finish, and what a user's browser
shows of them in the MLflow UI (headless Chromium; screenshots under test-artifacts/browser/)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import results.compare
from results.compare import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(appearance_store) -> str:
    return appearance_store


@pytest.fixture
def args(store: str, mlflow_server: str, tmp_path: Path, runs):
    """The comparison's arguments: C2D and C3D, each a short run of the demo's model (``runs.tiny``)."""
    def make(*extra: str) -> list[str]:
        return ["--config", str(ROOT / "configs" / "tiny_synthetic.yaml"), "--archs", "c2d,c3d", "--name", "cmp",
                f"data.store={store}", f"tracking.uri={mlflow_server}", "tracking.experiment=compare",
                f"trainer.storage_path={tmp_path / 'runs'}", "data.stride=8", *runs.tiny, *extra]
    return make


def members(uri: str) -> dict[str, object]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("compare").experiment_id
    return {r.data.tags["cost.run_name"]: r for r in client.search_runs([exp], "tags.mode = 'train'")}


@pytest.mark.slow
def test_the_comparison_trains_each_member_once_and_reports(args, mlflow_server, tmp_path, capsys):
    assert main(args()) == 0
    runs = members(mlflow_server)
    assert sorted(runs) == ["cmp-c2d-s0", "cmp-c3d-s0"]
    assert {r.data.tags["arch"] for r in runs.values()} == {"c2d", "c3d"}
    assert all(r.info.status == "FINISHED" and r.data.params["trainer.seed"] == "0" for r in runs.values())
    # The test cluster's 4 CPUs hold both members (2 workers x 0.5 CPU + 0.5 for the loader each).
    a, b = runs.values()
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
    printed = capsys.readouterr().out
    assert "2 run(s), 2 at a time" in printed
    # Side by side: each member's lines (Ray's worker prefix inside), progress lines, not bars.
    assert re.search(r"^\[cmp-c3d-s0\] .*\[train\] epoch 1/1 step 3/3 loss", printed, re.M), printed[-3000:]
    assert "| synthetic | blocks 1-1-1-1 w16 | C3D |" in printed  # the report's table

    # A member that did not finish is trained again by the same command; the finished one is not.
    client = MlflowClient(mlflow_server)
    client.set_terminated(runs["cmp-c3d-s0"].info.run_id, status="FAILED")
    assert main(args()) == 0
    again = members(mlflow_server)
    assert sorted(again) == ["cmp-c2d-s0", "cmp-c3d-s0"]  # resumed under its name, not a new run
    assert again["cmp-c2d-s0"].info.end_time == runs["cmp-c2d-s0"].info.end_time
    assert again["cmp-c3d-s0"].info.status == "FINISHED"
    printed = capsys.readouterr().out
    assert "already finished, not trained again: cmp-c2d-s0" in printed and "1 run(s), 1 at a time" in printed
    (report,) = client.search_runs([again["cmp-c2d-s0"].info.experiment_id], "tags.mode = 'report'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    assert "report.html" in {f.path for f in client.list_artifacts(report.info.run_id)}


def test_a_bad_member_fails_before_ray_starts(args, mlflow_server, tmp_path, monkeypatch, capsys):
    def no_ray(*a, **k):
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr(results.compare, "ray_session", no_ray)
    assert main(args("trainer.epochs=0")) == 2
    assert "'trainer.epochs'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(ROOT / "configs" / "tiny_synthetic.yaml"), "--archs", "c2d,resnet"])
    assert "--archs takes c2d, c3d, cost_a, cost_b (got resnet)" in capsys.readouterr().err


def chromium():
    """Headless Chromium through Debian's chromium and chromium-driver (make test installs them)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver, browser = shutil.which("chromedriver"), shutil.which("chromium")
    if not (driver and browser):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: apt-get install chromium "
                    "chromium-driver (make test does)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def shown(browser, url: str, *texts: str, frame: bool = False, shot: Path) -> str:
    """Opens ``url``, waits until the page (or, with ``frame``, its artifact viewer's frame) shows
    every one of ``texts``, screenshots it to ``shot``, and returns the text shown."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def text(b) -> str:
        b.switch_to.default_content()
        if frame:
            frames = b.find_elements(By.TAG_NAME, "iframe")
            if not frames:
                return ""
            b.switch_to.frame(frames[0])
        return b.find_element(By.TAG_NAME, "body").text

    browser.get(url)
    try:
        WebDriverWait(browser, 90, poll_frequency=1).until(lambda b: all(t in text(b) for t in texts))
    except TimeoutException:
        browser.save_screenshot(str(shot))
        pytest.fail(f"{url} did not show {texts} in 90 s (screenshot {shot}); it shows:\n{text(browser)[:2000]}")
    body = text(browser)
    browser.switch_to.default_content()
    browser.save_screenshot(str(shot))
    return body


@pytest.mark.slow
def test_the_mlflow_ui_shows_the_training_runs_their_dataset_and_the_table(args, store, mlflow_server, tmp_path,
                                                                             capsys):
    assert main(args()) == 0  # trains only what an earlier test did not
    printed = capsys.readouterr().out
    runs = members(mlflow_server)
    client = MlflowClient(mlflow_server)
    exp = runs["cmp-c2d-s0"].info.experiment_id
    (report,) = client.search_runs([exp], "tags.mode = 'report'", order_by=["attributes.start_time DESC"],
                                   max_results=1)
    ui = f"{mlflow_server}/#/experiments/{exp}"
    table = f"{ui}/runs/{report.info.run_id}/artifacts/report.html?workflowType=machine_learning"
    assert f"the runs {ui}?workflowType=machine_learning, the table {table}" in printed  # the links a user gets
    shots = Path(os.environ.get("COST_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    try:
        # The experiment opens on its training runs, each with the store as its training dataset.
        page = shown(browser, f"{ui}?workflowType=machine_learning", "cmp-c2d-s0", "cmp-c3d-s0",
                     "synthetic:store", shot=shots / "experiment.png")
        assert "Training" in page and "Token Usage" not in page  # not the GenAI overview
        # A training run's page: its tags, metrics and dataset.
        c3d = runs["cmp-c3d-s0"]
        page = shown(browser, f"{ui}/runs/{c3d.info.run_id}?workflowType=machine_learning", "cmp-c3d-s0",
                     "test_top1", "synthetic:store", shot=shots / "run.png")
        assert "c3d" in page
        # The report run's table, rendered by the artifact viewer.
        page = shown(browser, table, "C2D", "C3D", "synthetic", frame=True, shot=shots / "report.png")
        assert "blocks 1-1-1-1 w16" in page
    finally:
        browser.quit()
