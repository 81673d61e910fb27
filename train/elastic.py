"""Elastic and preemptible training: what a worker does about the size of its group.

``trainer.num_workers: [min, max]`` lets Ray Train start a run with the workers that fit, go on
with fewer when a node goes and grow back when nodes return (``ScalingConfig(num_workers=(min,
max))``); each change restarts the group from the latest checkpoint. The paper's protocol holds on
any group: an iteration is always ``trainer.global_batch`` clips in batches of ``batch_size`` (each
GPU's BatchNorm batch), shared evenly by the largest number of workers that can share them
(``TrainerConfig.training_workers``), each adding up its batches; DDP averages over the whole
group, so each batch's loss counts world / batches. The other workers, if any, wait out the
iteration on a stand-in batch weighted 0. The lr and its schedule count iterations, which do not
change with the group.

A spot node's reclaim notice (Ray's node drain, cluster/spot_notice.py) is seen at the next log
window: the run saves a checkpoint then, and the restart resumes from it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import ray.train
import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from train.core import TrainState

# ``w`` below is train/loop.py's Worker (not imported: loop imports this module).


def next_iteration(w, batches: Iterator[dict] | None) -> tuple[dict, int, float] | None:
    """This worker's clips of the next iteration, the batches they make, and the weight of each
    batch's loss (DDP averages over the whole group); None when the stream has ended. A waiting
    worker (``batches`` None) steps on one blank clip with weight 0, so that every worker
    all-reduces each iteration."""
    t, d = w.cfg.trainer, w.cfg.data
    parts, per_iteration = t.training_workers(w.world), t.batches_per_iteration()
    if batches is None:
        batch = {"clip": torch.zeros((1, d.frames, d.crop, d.crop, 3), dtype=torch.uint8, device=w.device),
                 "label": torch.zeros(1, dtype=torch.int64, device=w.device)}
    else:
        batch = next(batches, None)
    if parts < w.world:  # the waiting workers have no stream: every worker learns whether it went on
        going = torch.tensor([batch is not None], dtype=torch.int32, device=w.device)
        dist.all_reduce(going, op=dist.ReduceOp.MIN)
        batch = batch if going.item() else None
    if batch is None:
        return None
    if batches is None:
        return batch, 1, 0.0
    return batch, per_iteration // parts, w.world / per_iteration


def notice_of_preemption(w, ts: TrainState) -> bool:
    """Whether a node of the group has just been given notice (a spot reclaim: Ray's node drain
    with a deadline, cluster/spot_notice.py) that this attempt did not act on yet. A barrier over
    the workers: every rank asks at the same steps."""
    info = ray.train.get_preemption_info()
    if info is None or w.noticed:
        return False
    w.noticed = True
    left = "" if info.deadline_ms is None else f", {info.deadline_ms / 1000 - time.time():.0f} s from now"
    w.say(f"node(s) {', '.join(n[:8] for n in info.preempted_node_ids)} to be reclaimed{left}: a checkpoint "
          f"at step {ts.step}")
    return True


def log_group(w, ts: TrainState, saved: dict | None) -> None:
    """The group's size, ``world_size``, at each (re)start of the workers. A restart inside this job
    (a worker or node lost, or an elastic resize) also logs ``restart_lost_s``: the time since the
    checkpoint it resumes from, i.e. the work to redo plus the restart."""
    t = w.cfg.trainer
    metrics = {"world_size": w.world, "training_workers": t.training_workers(w.world)}
    if saved and saved.get("saved_at", 0) >= w.ctx.started:
        metrics["restart_lost_s"] = time.time() - saved["saved_at"]
        w.say(f"restarted on {w.world} worker(s) (the checkpoint's group had {saved['world']}): "
              f"{metrics['restart_lost_s']:.0f} s since that checkpoint; each iteration stays "
              f"{t.clips_per_iteration()} clips")
    if metrics["training_workers"] < w.world:
        w.say(f"{metrics['training_workers']} of the {w.world} workers train: {t.batches_per_iteration()} batches "
              f"of {t.batch_size} an iteration do not share evenly among {w.world}; the others wait for the "
              "group to resize")
    w.log(metrics, ts.step)
