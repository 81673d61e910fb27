"""View coefficients of a model's CoST layers, read by forward hooks (paper Figs. 7 and 8).

    with ViewStats(model, num_classes) as stats:
        for clips, labels in batches:
            model(clips); stats.update(labels)   # after each forward pass
    stats.layer_rows(), stats.class_rows(classes)

CoST(a)'s coefficients are parameters; CoST(b)'s are predicted per sample, and a hook on its view
map catches them as the forward pass computes them, so the op itself keeps no state for this.
Models-level and torch-only, so that training, evaluation and the results tools all use it.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
from torch import nn

from train.models.cost import CoST

VIEWS = ("H-W", "T-W", "T-H")


class ViewStats:
    """Running sums of view coefficients per layer and of the temporal share per class. Its hooks
    stay on the model until ``close()`` (or the end of a ``with`` block)."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, CoST)}
        self.latest: dict[str, torch.Tensor] = {}  # per layer: (C, 3), or (N, C, 3) for CoST(b)
        self.handles = [self._watch(name, layer) for name, layer in self.layers.items()]
        self.sums = {name: np.zeros(3) for name in self.layers}
        self.samples = 0
        self.class_sums = np.zeros(num_classes)
        self.class_counts = np.zeros(num_classes)

    def _watch(self, name: str, layer: CoST) -> torch.utils.hooks.RemovableHandle:
        def keep(value: torch.Tensor) -> None:
            self.latest[name] = value.detach()

        if layer.mode == "a":
            return layer.register_forward_hook(lambda m, args, out: keep(m.coefficients()))
        # view_fc's output is the coefficients' logits, softmaxed over views (CoST.predict_alpha).
        return layer.view_fc.register_forward_hook(lambda m, args, out: keep(torch.softmax(out, dim=-1)))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __bool__(self) -> bool:
        return bool(self.layers)

    @torch.no_grad()
    def update(self, labels: np.ndarray) -> None:
        """Record the coefficients of the forward pass just run, whose samples had ``labels``."""
        n = len(labels)
        per_layer = []
        for name in self.layers:
            shares = self.latest[name].float().mean(-2).cpu().numpy()  # mean over channels: (3,) or (N, 3)
            shares = np.broadcast_to(shares, (n, 3))
            self.sums[name] += shares.sum(0)
            per_layer.append(shares)
        temporal = np.mean(per_layer, axis=0)[:, 1:].sum(1)  # (N,): T-W + T-H, mean over layers
        np.add.at(self.class_sums, labels, temporal)
        np.add.at(self.class_counts, labels, 1)
        self.samples += n

    def totals(self) -> tuple:
        """The running sums alone (picklable, e.g. to gather them from other workers)."""
        return self.sums, self.samples, self.class_sums, self.class_counts

    def add(self, totals: tuple) -> None:
        sums, samples, class_sums, class_counts = totals
        for name in self.sums:
            self.sums[name] += sums[name]
        self.samples += samples
        self.class_sums += class_sums
        self.class_counts += class_counts

    def layer_rows(self) -> list[dict]:
        """Per layer (in network order) the mean H-W, T-W, T-H coefficients; last row: their mean."""
        rows = [dict(layer=name, **dict(zip(VIEWS, s / max(self.samples, 1), strict=True)))
                for name, s in self.sums.items()]
        if rows:
            rows.append(dict(layer="mean", **{v: float(np.mean([r[v] for r in rows])) for v in VIEWS}))
        return rows

    def class_rows(self, classes: list[str]) -> list[dict]:
        """Classes seen, by temporal share, highest first."""
        seen = self.class_counts > 0
        share = np.divide(self.class_sums, self.class_counts, out=np.zeros_like(self.class_sums), where=seen)
        order = sorted(np.flatnonzero(seen), key=lambda i: -share[i])
        return [dict(label=classes[i], temporal_share=float(share[i]), samples=int(self.class_counts[i]))
                for i in order]
