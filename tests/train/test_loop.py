"""The end of a run in a real Ray Train worker: which weights the test protocol scores."""

import json
from pathlib import Path

import pytest
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from train.config import TrainConfig, load_config, to_dict

pytestmark = pytest.mark.slow  # a Ray Train run: make test, not make test-fast

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_synthetic.yaml")


def ends_of_runs(config: dict) -> None:
    """Two validated epochs, the first one the better, as end_epoch records them; then what the test
    would score: by default the first epoch's weights, on request the last's; the first's weights
    again when its checkpoint is damaged."""
    from train.loop import Worker, build, weights_to_test

    w = Worker(config["run"])
    ts = build(w, None)
    said: list[str] = []
    w.say = said.append
    ts.epoch, ts.step, ts.val = 1, 10, {"val_top1": 0.75}
    ts.best = {"val_top1": 0.75, "epoch": 1, "step": 10}
    w.report(ts, checkpoint=True, validated=True)
    best = {k: v.clone() for k, v in ts.model.state_dict().items()}
    best_path = ts.best["path"]

    def last_epoch() -> None:
        with torch.no_grad():
            for p in ts.model.parameters():
                p.add_(1.0)
        ts.epoch, ts.step, ts.val = 2, 20, {"val_top1": 0.5}
        w.report(ts, checkpoint=True, validated=True)

    last_epoch()
    tested = weights_to_test(w, ts)
    same_as_best = all(torch.equal(v, best[k]) for k, v in ts.model.state_dict().items())

    w.cfg.trainer.test_checkpoint = "last"
    last_epoch()
    tested_last = weights_to_test(w, ts)

    w.cfg.trainer.test_checkpoint = "best"
    Path(best_path, "state.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a zip cut short
    last_epoch()
    tested_damaged = weights_to_test(w, ts)
    Path(config["out"]).write_text(json.dumps(  # Ray Train's result holds the last checkpoint's metrics only
        {"tested": tested, "same_as_best": same_as_best, "best_path": best_path, "tested_last": tested_last,
         "tested_damaged": tested_damaged, "said": said}))


def test_the_test_scores_the_best_validations_weights_unless_asked_for_the_last(appearance_store, tmp_path):
    from train.loop import RunContext

    cfg = load_config(TrainConfig, CONFIG, [f"data.store={appearance_store}", "data.stride=8", "trainer.num_workers=1"])
    ctx = RunContext(config=to_dict(cfg), run_id="unused", tracking_uri="unused", steps_per_epoch=10)
    out = tmp_path / "out.json"
    trainer = TorchTrainer(ends_of_runs, train_loop_config={"run": ctx, "out": str(out)},
                           scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(name="ends", storage_path=str(tmp_path)))
    trainer.fit()
    got = json.loads(out.read_text())
    assert got["same_as_best"]
    assert got["tested"] == f"the best checkpoint (epoch 1, val top-1 0.7500) {got['best_path']}"
    assert got["tested_last"] == "the last epoch's weights (epoch 2)"
    assert got["tested_damaged"] == "the last epoch's weights (epoch 2)"
    (line,) = got["said"]
    assert line.startswith(f"the best checkpoint (epoch 1, val top-1 0.7500) {got['best_path']} does not load")
    assert line.endswith("the test scores the last epoch's weights (epoch 2)")
