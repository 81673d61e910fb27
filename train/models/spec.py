"""What a video ResNet is made of, and the one check of it. Imports nothing heavy: the driver checks
a config with it before Ray or torch start.

    spec = ModelSpec(arch="cost_b", depth=101)
    model = create_model(spec, num_classes=400)  # train/models/resnet.py; raises on any problem()

``problems(spec)`` lists every setting out of range as (field, text); training's config names them
as ``model.<field>`` and refuses them before Ray starts, the builder raises on the first, and a
CoST layer made on its own checks its settings with ``cost_problems``, the same check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

UNITS = {"c2d": "2d", "c3d": "c3d", "cost_a": "cost_a", "cost_b": "cost_b"}  # arch -> its temporal units
ARCHS = tuple(UNITS)
DEPTHS = (50, 101)
POOL2 = ("2x1x1", "3x1x1", "none")
IMPLS = ("auto", "views", "stacked", "fold", "composed")  # train/models/cost.py
A_INITS = ("spatial", "equal")
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
TEMPORAL = {  # the published tables: which units of each stage are temporal (c3d, CoST), paper Table 1
    50: ((0, 1, 0), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (1, 0, 1)),
    101: ((0, 1, 0), (1, 0, 1, 0), (1, 0) * 11 + (1,), (0, 1, 0)),
}


@dataclass(kw_only=True)
class ModelSpec:
    arch: Literal["c2d", "c3d", "cost_a", "cost_b"] = "cost_b"
    depth: Literal[50, 101] = 50
    blocks: tuple[int, ...] | None = None  # per-stage units instead of depth (small models)
    # Which units of each stage are temporal (0/1 per unit); null: the published table of the depth,
    # or every unit of custom blocks.
    temporal: tuple[tuple[int, ...], ...] | None = None
    width: int = 64
    # The stem and temporal pools (train/models/resnet.py); defaults: the authors' 8-frame trunk. Their
    # 32-frame models: conv1_t 5, conv1_stride_t 2, pool1_t 2, pool1_stride_t 2. Table 1: pool1_t 3, pool2 3x1x1.
    conv1_t: int = 1  # conv1's temporal kernel (odd)
    conv1_stride_t: Literal[1, 2] = 1
    pool1_t: Literal[1, 2, 3] = 1
    pool1_stride_t: Literal[1, 2] = 1
    # Spatial strides of conv1 and pool1 (2 and 2: the paper's H/4 at res2). 1 keeps detail in small
    # inputs, where objects and their steps between frames are a few pixels (bench/RESULTS.md, motion grid).
    conv1_stride_s: Literal[1, 2] = 2
    pool1_stride_s: Literal[1, 2] = 2
    # conv1's kernels sum to zero: blind to a clip's colour, for small models trained from scratch on
    # objects of any colour over any background (bench/RESULTS.md, motion grid). Not with ImageNet weights.
    conv1_zero_mean: bool = False
    pool2: Literal["2x1x1", "3x1x1", "none"] = "2x1x1"  # the temporal pool after res2
    dropout: float = 0.5
    cost_shared: bool = True  # false: each view its own 3x3 kernel (the paper's Table 3 ablation)
    # CoST(a)'s coefficients at the start: "spatial" H-W 0.67 / T-W 0.17 / T-H 0.17 (the authors', close
    # to the 2D network of ImageNet weights); "equal" a third each, for small models from scratch
    # (bench/RESULTS.md, motion grid). Other archs have no such coefficients.
    cost_a_init: Literal["spatial", "equal"] = "spatial"
    cost_impl: Literal["auto", "views", "stacked", "fold", "composed"] = "auto"  # train/models/cost.py
    frozen_bn: bool = False  # BatchNorm statistics and affine frozen (fine-tuning)


def problems(s: ModelSpec) -> list[tuple[str, str]]:
    """Every setting of ``s`` that no model can be built with: (field, what is wrong, in words)."""
    out = []

    def need(ok: bool, key: str, words: str) -> None:
        if not ok:
            out.append((key, f" must be {words}, got {getattr(s, key)!r}"))

    if s.arch not in UNITS:
        out.append(("arch", f": unknown arch {s.arch!r}; choose one of {', '.join(ARCHS)}"))
    stages = STAGE_BLOCKS.get(s.depth) if s.blocks is None else tuple(s.blocks)
    if s.blocks is None:
        need(stages is not None, "depth", f"one of {', '.join(map(str, DEPTHS))} (or give blocks)")
    else:
        need(len(stages) == 4 and min(stages) >= 1, "blocks", "four stages of >= 1 units each, or null for depth's")
    if s.temporal is not None and stages is not None and (
            [len(t) for t in s.temporal] != list(stages) or not {x for t in s.temporal for x in t} <= {0, 1}):
        out.append(("temporal", f": the table {s.temporal} does not match blocks {stages}: one 0 or 1 per "
                                "residual unit, per stage"))
    need(s.width >= 1, "width", ">= 1")
    need(s.conv1_t >= 1 and s.conv1_t % 2 == 1, "conv1_t", "odd and >= 1 (padded to keep T)")
    need(s.pool1_t in (1, 2, 3), "pool1_t", "1, 2 or 3")
    for key in ("conv1_stride_t", "pool1_stride_t", "conv1_stride_s", "pool1_stride_s"):
        need(getattr(s, key) in (1, 2), key, "1 or 2")
    need(s.pool2 in POOL2, "pool2", "one of " + ", ".join(POOL2))
    need(0 <= s.dropout < 1, "dropout", "in [0, 1)")
    if not s.cost_shared and not s.arch.startswith("cost"):
        out.append(("cost_shared", f": false unshares CoST's view kernels; arch {s.arch!r} has no CoST layer "
                                   "(use cost_a or cost_b)"))
    return out + cost_problems({"cost_a": "a", "cost_b": "b"}.get(s.arch), s.cost_impl, s.cost_a_init)


def cost_problems(mode: str | None, impl: str, a_init: str) -> list[tuple[str, str]]:
    """The CoST settings no layer in ``mode`` ('a', 'b', or None in a model without CoST layers) can
    be built with, by ModelSpec's keys: ``problems`` asks for a whole model, CoST for itself."""
    out = []
    if mode not in (None, "a", "b"):
        out.append(("mode", f" must be 'a' or 'b', got {mode!r}"))
    if a_init not in A_INITS:
        out.append(("cost_a_init", f" must be one of {', '.join(A_INITS)}, got {a_init!r}"))
    if impl not in IMPLS:
        out.append(("cost_impl", f" must be one of {', '.join(IMPLS)}, got {impl!r}"))
    elif impl == "composed" and mode != "a":
        out.append(("cost_impl", ": 'composed' is for CoST(a) only (arch cost_a): CoST(b) needs each view's "
                                 "output for its coefficients; use auto, views, stacked or fold"))
    return out


