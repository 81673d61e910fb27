"""Joining Ray: a cluster that is named or found but does not answer is one line naming its
address and how to choose another, within seconds, never a retry loop."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.local import free_port

ROOT = Path(__file__).resolve().parents[2]
JOIN = "from pipeline.session import connect_ray; connect_ray(None, 1)"


@pytest.mark.parametrize("how", ["named", "found"])
def test_a_cluster_that_does_not_answer_is_one_line_not_a_hang(how, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(tmp_path)}
    if how == "named":
        env["RAY_ADDRESS"] = address
    else:  # what `ray start` leaves on the machine, the cluster since gone without `ray stop`
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text(address)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", JOIN], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and time.monotonic() - start < 60
    (line,) = done.stderr.strip().splitlines()
    assert f"the Ray cluster at {address} ({'given' if how == 'named' else 'found on this machine'}) does not " \
           "answer" in line and "--address or RAY_ADDRESS" in line and "ray stop" in line
