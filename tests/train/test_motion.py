"""The project's scientific smoke test, and prediction on video files with the models it trains.

On the synthetic `motion` dataset every class has a time-reversed twin with the very same frames,
so a model without temporal convolutions (C2D) cannot beat ~50% top-1, while C3D, CoST(a) and
CoST(b) learn it. A reduced `make demo`: the demo's store and model (configs/tiny_synthetic.yaml),
trained by the product's own run without Ray (train/fit.py: its clip cutting, augmentation,
training step and test protocol), two fresh processes at a time (bench/motion_grid.py's
``fit_many``; Ray Train itself is tested in test_main.py). The grid's
harder cells, smaller and slower objects, are bench/motion_grid.py's to train (bench/RESULTS.md):
their fits take twice the demo's, and CI's time is bounded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.prepare import main as prepare
from pipeline.storage import read_table
from pipeline.store import Store
from results.predict import main as predict
from train.checkpoints import save_state
from train.config import to_dict

pytestmark = pytest.mark.slow  # the motion fits: make test, not make test-fast

ARCHS = ["c2d", "c3d", "cost_a", "cost_b"]


@pytest.fixture(scope="module")
def grid(bench_script):
    return bench_script("motion_grid")


@pytest.fixture(scope="module")
def demo_store(ray_cluster, tmp_path_factory) -> str:
    """The demo's dataset: 4 motion classes, 75 training videos each (1,200 clips per epoch)."""
    root = tmp_path_factory.mktemp("motion")
    assert prepare(["--dataset", "synthetic", "--synthetic-kind", "motion", "--classes", "4", "--videos-per-class",
                    "75", "--stride", "4", "--root", str(root / "src"), "--out", str(root / "store")]) == 0
    return str(root / "store")


@pytest.fixture(scope="module")
def trained(demo_store, grid) -> dict[str, tuple]:
    """(model, config, test top-1) per arch, trained side by side, one per core."""
    fits = grid.fit_many([(demo_store, arch) for arch in ARCHS], jobs=grid.default_jobs())
    return dict(zip(ARCHS, fits, strict=True))


@pytest.mark.parametrize("arch", ARCHS)
def test_only_temporal_models_tell_a_motion_from_its_reversal(trained, grid, arch, figures):
    top1 = trained[arch][2]
    figures.append(f"motion, the demo's store, {arch}: test top-1 {top1:.3f}")
    assert grid.passes(arch, top1)  # C2D: chance within a twin pair, 0.5 at best


def test_predict_names_the_class_of_a_video_file(demo_store, trained, tmp_path, capsys):
    model, cfg, _ = trained["cost_b"]
    store = Store(demo_store)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save_state(checkpoint, dict(model=model.state_dict(), config=to_dict(cfg), classes=store.classes,
                                store_params=store.manifest["params"]))
    val = read_table(store.shard_urls("val")[0], columns=["source", "label_name", "phase"]).to_pylist()
    videos = [r for r in val if r["phase"] == 0][:4]
    assert predict(["--checkpoint", str(checkpoint), "--json", *[v["source"] for v in videos]]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["top"][0]["label"] for r in results] == [v["label_name"] for v in videos]
    assert all(len(r["top"]) == 4 and abs(sum(t["prob"] for t in r["top"]) - 1) < 1e-3 for r in results)
    shares = results[0]["view_shares"]
    assert set(shares) == {"H-W", "T-W", "T-H"} and abs(sum(shares.values()) - 1) < 1e-5

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(Path(videos[0]["source"]).read_bytes()[:2000])  # a truncated download
    assert predict(["--checkpoint", str(checkpoint), str(broken)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"predict: {broken}: cannot read the video")


def test_predict_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert predict(["--checkpoint", str(tmp_path / "nothing"), "video.mp4"]) == 2
    assert "no state.pt" in capsys.readouterr().err

