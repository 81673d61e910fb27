"""Video-level evaluation inside Ray Train workers: the paper's multi-clip test protocol.

Each video's ``clips`` clips under a test protocol (paper: 10 clips uniformly over the video,
short side 256, the whole frame: "spatially fully convolutional") are scored, the softmax scores
averaged per video, and the per-video scores gathered on every rank. The same code gives the
per-epoch single-clip validation (clips=1, the centre crop). Per-video scores become a Parquet
table, so results can be re-analysed without running the model again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch import nn

from pipeline.store import Store
from train.config import DataConfig, TrainConfig
from train.core import normalize
from train.data import eval_dataset, split_iterator
from train.models.views import ViewStats


@dataclass
class Scores:
    video_ids: list[str]
    labels: np.ndarray  # (N,)
    probs: np.ndarray  # (N, classes), softmax averaged over a video's views

    def metrics(self, prefix: str) -> dict[str, float]:
        n = max(len(self.labels), 1)
        true_p = self.probs[np.arange(len(self.labels)), self.labels] if len(self.labels) else np.zeros(0)
        return {f"{prefix}_top1": topk_accuracy(self.probs, self.labels, 1),
                f"{prefix}_top5": topk_accuracy(self.probs, self.labels, 5),
                f"{prefix}_loss": float(-np.log(np.maximum(true_p, 1e-12)).sum() / n),
                f"{prefix}_videos": float(len(self.labels))}

    def table(self, classes: list[str]) -> pa.Table:
        return pa.table({"video_id": self.video_ids, "label": self.labels.astype(np.int32),
                         "label_name": [classes[i] for i in self.labels],
                         "predicted": self.probs.argmax(1).astype(np.int32) if len(self.labels) else
                         np.zeros(0, np.int32),
                         "scores": pa.array(list(self.probs.astype(np.float32)), pa.list_(pa.float32()))})


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    if len(labels) == 0:
        return 0.0
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


@torch.no_grad()
def video_probs(model: nn.Module, clip_views: torch.Tensor, data: DataConfig,
                autocast=None) -> torch.Tensor:
    """(V, K, T, H, W, 3) uint8 views of V videos -> (V, classes): softmax averaged over each video's views."""
    x = normalize(clip_views.flatten(0, 1), data.mean, data.std)  # (V*K, 3, T, H, W)
    with autocast or contextlib.nullcontext():
        logits = model(x)
    return logits.float().softmax(-1).view(clip_views.shape[0], clip_views.shape[1], -1).mean(1)


@torch.no_grad()
def evaluate(model: nn.Module, store: Store, split: str, cfg: TrainConfig, *, clips: int, protocol: str, rank: int,
             world: int, device: torch.device, autocast, views: ViewStats | None = None,
             progress: Callable[[int], object] | None = None) -> Scores:
    """Scores of every video of ``split``, split over the workers and gathered on each of them;
    with ``views``, the CoST view coefficients of every clip are summed in it (on every rank).
    ``progress(n)`` is called after each batch of n videos of this worker's share."""
    it = split_iterator(lambda: eval_dataset(store, split, cfg.data, clips=clips, protocol=protocol), rank, world,
                        equal=False)
    training = model.training
    model.eval()
    ids: list[str] = []
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    # Whole frames differ in size between videos: one video (its clips share one size) per batch then.
    per_batch = 1 if protocol == "full" else max(1, cfg.trainer.batch_size // (clips * (3 if protocol == "three_crop"
                                                                                       else 1)))
    for b in it.iter_batches(batch_size=per_batch, batch_format="numpy"):
        clip_views = torch.from_numpy(b["clips"]).to(device)  # (V, K, T, H, W, 3) uint8
        p = video_probs(model, clip_views, cfg.data, autocast)
        if views:
            views.update(np.repeat(b["label"], clip_views.shape[1]))
        ids += [str(v) for v in b["video_id"]]
        labels.append(b["label"])
        probs.append(p.cpu().numpy())
        if progress:
            progress(len(b["label"]))
    model.train(training)
    num_classes = len(store.classes)
    part = (ids, np.concatenate(labels) if labels else np.zeros(0, np.int64),
            np.concatenate(probs) if probs else np.zeros((0, num_classes), np.float32),
            views.totals() if views else None)
    parts = [part]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, part)
        if views:
            for r, p in enumerate(parts):
                if r != rank:
                    views.add(p[3])
    return Scores([i for p in parts for i in p[0]], np.concatenate([p[1] for p in parts]),
                  np.concatenate([p[2] for p in parts]))
