"""Classify video files with a trained model: the paper's multi-clip test protocol on each video.

    python results/predict.py --run NAME|RUN_ID video.mp4 [more.mp4 ...]
    python results/predict.py --checkpoint RUNS/NAME/checkpoint_... video.mp4 [--json]

Each video is decoded as the model's frame store was prepared (frame step, short side, JPEG
quality, recorded in the checkpoint), in a child process so that a broken file cannot crash this
one; then ``data.test_clips`` clips spread over the video, the centre crop (or 3 crops), softmax
averaged. Prints the top-5 classes with probabilities and, for CoST models, the share of the
temporal views (T-W + T-H) in the prediction's coefficients. A video that cannot be read gets a
one-line error; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.decode import DecodeError, IsolatedDecoder
from pipeline.storage import endpoint_options
from pipeline.store import StoreError
from train import tracking
from train.augment import PROTOCOLS
from train.checkpoints import CheckpointError, load_state, model_from_state
from train.config import ConfigError, TrainConfig, from_dict
from train.data import video_clips
from train.evaluate import video_probs
from train.models.views import VIEWS, ViewStats


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a training run's name (as the console printed it) or MLflow run id: "
                                      "its best checkpoint")
    source.add_argument("--checkpoint", help="a checkpoint directory of a training run (or its state.pt)")
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--tracking-uri", help="with --run; default: $MLFLOW_TRACKING_URI, else the local SQLite store")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint for an s3:// --checkpoint")
    p.add_argument("--top", type=int, default=5, help="classes to show (default 5)")
    p.add_argument("--clips", type=int, help="clips per video (default: the model's data.test_clips)")
    p.add_argument("--protocol", choices=PROTOCOLS, help="the test's spatial views (default: the model's "
                                                          "data.test_protocol)")
    p.add_argument("--device", default="cpu", help="e.g. cuda")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before one video's decode is abandoned")
    p.add_argument("--json", action="store_true", help="one JSON object per video instead of text")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, dict, TrainConfig, dict]:
    """(model in eval mode on the device, state, its config, the store's preparation parameters)."""
    if args.run:
        path, opts = tracking.run_checkpoint(tracking.training_run(tracking.tracking_uri(args.tracking_uri), args.run))
    else:
        path, opts = args.checkpoint, endpoint_options(args.s3_endpoint)
    state = load_state(path, opts)
    cfg = from_dict(TrainConfig, state["config"])
    return model_from_state(state).to(args.device), state, cfg, state["store_params"]


def predict(model: torch.nn.Module, path: str, cfg: TrainConfig, params: dict, decoder: IsolatedDecoder, *,
            clips: int, protocol: str, device: str) -> tuple[np.ndarray, dict[str, float] | None]:
    """(class probabilities, the mean view shares over CoST layers or None) for one video file."""
    video = decoder.encode_video(path, frame_step=params["frame_step"], short_side=params["short_side"],
                                 quality=params["quality"])
    phases = params["num_phases"]
    rows = {p: video.jpegs[p::phases] for p in range(min(phases, len(video.jpegs)))}
    d = cfg.data
    views = video_clips(rows, phases, video.height, video.width, frames=d.frames, clips=clips, protocol=protocol,
                        short_side=d.eval_short_side, crop=d.crop)
    with ViewStats(model, 1) as stats:
        probs = video_probs(model, torch.from_numpy(views[None]).to(device), d)[0].cpu().numpy()
        if not stats:
            return probs, None
        stats.update(np.zeros(len(views), np.int64))
    mean = stats.layer_rows()[-1]
    return probs, {v: float(mean[v]) for v in VIEWS}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, state, cfg, params = load(args)
    except (ConfigError, CheckpointError, StoreError, OSError) as e:
        print(f"predict: {e}", file=sys.stderr)
        return 2
    classes = state["classes"]
    clips, protocol = args.clips or cfg.data.test_clips, args.protocol or cfg.data.test_protocol
    failed = 0
    with IsolatedDecoder(timeout=args.timeout) as decoder:
        for path in args.videos:
            try:
                probs, shares = predict(model, path, cfg, params, decoder, clips=clips, protocol=protocol,
                                        device=args.device)
            except DecodeError as e:
                print(f"predict: {path}: cannot read the video ({e})", file=sys.stderr)
                failed += 1
                continue
            top = np.argsort(-probs)[:args.top]
            if args.json:
                print(json.dumps({"video": path, "top": [{"label": classes[i], "prob": round(float(probs[i]), 4)}
                                                         for i in top], "view_shares": shares}))
                continue
            print(f"{path}: {classes[top[0]]}")
            for rank, i in enumerate(top, 1):
                print(f"  {rank}. {classes[i]:<32} {probs[i]:7.2%}")
            if shares:
                temporal = shares["T-W"] + shares["T-H"]
                print(f"  temporal views: {temporal:.0%} of the coefficients (" +
                      ", ".join(f"{v} {s:.0%}" for v, s in shares.items()) + ")")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
