"""The Ray session, the code version and the check of paths a multi-node cluster cannot share.

    with ray_session(address, num_cpus):   # joins a cluster, or starts a local Ray it shuts down after
        ...
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.storage import is_node_local

# Ray's lines that a console without --verbose leaves out: the local cluster's token note, and
# Ray Data's notes on the progress bars we turn off and on each finished execution. Their warnings stay.
QUIET = {"ray._private.authentication": logging.ERROR, "ray.data._internal.progress": logging.ERROR,
         "ray.data._internal.execution.streaming_executor": logging.WARNING}


def connect_ray(address: str | None, num_cpus: int, *, log_to_driver: bool = False, quiet: bool = False) -> bool:
    """Join the named or running cluster, else start a local one; True if started here. ``quiet``:
    Ray's own info lines (connecting, the dashboard's address) stay out of the console."""
    import ray

    if ray.is_initialized():
        return False
    if quiet:
        for name, level in QUIET.items():
            logging.getLogger(name).setLevel(level)
    options = dict(log_to_driver=log_to_driver, logging_level=logging.WARNING if quiet else logging.INFO)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **options)
        return False
    try:
        ray.init(address="auto", **options)
        return False
    except ConnectionError:
        ray.init(num_cpus=num_cpus or None, **options)
        return True


@contextmanager
def ray_session(address: str | None, num_cpus: int, *, log_to_driver: bool = False,
                quiet: bool = False) -> Iterator[None]:
    """``connect_ray`` for the block; Ray is shut down after it only if it was started here."""
    started = connect_ray(address, num_cpus, log_to_driver=log_to_driver, quiet=quiet)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def git_commit() -> str:
    """This checkout's commit (short), or "" outside a git checkout (e.g. a Ray job's working dir)."""
    here = Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def unshared_paths(paths: dict[str, str | None], flag: str) -> str | None:
    """On a Ray cluster of several nodes, the message for the node-local ``paths`` (name -> url),
    which tasks on other nodes could not read or would write apart; None when there are none.
    ``flag`` is how the user says such paths are on a filesystem every node mounts."""
    local = {k: v for k, v in paths.items() if v and is_node_local(v)}
    if not local:
        return None
    import ray

    nodes = sum(n["Alive"] for n in ray.nodes())
    if nodes < 2:
        return None
    names = ", ".join(f"{k} = {v}" for k, v in local.items())
    return (f"the Ray cluster has {nodes} nodes but {names} "
            f"{'is a path' if len(local) == 1 else 'are paths'} on this machine only: work on the other nodes "
            f"could not read or would write apart. Use s3:// (or another shared store; an MLflow server for "
            f"tracking), or set {flag} if the path is on a filesystem every node mounts (NFS, EFS, Lustre)")
