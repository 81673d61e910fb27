"""The shipped configs load, pass the value checks and hold the paper's settings."""

import os
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from train.config import ConfigError, from_dict, load_config
from train.models import IMPLS
from train.settings import ModelConfig, TrainConfig, absolute_paths, check_values

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_checks(path):
    cfg = load_config(TrainConfig, path)
    check_values(cfg)
    if path.name.startswith(("kinetics400", "moments")):
        o, d = cfg.optim, cfg.data
        assert (o.lr, o.lr_batch, o.momentum, o.weight_decay, o.milestones) == (0.005, 32, 0.9, 1e-4, (0.5, 0.75))
        assert (d.train_short_side, d.crop, d.eval_short_side, d.test_clips) == ((256, 320), 224, 256, 10)
        depth, frames = path.stem.split("_")[1:]
        assert cfg.model.depth == int(depth[1:]) and d.frames == int(frames[:-1])
        span = {8: 64, 32: 128 if path.name.startswith("kinetics") else 64}[d.frames]  # paper section 4
        assert d.frames * d.stride == span


@pytest.mark.parametrize("override", ["data.frames=0", "data.train_short_side=[300, 200]",
                                      "data.eval_short_side=100", "optim.milestones=[1.5]",
                                      "model.cost_impl=composed"])
def test_value_checks_name_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}'"):
        check_values(load_config(TrainConfig, None, ["data.store=s", override]))


def test_local_paths_become_absolute_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = from_dict(TrainConfig, {"data": {"store": "demo-output/store"},
                                  "model": {"pretrained": "~/resnet50.pth", "finetune_from": "s3://bucket/run/ckpt"}})
    absolute_paths(cfg)
    assert cfg.data.store == str(tmp_path / "demo-output" / "store")
    assert cfg.model.pretrained == os.path.expanduser("~/resnet50.pth")
    assert cfg.model.finetune_from == "s3://bucket/run/ckpt" and os.path.isabs(cfg.trainer.storage_path)


def test_the_config_offers_every_cost_formulation():
    assert get_args(get_type_hints(ModelConfig)["cost_impl"]) == IMPLS
