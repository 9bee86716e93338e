"""Ranged S3 GETs over presigned URLs: the sample reads' fast path (issue 18).

A ranged ``get_object`` through s3fs runs all of botocore's machinery per request (parameter validation,
serialization, event hooks, SigV4 signing of the headers, response parsing): 2.6-3.9 ms of a loader's CPU per
392 KiB GET on the 2-core dev box (rclone on 127.0.0.1), where a plain aiohttp GET of the same bytes costs
0.9-1.0 ms. So a sample read signs its object's URL once (botocore's own presigner, with the same credential
chain, endpoint and addressing style as the s3fs client; re-signed every :data:`RESIGN_S`, long before it
expires) and sends a plain ``GET`` with a ``Range`` header from one ``aiohttp`` session per process.

Errors are classified as s3fs's are (:func:`amd_fast.data.remote.classify`): 5xx, 408, 429, timeouts and cut
connections are raised as they are, for the caller to retry and count. Anything else (a 3xx or 4xx answer, a TLS
failure, an endpoint that takes no query-string signatures) sends the same read through s3fs at once: if s3fs
reads it, presigned GETs are off for that bucket in this process (logged once); if s3fs fails too, its error is
the one raised, so a 404 or 403 gets the same one-line message either way.
"""
from __future__ import annotations

import logging
import os
import ssl
import time
import urllib.request
import weakref
from typing import Dict, Optional, Tuple
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

RESIGN_S = 300.0  # a cached presigned URL is used for at most this long ...
EXPIRES_S = 900  # ... of its validity (temporary credentials may end sooner: a 403 then falls back, below)


class HTTPStatusError(OSError):
    """An answer other than 200 or 206 to a presigned GET; ``status`` is what :func:`remote.classify` reads."""

    def __init__(self, status: int, url: str):
        super().__init__(f"HTTP {status} for a ranged GET of {url}")
        self.status = status


class PresignedGets:
    """One per s3fs filesystem object (that is, per process): its signed-URL cache, its aiohttp session and the
    buckets on which presigned GETs were refused."""

    def __init__(self, fs):
        self.fs = fs
        self.urls: Dict[str, Tuple[str, float]] = {}  # s3 path -> (presigned URL, when signed)
        self.off: set = set()  # buckets read through s3fs only
        self.proxies: Dict[Tuple[str, str], Optional[str]] = {}  # (scheme, host) -> proxy URL or None
        self.session = None

    async def get(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``bucket/key`` ``path``."""
        from . import remote

        bucket = path.split("/", 1)[0]
        if bucket in self.off:
            return await self.fs._cat_file(path, start=start, end=end)
        try:
            return await self._get(path, start, end)
        except Exception as e:  # noqa: BLE001 (sorted right here)
            severity, kind = remote.classify(e)
            if (severity == "transient" and kind != "other") or kind == "shutting down":
                raise
            self.urls.pop(path, None)
            first = e
        data = await self.fs._cat_file(path, start=start, end=end)  # raises the real error if there is one
        if bucket not in self.off:  # (reads in flight at once may all have been refused)
            self.off.add(bucket)
            log.info("s3://%s: presigned GETs refused (%s); reading it through s3fs", bucket, remote._first_line(first))
        return data

    async def _get(self, path: str, start: int, end: int) -> bytes:
        if self.session is None:
            self.session = await _new_session()
            weakref.finalize(self, _close, self.fs.loop, self.session)  # as s3fs closes its client
        url = await self._url(path)
        async with self.session.get(url, headers={"Range": f"bytes={start}-{end - 1}"}, allow_redirects=False,
                                    proxy=self._proxy_for(url)) as resp:
            if resp.status not in (200, 206):
                raise HTTPStatusError(resp.status, f"s3://{path}")
            got = resp.headers.get("Content-Range")
            data = await resp.read()
        if got is None:
            if resp.status == 206:
                raise ValueError(f"s3://{path}: a 206 answer without Content-Range")
            return data[start:end]  # 200 and no Content-Range: the whole object (an endpoint that ignores Range)
        # rclone answers a range with 200 and Content-Range: the header, not the status, says what came
        if not got.startswith(f"bytes {start}-"):
            raise ValueError(f"s3://{path}: asked for bytes {start}-{end - 1}, got {got}")
        return data

    def _proxy_for(self, url: str) -> Optional[str]:
        """The HTTP(S)_PROXY that NO_PROXY leaves ``url``'s host to, looked up once per host: aiohttp's
        ``trust_env`` looks it up (and reads ~/.netrc) on every request, ~1 ms of CPU per GET measured here."""
        scheme, host = urlsplit(url)[:2]
        if (scheme, host) not in self.proxies:
            bypass = urllib.request.proxy_bypass(host.rsplit(":", 1)[0])
            self.proxies[scheme, host] = None if bypass else urllib.request.getproxies().get(scheme)
        return self.proxies[scheme, host]

    async def _url(self, path: str) -> str:
        now = time.monotonic()
        hit = self.urls.get(path)
        if hit is not None and now - hit[1] < RESIGN_S:
            return hit[0]
        await self.fs.set_session()
        bucket, key, version = self.fs.split_path(path)
        params = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
        url = await self.fs.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=EXPIRES_S)
        if len(self.urls) > 100_000:  # one entry per tar: bounded all the same
            self.urls.clear()
        self.urls[path] = (url, now)
        return url


async def _new_session():
    """An aiohttp session that trusts what botocore trusts: AWS_CA_BUNDLE, else certifi's bundle (which
    botocore ships with); the HTTP(S)_PROXY / NO_PROXY variables are applied per host (``_proxy_for``)."""
    import aiohttp

    cafile = os.environ.get("AWS_CA_BUNDLE")
    if not cafile:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            cafile = None
    context = ssl.create_default_context(cafile=cafile)
    # limit=0: the caller's data.remote_concurrency bounds the requests in flight
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=0), auto_decompress=False)


def _close(loop, session) -> None:
    """Close ``session`` on its loop if that still runs (from another thread), else drop its connections."""
    if loop is not None and loop.is_running() and not loop.is_closed():
        try:
            from fsspec.asyn import sync

            sync(loop, session.close, timeout=1)
            return
        except Exception:  # noqa: BLE001 (called from the loop's own thread, or the loop is stopping)
            pass
    if session.connector is not None:
        session.connector._close()
