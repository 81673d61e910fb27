"""What network a multi-node run needs: the bandwidth per node that keeps data-parallel training at
a given scaling efficiency, from a step time and the model's gradient bytes.

    python bench/scaling.py                                  # ResNet-50 CoST(b) at the 650 clips/s goal
    python bench/scaling.py --clips-per-s 540 --arch c3d --depth 101

The model: DDP all-reduces every gradient once a step. NCCL's ring over P GPUs sends 2 (P-1) / P
times the gradient bytes through each node's network interfaces (the GPUs inside a node talk
over NVLink). Efficiency is step / (step + the all-reduce time not hidden behind compute), so 90%
leaves a ninth of a step exposed. Two bounds: no overlap (the whole all-reduce after the backward
pass) and full overlap with the backward pass (DDP's buckets, about 2/3 of a step).
"""

from __future__ import annotations

import argparse
import sys

from train.models import build_model

BACKWARD_SHARE = 2 / 3  # of a step: what DDP can hide the all-reduce behind
LINKS_GBPS = {"EFA, p5.48xlarge (32 x 100 Gbps)": 3200,
              "TCP, one flow in a cluster placement group (EC2's cap; NCCL's sockets open a few)": 10}


def needed_gbps(grad_bytes: float, step_s: float, nodes: int, gpus_per_node: int, efficiency: float,
                overlap: float) -> float:
    """Gbit/s per node so that the all-reduce left exposed costs at most (1 - efficiency) of the run."""
    ranks = nodes * gpus_per_node
    wire = 2 * (ranks - 1) / ranks * grad_bytes
    exposed = step_s * (1 / efficiency - 1)  # step / (step + exposed) = efficiency
    return wire * 8 / (exposed + overlap * step_s) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cost_b")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--clips-per-s", type=float, default=650.0, help="training clips/s of one GPU (default: the goal)")
    p.add_argument("--batch", type=int, default=8, help="clips per GPU per step (the paper: 8)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--efficiency", type=float, default=0.9)
    p.add_argument("--nodes", default="2,4,8")
    args = p.parse_args(argv)
    model = build_model(args.arch, num_classes=args.classes, depth=args.depth)
    params = sum(t.numel() for t in model.parameters() if t.requires_grad)
    step_s = args.batch / args.clips_per_s
    print(f"{args.arch} R{args.depth}: {params / 1e6:.1f}M parameters, {4 * params / 1e6:.0f} MB of fp32 gradients; "
          f"step {1e3 * step_s:.1f} ms ({args.batch} clips at {args.clips_per_s:g} clips/s per GPU); "
          f"{args.gpus_per_node} GPUs a node; Gbit/s per node for {args.efficiency:.0%} scaling efficiency")
    print(f"{'nodes':>5}  {'fp32, no overlap':>16}  {'bf16, no overlap':>16}  {'fp32, overlap':>13}  "
          f"{'bf16, overlap':>13}")
    for nodes in (int(n) for n in args.nodes.split(",")):
        cells = [needed_gbps(4 * params / (2 if bf16 else 1), step_s, nodes, args.gpus_per_node, args.efficiency,
                             BACKWARD_SHARE if overlap else 0.0)
                 for overlap in (False, True) for bf16 in (False, True)]
        print(f"{nodes:>5}  {cells[0]:>16,.0f}  {cells[1]:>16,.0f}  {cells[2]:>13,.0f}  {cells[3]:>13,.0f}")
    for name, gbps in LINKS_GBPS.items():
        print(f"against: {name}: {gbps:,} Gbit/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
