"""The cluster configs: Ray's own schema accepts the launcher YAML; the KubeRay manifests have what
KubeRay needs; images, Ray and torch versions and commands agree with the project; nothing is
exposed or secret; the Dockerfile builds where a docker daemon runs."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from train.checks import check_values
from train.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
PYPROJECT = (ROOT / "pyproject.toml").read_text()
TORCH = re.search(r'"torch==([^"]+)"', PYPROJECT).group(1)
RAY = version("ray")


def kuberay() -> dict[str, list[dict]]:
    docs = [d for p in sorted((CLUSTER / "kuberay").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    kinds: dict[str, list[dict]] = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    return kinds


def containers(doc: dict) -> list[dict]:
    """Every container spec in a manifest, wherever it sits."""
    found = []
    if isinstance(doc, dict):
        found += [c for c in doc.get("containers", []) if isinstance(c, dict)]
        for v in doc.values():
            found += containers(v)
    elif isinstance(doc, list):
        for v in doc:
            found += containers(v)
    return found


def check_train_command(command: str) -> None:
    """A `python train/main.py --config FILE overrides...` command names real files and valid settings."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "train/main.py"] and (ROOT / argv[1]).exists()
    i = argv.index("--config")
    config, overrides = argv[i + 1], argv[i + 2:]
    assert (ROOT / config).exists(), config
    cfg = load_config(TrainConfig, str(ROOT / config), overrides)
    check_values(cfg)
    assert cfg.data.store.startswith("s3://") and cfg.trainer.storage_path.startswith("s3://")  # shared storage


def test_the_launcher_config_passes_rays_schema_and_is_safe():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(prepare_config(raw))  # Ray's own JSON schema and checks
    types = raw["available_node_types"]
    assert raw["provider"]["type"] == "aws" and raw["head_node_type"] == "head"
    assert types["gpu"]["node_config"]["InstanceType"].startswith("p")  # 8-GPU instances
    assert types["cpu"]["min_workers"] == 0 and types["cpu"]["max_workers"] > 0 and types["gpu"]["max_workers"] > 0
    for t in types.values():
        assert "IamInstanceProfile" in t["node_config"]  # S3 through the instance role
    ports = {(p["FromPort"], p["ToPort"]) for p in raw["provider"]["security_group"]["IpPermissions"]}
    assert ports == {(22, 22)}  # SSH only: dashboard, job API and MLflow are not open
    setup = "\n".join(raw["setup_commands"])
    assert f"torch=={TORCH} --index-url https://download.pytorch.org/whl/cu" in setup
    assert '-e "~/cost-on-ray[server]"' in setup and raw["file_mounts"]["~/cost-on-ray"] == "."
    head, worker = "\n".join(raw["head_start_ray_commands"]), "\n".join(raw["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "--dashboard-host=127.0.0.1" in head
    assert "--backend-store-uri" in head and "--artifacts-destination s3://" in head
    assert "--host 0.0.0.0" not in head  # MLflow on the private address only
    # MLflow signs users in; the admin's password comes from Secrets Manager, on every node.
    assert "mlflow server --app-name basic-auth" in head
    assert "MLFLOW_AUTH_CONFIG_PATH=~/cost-on-ray/cluster/mlflow-auth.ini" in head
    from_secret = 'MLFLOW_TRACKING_PASSWORD="$(aws secretsmanager get-secret-value --secret-id cost/mlflow-admin'
    assert from_secret in head and from_secret in worker
    assert 'MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_TRACKING_PASSWORD"' in head


def test_gpu_nodes_reach_each_other_over_efa():
    """Each p5 node: an EFA interface on every one of its 32 network cards, in one placement group,
    each interface with the subnet and groups Ray's AWS bootstrap requires; NCCL told to use EFA."""
    from ray.autoscaler._private.aws.config import _configure_subnets_and_groups_from_network_interfaces

    types = yaml.safe_load((CLUSTER / "aws.yaml").read_text())["available_node_types"]
    gpu = types["gpu"]["node_config"]
    cards = gpu["NetworkInterfaces"]
    assert sorted(c["NetworkCardIndex"] for c in cards) == list(range(32))
    assert [(c["DeviceIndex"], c["InterfaceType"]) for c in cards] == [(0, "efa")] + [(1, "efa-only")] * 31
    assert gpu["Placement"]["GroupName"]  # a cluster placement group: EFA needs its nodes close
    _configure_subnets_and_groups_from_network_interfaces(gpu)  # raises on a card without subnet or group
    setup = "\n".join(types["gpu"]["worker_setup_commands"])
    assert "FI_PROVIDER=efa" in setup and "/opt/amazon/ofi-nccl/lib" in setup
    assert not any("NetworkInterfaces" in types[t]["node_config"] for t in ("head", "cpu"))


def test_spot_gpu_nodes_are_the_gpu_nodes_on_spot_and_pass_the_reclaim_notice_on():
    types = yaml.safe_load((CLUSTER / "aws.yaml").read_text())["available_node_types"]
    spot, gpu = types["gpu_spot"], types["gpu"]
    assert spot["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert {k: v for k, v in spot["node_config"].items() if k != "InstanceMarketOptions"} == gpu["node_config"]
    assert "InstanceMarketOptions" not in gpu["node_config"] and "InstanceMarketOptions" not in types["head"]
    assert spot["worker_setup_commands"][0] == gpu["worker_setup_commands"][0]  # EFA as on demand
    assert "cluster/spot_notice.py" in spot["worker_setup_commands"][1]
    assert (CLUSTER / "spot_notice.py").is_file() and spot["min_workers"] == 0


def test_kuberay_manifests_are_complete_and_consistent():
    kinds = kuberay()
    (ray_cluster,) = kinds["RayCluster"]
    (job,) = kinds["RayJob"]
    spec = ray_cluster["spec"]
    assert ray_cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert spec["rayVersion"] == RAY and spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) == 8 and "nvidia.com/gpu" not in cpu
    assert int(gpu["vpc.amazonaws.com/efa"]) == 32 and "vpc.amazonaws.com/efa" not in cpu  # EFA on GPU nodes
    gpu_env = {e["name"]: e.get("value") for e in groups["gpu"]["template"]["spec"]["containers"][0]["env"]}
    assert gpu_env["FI_PROVIDER"] == "efa"
    # MLflow signs users in: the server's admin password, and the one the Ray pods that log send,
    # come from the Secret mlflow-auth; the server reads the project's auth config from the image.
    (mlflow_server,) = [c for d in kinds["Deployment"] for c in containers(d) if c["name"] == "mlflow"]
    assert "mlflow server --app-name basic-auth" in mlflow_server["args"][0]
    server_env = {e["name"]: e for e in mlflow_server["env"]}
    assert server_env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth"
    assert server_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth"
    workdir = re.search(r"^WORKDIR (\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert server_env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == f"{workdir}/cluster/mlflow-auth.ini"
    assert (CLUSTER / "mlflow-auth.ini").is_file()
    for pod in (spec["headGroupSpec"], groups["gpu"]):
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        secret = env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "mlflow-auth", "key": "password"}
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    # The gpu group on spot capacity: the same worker, which passes the reclaim notice on to Ray.
    spot = groups["gpu-spot"]["template"]["spec"]
    (worker,) = spot["containers"]
    assert {k: v for k, v in worker.items() if k != "lifecycle"} == groups["gpu"]["template"]["spec"]["containers"][0]
    assert "cluster/spot_notice.py" in " ".join(worker["lifecycle"]["postStart"]["exec"]["command"])
    assert "spot" in json.dumps(spot["nodeSelector"]).lower() and spot["volumes"] == groups["gpu"]["template"][
        "spec"]["volumes"]
    images = {c["image"] for kind in kinds.values() for d in kind for c in containers(d)}
    assert images == {"REGISTRY/cost-on-ray:0.1.0"}  # one image, built by cluster/Dockerfile
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == ray_cluster["metadata"]["name"]
    check_train_command(job["spec"]["entrypoint"])
    for service in kinds["Service"]:
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_no_secret_values_in_the_cluster_configs():
    for path in [*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.ini"), CLUSTER / "Dockerfile"]:
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path  # AWS access key IDs
        # A value given in place, not read from a secret store ("$(aws secretsmanager ...)", "$VAR").
        assert not re.search(r"(?i)(secret_access_key|password|secret_key)\s*[:=]\s*(?![\"']?\$)\S", text), path
        assert not re.search(r"postgres(ql)?(\+\w+)?://\w+:[^@\s]+@", text), path  # a URL with a password


def test_dockerfile_matches_the_project_pins():
    text = (CLUSTER / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    assert base.startswith(f"rayproject/ray:{RAY}-py311-cu")
    assert f"torch=={TORCH} --index-url https://download.pytorch.org/whl/cu" in text
    assert "efa_installer.sh" in text and "/opt/amazon/ofi-nccl/lib" in text  # NCCL over EFA in the image
    for folder in ("pipeline", "train", "results", "configs"):
        assert f"COPY --chown=ray:users {folder} ./{folder}" in text


def docker_running() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not docker_running(), reason="no docker daemon here")
def test_the_image_builds():
    done = subprocess.run(["docker", "build", "-f", "cluster/Dockerfile", "-t", "cost-on-ray:test", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
