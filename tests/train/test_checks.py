"""The shipped configs load, pass the value checks and hold the paper's settings."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import get_args, get_type_hints

import pytest
import yaml

from train.augment import PROTOCOLS
from train.checks import check_files, check_init, check_values
from train.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    absolute_paths,
    from_dict,
    init_kind,
    load_config,
    pretrained_path,
)
from train.models import IMPLS, create_model

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_synthetic.yaml"


def test_each_dataset_has_one_whole_config_and_the_others_are_deltas_on_it():
    bases = {p.name: yaml.safe_load(p.read_text()).get("_base_") for p in CONFIGS if p != TINY}
    assert {n for n, base in bases.items() if base is None} == {"kinetics400_r50_8f.yaml", "moments_r50_8f.yaml"}
    for path in CONFIGS:  # a delta builds on its own dataset's configs, and is small
        base = bases.get(path.name)
        same_dataset = base is None or base.split("_")[0] == path.name.split("_")[0]
        assert same_dataset and (base is None or len(path.read_text().splitlines()) < 30)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_checks(path):
    cfg = load_config(TrainConfig, path)
    check_values(cfg)
    if path.name.startswith(("kinetics400", "moments")):
        o, d, m, t = cfg.optim, cfg.data, cfg.model, cfg.trainer
        # The authors' schedule: lr 0.01 for 64 clips (= the paper's 0.005 for 32), / 10 at 1/2 and 3/4.
        assert (o.lr, o.lr_batch, o.momentum, o.weight_decay, o.milestones) == (0.01, 64, 0.9, 1e-4, (0.5, 0.75))
        assert t.batch_size * t.num_workers == t.global_batch == 64 and o.clip_grad == 40 and o.warmup_epochs == 0
        assert (d.train_short_side, d.crop, d.eval_short_side, d.test_clips) == ((256, 320), 224, 256, 10)
        assert d.clips_per_video == 1 and d.test_protocol == "full" and d.flip
        depth, frames = path.stem.split("_")[1:]
        assert m.depth == int(depth[1:]) and d.frames == int(frames[:-1])
        span = {8: 64, 32: 128 if path.name.startswith("kinetics") else 64}[d.frames]  # paper section 4
        assert d.frames * d.stride == span
        assert m.pretrained is None and m.pool2 == "2x1x1" and m.cost_shared  # weights: the user's, checked
        if d.frames == 8:  # 600k iterations of 64 clips over ~241k (Kinetics) or ~802k (Moments) videos
            assert t.epochs == (160 if path.name.startswith("kinetics") else 48)
            assert (m.conv1_t, m.conv1_stride_t, m.pool1_t, m.pool1_stride_t) == (1, 1, 1, 1)
        else:  # the authors' 32-frame stem, fine-tuned from the 8-frame model with BatchNorm frozen
            assert (m.conv1_t, m.conv1_stride_t, m.pool1_t, m.pool1_stride_t) == (5, 2, 2, 2) and m.frozen_bn


@pytest.mark.parametrize("override", ["data.frames=0", "data.train_short_side=[300, 200]",
                                      "data.eval_short_side=100", "optim.milestones=[1.5]",
                                      "model.cost_impl=composed", "data.clips_per_video=0", "model.conv1_t=4",
                                      "data.test_protocol=ten_crop", "model.pool2=4x1x1",
                                      "model.pool1_stride_s=3", "optim.lr=0", "optim.momentum=1",
                                      "optim.weight_decay=-1e-4", "optim.gamma=0", "optim.warmup_epochs=100",
                                      "optim.clip_grad=0", "model.dropout=1", "model.width=0", "model.blocks=[1, 1]",
                                      "model.blocks=[1, 0, 1, 1]", "data.std=[0.2, 0, 0.2]", "trainer.bucket_mb=0",
                                      "data.stride=0", "model.temporal=[[1], [1]]"])
def test_value_checks_name_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}'"):
        check_values(load_config(TrainConfig, None, ["data.store=s", override]))


@pytest.mark.parametrize("overrides", [["model.cost_impl=composed"], ["model.conv1_t=4"], ["model.dropout=1"],
                                       ["model.width=0"], ["model.blocks=[1, 1]"], ["model.temporal=[[1], [1]]"],
                                       ["model.cost_shared=false", "model.arch=c2d"]])
def test_the_config_and_the_model_builder_refuse_a_model_alike(overrides):
    """One check of an architecture (train/models/spec.py): what the config refuses by key, the
    builder refuses by the same words."""
    cfg = load_config(TrainConfig, None, ["data.store=s", *overrides])
    with pytest.raises(ConfigError) as refused:
        check_values(cfg)
    with pytest.raises(ValueError) as built:
        create_model(cfg.model, 4)
    assert str(refused.value).split("'", 2)[2] == str(built.value).split("'", 2)[2]


def test_unshared_kernels_are_for_cost_models_only():
    check_values(load_config(TrainConfig, None, ["data.store=s", "model.arch=cost_b", "model.cost_shared=false"]))
    with pytest.raises(ConfigError, match="'model.cost_shared'.*c3d"):
        check_values(load_config(TrainConfig, None, ["data.store=s", "model.arch=c3d", "model.cost_shared=false"]))


def test_a_zero_mean_stem_is_for_models_from_scratch():
    check_values(load_config(TrainConfig, None, ["data.store=s", "model.conv1_zero_mean=true",
                                                 "model.pretrained=none"]))
    with pytest.raises(ConfigError, match="'model.conv1_zero_mean'.*pretrained"):
        check_values(load_config(TrainConfig, None, ["data.store=s", "model.conv1_zero_mean=true",
                                                     "model.pretrained=s3://b/resnet50.pth"]))


@pytest.mark.parametrize("dataset, overrides, refused", [
    ("kinetics", [], True),
    ("moments", [], True),
    ("kinetics", ["model.pretrained=none"], False),
    ("kinetics", ["model.pretrained=s3://b/resnet50.pth"], False),
    ("moments", ["model.finetune_from=s3://b/run/checkpoint"], False),
    ("folder", [], False),
    ("synthetic", [], False),
])
def test_paper_datasets_never_train_from_scratch_silently(dataset, overrides, refused):
    cfg = load_config(TrainConfig, None, ["data.store=s", *overrides])
    store = SimpleNamespace(manifest={"dataset": dataset})
    if not refused:
        check_init(cfg, store)
        return
    with pytest.raises(ConfigError, match="'model.pretrained'") as e:
        check_init(cfg, store)
    assert "ImageNet" in str(e.value) and "model.pretrained=none" in str(e.value)


def test_scratch_is_a_word_not_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainConfig, None, ["data.store=s", "model.pretrained=none"])
    absolute_paths(cfg)
    check_files(cfg)  # "none" is no file to look for
    assert cfg.model.pretrained == "none" and pretrained_path(cfg.model) is None and init_kind(cfg.model) == "scratch"


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
    assert get_args(get_type_hints(DataConfig)["test_protocol"]) == PROTOCOLS  # the views eval_views makes


def test_a_range_of_workers_keeps_the_global_batch():
    """trainer.num_workers=[min, max]: every group size trains iterations of the global batch, the
    most workers that share its batches evenly each adding up its part; a fixed group that cannot
    share them, a group larger than the batches, or a global batch of no whole batches is refused."""
    paper = ["data.store=unused", "trainer.batch_size=8", "trainer.global_batch=64"]  # the paper's 8 GPUs x 8
    t = load_config(TrainConfig, TINY, [*paper, "trainer.num_workers=[2, 8]"]).trainer
    check_values(load_config(TrainConfig, TINY, [*paper, "trainer.num_workers=[2, 8]"]))
    assert t.worker_range() == (2, 8) and t.batches_per_iteration() == 8
    assert [t.training_workers(w) for w in range(2, 9)] == [2, 2, 4, 4, 4, 4, 8]  # 6 workers train as 4
    t = load_config(TrainConfig, TINY, ["data.store=unused", "trainer.num_workers=4"]).trainer
    assert t.clips_per_iteration() == 64 and t.training_workers(4) == 4  # today's: batch_size x workers
    for override, refused in [("trainer.num_workers=3", r"3 workers cannot share the 8 batches .* choose 1, 2, 4, 8,"),
                              ("trainer.num_workers=[4, 16]", r"16 workers, but .* at most 8 workers train"),
                              ("trainer.global_batch=60", r"'trainer.global_batch' \(60\) must be a whole number")]:
        with pytest.raises(ConfigError, match=refused):
            check_values(load_config(TrainConfig, TINY, [*paper, override]))


def test_the_driver_checks_a_config_without_loading_torch():
    """What refuses a bad config in under 2 s: the driver's imports and the model's check, torch not
    among them (train/models loads its torch modules on first use)."""
    code = ("import sys, train.main; from train.models import problems, ModelSpec; problems(ModelSpec()); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
