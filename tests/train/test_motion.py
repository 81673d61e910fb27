"""The project's scientific smoke test, and prediction on video files with the models it trains.

On the synthetic `motion` dataset every class has a time-reversed twin with the very same frames,
so a model without temporal convolutions (C2D) cannot beat ~50% top-1, while C3D, CoST(a) and
CoST(b) learn it. A reduced `make demo`: the demo's store and model (configs/tiny_synthetic.yaml),
trained in this process with the project's own clip cutting, augmentation and test protocol
(Ray Train itself is tested in test_main.py).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.prepare import main as prepare
from pipeline.store import Store, read_table
from train.augment import normalize
from train.checkpoints import make_model, save_state
from train.config import load_config, to_dict
from train.data import clips_per_epoch, epoch_plan, shard_clips, shard_videos
from train.evaluate import video_probs
from train.loop import lr_factor
from train.predict import main as predict
from train.settings import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SEED = 1


@pytest.fixture(scope="module")
def motion(ray_cluster, tmp_path_factory) -> Path:
    """The demo's dataset: 4 motion classes, 75 training videos each (1,200 clips per epoch)."""
    root = tmp_path_factory.mktemp("motion")
    assert prepare(["--dataset", "synthetic", "--synthetic-kind", "motion", "--classes", "4", "--videos-per-class",
                    "75", "--stride", "4", "--root", str(root / "src"), "--out", str(root / "store")]) == 0
    return root


@functools.cache
def train(store_url: str, arch: str) -> tuple[torch.nn.Module, TrainConfig, float]:
    """(model, config, test top-1): the demo's settings, one process, global batch 32."""
    torch.manual_seed(SEED)
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny_synthetic.yaml", [f"data.store={store_url}",
                                                                              f"model.arch={arch}"])
    store, d, o = Store(store_url), cfg.data, cfg.optim
    model = make_model(cfg.model, len(store.classes))
    batch = cfg.trainer.batch_size * cfg.trainer.num_workers
    opt = torch.optim.SGD(model.parameters(), lr=o.lr * batch / o.lr_batch, momentum=o.momentum,
                          weight_decay=o.weight_decay)
    per_epoch = clips_per_epoch(store, "train", d.clips_per_video) // batch
    total, warmup = cfg.trainer.epochs * per_epoch, int(o.warmup_epochs * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, o.milestones, o.gamma))
    phases = store.manifest["params"]["num_phases"]
    for epoch in range(cfg.trainer.epochs):
        cut = [b for task in epoch_plan(store, d, seed=SEED, epoch=epoch)  # what the loader's tasks make
               for b in shard_clips(task["url"], task["round"], d, {}, num_phases=phases, seed=SEED, epoch=epoch)]
        clips = torch.from_numpy(np.concatenate([b["clip"] for b in cut]))
        labels = torch.from_numpy(np.concatenate([b["label"] for b in cut]))
        order = torch.randperm(len(labels))
        model.train()
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(normalize(clips[idx], d.mean, d.std)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    hits = [int(video_probs(model, torch.from_numpy(views[None]), d)[0].argmax()) == label
            for url in store.shard_urls("val")
            for _, label, views in shard_videos(url, d, {}, clips=d.test_clips, protocol=d.test_protocol)]
    return model, cfg, float(np.mean(hits))


@pytest.mark.parametrize("arch", ["c2d", "c3d", "cost_a", "cost_b"])
def test_only_temporal_models_tell_a_motion_from_its_reversal(motion, arch):
    _, _, top1 = train(str(motion / "store"), arch)
    print(f"{arch}: test top-1 {top1:.3f}")
    if arch == "c2d":
        assert top1 <= 0.6  # chance within a twin pair: 0.5 at best
    else:
        assert top1 >= 0.85


def test_predict_names_the_class_of_a_video_file(motion, tmp_path, capsys):
    model, cfg, _ = train(str(motion / "store"), "cost_b")
    store = Store(str(motion / "store"))
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

