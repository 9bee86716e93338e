"""A real S3 endpoint on 127.0.0.1 for the object-storage tests: moto's standalone server in a subprocess.

s3fs's own test suite runs against the same server. The endpoint and credentials reach every client the
standard way, through ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
``AWS_DEFAULT_REGION`` (botocore, aiobotocore and s3fs all read them), so code under test needs no test-only
options. Subprocesses (``python -m amd_fast.train``) get them through :attr:`S3Endpoint.env`.

- ``s3_endpoint`` (session): the running server; ``make_bucket()`` gives an empty, uniquely named bucket and
  ``upload(local_dir, "s3://bucket/prefix")`` copies a folder up.
- ``s3_env`` (function): the endpoint's variables set in ``os.environ`` for the test's own process.
"""
from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

import pytest


def wait_until_serving(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    """Block until ``url`` answers HTTP (any status); a RuntimeError naming ``what`` if ``proc`` exits or
    ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on {url}")
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Endpoint:
    url: str
    env: Dict[str, str] = field(default_factory=dict)
    _names: itertools.count = field(default_factory=itertools.count)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                            region_name=self.env["AWS_DEFAULT_REGION"])

    def make_bucket(self, stem: str = "bucket") -> str:
        name = f"{stem}-{os.getpid()}-{next(self._names)}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload(self, local_dir: Path, url: str) -> str:
        """Every file under ``local_dir`` to ``s3://bucket/prefix/<relative path>``; returns ``url``."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        c = self.client()
        for p in sorted(Path(local_dir).rglob("*")):
            if p.is_file():
                key = "/".join(x for x in (prefix.strip("/"), p.relative_to(local_dir).as_posix()) if x)
                c.upload_file(str(p), bucket, key)
        return url


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    pytest.importorskip("moto.server", reason="moto[server] is part of the test extra")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(f"{url}/moto-api/", proc, f"moto server (see {log.name})")
        yield S3Endpoint(url=url, env={"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                                       "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    for k, v in s3_endpoint.env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    yield s3_endpoint
