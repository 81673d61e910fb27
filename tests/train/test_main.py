"""train/main.py end to end on the session's Ray cluster and MLflow server, on a synthetic store:
DDP training that learns, tracking, eval-only, a killed worker, resume in a terminal, bad configs. (`ray job submit`
runs on the 2-node cluster of tests/cluster/test_local_cluster.py.)"""

import contextlib
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import mlflow
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

import train.main
from pipeline.prepare import main as prepare
from pipeline.store import Store
from train import tracking
from train.data import clips_per_epoch
from train.main import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny_synthetic.yaml")
# The demo's model on a cheaper task: 4-frame clips of the appearance store, flips on, the paper's lr
# drops at 1/2 and 3/4 of training, validated every epoch.
SMALL = ["data.frames=4", "data.stride=8", "data.test_clips=4", "data.flip=true", "optim.milestones=[0.5,0.75]",
         "optim.warmup_epochs=0.5", "trainer.val_every=1", "trainer.checkpoint_every=50", "data.clips_per_video=8"]
STEPS_PER_EPOCH = 12  # 48 videos x 8 clips each, over 2 workers x 16 clips


@pytest.fixture
def store(appearance_store) -> str:
    return appearance_store


def args(store: str, mlflow_server: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", CONFIG, f"data.store={store}", f"tracking.uri={mlflow_server}", "tracking.experiment=tests",
            f"trainer.storage_path={tmp_path / 'runs'}", *SMALL, *extra]


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


# What a GPU run switches on, on CPU: bf16 autocast, channels-last-3d (CoST(b)'s 4-D kernel
# included), gradients all-reduced as bf16 in small buckets. torch.compile: tests/train/test_core.py.
GPU_SETTINGS = ["trainer.precision=bf16", "trainer.channels_last=true", "trainer.grad_compression=bf16",
                "trainer.bucket_mb=0.5"]


@contextlib.contextmanager
def a_worker_killed(uri: str, name: str, run_dir: Path, after_step: int, elastic) -> Iterator[dict]:
    """A training worker SIGKILLed from outside, as a lost machine loses it: once Ray Train has
    registered a checkpoint at ``after_step`` or later (bench/elastic.py's reader of its snapshot)
    and rank 0 has logged a later step. Yields {"logged": the last step logged before the kill}."""
    killed: dict = {}
    files, client = fsspec.filesystem("file"), MlflowClient(uri)

    def watch() -> None:
        while "logged" not in killed and not done.is_set():
            try:
                registered = elastic.checkpoint_step(files, str(run_dir)) if run_dir.exists() else None
            except (OSError, ValueError):  # a snapshot half written, or a checkpoint removed meanwhile
                registered = None
            exp = client.get_experiment_by_name("tests")  # looked up, never created here
            found = tracking.find_run(uri, exp.experiment_id, name) if exp else None
            logged = [m.step for m in client.get_metric_history(found.info.run_id, "loss")] if found else []
            if registered is not None and registered >= after_step and logged and max(logged) > registered:
                workers = [p for p in psutil.process_iter(["cmdline"])
                           if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
                killed["logged"] = max(logged)
                workers[-1].kill()
            time.sleep(0.2)

    done = threading.Event()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        done.set()
        thread.join()


@pytest.mark.slow
def test_ddp_training_learns_is_tracked_and_recovers_a_killed_worker(store, mlflow_server, tmp_path, capsys, runs,
                                                                    bench_script):
    assert clips_per_epoch(Store(store), "train", 8) == STEPS_PER_EPOCH * 2 * 16
    with a_worker_killed(mlflow_server, "learn", tmp_path / "runs" / "learn", 18, bench_script("elastic")) as killed:
        assert main(args(store, mlflow_server, tmp_path, "name=learn", "trainer.epochs=4", "trainer.log_every=4",
                         "trainer.checkpoint_every=18", "tracking.system_metrics_s=1", *GPU_SETTINGS)) == 0
    out = capsys.readouterr().out
    # Before it starts, the run says what it will do in the paper's units: clips and iterations.
    assert "48 videos x 8 clip(s) = 384 clips per epoch; 4 epochs = 1,536 clips in 48 iterations of 32 clips " \
           "(2 workers x 16); lr drops at iterations 24, 36" in out
    run = runs.named(mlflow_server, "tests", "learn")
    rid = run.info.run_id
    # The group restarted from the checkpoint registered before the kill (restart_lost_s is logged
    # at the step a group resumed from). Ray may restart a group once more before it trains on.
    restarts = [step for step, _ in history(mlflow_server, rid, "restart_lost_s")]
    resumed = restarts[0]
    assert 18 <= resumed < killed["logged"] and all(step >= resumed for step in restarts)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "cost_b" and run.data.params["trainer.num_workers"] == "2"
    assert run.data.params["trainer.precision"] == "bf16" and run.data.params["trainer.grad_compression"] == "bf16"
    assert run.data.tags["arch"] == "cost_b" and run.data.tags["frames"] == "4"
    assert run.data.tags["store_fingerprint"] == Store(store).manifest["input_fingerprint"]
    assert run.data.tags["test_protocol"] == "full" and run.data.params["data.test_protocol"] == "full"
    assert run.data.tags["init"] == "scratch"
    nodes = run.data.tags["worker_nodes"].split(",")  # one Ray node ID per rank: the session's one node
    assert len(nodes) == 2 and nodes[0] == nodes[1] and len(nodes[0]) == 56
    logged = history(mlflow_server, rid, "loss")
    # The steps after the checkpoint resumed from ran again after the restart; none before it did.
    steps = [s for s, _ in logged]
    assert sorted(set(steps)) == list(range(4, 4 * STEPS_PER_EPOCH + 1, 4))
    again = {s for s in steps if steps.count(s) > 1}
    assert set(range(resumed + 4 - resumed % 4, killed["logged"] + 1, 4)) <= again and min(again) > resumed
    assert logged[-1][1] < 0.7 * logged[0][1]  # loss falls
    assert [v for _, v in history(mlflow_server, rid, "epoch")] == [1, 2, 3, 4]
    # 4 classes: chance is 0.25. On 12 videos, the data's order (Ray Data's streaming split) moves a
    # run by a few videos: val top-1 0.58-1.0 over four runs on this machine.
    assert run.data.metrics["val_top1"] >= 0.5
    assert run.data.metrics["test_top1"] >= 0.5 and run.data.metrics["test_videos"] == 12
    for key in ("lr", "clips_per_s", "data_wait", "val_loss", "val_top5", "test_top5",
                "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in run.data.metrics
    client = MlflowClient(mlflow_server)
    # The UI opens the experiment's training runs, and shows the store as the run's dataset.
    assert client.get_experiment_by_name("tests").tags["mlflow.experimentKind"] == "custom_model_development"
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.digest == Store(store).manifest["input_fingerprint"]
    assert given.dataset.name == "synthetic:store" and store in given.dataset.source
    assert json.loads(given.dataset.profile)["train"]["videos"] == 48
    assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == "training"
    artifacts = {a.path for a in client.list_artifacts(rid)}
    assert {"config.yaml", "test_scores.parquet", "analysis"} <= artifacts
    analysis = {a.path for a in client.list_artifacts(rid, "analysis")}
    assert {"analysis/view_coefficients_layers.csv", "analysis/view_coefficients_layers.png",
            "analysis/temporal_share_classes.csv", "analysis/temporal_share_classes.png"} == analysis
    scores = pq.read_table(client.download_artifacts(rid, "test_scores.parquet", str(tmp_path))).to_pydict()
    assert len(scores["video_id"]) == 12 and len(scores["scores"][0]) == 4
    accuracy = np.mean(np.array(scores["predicted"]) == np.array(scores["label"]))
    assert np.isclose(accuracy, run.data.metrics["test_top1"])
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pytorch.load_model(f"runs:/{rid}/model")
    assert model(torch.zeros(2, 3, 4, 48, 48)).shape == (2, 4)

    best = run.data.tags["best_checkpoint"]
    assert Path(best, "state.pt").is_file()
    # The test scored the best validation's checkpoint (the first of equal ones), and named it.
    val = [v for _, v in history(mlflow_server, rid, "val_top1")]
    epoch = val.index(max(val)) + 1
    assert run.data.tags["tested_checkpoint"].startswith(f"the best checkpoint (epoch {epoch}, ")
    assert epoch == 4 or run.data.tags["tested_checkpoint"].endswith(best)
    # The test protocol again from that checkpoint alone, on one worker: the same per-video scores.
    assert main(["--eval-only", "--checkpoint", best, f"tracking.uri={mlflow_server}",
                 "tracking.experiment=tests", "trainer.num_workers=1",
                 f"trainer.storage_path={tmp_path / 'runs'}"]) == 0
    exp = client.get_experiment_by_name("tests")
    (ev,) = client.search_runs([exp.experiment_id], filter_string="tags.mode = 'eval'")
    assert ev.info.status == "FINISHED" and ev.data.metrics["test_videos"] == 12
    assert ev.data.metrics["test_top1"] == run.data.metrics["test_top1"]
    assert ev.data.metrics["test_loss"] == pytest.approx(run.data.metrics["test_loss"], rel=1e-4)


@pytest.mark.slow
def test_a_stopped_run_resumes_at_the_next_epoch_with_its_bar_and_not_rays_info_lines(
        store, mlflow_server, tmp_path, monkeypatch, in_terminal, runs):
    """Stopped after an epoch, then resumed by the same command as a user runs it in a terminal."""
    monkeypatch.chdir(Path(store).parent)  # a store path relative to where the command runs
    common = args(Path(store).name, mlflow_server, tmp_path, "name=resume", "trainer.epochs=2",
                  "trainer.log_every=4", "tracking.log_model=false")
    assert main(common + ["--stop-at-epoch", "1"]) == 0
    run = runs.named(mlflow_server, "tests", "resume")
    assert run.info.status == "KILLED"
    assert history(mlflow_server, run.info.run_id, "epoch") == [(STEPS_PER_EPOCH, 1)]

    code, out = in_terminal([sys.executable, str(ROOT / "train" / "main.py"), *common], timeout=900)
    assert code == 0, out[-3000:]
    run = runs.named(mlflow_server, "tests", "resume")
    assert run.info.status == "FINISHED"
    assert history(mlflow_server, run.info.run_id, "epoch") == [(STEPS_PER_EPOCH, 1), (2 * STEPS_PER_EPOCH, 2)]
    steps = [s for s, _ in history(mlflow_server, run.info.run_id, "loss")]
    assert steps == [4, 8, 12, 16, 20, 24]  # the second run went on at step 13, not from 1
    # What the terminal showed: the workers' own lines, and one bar over the run (the epoch and the
    # loss, the clips done of all, from where the run resumed, clips/s and the time left).
    assert "[train] epoch 2/2 done" in out and "[train] epoch 1/2 done" not in out
    bars = re.findall(r"epoch (\d)/2 loss \d\.\d{4}: +(\d+)%\|.*?\| *(\d+)/768 \[[\d:]+<[\d:?]+, +[\d.]+ clips/s\]",
                      out)
    assert bars and bars[-1][1:] == ("100", "768"), out[-3000:]
    assert {b[0] for b in bars} == {"2"} and min(int(b[2]) for b in bars) >= 384
    # Then the test protocol's bar over the split's videos, ending whole (Ray's bars write 12 as 12.0).
    videos = Store(store).manifest["splits"]["val"]["videos"]
    tests = re.findall(r"test \(val, \d+ clips, \w+\): +(\d+)%\|.*?\| *([\d.]+)/([\d.]+) "
                       r"\[[\d:]+<[\d:?]+, +[\d.]+ videos/s\]", out)
    assert tests and tests[-1][0] == "100" and float(tests[-1][1]) == float(tests[-1][2]) == videos, out[-3000:]
    assert "step 16/24" not in out  # the progress lines a non-terminal console gets instead
    for line in ("Reporting training result", "Checkpoint successfully created", "Wrapping provided model",
                 "execution finished in", "Progress bars disabled", "Connecting to existing Ray cluster"):
        assert line not in out, f"{line!r} shows without --verbose"
    # a finished name is not trained again by accident
    assert main(common) == 2


@pytest.mark.parametrize("override, key", [
    ("model.arch=resnet", "model.arch"),
    ("data.stride=4", "data.stride"),
    ("data.store=/nonexistent/store", "data.store"),
    ("data.val_split=test", "data.val_split"),
    ("data.crop=512", "data.crop"),
    ("trainer.batch_size=100000", "trainer.batch_size"),
    ("optim.milestones=[0.8, 0.2]", "optim.milestones"),
    ("model.pretrained=/nonexistent/resnet50.pth", "model.pretrained"),
    ("optim.lr=-1", "optim.lr"),
    ("data.crop=0", "data.crop"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("data.frames=0", "data.frames"),
    ("tracking.uri=http://127.0.0.1:9", "tracking.uri"),  # an MLflow server that does not answer (port 9: discard)
    ("trainer.num_workers=[2, 1]", "trainer.num_workers"),
    ("trainer.global_batch=48", "trainer.num_workers"),  # 3 batches of 16 an iteration: not even on 2 workers
])
def test_bad_config_fails_before_ray_starts(store, mlflow_server, tmp_path, monkeypatch, capsys, override, key):
    def no_ray(*a, **k):
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr(train.main, "connect_ray", no_ray)
    extra = [override]
    if key == "data.crop":  # a crop the other sizes allow, but larger than the store's frames
        extra += ["data.train_short_side=[512, 600]", "data.eval_short_side=512"]
    if key == "model.pretrained":  # the tiny config's zero-mean stem refuses any ImageNet weights
        extra += ["model.conv1_zero_mean=false"]
    assert main(args(store, mlflow_server, tmp_path, *extra)) == 2
    assert f"'{key}'" in capsys.readouterr().err


def test_a_damaged_checkpoint_to_fine_tune_from_fails_before_ray_starts(store, mlflow_server, tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.setattr(train.main, "connect_ray", lambda *a, **k: pytest.fail("Ray was started for a bad config"))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "state.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a zip cut short
    assert main(args(store, mlflow_server, tmp_path, f"model.finetune_from={tmp_path / 'ckpt'}")) == 2
    err = capsys.readouterr().err
    assert "'model.finetune_from'" in err and "cannot read state.pt" in err and len(err.strip().splitlines()) == 1


def test_a_config_without_its_data_section_fails_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train.main, "connect_ray", lambda *a, **k: pytest.fail("Ray was started for a bad config"))
    config = tmp_path / "no_data.yaml"
    config.write_text("model:\n  arch: c3d\n")
    assert main(["--config", str(config)]) == 2
    assert "'data'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_crashing_run_is_marked_failed(store, mlflow_server, tmp_path, runs):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3, 7, 7)}, bad)  # a 2D state dict of the wrong shape
    with pytest.raises(Exception, match="conv1.weight"):
        main(args(store, mlflow_server, tmp_path, "name=crash", f"model.pretrained={bad}",
                  "model.conv1_zero_mean=false", "trainer.max_failures=0"))
    assert runs.named(mlflow_server, "tests", "crash").info.status == "FAILED"


def test_a_kinetics_store_without_weights_is_refused_before_ray_starts(store, mlflow_server, tmp_path, monkeypatch,
                                                                      capsys):
    kinetics = str(tmp_path / "kinetics-store")  # the same videos, prepared as Kinetics
    assert prepare(["--dataset", "kinetics", "--root", str(Path(store).parent / "src"), "--out", kinetics,
                    "--limit", "8"]) == 0

    class RayStarted(Exception):
        pass

    def ray_started(*a, **k):
        raise RayStarted

    monkeypatch.setattr(train.main, "connect_ray", ray_started)
    assert main(args(kinetics, mlflow_server, tmp_path, "data.clips_per_video=1", "trainer.batch_size=2")) == 2
    err = capsys.readouterr().err
    assert "'model.pretrained'" in err and "model.pretrained=none" in err
    with pytest.raises(RayStarted):  # on purpose, it passes every check
        main(args(kinetics, mlflow_server, tmp_path, "data.clips_per_video=1", "trainer.batch_size=2",
                  "model.pretrained=none"))


@pytest.mark.slow
@pytest.mark.parametrize("change", ["removed", "prepared again"])
def test_a_store_changed_after_the_checks_ends_the_run_in_one_line(change, store, mlflow_server, tmp_path, capsys,
                                                                 runs):
    """The store's training shards removed, or written anew by another prepare, after train/main.py
    checked it (as if while the run read it): the workers' reads fail, and the run ends in one line
    naming the file, exit status 1."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    if change == "removed":
        for shard in copy.glob("train/*.parquet"):
            shard.unlink()
    else:  # the same videos drawn into shards anew, under the same names; the manifest left as it was
        assert prepare(["--dataset", "kinetics", "--root", str(Path(store).parent / "src"), "--out",
                        str(tmp_path / "again"), "--shuffle-seed", "7"]) == 0
        for shard in (tmp_path / "again").glob("train/*.parquet"):
            shutil.copy(shard, copy / "train" / shard.name)
    name = change.replace(" ", "-")
    with pytest.raises(SystemExit) as e:
        main(args(str(copy), mlflow_server, tmp_path, f"name={name}", "trainer.max_failures=0"))
    line = str(e.value.code)
    assert line.startswith("train: ") and str(copy / "train") in line and "\n" not in line
    assert {"removed": "a file the run reads was removed or moved while it ran",
            "prepared again": "the store was prepared again since: a run reads one store from start to end"
            }[change] in line
    assert runs.named(mlflow_server, "tests", name).info.status == "FAILED"


def test_the_stride_comes_from_the_store_unless_the_config_names_one(store, mlflow_server, tmp_path):
    """The store is the one source of its stride: the demo's config names none, and takes this
    store's 8 (what MLflow then records); a config naming another is refused (the bad-config test)."""
    plain = [a for a in args(store, mlflow_server, tmp_path) if not a.startswith("data.stride=")]
    cfg = train.main.checked(train.main.parse_args(plain))[0]
    assert cfg.data.stride == Store(store).manifest["params"]["stride"] == 8


@pytest.mark.slow
def test_a_full_disk_for_checkpoints_is_one_line_and_the_same_command_then_finishes(store, mlflow_server, tmp_path,
                                                                                   small_disk, runs):
    disk, filler = small_disk(16, 96)  # a checkpoint of the demo's model takes ~4.3 MB
    run = args(store, mlflow_server, tmp_path, "name=full", "trainer.max_failures=0", *runs.tiny,
               f"trainer.storage_path={disk / 'runs'}")
    with pytest.raises(SystemExit) as e:
        main(run)
    line = str(e.value.code)
    assert line.startswith(f"train: no space left on the device writing {disk / 'runs'}") and "\n" not in line
    assert "then run the same command again" in line
    assert runs.named(mlflow_server, "tests", "full").info.status == "FAILED"
    filler.unlink()
    assert main(run) == 0
    assert runs.named(mlflow_server, "tests", "full").info.status == "FINISHED"


def test_a_full_disk_for_mlflow_artifacts_is_one_line_and_leaves_no_half_made_run(store, tmp_path, small_disk,
                                                                                  monkeypatch):
    """A local MLflow store whose artifacts (COST_HOME/mlartifacts) lie on a full disk: the run's
    first artifact, its config.yaml, is refused as the run opens, before any training."""
    disk, filler = small_disk(16, 96)
    with filler.open("ab") as f, contextlib.suppress(OSError):
        f.write(b"\0" * 96 * 1024)  # the disk full
    monkeypatch.setattr(train.tracking, "HOME", str(disk))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(SystemExit) as e:
        main(args(store, uri, tmp_path, "name=no-room"))
    line = str(e.value.code)
    assert line.startswith(f"train: no space left on the device writing file://{disk / 'mlartifacts'}/")
    assert "then run the same command again" in line and "\n" not in line
    assert MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("tests").experiment_id]) == []


@pytest.mark.slow
def test_a_group_that_cannot_share_the_batches_trains_on_the_most_that_can(store, mlflow_server, tmp_path, runs):
    """An elastic range whose group of 3 cannot share an iteration's 4 batches of 8 evenly: 2 workers
    train, adding up 2 batches each, the third waits; every iteration is still 32 clips."""
    run = args(store, mlflow_server, tmp_path, "name=three", *runs.tiny, "trainer.num_workers=[1, 3]",
               "trainer.batch_size=8", "trainer.global_batch=32")
    assert main(run) == 0
    found = runs.named(mlflow_server, "tests", "three")
    assert found.data.metrics["world_size"] == 3 and found.data.metrics["training_workers"] == 2
    steps = clips_per_epoch(Store(store), "train", 2) // 32  # runs.tiny: 2 clips a video, 1 epoch
    assert [s for s, _ in history(mlflow_server, found.info.run_id, "train_loss")] == [steps]
    assert found.data.params["trainer.global_batch"] == "32" and found.data.metrics["test_top1"] >= 0
