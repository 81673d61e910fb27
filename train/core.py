"""The training step without Ray, MLflow or the data pipeline: it imports only torch, so that it
runs, and is tested, anywhere torch does - a laptop, or a bare GPU machine with nothing else.

    step = Step.for_config(cfg, device)               # or Step(device, mean=..., std=..., ...)
    model = step.place(model)                         # on the device, in the step's memory layout
    opt, sched = optimizer(model, cfg, steps_per_epoch)  # lr for the config's global batch
    loss = step(net, opt, sched, clips, labels)       # uint8 (N, T, H, W, 3) clips, int64 labels
    loss = step(net, opt, sched, clips, labels, 4)    # the clips as 4 batches, their gradients added up

A Ray-free run keeps its state in a ``TrainState`` (``state.train_step(step, clips, labels)``), whose
``state_dict`` is what train/loop.py checkpoints.

The Ray Train loop (train/loop.py), bench/motion_grid.py and bench/train_throughput.py all train
through ``Step``: one forward / backward / clip / SGD step for every caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from train.models import to_channels_last

if TYPE_CHECKING:
    from train.config import TrainConfig


def normalize(clips: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) -> float (N, 3, T, H, W), (x/255 - mean) / std. The result is a
    permuted view of channels-last memory, i.e. already in ``torch.channels_last_3d`` layout."""
    x = clips.permute(0, 4, 1, 2, 3).float()
    shape = (1, 3, 1, 1, 1)
    m = torch.tensor(mean, device=x.device).view(shape) * 255
    s = torch.tensor(std, device=x.device).view(shape) * 255
    return (x - m) / s


class Step:
    """One training step on ``device``: normalise, forward (bf16 autocast, channels-last-3d),
    cross-entropy, backward, gradient clipping, SGD and scheduler steps.

    ``precision``: "auto" is bf16 autocast on CUDA and fp32 elsewhere, "bf16" autocasts on any
    device (CPU too), "fp32" never. ``channels_last``: None is on for CUDA only (on CPU it
    helps some models and not others: bench/RESULTS.md), True / False on any device."""

    def __init__(self, device: torch.device | str, *, mean: Sequence[float], std: Sequence[float],
                 clip_grad: float | None = None, precision: str = "auto", channels_last: bool | None = None) -> None:
        self.device = torch.device(device)
        self.mean, self.std, self.clip_grad = mean, std, clip_grad
        cuda = self.device.type == "cuda"
        # The loader's clips are channels-last already; DDP wants gradients in the model's own layout.
        self.channels_last = cuda if channels_last is None else channels_last
        self.memory_format = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        bf16 = precision == "bf16" or (precision == "auto" and cuda)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the step's device, in its memory layout."""
        model = model.to(self.device)
        return to_channels_last(model) if self.channels_last else model

    @classmethod
    def for_config(cls, cfg: TrainConfig, device: torch.device | str) -> Step:
        t = cfg.trainer
        return cls(device, mean=cfg.data.mean, std=cfg.data.std, clip_grad=cfg.optim.clip_grad,
                   precision=t.precision, channels_last=t.channels_last)

    def __call__(self, net: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 clips: torch.Tensor, labels: torch.Tensor, batches: int = 1, scale: float | None = None
                 ) -> torch.Tensor:
        """The step's loss (detached: reading it does not wait for the device unless asked). With
        ``batches`` > 1 the clips are that many batches, each forward on its own (BatchNorm sees one
        batch, as on a larger group) and their gradients added up, synchronised across DDP's workers
        once, after the last. Each batch's mean loss counts ``scale`` times (default 1 / batches:
        the mean over all); a worker that waits out an iteration steps on a stand-in with 0."""
        scale = 1 / batches if scale is None else scale
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=clips.device)
        for i, (part, part_labels) in enumerate(zip(clips.chunk(batches), labels.chunk(batches), strict=True)):
            x = normalize(part, self.mean, self.std).contiguous(memory_format=self.memory_format)
            with contextlib.nullcontext() if i == batches - 1 else no_sync(net):
                with self.autocast:
                    logits = net(x)
                part_loss = F.cross_entropy(logits.float(), part_labels) * scale
                part_loss.backward()
            loss += part_loss.detach()
        if self.clip_grad:
            nn.utils.clip_grad_norm_(net.parameters(), self.clip_grad)
        opt.step()
        sched.step()
        return loss


def no_sync(net: nn.Module):
    """DDP's no_sync() of ``net`` (maybe inside torch.compile's wrapper): gradients stay local until
    a backward outside it. A network without DDP synchronises nothing anyway."""
    ddp = getattr(net, "_orig_mod", net)
    return ddp.no_sync() if isinstance(ddp, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


def compress_gradients(net: nn.parallel.DistributedDataParallel) -> None:
    """All-reduce ``net``'s gradients as bfloat16: half the bytes on the wire, averaged in bf16 and
    written back in the gradients' own dtype. (torch's ``bf16_compress_hook`` does the same but
    refuses any backend other than NCCL, so CPU runs on gloo could neither use nor test it.)"""
    import torch.distributed as dist

    def hook(group, bucket):  # no annotations: DDP compares them to its own types, not to strings
        group = group or dist.group.WORLD
        grads = bucket.buffer()
        sent = grads.to(torch.bfloat16).div_(group.size())
        future = dist.all_reduce(sent, group=group, async_op=True).get_future()
        return future.then(lambda f: grads.copy_(f.value()[0]))

    net.register_comm_hook(None, hook)


@dataclass
class TrainState:
    """A run in progress, all that a checkpoint holds: the model, the network that trains it (the
    model itself, or its DDP or compiled wrapper), the optimiser, the scheduler and the counters."""
    model: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0  # epochs done
    epoch_step: int = 0  # steps done in the epoch under way
    step: int = 0  # steps done in all
    val: dict = field(default_factory=dict)  # the last validation's metrics
    # The best validation so far: its val_top1, epoch and step, and "path", its checkpoint's (once known).
    best: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return dict(model=self.model.state_dict(), optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(),
                    epoch=self.epoch, epoch_step=self.epoch_step, step=self.step, val=dict(self.val),
                    best=dict(self.best))

    def restore(self, state: dict) -> None:
        """The optimiser, scheduler and counters of a ``state_dict`` (the model's weights are loaded
        before a wrapper is built around it)."""
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch, self.epoch_step, self.step = state["epoch"], state["epoch_step"], state["step"]
        self.val, self.best = dict(state.get("val", {})), dict(state.get("best", {}))

    def train_step(self, step: Step, clips: torch.Tensor, labels: torch.Tensor, batches: int = 1,
                   scale: float | None = None) -> torch.Tensor:
        """One step of ``step`` on this state's network (``batches`` added up, each ``scale`` times),
        the counters moved on; the loss, detached."""
        loss = step(self.net, self.opt, self.sched, clips, labels, batches, scale)
        self.step, self.epoch_step = self.step + 1, self.epoch_step + 1
        return loss


def optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
              ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD at ``optim.lr`` scaled to the global batch (at any world size); per step, a linear warm-up
    from a tenth over ``optim.warmup_epochs``, and a decay by ``optim.gamma`` at each milestone
    (a fraction of all steps). CoST(a)'s view coefficients at ``optim.cost_a_lr_scale`` times that."""
    from torch.optim import lr_scheduler

    o, t = cfg.optim, cfg.trainer
    lr = o.lr * t.clips_per_iteration() / o.lr_batch
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # CoST(a)'s view coefficients get a group of their own only when their lr differs, so that the
    # checkpoints of one group still resume.
    apart = {n for n, _ in named if n.endswith("alpha_logits")} if o.cost_a_lr_scale != 1 else set()
    groups = [{"params": [p for n, p in named if n not in apart]}]
    if apart:
        groups.append({"params": [p for n, p in named if n in apart], "lr": lr * o.cost_a_lr_scale})
    opt = torch.optim.SGD(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    total, warmup = steps_per_epoch * t.epochs, int(o.warmup_epochs * steps_per_epoch)
    scheds = [lr_scheduler.MultiStepLR(opt, [int(m * total) for m in o.milestones], gamma=o.gamma)]
    if warmup:  # LinearLR over no steps would still start at its start factor
        scheds.append(lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup))
    return opt, lr_scheduler.ChainedScheduler(scheds, opt)
