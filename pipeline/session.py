"""The Ray session, the code version and the check of paths a multi-node cluster cannot share.

    with ray_session(address, num_cpus):   # joins a cluster, or starts a local Ray it shuts down after
        ...
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.storage import is_node_local

# Ray's lines that a console without --verbose leaves out: the local cluster's token note, Ray Data's
# notes on the progress bars we turn off and on each finished execution, and the tracebacks Ray
# Data and Ray Train log where an error arises (a task, a training worker). Their warnings stay,
# and the error itself still reaches the driver, which prints it, or our one line for it.
QUIET = {"ray._private.authentication": logging.ERROR, "ray.data._internal.progress": logging.ERROR,
         "ray.data._internal.execution.streaming_executor": logging.WARNING,
         "ray.data._internal.execution.streaming_executor_state": logging.CRITICAL,  # "An exception was raised"
         "ray.data.exceptions": logging.CRITICAL,  # "Exception occurred in ...", "Full stack trace"
         "ray.train.v2._internal.util": logging.CRITICAL}  # "Error in training function"


def quiet_ray_logs() -> None:
    """Leave QUIET's lines out of this process's console (a driver, or a Ray Train worker, whose
    Ray Data executions log there)."""
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)


CONNECT_S, ANSWER_S = 10.0, 60.0  # a cluster's port must take a connection, then Ray must connect, within these


def connect_ray(address: str | None, num_cpus: int, *, log_to_driver: bool = False, quiet: bool = False) -> bool:
    """Join the named cluster (``address``, else RAY_ADDRESS) or the one ``ray start`` started on this
    machine, else start a local one; True if started here. A cluster that does not answer is an
    error naming its address, within a minute, never a hang. ``quiet``: Ray's own info lines
    (connecting, the dashboard's address) stay out of the console."""
    import ray

    if ray.is_initialized():
        return False
    if quiet:
        quiet_ray_logs()
    options = dict(log_to_driver=log_to_driver, logging_level=logging.WARNING if quiet else logging.INFO)
    given = address or os.environ.get("RAY_ADDRESS")
    address = given or running_cluster()
    if not address:
        ray.init(num_cpus=num_cpus or None, **options)
        return True
    # Ray retries a cluster that does not answer forever, printing a line every 30 s.
    what = (f"the Ray cluster at {address} ({'given' if given else 'found on this machine'}) does not "
            "answer{}: choose another with --address or RAY_ADDRESS, or stop what is left of it with `ray stop`")
    if "://" not in address:  # host:port of a GCS (ray:// is Ray Client's own protocol)
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_S).close()
        except (OSError, ValueError) as e:
            raise SystemExit(what.format(f" ({e})")) from None
    timer = threading.Timer(ANSWER_S, lambda: (print(what.format(f" within {ANSWER_S:.0f} s"), file=sys.stderr,
                                                     flush=True), os._exit(1)))
    timer.daemon = True
    timer.start()
    try:
        ray.init(address=address, **options)
    finally:
        timer.cancel()
    return False


def running_cluster() -> str | None:
    """The address of the Ray cluster last started on this machine by ``ray start`` (the address file
    it leaves, which ``ray stop`` removes); None where there is none. Not any Ray instance found
    running: another program's own local Ray is not a cluster to join."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(None)


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
