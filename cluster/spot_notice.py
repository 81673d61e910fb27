"""On a spot node: AWS's two-minute reclaim notice, passed on to Ray, so that a run checkpoints in time.

    python cluster/spot_notice.py &     # cluster/aws.yaml starts it on every spot GPU node

It asks the instance metadata service (IMDSv2) every 5 s for ``spot/instance-action``, which AWS
sets about two minutes before it stops or terminates a spot instance. When it appears, it drains
this node in Ray with reason "preemption" and the notice's deadline: Ray schedules nothing new
there, and Ray Train's workers see the notice (``ray.train.get_preemption_info``), on which
train/loop.py saves a checkpoint at its next log window. The run then resumes from that
checkpoint on the nodes that remain (docs/training.md, "Elastic training on spot nodes").
``cluster/local.py drain-node`` gives the same notice on a local cluster.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime

IMDS = "http://169.254.169.254"


def notice(imds: str = IMDS, timeout: float = 2.0) -> float | None:
    """Seconds until this spot instance is reclaimed, once AWS has said so; None before (or off AWS)."""
    try:
        put = urllib.request.Request(f"{imds}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        with urllib.request.urlopen(put, timeout=timeout) as r:
            token = r.read().decode()
        get = urllib.request.Request(f"{imds}/latest/meta-data/spot/instance-action",
                                     headers={"X-aws-ec2-metadata-token": token})
        with urllib.request.urlopen(get, timeout=timeout) as r:
            action = json.loads(r.read())
    except (OSError, ValueError):  # 404: no notice yet; no answer: not on EC2
        return None
    when = datetime.fromisoformat(action["time"].replace("Z", "+00:00"))
    return max(0.0, when.timestamp() - time.time())


def drain(address: str, node_id: str, seconds: float, message: str, env: dict[str, str] | None = None) -> None:
    """Ray's node drain with reason preemption and a deadline ``seconds`` from now."""
    subprocess.run(["ray", "drain-node", f"--address={address}", f"--node-id={node_id}",
                    "--reason=DRAIN_NODE_REASON_PREEMPTION", f"--reason-message={message}",
                    f"--deadline-remaining-seconds={int(seconds)}"],
                   env=env, check=True, capture_output=True, text=True)


def this_node() -> tuple[str, str]:
    """(GCS address, node ID) of the Ray node on this machine."""
    import ray

    ray.init(address="auto", log_to_driver=False, configure_logging=False)
    try:
        context = ray.get_runtime_context()
        return context.gcs_address, context.get_node_id()
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--every", type=float, default=5.0, help="seconds between two looks (default 5)")
    p.add_argument("--imds", default=IMDS, help=argparse.SUPPRESS)  # tests: a stand-in for EC2's service
    args = p.parse_args(argv)
    while (left := notice(args.imds)) is None:
        time.sleep(args.every)
    address, node = this_node()
    drain(address, node, left, f"spot reclaim in {left:.0f} s (EC2 instance-action)")
    print(f"spot_notice: node {node[:8]} drained, {left:.0f} s before its reclaim", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
