"""Training-step throughput of C2D, C3D, CoST(a) and CoST(b): the training core's step (train/core.py:
normalise, forward, backward, gradient clipping, SGD) per batch of uint8 clips, eager and
``torch.compile``d, one after another in one process. Imports only torch.

    python bench/train_throughput.py                     # CPU, tiny trunk, eager (seconds)
    python bench/train_throughput.py --device cuda --depth 50 --size 224 --batch 32 --modes eager,compiled
    python bench/train_throughput.py --cost-impls views,stacked,fold,composed   # every CoST formulation
    python bench/train_throughput.py --ddp --channels-last     # as the demo's workers train: DDP, channels-last

On CUDA the step runs as training does (the Ray Train loop calls the same ``Step``): bf16
autocast, channels-last-3d model and input. Prints clips/s per (architecture, mode), the ratio to
compiled C2D (to eager C2D when compiled is not run) and the peak GPU memory; CoST rows name their
formulation (train/models/cost.py; ``composed`` is CoST(a) only); the table heads with the machine,
the versions and the date, ready for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

# The GPU machine runs this from a bare checkout (no project install): import from the repo root.
from bench.models import common_args, timed
from train.core import Step
from train.models import ARCHS, IMPLS, build_model, formulations


def variants(archs: list[str], impls: list[str]) -> list[tuple[str, str]]:
    """(arch, CoST formulation) pairs to measure: C2D and C3D once, CoST archs per formulation."""
    return [(a, i) for a in archs for i in (impls if a.startswith("cost") else ["-"])
            if i in ("-", "auto") or i in formulations(a[-1])]


def measure(arch: str, impl: str, mode: str, args: argparse.Namespace) -> tuple[float, float | None]:
    """(clips/s, peak GPU memory in GiB or None on CPU) of one architecture's training step."""
    cuda = args.device == "cuda"
    kwargs = dict(depth=args.depth) if args.depth else dict(blocks=(1, 1, 1, 1), width=16)
    if impl != "-":
        kwargs["cost_impl"] = impl
    train_step = Step(args.device, mean=(0.45,) * 3, std=(0.225,) * 3, clip_grad=40.0,
                      precision="fp32" if args.fp32 else "auto", channels_last=args.channels_last or None)
    model = train_step.place(build_model(arch, num_classes=400, **kwargs))
    net = ddp(model, args.device) if args.ddp else model
    net = torch.compile(net) if mode == "compiled" else net
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    x = torch.randint(0, 256, (args.batch, args.frames, args.size, args.size, 3), dtype=torch.uint8,
                      device=args.device)
    y = torch.randint(0, 400, (args.batch,), device=args.device)

    def step() -> None:
        train_step(net, opt, sched, x, y)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup = args.warmup + (2 if mode == "compiled" else 0)  # compilation happens in the first calls
    sec = timed(step, args.iters, warmup, args.device)
    return args.batch / sec, torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def ddp(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` in DistributedDataParallel as a Ray Train worker holds it, in a group of this one
    process: every gradient passes through DDP's buckets, with no network in the way."""
    import tempfile

    import torch.distributed as dist

    if not dist.is_initialized():
        store = tempfile.NamedTemporaryFile(delete=False).name
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"file://{store}", rank=0,
                                world_size=1)
    return torch.nn.parallel.DistributedDataParallel(model)


def main(argv: list[str] | None = None) -> int:
    p = common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--modes", default="eager", help="comma-separated: eager, compiled")
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset of " + ", ".join(ARCHS))
    p.add_argument("--cost-impls", default="auto", help="comma-separated CoST formulations: " + ", ".join(IMPLS))
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--channels-last", action="store_true", help="channels-last-3d on CPU too (as on CUDA)")
    p.add_argument("--ddp", action="store_true", help="the model in DistributedDataParallel, as training holds it")
    args = p.parse_args(argv)
    modes, archs, impls = args.modes.split(","), args.archs.split(","), args.cost_impls.split(",")
    if set(modes) - {"eager", "compiled"} or set(archs) - set(ARCHS) or set(impls) - set(IMPLS):
        p.error("--modes takes eager and/or compiled; --archs a subset of " + ", ".join(ARCHS) +
                "; --cost-impls a subset of " + ", ".join(IMPLS))
    torch.manual_seed(0)
    rows = [(arch, impl, mode, *measure(arch, impl, mode, args))
            for arch, impl in variants(archs, impls) for mode in modes]
    rates = {(a, m): r for a, _, m, r, _ in rows}
    base_mode = "compiled" if "compiled" in modes else "eager"
    base = rates.get(("c2d", base_mode))
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    name = f"ResNet-{args.depth}" if args.depth else "tiny trunk (1,1,1,1) width 16"
    cuda = args.device == "cuda"
    precision = ("bf16 autocast" if cuda and not args.fp32 else "fp32") + (
        ", channels-last-3d" if cuda or args.channels_last else "") + (", DDP" if args.ddp else "")
    print(f"\ntraining step (forward, backward, clipping, SGD), {name}, batch {args.batch} x 3x{args.frames}x"
          f"{args.size}x{args.size}, {precision}\n{where}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    print(f"{'arch':8} {'cost impl':9} {'mode':9} {'clips/s':>9} {f'vs {base_mode} C2D':>16} {'peak GiB':>9}")
    for arch, impl, mode, rate, peak in rows:
        ratio = f"{rate / base:.2f}" if base else "-"
        memory = f"{peak:.2f}" if peak is not None else "-"
        print(f"{arch:8} {impl:9} {mode:9} {rate:9.2f} {ratio:>16} {memory:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
