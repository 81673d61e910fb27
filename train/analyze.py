"""View-coefficient analysis (paper Figs. 7 and 8): how much a CoST model relies on each view.

Per CoST layer, the mean coefficient of the H-W (spatial), T-W and T-H (temporal) views; per class,
the temporal share (T-W + T-H, averaged over layers), ranked. CoST(a)'s coefficients are
parameters; CoST(b)'s are predicted per sample and averaged here over the samples seen.

    stats = ViewStats(model, num_classes)
    for clips, labels in batches:
        model(clips); stats.update(labels)      # after each forward pass
    write_analysis(stats, classes, "out/")      # CSVs and PNGs

Training runs of CoST models collect these during the final test protocol and log them to MLflow
under ``analysis/``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

VIEWS = ("H-W", "T-W", "T-H")


class ViewStats:
    """Running sums of view coefficients per layer and of the temporal share per class."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        self.layers = model.cost_layers() if hasattr(model, "cost_layers") else {}
        self.sums = {name: np.zeros(3) for name in self.layers}
        self.samples = 0
        self.class_sums = np.zeros(num_classes)
        self.class_counts = np.zeros(num_classes)

    def __bool__(self) -> bool:
        return bool(self.layers)

    @torch.no_grad()
    def update(self, labels: np.ndarray) -> None:
        """Record the coefficients of the forward pass just run, whose samples had ``labels``."""
        n = len(labels)
        per_layer = []
        for name, layer in self.layers.items():
            alpha = layer.coefficients()  # (C, 3) or (N, C, 3)
            shares = alpha.float().mean(-2).cpu().numpy()  # mean over channels: (3,) or (N, 3)
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


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_layers(rows: list[dict], path: str | os.PathLike) -> None:
    """Stacked bars: each layer's view shares (paper Fig. 8)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
    bottom = np.zeros(len(rows))
    for view in VIEWS:
        values = np.array([r[view] for r in rows])
        ax.bar(range(len(rows)), values, bottom=bottom, label=view)
        bottom += values
    ax.set_xticks(range(len(rows)), [r["layer"] for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("mean coefficient")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right")
    ax.set_title("View coefficients per CoST layer")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_classes(rows: list[dict], path: str | os.PathLike, k: int = 10) -> None:
    """The ``k`` classes relying most and least on temporal views (paper Fig. 7)."""
    plt = _pyplot()
    shown = rows if len(rows) <= 2 * k else rows[:k] + rows[-k:]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(shown))))
    ax.barh(range(len(shown)), [r["temporal_share"] for r in shown])
    ax.set_yticks(range(len(shown)), [r["label"] for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("temporal share (T-W + T-H)")
    ax.set_title("Classes by reliance on temporal views")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_analysis(stats: ViewStats, classes: list[str], out: str | os.PathLike) -> list[Path]:
    """The layer and class tables as CSV and PNG under ``out``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers, by_class = stats.layer_rows(), stats.class_rows(classes)
    files = [out / "view_coefficients_layers.csv", out / "view_coefficients_layers.png",
             out / "temporal_share_classes.csv", out / "temporal_share_classes.png"]
    write_csv(layers, files[0])
    plot_layers(layers, files[1])
    write_csv(by_class, files[2])
    plot_classes(by_class, files[3])
    return files
