"""Multi-node: cluster/local.py starts a Ray head and a worker node as separate processes on
127.0.0.1 (token auth on), PostgreSQL, moto and an MLflow server (PostgreSQL backend, S3
artifacts). prepare and train/main.py run as users run them, with the store and checkpoints on
S3; the workers spread over both nodes, a lost node is survived from the checkpoint, and no
credential reaches MLflow."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
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
from pipeline.synthetic import SyntheticSpec, generate

ROOT = Path(__file__).resolve().parents[2]
SECRET = "secret-" + secrets.token_hex(8)  # the cluster's AWS secret key: must never reach MLflow or logs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("cluster"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto takes any key
        state = local.up(root / "c", workers=1, head_cpus=3, worker_cpus=2)
        try:
            state["env"] = dict(line.removeprefix("export ").split("=", 1) for line in local.env_lines(state))
            state["root"] = root
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
def store(cluster) -> str:
    src = cluster["root"] / "videos"
    generate(SyntheticSpec(kind="appearance", classes=4, videos_per_class=4, val_videos_per_class=2), src)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": cluster["s3_endpoint"]})
    fs.put(str(src) + "/", f"{cluster['bucket']}/videos/", recursive=True)
    out = f"s3://{cluster['bucket']}/store"
    done = run(cluster, "pipeline/prepare.py", "--dataset", "kinetics", "--root", f"s3://{cluster['bucket']}/videos",
               "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def train_args(cluster: dict, store: str, name: str, *extra: str) -> list[str]:
    return ["train/main.py", "--config", "configs/tiny_synthetic.yaml", f"name={name}", f"data.store={store}",
            f"data.s3_endpoint={cluster['s3_endpoint']}", f"trainer.storage_path=s3://{cluster['bucket']}/runs",
            "tracking.experiment=cluster", "data.frames=4", "data.stride=8", "data.test_clips=2",
            "trainer.val_every=1", "trainer.placement=SPREAD", "trainer.log_every=2", *extra]


def find_run(uri: str, name: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cluster")
    (found,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`cost.run_name` = '{name}'")
    return found


def test_prepare_and_training_spread_over_two_nodes_tracked_in_postgres_and_s3(cluster, store):
    done = run(cluster, *train_args(cluster, store, "spread", "trainer.epochs=1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    uri = cluster["mlflow"]
    found = find_run(uri, "spread")
    assert found.info.status == "FINISHED"
    placed = [nodes(cluster)[n] for n in found.data.tags["worker_nodes"].split(",")]
    assert sorted(placed) == ["head", "worker_node_1"]  # one worker on each node
    assert {"loss", "clips_per_s", "val_top1", "test_top1"} <= set(found.data.metrics)
    assert found.data.tags["best_checkpoint"].startswith(f"{cluster['bucket']}/runs/spread/")
    mlflow.set_tracking_uri(uri)
    assert mlflow.pytorch.load_model(f"runs:/{found.info.run_id}/model") is not None  # through the server
    s3 = boto3.client("s3", endpoint_url=cluster["s3_endpoint"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=cluster["bucket"], Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("config.yaml") for k in keys) and any("MLmodel" in k for k in keys)
    with psycopg2.connect(cluster["mlflow_backend"].replace("+psycopg2", "")) as db, db.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (found.info.run_id,))
        assert cur.fetchall() == [("FINISHED",)]  # the run lives in PostgreSQL
    # Credentials: not in the run's params or tags, nor in anything the driver printed.
    values = [*found.data.params.values(), *found.data.tags.values()]
    assert not any(SECRET in v for v in values)
    assert SECRET not in done.stdout + done.stderr


def test_node_local_paths_are_refused_on_a_multi_node_cluster(cluster, store):
    done = run(cluster, *train_args(cluster, store, "local-path", f"trainer.storage_path={cluster['root'] / 'runs'}"),
               timeout=120)
    assert done.returncode == 2
    assert "the Ray cluster has" in done.stderr and f"trainer.storage_path = {cluster['root'] / 'runs'}" in done.stderr
    assert "trainer.shared_storage=true" in done.stderr


def test_ray_refuses_a_client_without_the_token(cluster):  # before the node kill: it runs last
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{cluster['ray_dashboard']}/api/v0/nodes", timeout=10)
    assert e.value.code == 401


def test_a_lost_worker_node_is_survived_from_the_checkpoint(cluster, store):
    extra = ["trainer.epochs=2", "trainer.checkpoint_every=2", "trainer.max_failures=2", "trainer.test_at_end=false",
             "tracking.log_model=false"]
    cmd = [sys.executable, *train_args(cluster, store, "lost-node", *extra)]
    env = {**os.environ, **cluster["env"], "PYTHONPATH": str(ROOT)}
    log = cluster["root"] / "lost-node.log"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": cluster["s3_endpoint"]})
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not fs.glob(f"{cluster['bucket']}/runs/lost-node/checkpoint_*"):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
                fs.invalidate_cache()
            local.kill_node(cluster["root"] / "c", 1)
            assert proc.wait(timeout=400) == 0, log.read_text()[-5000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert re.search(r"resumed from checkpoint at epoch \d+, step [1-9]", text), text[-5000:]
    found = find_run(cluster["mlflow"], "lost-node")
    assert found.info.status == "FINISHED" and found.data.metrics["epoch"] == 2
    placed = {nodes(cluster).get(n, "gone") for n in found.data.tags["worker_nodes"].split(",")}
    assert placed == {"head"}  # the restarted group runs on the node that is left
