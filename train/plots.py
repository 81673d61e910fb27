"""View-coefficient tables and plots as files (paper Figs. 7 and 8), for both the training run's
final test pass (train/loop.py) and the results tools (results/analyze.py, results/report.py).

    with ViewStats(model, num_classes) as stats:  # train/models/views.py
        for clips, labels in batches:
            model(clips); stats.update(labels)    # after each forward pass
    write_analysis(stats, classes, "out/")        # CSVs and PNGs
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from train.models.views import VIEWS, ViewStats


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


def summary(layers: list[dict], by_class: list[dict], k: int = 3) -> str:
    """Two lines for a terminal: the mean view shares over layers, and the most and least temporal classes."""
    if not layers:
        return "no CoST layers"
    mean = layers[-1]
    text = (f"view shares over {len(layers) - 1} CoST layers: " + ", ".join(f"{v} {float(mean[v]):.2f}" for v in VIEWS)
            + f" (temporal {float(mean['T-W']) + float(mean['T-H']):.2f})")
    def show(rows: list[dict]) -> str:
        return ", ".join(f"{r['label']} {float(r['temporal_share']):.2f}" for r in rows)

    if len(by_class) > 2 * k:
        text += f"\nmost temporal classes: {show(by_class[:k])}; least: {show(by_class[::-1][:k])}"
    elif by_class:
        text += f"\nclasses by temporal share: {show(by_class)}"
    return text
