"""cluster/spot_notice.py reads EC2's spot reclaim notice as the instance metadata service (IMDSv2)
serves it: a session token first, then spot/instance-action (404 until AWS has given notice).
A local HTTP server stands in for the service, which only an EC2 instance can reach."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cluster.local import free_port
from cluster.spot_notice import notice


@pytest.fixture
def imds():
    """(URL, state): ``state["action"]`` is the notice served (None: 404), ``state["tokens"]`` the
    tokens handed out; a GET without a valid token gets 401, as IMDSv2 answers."""
    state = {"action": None, "tokens": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_PUT(self):
            ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            token = f"token-{len(state['tokens'])}"
            state["tokens"].append(token)
            self.send_response(200 if ok else 400)
            self.end_headers()
            self.wfile.write(token.encode())

        def do_GET(self):
            if self.headers.get("X-aws-ec2-metadata-token") not in state["tokens"]:
                self.send_response(401)
            elif self.path != "/latest/meta-data/spot/instance-action" or state["action"] is None:
                self.send_response(404)
            else:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(json.dumps(state["action"]).encode())
                return
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", state
    finally:
        server.shutdown()


def test_no_notice_until_aws_gives_one_then_the_seconds_left(imds):
    url, state = imds
    assert notice(url) is None and state["tokens"]  # asked with a token, and nothing yet
    when = datetime.fromtimestamp(time.time() + 120, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    state["action"] = {"action": "terminate", "time": when}
    assert 115 <= notice(url) <= 120


def test_off_ec2_there_is_no_notice():
    assert notice(f"http://127.0.0.1:{free_port()}", timeout=0.5) is None  # nothing answers
