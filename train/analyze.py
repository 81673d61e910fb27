"""View-coefficient analysis (paper Figs. 7 and 8): how much a CoST model relies on each view.

Per CoST layer, the mean coefficient of the H-W (spatial), T-W and T-H (temporal) views; per class,
the temporal share (T-W + T-H, averaged over layers), ranked. CoST(a)'s coefficients are
parameters; CoST(b)'s are predicted per sample and averaged here over the samples seen.

    with ViewStats(model, num_classes) as stats:  # train/models/views.py
        for clips, labels in batches:
            model(clips); stats.update(labels)    # after each forward pass
    write_analysis(stats, classes, "out/")        # CSVs and PNGs

Training runs of CoST models collect these during the final test protocol and log them to MLflow
under ``analysis/``. For a finished run, again (e.g. on another split), from the command line:

    python train/analyze.py --run RUN_ID [--split val] [--clips 10] [--device cuda]

which runs the run's best checkpoint over the split in this process, writes the CSVs and PNGs and
logs them to the run under ``analysis/``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="View-coefficient analysis of a trained CoST run (paper Figs. 7-8), "
                                            "logged to the run under analysis/.")
    p.add_argument("--run", required=True, help="the MLflow run id of a finished training run")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the local SQLite store")
    p.add_argument("--split", help="default: the run's test split (else its val split)")
    p.add_argument("--clips", type=int, help="clips per video (default: the run's data.test_clips)")
    p.add_argument("--store", help="the frame store (default: the run's data.store)")
    p.add_argument("--out", help="folder for the CSVs and PNGs (default: analysis/RUN_ID under the home)")
    p.add_argument("--device", default="cpu", help="e.g. cuda")
    p.add_argument("--no-log", action="store_true", help="do not log the files to the run")
    args = p.parse_args(argv)

    from pipeline.store import Store, StoreError
    from train import tracking
    from train.checkpoints import CheckpointError, load_state, model_from_state
    from train.config import ConfigError, from_dict
    from train.data import shard_videos
    from train.evaluate import video_probs
    from train.settings import HOME, TrainConfig

    uri = tracking.tracking_uri(args.tracking_uri)
    try:
        path, opts = tracking.run_checkpoint(uri, args.run)
        state = load_state(path, opts)
        cfg = from_dict(TrainConfig, state["config"])
        model = model_from_state(state).to(args.device)
        if not model.cost_layers():
            raise ConfigError(f"--run {args.run}: a {cfg.model.arch} model has no view coefficients; "
                              "give the run of a CoST(a) or CoST(b) model")
        store = Store(args.store or cfg.data.store, opts)
        split = args.split or cfg.data.test_split or cfg.data.val_split
        if split not in store.manifest["splits"]:
            raise ConfigError(f"--split: the store {store.url} has no split {split!r}; "
                              f"it has {', '.join(store.splits)}")
    except (ConfigError, CheckpointError, StoreError, OSError) as e:
        print(f"analyze: {e}", file=sys.stderr)
        return 2
    clips = args.clips or cfg.data.test_clips
    with ViewStats(model, len(store.classes)) as stats:
        for url in store.shard_urls(split):
            for _, label, views in shard_videos(url, cfg.data, store.storage_options, clips=clips,
                                                protocol=cfg.data.test_protocol):
                video_probs(model, torch.from_numpy(views[None]).to(args.device), cfg.data)
                stats.update(np.full(len(views), label))
    out = Path(args.out or os.path.join(HOME, "analysis", args.run))
    files = write_analysis(stats, store.classes, out)
    print(f"[analyze] {split}: {int(stats.class_counts.sum())} clips of {int((stats.class_counts > 0).sum())} "
          f"classes, {clips} per video; files in {out}")
    print(summary(stats.layer_rows(), stats.class_rows(store.classes)))
    if not args.no_log:
        for f in files:
            tracking.client(uri).log_artifact(args.run, str(f), "analysis")
        print(f"[analyze] logged to run {args.run} under analysis/")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from a checkout
    sys.exit(main())
