"""A multi-node Ray cluster on one machine (127.0.0.1), with MLflow as a team runs it.

    python cluster/local.py up --workers 2          # start everything; prints what to export
    eval "$(python cluster/local.py env)"           # RAY_ADDRESS, MLflow's URI and sign-in, S3 endpoint, token
    python pipeline/prepare.py --dataset kinetics --root s3://cost/videos --out s3://cost/store
    ray job submit --address "$COST_RAY_DASHBOARD" --working-dir . -- python train/main.py ...
    python cluster/local.py drain-node 1            # notice: worker node 1 is reclaimed in 2 minutes
    python cluster/local.py kill-node 1             # SIGKILL worker node 1 (a lost machine)
    python cluster/local.py start-node 1            # and start it again (its replacement)
    python cluster/local.py down

Each service runs in its own process group, recorded in DIR/cluster.json (default .cluster/):

* PostgreSQL (Debian's ``postgresql`` package) on a free port with database ``mlflow``;
* an S3-compatible server (moto) with a bucket, unless ``--s3-endpoint`` names a real one;
* an MLflow tracking server: PostgreSQL backend store, artifacts under s3://BUCKET/mlflow, which
  clients upload through the server (``--artifacts-destination``) and so need no S3 access for it;
  sign-in required (cluster/mlflow-auth.ini): user ``admin``, its password in DIR/mlflow_password
  (mode 0600), which the nodes and ``env`` pass on as MLFLOW_TRACKING_USERNAME / _PASSWORD;
* a Ray head and N worker nodes with distinct resources (``head``, ``worker_node_1``, ...) so tests
  and users can place or find work per node, and token authentication on (the token lies in
  DIR/ray_token, mode 0600). The dashboard, job API and MLflow listen on 127.0.0.1; Ray's
  node-to-node ports on all interfaces, as on any multi-node Ray cluster, behind the token.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Collection
from contextlib import ExitStack
from pathlib import Path

from cluster.spot_notice import drain

BIN = Path(sys.executable).parent
AUTH_INI = Path(__file__).with_name("mlflow-auth.ini")
CLUSTER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
               # Ray's own default on Linux, explicit because with 0 `ray start` refuses a second node.
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
# moto takes any key; with a real endpoint the caller's own credentials (environment, instance role) apply.
MOTO_KEYS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}


def free_ports(n: int, avoid: Collection[int] = ()) -> list[int]:
    """``n`` distinct free ports, none in ``avoid``. Every socket stays bound until all are chosen:
    ports taken one at a time can repeat (the kernel may hand out a just-closed port again), and a
    Ray node given one port twice refuses to start."""
    with ExitStack() as held:
        ports: list[int] = []
        while len(ports) < n:
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] not in avoid:
                ports.append(s.getsockname()[1])
        return ports


def free_port() -> int:
    return free_ports(1)[0]


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
        return r.status == 200


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a service in its own process group so that stop() also ends its children."""
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})


def stop_groups(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM the process groups of ``pids``, SIGKILL what is left of them after ``grace`` seconds."""
    def signal_all(sig: int) -> list[int]:
        alive = []
        for pid in pids:
            try:
                os.killpg(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        return alive

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while signal_all(0) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_all(signal.SIGKILL)


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End a throw-away service: SIGTERM, then SIGKILL after ``grace`` seconds (a Ray node given
    SIGTERM alone takes 20 s to exit)."""
    if proc.poll() is None:
        stop_groups([proc.pid], grace)
    proc.wait()


def wait_until(check: Callable[[], bool], what: str, proc: subprocess.Popen, log: Path,
               timeout: float = 120.0) -> None:
    """Return once ``check()`` holds; else stop ``proc`` (no leaked service) and raise with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop(proc)
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def start_moto(root: Path, bucket: str, keys: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """moto_server on a free port with ``bucket`` created with ``keys``; (process, endpoint URL)."""
    port = free_port()
    log = root / "moto.log"
    proc = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/moto-api/"), "moto_server", proc, log, timeout=60)
    import boto3

    try:
        boto3.client("s3", endpoint_url=url, aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
                     region_name=keys["AWS_DEFAULT_REGION"]).create_bucket(Bucket=bucket)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def ray_node_cmd(temp_dir: str, *, head_port: int, cpus: float, resources: dict, head: bool = False,
                 dashboard_port: int = 0) -> list[str]:
    """``ray start --block`` for one node, every port chosen here: its nodes share the host, and so
    may other clusters (the test session's head runs beside tests/cluster's). Each node
    needs its own ``temp_dir``: in a shared one, a node's runtime-env agent deletes job working
    folders that another node's driver is running in."""
    flags = ["node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export",
             "runtime-env-agent", "ray-client-server"]
    ports = dict(zip(flags, free_ports(len(flags), avoid={head_port, dashboard_port}), strict=True))
    client = ports.pop("ray-client-server")
    common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus:g}", "--num-gpus=0",
              f"--resources={json.dumps(resources)}", "--disable-usage-stats", f"--temp-dir={temp_dir}",
              *(f"--{flag}-port={port}" for flag, port in ports.items())]
    if head:
        return [str(BIN / "ray"), "start", "--head", f"--port={head_port}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={client}", *common]
    return [str(BIN / "ray"), "start", f"--address=127.0.0.1:{head_port}", *common]


def ray_nodes(dashboard: str, token: str) -> list[dict]:
    """The cluster's nodes from the dashboard's state API: node_id, state, resources_total, ..."""
    req = urllib.request.Request(f"{dashboard}/api/v0/nodes?limit=1000&detail=1",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["data"]["result"]["result"]


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (Debian: /usr/lib/postgresql/<version>/bin)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise RuntimeError("PostgreSQL's server is not installed: `apt-get install -y postgresql` (Debian)")
    return versions[-1].parent


def start_postgres(root: Path) -> tuple[subprocess.Popen, str, Path]:
    """A throw-away PostgreSQL server with database ``mlflow``: (process, SQLAlchemy URL, data folder)."""
    pg, port = postgres_bin(), free_port()
    as_owner: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: Debian's postgres user, in a folder it can reach
        data = Path(tempfile.mkdtemp(prefix="cost-postgres-"))
        shutil.chown(data, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    else:
        data = root / "postgres"
        data.mkdir()
    subprocess.run([*as_owner, str(pg / "initdb"), "-D", str(data / "db"), "-U", "mlflow", "-A", "trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    log = root / "postgres.log"
    proc = start([*as_owner, str(pg / "postgres"), "-D", str(data / "db"), "-p", str(port), "-h", "127.0.0.1",
                  "-k", str(data), "-F"], log)
    ready = [str(pg / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "-q"]
    wait_until(lambda: subprocess.run(ready).returncode == 0, "postgres", proc, log, timeout=60)
    for db in ("mlflow", "mlflow_auth"):  # runs, and MLflow's users and permissions
        subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", db], check=True)
    return proc, f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow", data


def start_mlflow(root: Path, backend: str, artifacts: str, s3_env: dict[str, str], auth_db: str | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` with ``backend`` (SQLAlchemy URL) and served artifacts at ``artifacts``;
    ``s3_env`` holds MLFLOW_S3_ENDPOINT_URL and any keys for an S3 artifact store (empty for a local one).
    With ``auth_db`` (a SQLAlchemy URL for its users), sign-in required as on a real cluster
    (cluster/mlflow-auth.ini): user ``admin``, with the password in root/mlflow_password."""
    port, log = free_port(), root / "mlflow.log"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", backend,
           "--artifacts-destination", artifacts, "--workers", "1"]
    env = {**CLUSTER_ENV, **s3_env}
    if auth_db:
        auth = configparser.ConfigParser()
        auth.read(AUTH_INI)
        auth["mlflow"]["database_uri"] = auth_db
        with open(root / "mlflow-auth.ini", "w") as f:
            auth.write(f)
        cmd[2:2] = ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(root / "mlflow-auth.ini"),
                   MLFLOW_AUTH_ADMIN_PASSWORD=secret_file(root / "mlflow_password"),
                   MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32))
    proc = start(cmd, log, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/health"), "mlflow server", proc, log, timeout=180)
    return proc, url


def secret_file(path: Path) -> str:
    """A new random secret in ``path``, readable by its owner only."""
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path.read_text()


def mlflow_credentials(state: dict) -> dict[str, str]:
    """What an MLflow client of this cluster sends: the admin's user name and password."""
    if "mlflow" not in state:
        return {}
    return {"MLFLOW_TRACKING_URI": state["mlflow"], "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": Path(state["mlflow_password"]).read_text()}


def _started(state: dict, procs: list[subprocess.Popen], name: str, proc: subprocess.Popen) -> None:
    procs.append(proc)
    state["pids"][name] = proc.pid


def start_services(root: Path, state: dict, procs: list[subprocess.Popen], s3_endpoint: str | None,
                   mlflow: bool) -> None:
    """S3 (moto, unless ``s3_endpoint`` names a server) and MLflow on PostgreSQL with its artifacts in S3."""
    state["s3_keys"] = {}
    if s3_endpoint is None:
        state["s3_keys"] = {k: os.environ.get(k, v) for k, v in MOTO_KEYS.items()}
        proc, s3_endpoint = start_moto(root, state["bucket"], state["s3_keys"])
        _started(state, procs, "moto", proc)
    state["s3_endpoint"] = s3_endpoint
    if mlflow:
        proc, state["mlflow_backend"], data = start_postgres(root)
        state["postgres_data"] = str(data)
        _started(state, procs, "postgres", proc)
        proc, state["mlflow"] = start_mlflow(root, state["mlflow_backend"], f"s3://{state['bucket']}/mlflow",
                                             {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **state["s3_keys"]},
                                             auth_db=state["mlflow_backend"].rsplit("/", 1)[0] + "/mlflow_auth")
        state["mlflow_password"] = str((root / "mlflow_password").resolve())
        _started(state, procs, "mlflow", proc)


def node_env(state: dict) -> dict[str, str]:
    """What every node's processes run with. As on a real cluster (cluster/aws.yaml): a job's
    `python` is the installation the nodes run, and its driver and workers log to the cluster's
    MLflow server, signed in."""
    return {**state["ray_env"], "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **mlflow_credentials(state)}


def alive_nodes(state: dict) -> int:
    token = Path(state["ray_env"]["RAY_AUTH_TOKEN_PATH"]).read_text()
    return sum(n["state"] == "ALIVE" for n in ray_nodes(state["ray_dashboard"], token))


def start_worker_node(root: Path, state: dict, procs: list[subprocess.Popen], index: int) -> None:
    """Worker node ``index`` (resource ``worker_node_<index>``), waited for until it is one more node."""
    before = alive_nodes(state)
    temp_dir = tempfile.mkdtemp(prefix="cost-ray-")  # a fresh one: a killed node leaves its sockets behind
    state["temp_dirs"].append(temp_dir)
    log = root / f"ray-worker-{index}.log"
    proc = start(ray_node_cmd(temp_dir, head_port=int(state["ray_address"].rsplit(":", 1)[1]),
                              cpus=state["worker_cpus"], resources={f"worker_node_{index}": 1}), log,
                 env=node_env(state))
    _started(state, procs, f"ray-worker-{index}", proc)
    wait_until(lambda: alive_nodes(state) == before + 1, f"ray worker node {index}", proc, log, 180)


def start_ray(root: Path, state: dict, procs: list[subprocess.Popen], workers: int, head_cpus: float,
              worker_cpus: float) -> None:
    """A Ray head and ``workers`` worker nodes, with token authentication, each node waited for."""
    token = root / "ray_token"
    secret_file(token)
    # The nodes' tasks read and write S3: moto's throw-away keys, else the caller's own credentials.
    state["ray_env"] = {**CLUSTER_ENV, **state["s3_keys"], "RAY_AUTH_MODE": "token",
                        "RAY_AUTH_TOKEN_PATH": str(token.resolve())}
    head_port, dash = free_ports(2)
    state["ray_address"], state["ray_dashboard"] = f"127.0.0.1:{head_port}", f"http://127.0.0.1:{dash}"
    state["worker_cpus"] = worker_cpus
    log = root / "ray-head.log"
    # Short temp dirs outside --dir: Ray's socket paths must stay under ~107 characters.
    state["temp_dirs"] = [tempfile.mkdtemp(prefix="cost-ray-")]
    proc = start(ray_node_cmd(state["temp_dirs"][0], head_port=head_port, cpus=head_cpus, resources={"head": 1},
                              head=True, dashboard_port=dash), log, env=node_env(state))
    _started(state, procs, "ray-head", proc)
    auth = {"Authorization": f"Bearer {token.read_text()}"}
    wait_until(lambda: http_ok(f"{state['ray_dashboard']}/api/version", auth), "ray head", proc, log, 180)
    for i in range(1, workers + 1):
        start_worker_node(root, state, procs, i)


def up(root: Path, *, workers: int = 1, head_cpus: float = 2, worker_cpus: float = 2, bucket: str = "cost",
       s3_endpoint: str | None = None, mlflow: bool = True) -> dict:
    """Start the services under ``root`` (created) and return the state written to root/cluster.json."""
    root.mkdir(parents=True, exist_ok=True)
    if (root / "cluster.json").exists():
        raise RuntimeError(f"{root}/cluster.json exists: a cluster is up there (`down` first)")
    state: dict = {"pids": {}, "bucket": bucket}
    procs: list[subprocess.Popen] = []  # stopped again if anything fails to start
    try:
        start_services(root, state, procs, s3_endpoint, mlflow)
        start_ray(root, state, procs, workers, head_cpus, worker_cpus)
    except BaseException:
        for proc in reversed(procs):
            stop(proc)
        remove_folders(state)
        raise
    (root / "cluster.json").write_text(json.dumps(state, indent=2))
    return state


def down(root: Path) -> None:
    """Stop what ``up`` started under ``root``, as ``stop`` does."""
    path = root / "cluster.json"
    if not path.exists():
        raise RuntimeError(f"no cluster is up under {root} ({path} is missing)")
    state = json.loads(path.read_text())
    stop_groups(list(state["pids"].values()))
    remove_folders(state)
    path.unlink()


def remove_folders(state: dict) -> None:
    """The PostgreSQL data and Ray temp folders ``up`` made outside its --dir."""
    for folder in [state.get("postgres_data"), *state.get("temp_dirs", [])]:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def kill_node(root: Path, index: int) -> None:
    """SIGKILL worker node ``index`` and every process it started, as if its machine were lost."""
    pid = json.loads((root / "cluster.json").read_text())["pids"][f"ray-worker-{index}"]
    os.killpg(pid, signal.SIGKILL)


def drain_node(root: Path, index: int, deadline_s: int = 120) -> None:
    """Give worker node ``index`` notice that it will be reclaimed in ``deadline_s`` seconds, as
    cluster/spot_notice.py does on a spot node when AWS gives its two-minute notice (Ray's node
    drain, reason preemption). The node keeps running: ``kill_node`` is the reclaim itself."""
    state = json.loads((root / "cluster.json").read_text())
    token = Path(state["ray_env"]["RAY_AUTH_TOKEN_PATH"]).read_text()
    (node,) = [n["node_id"] for n in ray_nodes(state["ray_dashboard"], token)
               if n["state"] == "ALIVE" and f"worker_node_{index}" in n["resources_total"]]
    drain(state["ray_address"], node, deadline_s, "spot reclaim (local.py drain-node)",
          {**os.environ, **node_env(state)})


def start_node(root: Path, index: int) -> None:
    """Worker node ``index`` started again after ``kill_node``: a spot node's replacement."""
    state = json.loads((root / "cluster.json").read_text())
    start_worker_node(root, state, [], index)
    (root / "cluster.json").write_text(json.dumps(state, indent=2))


def client_env(state: dict) -> dict[str, str]:
    """The environment drivers and clients of this cluster need."""
    return {**state["ray_env"], "RAY_ADDRESS": state["ray_address"], "COST_RAY_DASHBOARD": state["ray_dashboard"],
            "COST_S3_ENDPOINT": state["s3_endpoint"], **mlflow_credentials(state)}


def env_lines(state: dict) -> list[str]:
    """Shell exports for drivers and clients of this cluster."""
    return [f"export {k}={v}" for k, v in client_env(state).items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["up", "down", "env", "drain-node", "kill-node", "start-node"])
    p.add_argument("index", nargs="?", type=int, default=1,
                   help="drain-node, kill-node, start-node: which worker node (1..N)")
    p.add_argument("--dir", type=Path, default=Path(".cluster"), help="state, logs and data (default .cluster)")
    p.add_argument("--workers", type=int, default=2, help="worker nodes beside the head")
    p.add_argument("--head-cpus", type=float, default=2)
    p.add_argument("--worker-cpus", type=float, default=2)
    p.add_argument("--bucket", default="cost")
    p.add_argument("--s3-endpoint", help="an existing S3-compatible endpoint instead of a local moto server")
    p.add_argument("--no-mlflow", action="store_true", help="no PostgreSQL and MLflow server")
    args = p.parse_args(argv)
    try:
        if args.command == "up":
            state = up(args.dir, workers=args.workers, head_cpus=args.head_cpus, worker_cpus=args.worker_cpus,
                       bucket=args.bucket, s3_endpoint=args.s3_endpoint, mlflow=not args.no_mlflow)
            print(f"up: Ray head {state['ray_address']} (dashboard {state['ray_dashboard']}) and {args.workers} "
                  f"worker node(s); MLflow {state.get('mlflow', '-')}; S3 {state['s3_endpoint']}\n"
                  f"use it:  eval \"$(python cluster/local.py env --dir {args.dir})\"", file=sys.stderr)
        elif args.command == "env":
            print("\n".join(env_lines(json.loads((args.dir / "cluster.json").read_text()))))
        elif args.command == "drain-node":
            drain_node(args.dir, args.index)
        elif args.command == "kill-node":
            kill_node(args.dir, args.index)
        elif args.command == "start-node":
            start_node(args.dir, args.index)
        else:
            down(args.dir)
    except (RuntimeError, FileNotFoundError, KeyError, subprocess.CalledProcessError) as e:
        print(f"local.py {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
