"""A run in one process, without Ray: the product's clip cutting, augmentation, training step,
optimiser schedule and test protocol on a store. The science tests (tests/train/test_motion.py) and
bench/motion_grid.py train through it; train/loop.py is the same run under Ray Train, with its
workers, checkpoints and MLflow.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.store import Store
from train.config import TrainConfig
from train.core import Step, optimizer
from train.data import clips_per_epoch, epoch_plan, shard_clips, shard_videos
from train.evaluate import video_probs
from train.models import create_model


def fit(cfg: TrainConfig, *, seed: int = 1, device: str = "cpu") -> tuple[nn.Module, float]:
    """(model, test top-1 on the val split) of ``cfg`` trained from scratch: each epoch's clips cut
    as the loader cuts them, shuffled, in iterations of the config's global batch."""
    torch.manual_seed(seed)
    store, d = Store(cfg.data.store), cfg.data
    step = Step.for_config(cfg, device)
    model = step.place(create_model(cfg.model, len(store.classes)))  # device and memory layout, as train/loop.py
    batch = cfg.trainer.clips_per_iteration()
    steps_per_epoch = clips_per_epoch(store, "train", d.clips_per_video) // batch
    opt, sched = optimizer(model, cfg, steps_per_epoch)
    phases = store.manifest["params"]["num_phases"]
    for epoch in range(cfg.trainer.epochs):
        cut = [b for task in epoch_plan(store, d, seed=seed, epoch=epoch)
               for b in shard_clips(task["url"], task["round"], d, {}, num_phases=phases, seed=seed, epoch=epoch)]
        clips = torch.from_numpy(np.concatenate([b["clip"] for b in cut]))
        labels = torch.from_numpy(np.concatenate([b["label"] for b in cut]))
        order = torch.randperm(len(labels))
        model.train()
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            step(model, opt, sched, clips[idx].to(device), labels[idx].to(device))
    model.eval()
    hits = [int(video_probs(model, torch.from_numpy(views[None]).to(device), d)[0].argmax()) == label
            for url in store.shard_urls("val")
            for _, label, views in shard_videos(url, d, {}, clips=d.test_clips, protocol=d.test_protocol)]
    return model, float(np.mean(hits))
