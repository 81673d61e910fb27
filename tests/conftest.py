"""Session fixtures that start real services on 127.0.0.1 and stop them afterwards.

* ``ray_cluster`` - ``ray start --head`` (dashboard and job API included) in its own temp dir;
  sets ``RAY_ADDRESS`` so entry points called in-process join it.
* ``mlflow_server`` - ``mlflow server`` on a SQLite store with served artifacts.
* ``s3_server`` - ``moto_server`` with a bucket; fake credentials are set for the whole session.
* ``bench_script`` - loads a benchmark script of bench/ by name (``bench.<name>``).
* ``figures`` - a list a test appends measured numbers to; they are shown after the run.
* ``docs`` - the command blocks of README.md and docs/, and ``DocShell``, which runs them as a
  user's shell does (tests/test_docs.py).

Each is started only when a test asks for it. ``@pytest.mark.gpu`` tests are skipped where
torch sees no CUDA device.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from cluster.local import free_ports, http_ok, ray_node_cmd, start, start_mlflow, start_moto, stop, wait_until

# Tests must never reach a real cloud account or phone home.
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
    # On Linux Ray replaces 127.0.0.1 by the host's routable address unless this is off; with it
    # off the test cluster (one node) and its drivers stay on loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Explicit, so that a token a local `ray.init()` once saved in ~/.ray does not switch the
    # loopback-only test cluster to token auth (its health check and jobs would be refused).
    "RAY_AUTH_MODE": "disabled",
    # Ray Train's controller polls its workers every 2 s by default, and a run waits on several
    # polls to start and to end: ~5 s a run, of a suite that starts some twenty runs. The clusters
    # here have one or two nodes, so polling 8x as often costs nothing.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
})


FIGURES: list[str] = []  # lines for the run's "figures" section (the ``figures`` fixture)


@pytest.fixture(scope="session")
def figures() -> list[str]:
    """Measured figures a test appends (e.g. the motion tests' top-1): pytest shows them after the run,
    passed or failed, so make test's and CI's logs carry them without -s."""
    return FIGURES


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _load_bench(name: str) -> ModuleType:
    # As ``bench.<name>``, the name the scripts import each other by, so that a process they
    # spawn (bench/motion_grid.py's fit_many) finds their functions by that name too.
    return importlib.import_module(f"bench.{name}")


@pytest.fixture(scope="session")
def bench_script():
    return _load_bench


@dataclass
class RayCluster:
    address: str  # GCS address for ray.init / RAY_ADDRESS
    dashboard_url: str  # job API for `ray job submit --address`
    temp_dir: Path


@contextlib.contextmanager
def ray_head(env: dict[str, str] | None = None) -> Iterator[RayCluster]:
    """A one-node Ray cluster (dashboard and job API included) in its own temp dir, its processes
    and the jobs' drivers with ``env`` added to this process's environment."""
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))
    port, dash = free_ports(2)
    log = temp_dir / "head.log"
    # `--block` keeps `ray start` in the foreground: stopping it stops exactly this cluster.
    # Logical CPUs exceed the 2 real cores: train workers ask for fractions of a CPU, and Ray Data
    # tasks must still find slots beside them, or a pipeline on 2 cores starves.
    proc = start(ray_node_cmd(str(temp_dir), head_port=port, cpus=max(4, os.cpu_count() or 1), resources={},
                              head=True, dashboard_port=dash), log, env)
    try:
        dashboard_url = f"http://127.0.0.1:{dash}"
        wait_until(lambda: http_ok(f"{dashboard_url}/api/version"), "ray head", proc, log, timeout=180)
        yield RayCluster(f"127.0.0.1:{port}", dashboard_url, temp_dir)
    finally:
        stop(proc, grace=1)  # throw-away: no need to wait 5 s for a clean exit
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """The session's Ray head; entry points called in-process join it through RAY_ADDRESS."""
    with ray_head() as cluster:
        old = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = cluster.address
        try:
            yield cluster
        finally:
            import ray

            ray.shutdown()
            if old is None:
                os.environ.pop("RAY_ADDRESS", None)
            else:
                os.environ["RAY_ADDRESS"] = old


@pytest.fixture(scope="session")
def appearance_store(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The synthetic appearance dataset, 4 classes of 12 training and 3 validation videos, prepared."""
    from pipeline.prepare import main as prepare

    root = tmp_path_factory.mktemp("appearance")
    assert prepare(["--dataset", "synthetic", "--synthetic-kind", "appearance", "--classes", "4",
                    "--videos-per-class", "12", "--root", str(root / "src"), "--out", str(root / "store")]) == 0
    return str(root / "store")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    proc, url = start_mlflow(root, f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri(), {})
    try:
        yield url
    finally:
        stop(proc, grace=1)


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str

    def storage_options(self) -> dict:
        """fsspec/s3fs options for this server."""
        return {"client_kwargs": {"endpoint_url": self.endpoint_url}}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    keys = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    proc, url = start_moto(tmp_path_factory.mktemp("s3"), "cost-test", keys)
    try:
        yield S3Server(url, "cost-test")
    finally:
        stop(proc, grace=1)


def run_in_terminal(cmd: list[str], timeout: float) -> tuple[int, str]:
    """``cmd`` with a pseudo-terminal (120 columns) as its console, as a user's shell runs it: its exit
    status and everything it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    shown, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command and all it started have closed the terminal
                break
            if not data:
                break
            shown.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), b"".join(shown).decode(errors="replace")


@pytest.fixture
def small_disk(tmp_path):
    """``make(size_mb, free_kb)``: a tmpfs of ``size_mb`` MB with a filler file that leaves about
    ``free_kb`` KB free, as ``(folder, filler)``; unmounted after the test. The test is skipped where
    this machine cannot mount one (it needs root)."""
    mounted = []

    def make(size_mb: int, free_kb: int) -> tuple[Path, Path]:
        disk = tmp_path / f"disk-{len(mounted)}"
        disk.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(disk)]
        if subprocess.run(mount, capture_output=True).returncode:
            pytest.skip("this machine cannot mount a small tmpfs here (needs root)")
        mounted.append(disk)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (size_mb * 1024 - free_kb) * 1024)
        return disk, filler

    yield make
    for disk in mounted:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture
def in_terminal():
    """``run_in_terminal``: a command-line tool as a user sees it in a terminal."""
    return run_in_terminal


# A short run of the demo's model (configs/tiny_synthetic.yaml): one epoch of 4-frame clips, no model
# or system metrics logged. The ``runs`` fixture's ``tiny``, and what SCALE adds to the docs' runs.
TINY_RUN = ("data.frames=4", "data.test_clips=2", "data.clips_per_video=2", "trainer.epochs=1",
            "optim.warmup_epochs=0.5", "trainer.val_every=1", "tracking.log_model=false", "tracking.system_metrics_s=0")


def run_named(uri: str, experiment: str, name: str):  # -> mlflow.entities.Run
    """The one run of ``experiment`` named ``name`` (as the console prints it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    (found,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`cost.run_name` = '{name}'")
    return found


@pytest.fixture(scope="session")
def runs() -> SimpleNamespace:
    """What tests of training runs share: ``tiny``, the overrides of a short run of the demo's model,
    and ``named(uri, experiment, name)``, the run of that name."""
    return SimpleNamespace(tiny=list(TINY_RUN), named=run_named)


# The docs' commands (tests/test_docs.py, tests/cluster/test_local_cluster.py). A command block is a
# ```sh fence; each of its lines (continuations joined) is one command.
DOCS = ("README.md", "docs/data.md", "docs/training.md", "docs/results.md", "docs/models.md", "docs/protocol.md",
        "docs/development.md", "cluster/README.md")
FENCE = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^\1```[ \t]*$", re.M | re.S)
# What every doc command is run with, as (regex, replacement) over the command: one short epoch of
# 4-frame clips and one seed of one CoST model (every command's code path, in seconds); a placeholder
# checkpoint is the newest one written; a server passes once its page answers, and is stopped.
SCALE = [(r"--videos-per-class \d+", "--videos-per-class 4"), (r"--seeds \d+", "--seeds 1"),
         (r"--archs c2d,c3d,cost_a,cost_b", "--archs cost_b"),
         (r"^(.*(?:train/main\.py --config|results/compare\.py).*)$", r"\1 " + " ".join(TINY_RUN)),
         (r"\bCHECKPOINT\b", '"$(ls -td "$COST_HOME"/runs/*/checkpoint_*/ | head -1)"'),
         (r"^(mlflow ui .*--port (\d+).*)$", r"serves http://127.0.0.1:\2 \1")]
SERVES = """serves() {  # serves URL COMMAND...: COMMAND's page answers at URL within 2 minutes; then stopped
  local url=$1; shift; setsid "$@" > serves.log 2>&1 & local pid=$!
  for _ in $(seq 240); do
    if curl -sf -o /dev/null "$url"; then kill -- -$pid; return 0; fi
    kill -0 $pid 2>/dev/null || break; sleep 0.5
  done
  kill -- -$pid 2>/dev/null; cat serves.log >&2; return 1
}"""
NOT_RUN = {  # command prefix: why this machine does not run it
    "make demo": "the whole demo takes 7 minutes; its commands are README's and docs/'s, run here",
    "make test": "this suite",
    "python3.11 -m venv": "the GPU install: a CUDA torch from PyTorch's index",
    ".venv/bin/pip install torch": "the GPU install: a CUDA torch from PyTorch's index",
    "aws ": "AWS's CLI, on an AWS account", "VPC=": "AWS's CLI, on an AWS account",
    "EFA=": "AWS's CLI, on an AWS account",
}


def doc_blocks(doc: str) -> list[list[str]]:
    """The ```sh blocks of ``doc`` (a path under the repository), each as its commands."""
    text = (ROOT / doc).read_text()
    return [[line for line in re.sub(r"\\\n\s*", "", textwrap.dedent(m.group(3))).splitlines() if line.strip()]
            for m in FENCE.finditer(text) if m.group(2) == "sh"]


def unfenced_commands(doc: str) -> list[str]:
    """Lines of ``doc`` outside its fences that read as commands: each belongs in a ```sh block."""
    text = FENCE.sub("", (ROOT / doc).read_text())
    return re.findall(r"^ {4,}(?:python|\.venv/bin/|ray |make |mlflow |aws |kubectl |docker ).*$", text, re.M)


@dataclass
class DocShell:
    """A user's checkout and shell: a copy of the repository's tracked files with the installed
    .venv beside them, its bin first on PATH, in which doc blocks run as written but for ``subs``
    (what this machine stands in for: a cluster's addresses, datasets, config) and SCALE. The
    commands of NOT_RUN are echoed with the reason, not run."""

    dir: Path
    env: dict[str, str]
    subs: list[tuple[str, str]]
    ran: set[str] = field(default_factory=set)  # a command two docs show alike runs once

    @classmethod
    def checkout(cls, where: Path, env: dict[str, str], subs: list[tuple[str, str]]) -> DocShell:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
        for name in files.stdout.splitlines():
            if (ROOT / name).is_file():
                (where / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, where / name)  # times kept: make sees .venv as up to date
        venv = Path(sys.executable).parent.parent
        (where / ".venv").symlink_to(venv)
        return cls(where, {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", **env}, subs)

    def script(self, commands: list[str]) -> str:
        lines = ["set -eo pipefail", SERVES, "PS4='+ [${SECONDS}s] '", "set -x"]
        for cmd in commands:
            why = next((r for prefix, r in NOT_RUN.items() if cmd.startswith(prefix)), None)
            if why:
                lines.append(f": not run here, {why!r}: {cmd!r}")
                continue
            for pattern, repl in self.subs + SCALE:
                cmd = re.sub(pattern, repl, cmd)
            lines.append(f": ran above: {cmd!r}" if cmd in self.ran else cmd)
            self.ran.add(cmd)
        return "\n".join(lines) + "\n"

    def run(self, commands: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", self.script(commands)], cwd=self.dir, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def docs() -> SimpleNamespace:
    """The docs' command blocks, DocShell to run them, and ``ray_head`` for a cluster of their own."""
    return SimpleNamespace(DOCS=DOCS, blocks=doc_blocks, unfenced=unfenced_commands, Shell=DocShell,
                           ray_head=ray_head)
