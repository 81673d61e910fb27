"""View-coefficient analysis of a finished CoST run (paper Figs. 7 and 8), again: how much the
model relies on each view.

    python results/analyze.py --run NAME|RUN_ID [--split val] [--clips 10] [--device cuda]

Runs the run's best checkpoint over the split in this process, writes per CoST layer the mean
coefficient of the H-W (spatial), T-W and T-H (temporal) views and per class the temporal share
(T-W + T-H, averaged over layers), ranked, as CSVs and PNGs (train/plots.py), and logs them to the
run under ``analysis/``. CoST(a)'s coefficients are parameters; CoST(b)'s are predicted per sample
and averaged over the samples seen. Training runs of CoST models already write these files during
their final test protocol.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.store import Store, StoreError
from train import tracking
from train.checkpoints import CheckpointError, load_state, model_from_state
from train.config import HOME, ConfigError, TrainConfig, from_dict
from train.data import shard_videos
from train.evaluate import video_probs
from train.models.views import ViewStats
from train.plots import summary, write_analysis


def view_stats(model: torch.nn.Module, cfg: TrainConfig, store: Store, split: str, clips: int,
               device: str) -> ViewStats:
    """The view coefficients of ``model`` over a split of the store, under the run's test protocol."""
    with ViewStats(model, len(store.classes)) as stats:
        for url in store.shard_urls(split):
            for _, label, views in shard_videos(url, cfg.data, store.storage_options, clips=clips,
                                                protocol=cfg.data.test_protocol):
                video_probs(model, torch.from_numpy(views[None]).to(device), cfg.data)
                stats.update(np.full(len(views), label))
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="View-coefficient analysis of a trained CoST run (paper Figs. 7-8), "
                                            "logged to the run under analysis/.")
    p.add_argument("--run", required=True, help="a finished training run: its name (as the console printed it) "
                                                "or its MLflow run id")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the local SQLite store")
    p.add_argument("--split", help="default: the run's test split (else its val split)")
    p.add_argument("--clips", type=int, help="clips per video (default: the run's data.test_clips)")
    p.add_argument("--store", help="the frame store (default: the run's data.store)")
    p.add_argument("--out", help="folder for the CSVs and PNGs (default: analysis/RUN_ID under the home)")
    p.add_argument("--device", default="cpu", help="e.g. cuda")
    p.add_argument("--no-log", action="store_true", help="do not log the files to the run")
    args = p.parse_args(argv)
    uri = tracking.tracking_uri(args.tracking_uri)
    try:
        run = tracking.training_run(uri, args.run)
        path, opts = tracking.run_checkpoint(run)
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
    stats = view_stats(model, cfg, store, split, clips, args.device)
    run_id = run.info.run_id
    out = Path(args.out or os.path.join(HOME, "analysis", run_id))
    files = write_analysis(stats, store.classes, out)
    print(f"[analyze] {split}: {int(stats.class_counts.sum())} clips of {int((stats.class_counts > 0).sum())} "
          f"classes, {clips} per video; files in {out}")
    print(summary(stats.layer_rows(), stats.class_rows(store.classes)))
    if not args.no_log:
        for f in files:
            tracking.client(uri).log_artifact(run_id, str(f), "analysis")
        print(f"[analyze] logged to run {args.run} ({run_id}) under analysis/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
