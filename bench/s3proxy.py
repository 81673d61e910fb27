"""An HTTP proxy in front of an S3 server (moto) that adds a fixed delay to every request and counts them.

    with S3Proxy("http://127.0.0.1:5000", delay_s=0.02) as proxy:   # real S3 answers in 10-30 ms
        opts = endpoint_options(proxy.url)                           # every client of opts pays it
        ...
        proxy.counts    # Counter: LIST, GET, HEAD, PUT, POST, DELETE requests seen
        proxy.seen      # (kind, path with query) of each, in order

A moto server answers in about a millisecond, so a round trip per video or per shard costs nothing
there and hours on S3: through this proxy it costs what it would, for s3fs, pyarrow and Ray's
workers alike. Requests are forwarded as they came (S3's signatures name the host the client
signed for; moto does not check them), each on a thread of its own, so parallel requests overlap.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def kind(method: str, path: str) -> str:
    """LIST for a bucket listing, else the HTTP method."""
    url = urllib.parse.urlsplit(path)
    if method == "GET" and (url.path.strip("/").count("/") == 0 or "list-type" in url.query):
        return "LIST"
    return method


class S3Proxy:
    def __init__(self, target: str, delay_s: float = 0.02) -> None:
        self.target, self.delay_s = urllib.parse.urlsplit(target), delay_s
        self.counts: Counter = Counter()
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # clients keep their connections, as they do with S3

            def log_message(self, *args) -> None:
                pass

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []  # sent as it is read, then forwarded whole with its length
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)

            def handle_one(self) -> None:
                body = self.body()
                with proxy.lock:
                    proxy.counts[kind(self.command, self.path)] += 1
                    proxy.seen.append((kind(self.command, self.path), urllib.parse.unquote(self.path)))
                time.sleep(proxy.delay_s)
                conn = proxy.connection()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP | {"content-length"}}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status, r.reason)
                for k, v in r.getheaders():  # a HEAD's length is the object's: passed on as it came
                    if k.lower() not in HOP and (self.command == "HEAD" or k.lower() != "content-length"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.local = threading.local()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def connection(self) -> http.client.HTTPConnection:
        """This thread's connection to the target (a handler thread serves one client connection)."""
        if getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=60)
        return self.local.conn

    def reset(self) -> Counter:
        """The counts so far, then zero (and nothing seen)."""
        with self.lock:
            counts, self.counts, self.seen = self.counts, Counter(), []
        return counts

    def __enter__(self) -> S3Proxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
