"""A real HTTP file server on 127.0.0.1 for the ``https://``-style shard tests: a folder served over plain HTTP,
with byte ranges (``Range: bytes=a-b`` -> 206), HEAD, and the HTML directory listings fsspec's HTTP filesystem
reads. Python's own ``http.server`` ignores ``Range`` (a whole file per ranged read), so this adds it.

Run in its own process (``python -m tests.http_files --root DIR``, the first stdout line is its URL), like the
S3 endpoint: the tests' DataLoader workers fork from the test process and must not inherit a serving thread.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import subprocess
import sys
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if m is None or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
        if start >= size or end < start:
            self.send_error(416)
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        left = getattr(self, "_left", None)
        if left is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(left))


def start(root: Path) -> tuple:
    """(process, base URL) of a server for ``root``; stop it with ``process.terminate()``."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.http_files", "--root", str(root)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    return proc, proc.stdout.readline().strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    a = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(RangeHandler, directory=a.root))
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
