"""Multi-node: cluster/local.py starts a Ray head and a worker node as separate processes on
127.0.0.1 (token auth on), PostgreSQL, moto and an MLflow server (PostgreSQL backend, S3
artifacts). prepare, train/main.py and results/compare.py run as users run them, with the store
and checkpoints on S3; the workers spread over both nodes, a lost node is survived from the
checkpoint, MLflow refuses a client that does not sign in, and no credential reaches
MLflow. The node-killing test runs last: the cluster has one node after it."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import mlflow
import psycopg2
import pytest
import s3fs
from mlflow.tracking import MlflowClient

from cluster import local
from pipeline.store import Store
from train import tracking
from train.checkpoints import load_state

pytestmark = pytest.mark.slow  # the multi-node cluster: make test, not make test-fast

ROOT = Path(__file__).resolve().parents[2]
SECRET = "secret-" + secrets.token_hex(8)  # the cluster's AWS secret key: must never reach MLflow or logs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("cluster"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto takes any key
        state = local.up(root / "c", workers=1, head_cpus=3, worker_cpus=2)
        try:
            state["env"] = local.client_env(state)
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # this module's own clients
                mp.setenv(key, state["env"][key])
            state["root"], state["nodes"] = root, nodes(state)
            yield state
        finally:
            local.down(root / "c")


def nodes(state: dict) -> dict[str, str]:
    """node ID -> "head" or "worker_node_1", from the cluster's own resources."""
    token = Path(state["ray_env"]["RAY_AUTH_TOKEN_PATH"]).read_text()
    return {n["node_id"]: "head" if "head" in n["resources_total"] else "worker_node_1"
            for n in local.ray_nodes(state["ray_dashboard"], token) if n["state"] == "ALIVE"}


def run(state: dict, *cmd: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, **state["env"], "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def store(cluster, docs, tmp_path_factory) -> str:
    """cluster/README.md's "Try it on one machine", run as written on this module's cluster (standing
    in for its `up` and `down`): synthetic videos put on S3, prepared into s3://cost/store there,
    and a training job spread over both nodes."""
    where = tmp_path_factory.mktemp("try-it")
    (where / ".cluster").symlink_to(cluster["root"] / "c")
    subs = [(r"^.*cluster/local\.py (?:up|down)\b.*$", ": the cluster of this test module stands in"),
            (r"/tmp/videos", str(cluster["root"] / "videos"))]
    sh = docs.Shell.checkout(where, {}, subs)
    (block,) = [b for b in docs.blocks("cluster/README.md") if any("cluster/local.py up" in c for c in b)]
    done = sh.run(block)
    assert done.returncode == 0, f"{block}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert "succeeded" in done.stdout + done.stderr and "2 workers on 2 node(s)" in done.stdout + done.stderr
    return f"s3://{cluster['bucket']}/store"


@pytest.fixture(scope="module")
def elastic(bench_script):
    """bench/elastic.py: a spot reclaim on this cluster, and the reader of Ray's registered checkpoint."""
    return bench_script("elastic")


def train_args(cluster: dict, store: str, name: str, *extra: str) -> list[str]:
    return ["train/main.py", "--config", "configs/tiny_synthetic.yaml", f"name={name}", f"data.store={store}",
            f"data.s3_endpoint={cluster['s3_endpoint']}", f"trainer.storage_path=s3://{cluster['bucket']}/runs",
            "tracking.experiment=cluster", "data.frames=4", "data.stride=8", "data.test_clips=2",
            "optim.warmup_epochs=0.5", "trainer.val_every=1", "trainer.placement=SPREAD", "trainer.log_every=2",
            "data.clips_per_video=8", "model.pretrained=none", *extra]  # Kinetics layout: from scratch on purpose


def test_node_local_paths_are_refused_on_a_multi_node_cluster(cluster, store):  # train, then prepare
    done = run(cluster, *train_args(cluster, store, "local-path", f"trainer.storage_path={cluster['root'] / 'runs'}"),
               timeout=120)
    assert done.returncode == 2
    assert "the Ray cluster has" in done.stderr and f"trainer.storage_path = {cluster['root'] / 'runs'}" in done.stderr
    assert "trainer.shared_storage=true" in done.stderr
    videos = cluster["root"] / "videos"  # on this machine only
    out = f"s3://{cluster['bucket']}/refused-store"
    done = run(cluster, "pipeline/prepare.py", "--dataset", "kinetics", "--root", str(videos), "--out", out,
               timeout=120)
    assert done.returncode == 1 and f"--root = {videos}" in done.stderr and "--shared-storage" in done.stderr
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": cluster["s3_endpoint"]})
    assert not fs.exists(out.removeprefix("s3://"))  # refused before anything was written


def test_ray_refuses_a_client_without_the_token(cluster):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{cluster['ray_dashboard']}/api/v0/nodes", timeout=10)
    assert e.value.code == 401


def test_mlflow_refuses_a_client_without_its_sign_in(cluster, store):
    search = f"{cluster['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(search, timeout=10)
    assert e.value.code == 401
    # A training run with a wrong password: one line before Ray starts, without the password.
    password = "wrong-password-123"
    env = {**os.environ, **cluster["env"], "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_PASSWORD": password}
    done = subprocess.run([sys.executable, *train_args(cluster, store, "no-sign-in")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert f"the MLflow server at {cluster['mlflow']} refused user 'admin' (HTTP 401)" in line
    assert "MLFLOW_TRACKING_PASSWORD" in line and password not in line
    # The cluster's jobs sign in with the password the nodes were given (the comparison test below
    # logs through them); the password file is its owner's alone.
    assert Path(cluster["mlflow_password"]).stat().st_mode & 0o077 == 0


def expected_lrs(cfg_args: list[str], steps_per_epoch: int) -> dict[int, float]:
    """The lr after each iteration of a run of these config overrides, from the optimiser itself."""
    from train.config import TrainConfig, load_config
    from train.core import optimizer
    from train.models import create_model

    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny_synthetic.yaml", cfg_args)
    model = create_model(cfg.model, 4)
    opt, sched = optimizer(model, cfg, steps_per_epoch)
    lrs = {}
    for step in range(1, steps_per_epoch * cfg.trainer.epochs + 1):
        opt.step()
        sched.step()
        lrs[step] = sched.get_last_lr()[0]
    return lrs


def test_an_elastic_run_shrinks_when_a_node_goes_and_grows_back(cluster, store, runs, elastic):
    """trainer.num_workers=[1, 2], one worker per node (2 CPUs each): the worker node is given a
    reclaim notice after the first checkpoint and killed once the run has checkpointed on it; the run
    goes on with one worker without waiting for a node; the node is started again (a spot node's
    replacement), and the group grows back to two (bench/elastic.py's reclaim). Each iteration keeps
    its 32 clips (2 workers x 16, or one adding up 2 batches of 16) and its lr, and the run ends after
    the iterations of an uninterrupted one. The run is long enough (64 iterations) to still be
    training when the node is back; one of 40 once finished on its one worker before that."""
    name = "elastic"
    overrides = train_args(cluster, store, name, "trainer.num_workers=[1, 2]", "trainer.cpus_per_worker=2",
                           "trainer.global_batch=32", "trainer.epochs=16", "trainer.checkpoint_every=100",
                           "trainer.max_failures=3", "trainer.resize_interval_s=5",
                           f"tracking.uri={cluster['mlflow']}")
    # Ray Train waits this long for a group of the old size before it starts a smaller one (60 s by
    # default: bench/elastic.py measures the time lost with it); shorter here, for CI's time.
    env = {**os.environ, **cluster["env"], "PYTHONPATH": str(ROOT), "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10"}
    log = cluster["root"] / "elastic.log"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": cluster["s3_endpoint"]})
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *overrides], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            noticed = elastic.reclaim(cluster["root"] / "c", proc, log, fs, f"{cluster['bucket']}/runs/{name}", 0)
            cluster["nodes"] = nodes(cluster)
            assert proc.wait(timeout=400) == 0, log.read_text()[-5000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    uri = cluster["mlflow"]
    found = runs.named(uri, "cluster", name)
    client = MlflowClient(uri)
    history = {key: [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, key)]
               for key in ("world_size", "restart_lost_s", "lr", "loss")}
    assert found.info.status == "FINISHED" and found.data.params["trainer.global_batch"] == "32"
    sizes = [v for _, v in history["world_size"]]  # at each start of a group
    assert sizes[:3] == [2, 1, 2] and set(sizes[3:]) <= {2}  # Ray may restart a group at its size: still 2
    resumed = int(re.search(r"resumed from checkpoint at epoch \d+, step (\d+)", log.read_text())[1])
    assert resumed >= noticed  # the notice's checkpoint, or a later one: no work before the notice is redone
    assert len(history["restart_lost_s"]) == len(sizes) - 1 and all(v > 0 for _, v in history["restart_lost_s"])
    videos = Store(store, {"client_kwargs": {"endpoint_url": cluster["s3_endpoint"]}}).manifest["splits"]["train"]
    lrs = expected_lrs(overrides[3:], videos["videos"] * 8 // 32)  # data.clips_per_video=8, 32 clips an iteration
    assert max(s for s, _ in history["loss"]) == max(lrs)  # as many iterations as an uninterrupted run
    for step, lr in history["lr"]:  # logged at every window, before and after each restart
        assert lr == pytest.approx(lrs[step], rel=1e-6), step


def test_a_comparison_job_spread_over_both_nodes_survives_losing_one(cluster, store, runs, elastic):
    """One job, submitted as users do (`ray job submit`, token auth): results/compare.py, whose member
    trains on the cluster, then the report. The member's first worker group spans the two nodes;
    the worker node is then killed after the first checkpoint, and the member finishes from that
    checkpoint on the head."""
    overrides = [a for a in train_args(cluster, store, "unused", "trainer.epochs=2", "trainer.checkpoint_every=2",
                                       "trainer.max_failures=2", f"tracking.uri={cluster['mlflow']}")[3:]
                 if not a.startswith("name=")]  # the job's driver runs on the head, with the head's env
    cmd = [str(local.BIN / "ray"), "job", "submit", "--address", cluster["ray_dashboard"], "--working-dir", str(ROOT),
           "--", sys.executable, "results/compare.py", "--config", "configs/tiny_synthetic.yaml", "--archs", "cost_b",
           "--name", "lost-node", *overrides]
    name = "lost-node-cost_b-s0"  # the member's run
    cluster["nodes"] = nodes(cluster)  # as they are now, whatever the tests before did to them
    env = {**os.environ, **cluster["env"]}
    log = cluster["root"] / "lost-node.log"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": cluster["s3_endpoint"]})
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            run_dir = f"{cluster['bucket']}/runs/{name}"
            elastic.wait_for(proc, log, lambda: elastic.checkpoint_step(fs, run_dir) is not None, 300)
            local.kill_node(cluster["root"] / "c", 1)
            assert proc.wait(timeout=400) == 0, log.read_text()[-5000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert "succeeded" in text
    # Where the workers ran: rank 0 prints each rank's node; the first group spans both nodes.
    first = re.search(r"2 workers on 2 node\(s\): (\w+), (\w+)", text)
    assert first, text[-5000:]
    assert sorted(cluster["nodes"][n] for p in first.groups() for n in cluster["nodes"] if n.startswith(p)) == \
        ["head", "worker_node_1"]
    assert re.search(r"resumed from checkpoint at epoch \d+, step [1-9]", text), text[-5000:]
    uri = cluster["mlflow"]
    found = runs.named(uri, "cluster", name)
    assert found.info.status == "FINISHED" and found.data.metrics["epoch"] == 2
    assert {cluster["nodes"].get(n) for n in found.data.tags["worker_nodes"].split(",")} == {"head"}  # restarted
    assert {"loss", "clips_per_s", "val_top1", "test_top1"} <= set(found.data.metrics)
    # The best checkpoint as a URL that analyze, predict and --eval-only read back through the endpoint.
    assert found.data.tags["best_checkpoint"].startswith(f"s3://{cluster['bucket']}/runs/{name}/")
    assert load_state(*tracking.run_checkpoint(tracking.training_run(uri, name)))["config"]["name"] == name
    # MLflow: the run in PostgreSQL, its artifacts in S3, the model loaded back through the server.
    with psycopg2.connect(cluster["mlflow_backend"].replace("+psycopg2", "")) as db, db.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (found.info.run_id,))
        assert cur.fetchall() == [("FINISHED",)]
    s3 = boto3.client("s3", endpoint_url=cluster["s3_endpoint"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=cluster["bucket"], Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("config.yaml") for k in keys) and any("MLmodel" in k for k in keys)
    mlflow.set_tracking_uri(uri)
    assert mlflow.pytorch.load_model(f"runs:/{found.info.run_id}/model") is not None
    # Credentials: not in the run's params or tags, nor in anything the driver printed.
    assert not any(SECRET in v for v in [*found.data.params.values(), *found.data.tags.values()])
    assert SECRET not in text
    password = Path(cluster["mlflow_password"]).read_text()
    assert password not in text and not any(password in v for v in [*found.data.params.values(),
                                                                    *found.data.tags.values()])
    # Then the comparison's report, printed by the job and logged beside its member.
    assert "| CoST(b) |" in text
    client = MlflowClient(uri)
    (report,) = client.search_runs([found.info.experiment_id], "tags.mode = 'report'")
    assert "report.html" in {f.path for f in client.list_artifacts(report.info.run_id)}
