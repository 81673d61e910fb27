"""The session fixtures start real services: Ray runs a task, MLflow stores a run, S3 holds objects."""

import json
import os
import urllib.request


def test_ray_runs_a_task_in_another_process(ray_cluster):
    import ray

    ray.init(address=ray_cluster.address, ignore_reinit_error=True)

    @ray.remote(num_cpus=0.5)
    def square(x):
        return x * x, os.getpid()

    value, pid = ray.get(square.remote(7))
    assert value == 49 and pid != os.getpid()
    assert ray.cluster_resources()["CPU"] >= 2
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]


def test_mlflow_run_is_written_and_read_back_over_http(mlflow_server, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("fixture-check")
    note = tmp_path / "note.txt"
    note.write_text("hello from a test\n")
    with mlflow.start_run() as run:
        mlflow.log_param("arch", "cost_b")
        mlflow.log_metric("top1", 0.75, step=3)
        mlflow.log_artifact(str(note))
    # Read back through the REST API, not through the client's cache.
    url = f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}"
    with urllib.request.urlopen(url, timeout=10) as r:
        data = json.load(r)["run"]["data"]
    assert {"key": "arch", "value": "cost_b"} in data["params"]
    assert [m["value"] for m in data["metrics"] if m["key"] == "top1"] == [0.75]
    got = MlflowClient(mlflow_server).download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    assert open(got).read() == "hello from a test\n"


def test_s3_object_is_written_and_listed(s3_server):
    import boto3
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    fs.pipe(f"{s3_server.bucket}/fixture/a.bin", b"\x00\x01payload")
    assert fs.ls(f"{s3_server.bucket}/fixture") == [f"{s3_server.bucket}/fixture/a.bin"]
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    body = s3.get_object(Bucket=s3_server.bucket, Key="fixture/a.bin")["Body"].read()
    assert body == b"\x00\x01payload"
