"""The Ray-free training core (train/core.py): torch only, and it trains."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cluster.local import free_port
from train.config import TrainConfig, load_config
from train.core import Step, TrainState, normalize, optimizer
from train.models import build_model, create_model, formulations

ROOT = Path(__file__).resolve().parents[2]


def test_normalize_gives_the_model_layout():
    clips = torch.randint(0, 256, (2, 4, 6, 6, 3), dtype=torch.uint8)
    x = normalize(clips, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    assert x.shape == (2, 3, 4, 6, 6) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    expect = (clips[1, 2, 3, 4, 1].float() / 255 - 0.4) / 0.25
    assert torch.allclose(x[1, 1, 2, 3, 4], expect, atol=1e-5)


def test_the_core_and_the_models_import_no_ray_mlflow_or_data_code():
    """What a bare GPU machine (torch only, the checkout on PYTHONPATH) runs: the core, the models,
    the throughput benchmark."""
    code = ("import sys, train.core, train.models, bench.train_throughput; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('ray', 'mlflow', 'pyarrow', 'fsspec', 'decord', 'cv2', 'simplejpeg', 'pipeline')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("arch", ["c2d", "cost_b"])
def test_the_core_learns_a_batch_in_a_few_steps(arch):
    """The demo's optimiser and step, with clipping, on one batch of 8 random clips: the loss falls."""
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny_synthetic.yaml",
                      ["data.store=unused", "optim.clip_grad=1", "optim.warmup_epochs=0.5", "trainer.num_workers=1"])
    model = build_model(arch, num_classes=4, blocks=(1, 1, 1, 1), width=8, pool2="none")
    opt, sched = optimizer(model, cfg, steps_per_epoch=10)
    step = Step.for_config(cfg, "cpu")
    clips = torch.randint(0, 256, (8, 4, 32, 32, 3), dtype=torch.uint8)
    labels = torch.arange(8) % 4
    losses = [float(step(model, opt, sched, clips, labels)) for _ in range(15)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    peak = cfg.optim.lr * cfg.trainer.batch_size / cfg.optim.lr_batch  # past the 5 warm-up steps, before the drop
    assert sched.get_last_lr()[0] == pytest.approx(peak)


GPU_BRANCHES = [
    ("cost_b", ["trainer.precision=bf16"]),  # CPU autocast to bfloat16
    ("cost_b", ["trainer.channels_last=true"]),  # channels-last-3d: CoST's 4-D kernel stays as it is
    ("cost_a", ["trainer.precision=bf16", "trainer.channels_last=true", "trainer.compile=true"]),
    *[(f"cost_{mode}", [f"model.cost_impl={impl}"]) for mode in "ab" for impl in formulations(mode)],
]


@pytest.mark.parametrize("arch,overrides", GPU_BRANCHES, ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_branch_a_gpu_run_takes_trains_on_cpu(arch, overrides):
    """What a GPU run switches on - bf16 autocast, channels-last-3d, torch.compile, each CoST
    formulation - through the core's step with gradient clipping: the loss is finite and falls."""
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny_synthetic.yaml",
                      ["data.store=unused", f"model.arch={arch}", "optim.clip_grad=1", "optim.warmup_epochs=0.5",
                       "trainer.num_workers=1", *overrides])
    step = Step.for_config(cfg, "cpu")
    model = step.place(create_model(cfg.model, 4))  # the demo's model
    assert step.channels_last == (cfg.trainer.channels_last is True)
    if step.channels_last:
        assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    # Dynamo's capture and AOT autograd, as on a GPU; inductor's C++ code generation, CPU-only and
    # ~1 min for this model, is left out (CUDA generates Triton code instead).
    net = torch.compile(model, backend="aot_eager", fullgraph=True) if cfg.trainer.compile else model
    opt, sched = optimizer(model, cfg, steps_per_epoch=10)
    clips = torch.randint(0, 256, (8, 8, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 4
    losses = [float(step(net, opt, sched, clips, labels)) for _ in range(12)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("warmup_epochs,milestones", [(0.0, [0.5, 0.75]), (0.5, [0.75]), (2.5, [0.3, 0.3])])
def test_the_lr_warms_up_linearly_then_drops_at_each_milestone(warmup_epochs, milestones):
    """For every parameter; CoST(a)'s view coefficients at optim.cost_a_lr_scale times the rest."""
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny_synthetic.yaml",
                      ["data.store=unused", f"optim.warmup_epochs={warmup_epochs}", f"optim.milestones={milestones}",
                       "optim.gamma=0.1", "trainer.epochs=4", "model.arch=cost_a", "optim.cost_a_lr_scale=30"])
    model = create_model(cfg.model, 4)
    opt, sched = optimizer(model, cfg, steps_per_epoch=10)  # the demo's global batch: 2 workers x 16
    coef = {id(p) for n, p in model.named_parameters() if n.endswith("alpha_logits")}
    assert [{id(p) for p in g["params"]} & coef for g in opt.param_groups] == [set(), coef]
    peak = cfg.optim.lr * cfg.trainer.batch_size * 2 / cfg.optim.lr_batch
    warmup = int(warmup_epochs * 10)
    for s in range(40):
        want = peak * 0.1 ** sum(s >= int(m * 40) for m in milestones)  # both drops at once where they coincide
        if s < warmup:
            want *= 0.1 + 0.9 * s / warmup
        assert sched.get_last_lr() == pytest.approx([want, 30 * want]), s
        opt.step()
        sched.step()


def test_a_train_state_restored_from_its_state_dict_goes_on_as_if_never_stopped():
    """What a checkpoint holds: 3 steps, the state saved and restored into a fresh run, 3 more steps
    give the same weights, learning rate and counters as 6 steps in one go."""
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny_synthetic.yaml", ["data.store=unused"])
    clips = torch.randint(0, 256, (4, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(4) % 4
    step = Step.for_config(cfg, "cpu")

    def fresh(state: dict | None = None) -> TrainState:
        torch.manual_seed(0)
        model = build_model("cost_a", num_classes=4, blocks=(1, 1, 1, 1), width=8, pool2="none", dropout=0.0)
        if state:
            model.load_state_dict(state["model"])
        ts = TrainState(model, model, *optimizer(model, cfg, steps_per_epoch=4))
        if state:
            ts.restore(state)
        return ts

    whole = fresh()
    for _ in range(6):
        whole.train_step(step, clips, labels)
    first = fresh()
    for _ in range(3):
        first.train_step(step, clips, labels)
    first.val = {"val_top1": 0.5}
    second = fresh(first.state_dict())
    for _ in range(3):
        second.train_step(step, clips, labels)
    assert (second.step, second.epoch_step, second.val) == (whole.step, whole.epoch_step, {"val_top1": 0.5}) == \
        (6, 6, second.val)
    assert second.sched.get_last_lr() == whole.sched.get_last_lr()
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def _ddp_gradients(rank: int, port: int, out: str) -> None:
    """One rank of a 2-process gloo group: DDP with small buckets and bf16 gradient compression;
    saves its gradients, and the fp32 average that plain DDP would give, computed locally."""
    import os

    import torch.distributed as dist

    from train.core import compress_gradients

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = build_model("cost_b", num_classes=4, blocks=(1, 1, 1, 1), width=8, pool2="none", dropout=0.0)
    clips = [torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(r)) for r in range(2)]
    expect = []
    for x in clips:  # each rank's own gradients, summed and halved: the fp32 all-reduce
        model.zero_grad()
        model(x).square().mean().backward()
        expect.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad()
    net = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.01)
    compress_gradients(net)
    net(clips[rank]).square().mean().backward()
    fp32 = [(a + b) / 2 for a, b in zip(*expect, strict=True)]
    torch.save({"got": [p.grad for p in model.parameters()], "fp32": fp32}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gradients_cross_the_group_as_bf16_and_average_as_fp32_would(tmp_path):
    """trainer.grad_compression=bf16 on gloo, as CPU runs use it: both ranks end with the same
    gradients, the fp32 average to bf16's precision and not exactly (they did travel as bf16)."""
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_gradients, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for a, b, fp32 in zip(ranks[0]["got"], ranks[1]["got"], ranks[0]["fp32"], strict=True):
        assert torch.equal(a, b) and a.dtype == torch.float32
        assert (a - fp32).abs().max() <= 2e-2 * fp32.abs().max()  # bf16: 8 bits of mantissa, ~0.4%
    assert any(not torch.equal(a, fp32) for a, fp32 in zip(ranks[0]["got"], ranks[0]["fp32"], strict=True))


def _ddp_step_warnings(rank: int, store: str, out: str) -> None:
    """A channels-last training step of every architecture in DDP (a group of one process, gloo);
    the warnings it raised, to ``out``. In a fresh process: torch gives DDP's warning once per process."""
    import warnings

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    step = Step("cpu", mean=(0.5,) * 3, std=(0.2,) * 3, channels_last=True)
    clips, labels = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8), torch.tensor([0, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for arch in ("c2d", "c3d", "cost_a", "cost_b"):
            model = step.place(build_model(arch, num_classes=2, blocks=(1, 1, 1, 1), width=8))
            net = nn.parallel.DistributedDataParallel(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            step(net, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), clips, labels)
    Path(out).write_text("\n".join(str(w.message) for w in caught))
    dist.destroy_process_group()


def test_channels_last_gradients_fit_ddps_buckets(tmp_path):
    """Every weight's gradient comes back in the weight's own strides (1x1x1 kernels included, whose
    layout is ambiguous), so DDP copies none and does not warn "Grad strides do not match"."""
    import torch.multiprocessing as mp

    step = Step("cpu", mean=(0.5,) * 3, std=(0.2,) * 3, channels_last=True)
    model = step.place(build_model("c2d", num_classes=2, blocks=(1, 1, 1, 1), width=8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
         torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8), torch.tensor([0, 1]))
    assert model.layer1[0].conv1.weight.shape[2:] == (1, 1, 1)
    assert [n for n, p in model.named_parameters() if p.grad.stride() != p.stride()] == []

    mp.start_processes(_ddp_step_warnings, args=(str(tmp_path / "store"), str(tmp_path / "warnings")), nprocs=1,
                       start_method="spawn")
    assert "Grad strides" not in (tmp_path / "warnings").read_text()


def _accumulated_step(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a gloo group of ``world``: one DDP step in which ranks 0 and 1 each add up 2
    batches of 2 clips (their half of 8) and any other rank waits, stepping on a stand-in clip
    weighted 0 (train/elastic.py); its parameters after the step, and how many bucket all-reduces
    that step and a one-batch step each made."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model("cost_b", num_classes=4, blocks=(1, 1, 1, 1), width=8, pool2="none", dropout=0.0)
    net = nn.parallel.DistributedDataParallel(model)
    calls = []

    def counted(group, bucket):  # DDP's own averaging, counted
        calls.append(1)
        return dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future().then(lambda f: f.value()[0])

    net.register_comm_hook(None, counted)
    clips, labels = accumulation_batch()
    mine = (clips[4 * rank:4 * rank + 4], labels[4 * rank:4 * rank + 4], 2, world / 4) if rank < 2 else \
        (torch.zeros_like(clips[:1]), labels[:1], 1, 0.0)
    step, opt = Step("cpu", mean=(0.5,) * 3, std=(0.2,) * 3), torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step(net, opt, sched, *mine)
    after, added_up = {n: p.detach().clone() for n, p in model.named_parameters()}, len(calls)
    step(net, opt, sched, *mine[:2])
    torch.save({"params": after, "added_up": added_up, "one": len(calls) - added_up}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def accumulation_batch() -> tuple[torch.Tensor, torch.Tensor]:
    clips = torch.randint(0, 256, (8, 4, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    return clips, torch.arange(8) % 4


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])  # 3: make test only
def test_batches_added_up_step_as_a_larger_group_would(world, tmp_path):
    """The global batch on fewer workers (trainer.global_batch): 2 workers adding up 2 batches of 2
    clips each take the same step as one worker adding up all 4 batches - the mean over 8 clips,
    BatchNorm over each batch of 2 - also beside a third worker that waits (4 batches do not share
    among 3); DDP all-reduces once per step, not once per batch."""
    import torch.multiprocessing as mp

    mp.start_processes(_accumulated_step, args=(world, free_port(), str(tmp_path)), nprocs=world,
                       start_method="spawn")
    torch.manual_seed(0)
    model = build_model("cost_b", num_classes=4, blocks=(1, 1, 1, 1), width=8, pool2="none", dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    Step("cpu", mean=(0.5,) * 3, std=(0.2,) * 3)(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                                                 *accumulation_batch(), 4)
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, p in model.named_parameters():
            assert torch.allclose(got["params"][name], p.detach(), atol=1e-6), (rank, name)
        assert got["added_up"] == got["one"] >= 1
