"""A fault-injecting HTTP proxy for the object-storage tests: real sockets, one thread per connection.

It sits between a client and an HTTP endpoint (the moto S3 server of ``tests/s3_endpoint.py``) and, per
request: waits ``latency`` seconds (a far-away bucket), answers 500 ``InternalError`` for a share
``fail_rate`` (S3's own body, so clients parse it as S3 would send it), closes the connection mid-response
for a share ``drop_rate`` (headers and half the body sent: a reset peer), stalls for ``stall_s`` seconds
for a share ``stall_rate`` (a read that never finishes), and answers 403 ``AccessDenied`` for paths under
``forbid`` (a bucket the credentials may not read). With ``refuse_presigned`` it answers 403 to every request
signed in its query string (an S3 service that takes no presigned URLs); ``counts["presigned"]`` counts those
requests either way. With ``ignore_range`` it drops the ``Range`` header (a server that answers every GET with
the whole object, 200). Everything else is forwarded as is.

Faults hit only GETs of byte ranges unless ``fault_all``; so listing and metadata stay reliable and a test
can aim at the sample reads. Draws come from ``random.Random(seed)`` under a lock: the share is exact over
many requests, which request fails depends on thread timing. ``counts`` says what was done.

    with FaultProxy(upstream="http://127.0.0.1:5000", latency=0.05, fail_rate=0.05) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url

Also a command: ``python -m tests.fault_proxy --upstream URL --port 0 --latency 0.05`` prints its URL and
serves until killed (the bench and the README's figures use it).
"""
from __future__ import annotations

import argparse
import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Sequence
from urllib.parse import urlsplit

_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def _s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>fault-proxy</RequestId></Error>").encode()


class FaultProxy:
    def __init__(self, upstream: str, *, latency: float = 0.0, fail_rate: float = 0.0, drop_rate: float = 0.0,
                 stall_rate: float = 0.0, stall_s: float = 30.0, forbid: Sequence[str] = (), fault_all: bool = False,
                 refuse_presigned: bool = False, ignore_range: bool = False, seed: int = 0, host: str = "127.0.0.1",
                 port: int = 0):
        up = urlsplit(upstream)
        self.upstream = (up.hostname, up.port or 80)
        self.latency, self.fail_rate, self.drop_rate = latency, fail_rate, drop_rate
        self.stall_rate, self.stall_s, self.forbid, self.fault_all = stall_rate, stall_s, tuple(forbid), fault_all
        self.refuse_presigned, self.ignore_range = refuse_presigned, ignore_range
        self.counts: Counter = Counter()
        self.in_flight = self.peak_in_flight = 0  # requests being answered at once (do reads overlap?)
        self._rng, self._lock = random.Random(seed), threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(_Forward):
            owner = proxy

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread: Optional[threading.Thread] = None

    def draw(self, method: str, headers) -> str:
        """What to do with one request: 'ok', 'fail', 'drop' or 'stall'."""
        if not self.fault_all and not (method == "GET" and headers.get("Range")):
            return "ok"
        with self._lock:
            u = self._rng.random()
        for what, share in (("fail", self.fail_rate), ("drop", self.drop_rate), ("stall", self.stall_rate)):
            if u < share:
                return what
            u -= share
        return "ok"

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()  # wakes stalled handlers
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _Forward(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients pool connections

    def log_message(self, *args) -> None:  # quiet: the tests read `counts`
        pass

    def _handle(self) -> None:
        p = self.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        what = p.draw(self.command, self.headers)
        p.count("requests")
        if p.latency:
            with p._lock:
                p.in_flight += 1
                p.peak_in_flight = max(p.peak_in_flight, p.in_flight)
            time.sleep(p.latency)
            with p._lock:
                p.in_flight -= 1
        path, query = urlsplit(self.path)[2:4]
        if any(path.startswith(f) for f in p.forbid):
            p.count("forbidden")
            return self._reply(403, _s3_error("AccessDenied", "Access Denied"))
        if "X-Amz-Signature=" in query:
            p.count("presigned")
            if p.refuse_presigned:
                return self._reply(403, _s3_error("SignatureDoesNotMatch", "Query-string authentication is off"))
        if what == "fail":
            p.count("fail")
            return self._reply(500, _s3_error("InternalError", "We encountered an internal error. Please try again."))
        if what == "stall":
            p.count("stall")
            p._stop.wait(p.stall_s)
            self.close_connection = True
            return
        status, out_headers, length, data = self._forward(body)
        if what == "drop" and len(data) > 1:
            p.count("drop")
            self.send_response(status)
            for k, v in out_headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # a reset peer: the client sees a short body
            self.close_connection = True
            return
        # HEAD: no body, but the object's length as upstream said it (clients read sizes from it)
        self._reply(status, data, out_headers, length=length if self.command == "HEAD" else None)

    def _forward(self, body: bytes):
        """The upstream's answer to this request, over a connection kept for as long as the client's (an S3
        client pools its connections, and a fresh upstream connection per request would cost the endpoint a
        connection and a thread each time; one retry on a fresh connection if the kept one was closed)."""
        dropped = _HOP_HEADERS | ({"range"} if self.owner.ignore_range else set())
        headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
        for attempt in (0, 1):
            conn = getattr(self, "_upstream", None)
            if conn is None:
                conn = self._upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
            try:
                conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                             headers=headers)
                r = conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._upstream = None
                if attempt:
                    raise
                continue
            if r.will_close:
                conn.close()
                self._upstream = None
            out_headers = [(k, v) for k, v in r.getheaders() if k.lower() not in _HOP_HEADERS | {"content-length"}]
            return r.status, out_headers, r.getheader("Content-Length"), data
        raise AssertionError("unreachable")

    def finish(self) -> None:
        super().finish()
        if getattr(self, "_upstream", None) is not None:
            self._upstream.close()

    def _reply(self, status: int, data: bytes, headers=(("Content-Type", "application/xml"),),
               length: Optional[str] = None) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", length if length is not None else str(len(data)))
        self.end_headers()
        if length is None and self.command != "HEAD":  # a HEAD answer never has a body
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fail-rate", type=float, default=0.0)
    ap.add_argument("--drop-rate", type=float, default=0.0)
    ap.add_argument("--fault-all", action="store_true",
                    help="latency and faults on every request, not only ranged GETs")
    a = ap.parse_args(argv)
    with FaultProxy(a.upstream, latency=a.latency, fail_rate=a.fail_rate, drop_rate=a.drop_rate, port=a.port,
                    fault_all=a.fault_all) as p:
        print(p.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
