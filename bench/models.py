"""Forward+backward clips/s of C2D, C3D, CoST(a), CoST(b) side by side, and of the CoST layer's
formulations. Imports only torch: it runs on the GPU machine too.

    python bench/models.py                       # CPU, tiny trunk (seconds)
    python bench/models.py --depth 50 --size 112 --batch 2
    python bench/models.py --device cuda --depth 50 --size 224 --batch 32 --bf16 --channels-last

Prints, per architecture, parameters (M), clips/s and the ratio to C2D; then, for one CoST layer
of ResNet-50's res3 shape, the time of each formulation (train/models/cost.py: views, stacked,
fold, and composed for CoST(a)) relative to C2D's 1x3x3 convolution.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

# The GPU machine runs this from a bare checkout (no project install): import from the repo root.
from train.models import ARCHS, CoST, build_model, formulations, to_channels_last


def timed(step: Callable[[], None], iters: int, warmup: int, device: str) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def model_table(args: argparse.Namespace) -> None:
    kwargs = dict(depth=args.depth) if args.depth else dict(blocks=(1, 1, 1, 1), width=16)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    amp = torch.autocast(args.device, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    rows = []
    variants = [(a, {}) for a in ARCHS] + [("cost_a", {"cost_impl": "views" if args.device == "cuda"
                                                        else "composed"})]
    for arch, extra in variants:
        model = build_model(arch, num_classes=400, **kwargs, **extra).to(args.device)
        if args.channels_last:
            model = to_channels_last(model)

        def step(model=model) -> None:
            with amp:
                loss = model(x).float().logsumexp(1).mean()
            loss.backward()
            model.zero_grad(set_to_none=True)

        sec = timed(step, args.iters, args.warmup, args.device)
        label = arch + (f" ({extra['cost_impl']})" if extra else "")
        rows.append((label, sum(p.numel() for p in model.parameters()) / 1e6, args.batch / sec))
        del model
    base = rows[0][2]
    name = f"ResNet-{args.depth}" if args.depth else "tiny trunk (1,1,1,1) width 16"
    print(f"\nforward+backward, {name}, {args.batch}x3x{args.frames}x{args.size}x{args.size}, "
          f"{args.device}{', bf16' if args.bf16 else ''}{', channels-last-3d' if args.channels_last else ''}")
    print(f"{'arch':17} {'params(M)':>10} {'clips/s':>10} {'vs C2D':>8}")
    for arch, params, rate in rows:
        print(f"{arch:17} {params:10.2f} {rate:10.2f} {rate / base:8.2f}")


def layer_table(args: argparse.Namespace) -> None:
    """One res3-shaped layer: C=128, T=4, 28x28 at 224 input (scaled with --size)."""
    c, t, s = 128, max(args.frames // 2, 1), max(args.size // 8, 4)
    x = torch.randn(args.batch, c, t, s, s, device=args.device, requires_grad=True)
    options: dict[str, nn.Module] = {"C2D 1x3x3 conv": nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1), bias=False)}
    for mode in "ab":
        for impl in formulations(mode):
            options[f"CoST({mode}) {impl}"] = CoST(c, c, mode=mode, impl=impl)
    amp = torch.autocast(args.device, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    times = {}
    for name, layer in options.items():
        layer.to(args.device)

        def step(layer=layer) -> None:
            with amp:
                out = layer(x)
            out.float().square().mean().backward()
        times[name] = timed(step, args.iters, args.warmup, args.device)
    print(f"\none CoST layer, forward+backward, x ({args.batch}, {c}, {t}, {s}, {s})")
    print(f"{'formulation':18} {'ms':>9} {'vs C2D':>8}")
    for name, sec in times.items():
        print(f"{name:18} {sec * 1e3:9.2f} {sec / times['C2D 1x3x3 conv']:8.2f}")


def common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The model-size and timing options the model benchmarks share."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--depth", type=int, default=0, help="50 or 101; 0 = tiny trunk for CPU")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    p = common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="channels-last-3d memory format")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_table(args)
    layer_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
