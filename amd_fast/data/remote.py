"""Shards in object storage: byte-range reads from fsspec URLs (``s3://``, ``gs://``, ``https://``, ...).

- **URLs**: :func:`is_url` tells a URL from a local path; :func:`redact` is how a URL is ever printed (no
  ``user:pass@``, no query string: a presigned token is a credential too).
- **Per process**: each process builds its own filesystem objects (keyed by ``os.getpid()``): the eager
  loader's DataLoader workers are forked, and an s3fs client or its event loop must not cross a fork.
- **Reads**: :func:`read_ranges` fetches many ``(url, start, end)`` ranges at once, at most
  ``concurrency`` in flight and at most :data:`MAX_INFLIGHT_BYTES` bytes requested at a time, each request
  bounded by ``timeout_s`` (a stalled read is abandoned and retried). Transient failures (5xx, 429, resets,
  short bodies, timeouts) are retried with exponential backoff and jitter, up to ``retries`` times, and
  counted in :data:`COUNTERS`. Permanent ones (404, 403, missing credentials) raise at once. On S3 a byte
  range goes out as a plain GET of a presigned URL (:mod:`.s3_presigned`: a third of botocore's CPU per GET).
- **Errors**: every failure is an ``OSError`` subclass (the loaders' ``read_samples`` contract):
  :class:`RemoteNotFound` / :class:`RemoteForbidden` (permanent: the message names the URL and the fix),
  :class:`RemoteUnavailable` (still failing after the retries: the sample follows ``data.on_bad_sample``).
- **Cache** (``data.cache_dir`` + ``data.cache_bytes``): a tar read from a URL is downloaded whole in the
  background (one download thread per process) into the cache, written to a ``.part`` file and renamed
  into place (a killed run never leaves a torn tar), then read from local disk; least recently used tars are
  evicted to stay under ``cache_bytes``. Reads go on by range until a tar is in the cache.
- **Counts**: transient errors by kind, shared by a process and its forked workers through shared memory,
  so the trainer logs them per epoch and per run (:func:`take_epoch`), as it does bad samples.

Settings are process-wide (:func:`configure`, called by ``build_loader`` from the ``DataConfig``) and
inherited by forked workers.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import multiprocessing
import os
import random
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

LOCAL_PROTOCOLS = ("file", "local")
# Requested bytes in flight per process; a single range larger than this still goes, alone.
MAX_INFLIGHT_BYTES = 256 << 20
CACHE_CHUNK = 8 << 20  # the cache downloads a tar in ranged GETs of this size (each retried on its own)


# ---- URLs ------------------------------------------------------------------------------------------------

def is_url(x) -> bool:
    """True for an fsspec URL other than a local file (``s3://b/p``, ``https://h/p``); False for local paths."""
    if not isinstance(x, str) or "://" not in x:
        return False
    return x.split("://", 1)[0].lower() not in LOCAL_PROTOCOLS


def strip_file_scheme(x: str) -> str:
    """``file:///a/b`` -> ``/a/b`` (a local path in URL form reads as the path)."""
    return x.split("://", 1)[1] if isinstance(x, str) and x.split("://", 1)[0].lower() in LOCAL_PROTOCOLS else x


def redact(url) -> str:
    """``url`` fit to print: without ``user:password@`` and without a query or fragment (tokens)."""
    if not is_url(url):
        return str(url)
    p = urlsplit(str(url))
    host = p.netloc.rsplit("@", 1)[-1]
    return urlunsplit((p.scheme, host, p.path, "", ""))


def secrets_in(url) -> Optional[str]:
    """What in ``url`` looks like a credential ('a user:password', 'a query string'), or None."""
    if not is_url(url):
        return None
    p = urlsplit(str(url))
    if "@" in p.netloc:
        return "a user:password"
    if p.query:
        return "a query string (a token)"
    return None


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/")] + [q.strip("/") for q in parts])


def parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


# ---- errors -----------------------------------------------------------------------------------------------

class RemoteError(OSError):
    """A URL could not be read; ``url`` is redacted, the message is one line naming it and the fix."""

    def __init__(self, message: str, url: str):
        super().__init__(message)
        self.url = url

    def __str__(self) -> str:
        return self.args[0]


class RemoteNotFound(RemoteError):
    """404: the object does not exist (permanent)."""


class RemoteForbidden(RemoteError):
    """403 / missing or refused credentials (permanent)."""


class RemoteUnavailable(RemoteError):
    """Transient errors on every one of the retries (the endpoint is down or the link is broken)."""


_CREDENTIALS_HINT = {
    "s3": "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance role) and, for a "
          "non-AWS endpoint, AWS_ENDPOINT_URL; and check that they may read this bucket",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS (or run `gcloud auth application-default login`) and check that "
          "the account may read this bucket",
}


def _status_of(e: BaseException) -> Optional[int]:
    """The HTTP status behind an exception (botocore ClientError, aiohttp, gcsfs), following its causes."""
    seen = 0
    while e is not None and seen < 8:
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code:
                return int(code)
        for attr in ("status", "code", "status_code"):
            v = getattr(e, attr, None)
            if isinstance(v, int) and 100 <= v < 600:
                return v
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _chain_names(e: BaseException) -> List[str]:
    out = []
    while e is not None and len(out) < 8:
        out.append(type(e).__name__)
        e = e.__cause__ or e.__context__
    return out


def _shutting_down(e: BaseException) -> bool:
    """Whether ``e`` says that this process is shutting down: a DataLoader worker that exits while its read-ahead
    thread still reads finds the executors (aiohttp resolves hosts in one) or the event loop closed. Retrying
    that would hold the exit up through every backoff, and counting it would count faults nobody injected."""
    return isinstance(e, RuntimeError) and any(m in str(e) for m in (
        "after shutdown", "interpreter shutdown", "Event loop is closed", "Session is closed"))


def classify(e: BaseException) -> Tuple[str, str]:
    """('permanent' | 'transient', kind) of a failed request; kind names it in logs and counters."""
    if _shutting_down(e):
        return "permanent", "shutting down"
    status = _status_of(e)
    names = _chain_names(e)
    if isinstance(e, FileNotFoundError) or status == 404:
        return "permanent", "not found"
    if isinstance(e, PermissionError) or status in (401, 403) or "NoCredentialsError" in names:
        return "permanent", "forbidden"
    if type(e) is OSError and str(e).startswith("Forbidden:"):  # gcsfs's 403: a bare OSError, no status
        return "permanent", "forbidden"
    if status is not None and (status >= 500 or status in (408, 429)):
        return "transient", f"http {status}"
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)) or any("Timeout" in n for n in names):
        return "transient", "timeout"
    if isinstance(e, (ConnectionError, EOFError)) or any(
            n in ("ClientPayloadError", "ContentLengthError", "IncompleteRead", "ServerDisconnectedError",
                  "ClientOSError", "ConnectionClosedError", "EndpointConnectionError", "ClientConnectorError",
                  "ResponseStreamingError", "HTTPClientError") for n in names):
        return "transient", "connection"
    if status is not None and 400 <= status < 500:
        return "permanent", f"http {status}"
    if isinstance(e, OSError) and e.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR):
        return "permanent", errno.errorcode[e.errno].lower()
    return "transient", "other"


def permanent_error(e: BaseException, url: str, kind: str) -> RemoteError:
    """The one-line error for a permanent failure of ``url`` (already redacted)."""
    if kind == "shutting down":  # not the URL's fault: never retried, never counted
        return RemoteUnavailable(f"{url}: not read, this process is shutting down", url)
    if kind == "not found":
        return RemoteNotFound(f"{url} does not exist (404); check the URL in data.shards, or upload the shard folder "
                              "that `python -m amd_fast.shard --out DIR` wrote (manifest, tars and .idx files)", url)
    if kind == "forbidden":
        hint = _CREDENTIALS_HINT.get(protocol(url), "check the credentials this backend reads and its access rules")
        return RemoteForbidden(f"access to {url} denied ({_first_line(e)}); {hint}", url)
    return RemoteNotFound(f"{url} cannot be read ({kind}: {_first_line(e)}); check the URL in data.shards", url)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# ---- settings and counters --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteSettings:
    concurrency: int = 16
    timeout_s: float = 60.0
    retries: int = 8
    backoff_s: float = 0.1  # first retry after ~this, doubling, capped at backoff_max_s, with jitter
    backoff_max_s: float = 5.0
    cache_dir: Optional[str] = None
    cache_bytes: int = 0


_settings = RemoteSettings()


def configure(**changes) -> RemoteSettings:
    """Change the process-wide settings (forked workers inherit them); returns the new settings."""
    global _settings, _cache
    _settings = replace(_settings, **changes)
    _cache = None
    return _settings


def settings() -> RemoteSettings:
    return _settings


def reset() -> None:
    """Default settings, no filesystem, no cache in this process (tests; a process that changes credentials)."""
    global _settings, _cache
    _settings, _cache = RemoteSettings(), None
    with _fs_lock:
        _filesystems.clear()
    _tar_sizes.clear()


class Counters:
    """Transient errors by kind (retried, and given up after the retries), in shared memory so the counts of
    forked DataLoader workers reach the trainer; per epoch through :meth:`take_epoch`."""

    KINDS = ("http 5xx", "http 429/408", "timeout", "connection", "other", "gave up after retries")

    def __init__(self):
        ctx = multiprocessing.get_context("fork") if hasattr(os, "fork") else multiprocessing
        self._values = ctx.RawArray("q", len(self.KINDS))
        self._lock = ctx.Lock()
        self._taken = [0] * len(self.KINDS)

    def add(self, kind: str, n: int = 1) -> None:
        if kind.startswith("http 5"):
            kind = "http 5xx"
        elif kind.startswith("http "):
            kind = "http 429/408"
        i = self.KINDS.index(kind) if kind in self.KINDS else self.KINDS.index("other")
        with self._lock:
            self._values[i] += n

    def totals(self) -> Dict[str, int]:
        with self._lock:
            values = list(self._values)
        return {k: v for k, v in zip(self.KINDS, values) if v}

    def take_epoch(self) -> Dict[str, int]:
        """Counts by kind since the last call (in this process and its workers)."""
        with self._lock:
            values = list(self._values)
        out = {k: v - t for k, v, t in zip(self.KINDS, values, self._taken) if v - t}
        self._taken = values
        return out


COUNTERS = Counters()  # built at import, before any worker is forked, so all of them share it


def take_epoch() -> Dict[str, int]:
    """Transient remote errors by kind since the last call (the trainer's per-epoch telemetry)."""
    return COUNTERS.take_epoch()


# ---- filesystems, per process -----------------------------------------------------------------------------

_aio_session = None
_CHATTY_LOGGERS = ("botocore.credentials", "aiobotocore.credentials", "botocore.configprovider")
_filesystems: Dict[Tuple[int, str, str], object] = {}
_fs_lock = threading.Lock()


def filesystem(url: str):
    """This process's fsspec filesystem for ``url``'s protocol, built on first use in each process. Library
    retries are off (we retry, count and time out ourselves); credentials come from the backend's defaults."""
    import fsspec

    proto = protocol(url)
    # the endpoint is part of the key: a process that changes AWS_ENDPOINT_URL gets a client for the new one
    key = (os.getpid(), proto, os.environ.get("AWS_ENDPOINT_URL", "") if proto in ("s3", "s3a") else "")
    with _fs_lock:
        fs = _filesystems.get(key)
        if fs is None:
            s = _settings
            for name in _CHATTY_LOGGERS:  # "Found credentials in environment variables": not ours to print
                logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
            if proto in ("s3", "s3a"):
                import s3fs

                global _aio_session
                if _aio_session is None:
                    import aiobotocore.session

                    _aio_session = aiobotocore.session.AioSession()
                # The session (credential chain, the loaded S3 service model) is plain data and is shared with
                # forked workers: a worker's first read then costs a client, not ~0.5 s of model loading. The
                # client, its connections and the event loop stay per process.
                fs = s3fs.S3FileSystem(skip_instance_cache=True, session=_aio_session, config_kwargs={
                    "retries": {"total_max_attempts": 1}, "connect_timeout": s.timeout_s, "read_timeout": s.timeout_s,
                    "max_pool_connections": max(10, s.concurrency),
                    # botocore checks a response's x-amz-checksum-* against its body; some S3 servers (rclone's)
                    # send the whole object's checksum with a byte range, which then never matches. AWS sends none
                    # for ranges, so this only skips checks on whole small objects (manifest, .idx), which are
                    # parsed and checked on their own.
                    "response_checksum_validation": "when_required",
                    "signature_version": "s3v4"})  # presigned URLs too (botocore presigns with SigV2 otherwise)
                fs.retries = 1  # s3fs's own retry loop: one attempt
                from .s3_presigned import PresignedGets

                fs._amd_presigned = PresignedGets(fs)  # sample reads: presigned ranged GETs (see that module)
            else:
                try:
                    fs = fsspec.filesystem(proto, skip_instance_cache=True)
                except ImportError as e:
                    from amd_fast.errors import InputError

                    raise InputError(f"data.shards {redact(url)} needs the fsspec backend for {proto}:// ({e}); "
                                     f"install it, e.g. `pip install amd_fast[{'gcs' if proto == 'gs' else 's3'}]`")
                unwrapped = getattr(getattr(type(fs), "_request", None), "__wrapped__", None)
                if proto in ("gs", "gcs") and unwrapped is not None:
                    # gcsfs retries every request up to 6 times on its own (backoff up to 32 s, uncounted, beyond
                    # data.remote_timeout_s): this instance's requests go out once, without that wrapper
                    fs._request = types.MethodType(unwrapped, fs)
            if len(_filesystems) > 16:  # entries of forked parents' pids: drop them
                for k in [k for k in _filesystems if k[0] != os.getpid()]:
                    del _filesystems[k]
            _filesystems[key] = fs
    return fs


def _path(fs, url: str) -> str:
    return fs._strip_protocol(url) if protocol(url) not in ("http", "https") else url


# ---- ranged reads with retries ----------------------------------------------------------------------------

Range = Tuple[str, Optional[int], Optional[int]]  # (url, start, end); None, None: the whole object


def _backoff(attempt: int, s: RemoteSettings) -> float:
    return min(s.backoff_max_s, s.backoff_s * (2 ** attempt)) * (0.5 + random.random() / 2)


class _ByteBudget:
    """At most ``cap`` bytes requested at a time (a single larger request goes alone)."""

    def __init__(self, cap: int):
        self.cap, self.used = cap, 0
        self.cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: self.used == 0 or self.used + n <= self.cap)
            self.used += n

    async def release(self, n: int) -> None:
        async with self.cond:
            self.used -= n
            self.cond.notify_all()


def _get(fs, url: str, start: Optional[int], end: Optional[int]):
    presigned = getattr(fs, "_amd_presigned", None)
    if presigned is not None and start is not None and end is not None and 0 <= start < end:
        return presigned.get(_path(fs, url), start, end)
    return fs._cat_file(_path(fs, url), start=start, end=end)


async def _read_async(fs, r: Range, s: RemoteSettings, gate: asyncio.Semaphore, budget: _ByteBudget) -> bytes:
    url, start, end = r
    shown = redact(url)
    n = (end - start) if start is not None and end is not None else 0
    for attempt in range(s.retries + 1):
        async with gate:
            await budget.acquire(n)
            try:
                return await asyncio.wait_for(_get(fs, url, start, end), s.timeout_s)
            except Exception as e:  # noqa: BLE001 (sorted into permanent / transient right here)
                err = e
            finally:
                await budget.release(n)
        severity, kind = classify(err)
        if severity == "permanent":
            raise permanent_error(err, shown, kind) from None
        if attempt == s.retries:
            COUNTERS.add("gave up after retries")
            where = f"{shown} bytes {start}-{end}" if start is not None else shown
            raise RemoteUnavailable(f"{where}: {kind} on all {s.retries + 1} tries "
                                    f"({_first_line(err)}); check the endpoint and the network", shown) from None
        COUNTERS.add(kind)
        log.debug("retrying %s (%s, try %d): %s", shown, kind, attempt + 1, _first_line(err))
        await asyncio.sleep(_backoff(attempt, s))
    raise AssertionError("unreachable")


def _read_sync(fs, r: Range, s: RemoteSettings) -> bytes:
    """The same for a filesystem without an async implementation (no hard timeout: its own applies)."""
    url, start, end = r
    shown = redact(url)
    for attempt in range(s.retries + 1):
        try:
            return fs.cat_file(_path(fs, url), start=start, end=end)
        except Exception as e:  # noqa: BLE001
            severity, kind = classify(e)
            if severity == "permanent":
                raise permanent_error(e, shown, kind) from None
            if attempt == s.retries:
                COUNTERS.add("gave up after retries")
                raise RemoteUnavailable(f"{shown}: {kind} on all {s.retries + 1} tries ({_first_line(e)})", shown) from None
            COUNTERS.add(kind)
            time.sleep(_backoff(attempt, s))
    raise AssertionError("unreachable")


_pools: Dict[int, ThreadPoolExecutor] = {}


def read_ranges(ranges: Sequence[Range], concurrency: Optional[int] = None,
                return_exceptions: bool = False) -> List[Union[bytes, Exception]]:
    """The bytes of each range, in order, fetched concurrently (at most ``concurrency`` requests in flight,
    default ``data.remote_concurrency``); tars held in the cache are read from local disk. With
    ``return_exceptions`` a failed range gives its :class:`RemoteError` in its place."""
    s = _settings
    conc = max(1, int(concurrency or s.concurrency))
    out: List[Union[bytes, Exception, None]] = [None] * len(ranges)
    todo: Dict[str, List[int]] = {}
    cache = tar_cache()
    for i, (url, start, end) in enumerate(ranges):
        local = cache.local(url) if cache is not None and start is not None else None
        if local is not None:
            try:
                with open(local, "rb") as f:
                    f.seek(start)
                    out[i] = f.read(end - start)
                continue
            except OSError:  # evicted by another process meanwhile: read it remotely
                pass
        todo.setdefault(protocol(url), []).append(i)
        if cache is not None:
            cache.want(url)
    for proto, idxs in todo.items():
        fs = filesystem(ranges[idxs[0]][0])
        if getattr(fs, "async_impl", False):
            from fsspec.asyn import sync

            async def gather():
                gate, budget = asyncio.Semaphore(conc), _ByteBudget(MAX_INFLIGHT_BYTES)
                return await asyncio.gather(*(_read_async(fs, ranges[i], s, gate, budget) for i in idxs),
                                            return_exceptions=True)

            results = sync(fs.loop, gather)
        else:
            pool = _pools.get(os.getpid())
            if pool is None:
                pool = _pools[os.getpid()] = ThreadPoolExecutor(conc, thread_name_prefix="amd-remote")
            futures = [pool.submit(_read_sync, fs, ranges[i], s) for i in idxs]
            results = []
            for f in futures:
                try:
                    results.append(f.result())
                except Exception as e:  # noqa: BLE001
                    results.append(e)
        for i, res in zip(idxs, results):
            out[i] = res
    if not return_exceptions:
        for res in out:
            if isinstance(res, BaseException):
                raise res
    for k, res in enumerate(out):
        if isinstance(res, BaseException) and not isinstance(res, Exception):
            raise res  # KeyboardInterrupt, CancelledError: never turned into a bad sample
    return out  # type: ignore[return-value]


def read_range(url: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
    return read_ranges([(url, start, end)], concurrency=1)[0]  # type: ignore[return-value]


def read_bytes(url: str) -> bytes:
    """The whole object (a manifest, an index)."""
    return read_range(url)


def _call(url: str, what: str, fn):
    """A metadata call (ls, info, glob) with the same retries and error rules as a read."""
    s = _settings
    shown = redact(url)
    for attempt in range(s.retries + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            severity, kind = classify(e)
            if severity == "permanent":
                raise permanent_error(e, shown, kind) from None
            if attempt == s.retries:
                raise RemoteUnavailable(f"{what} {shown}: {kind} on all {s.retries + 1} tries ({_first_line(e)}); "
                                        "check the endpoint and the network", shown) from None
            COUNTERS.add(kind)
            time.sleep(_backoff(attempt, s))


def sizes_under(folder: str) -> Dict[str, Optional[int]]:
    """{url: size} of the objects directly under ``folder`` (one listing; empty if it lists nothing). The size is
    None where the listing gives none (an HTTP server's HTML index)."""
    fs = filesystem(folder)
    try:
        entries = _call(folder, "listing", lambda: fs.ls(_path(fs, folder), detail=True))
    except RemoteNotFound:
        return {}
    proto = protocol(folder)
    out = {}
    for e in entries:
        if e.get("type", "file") == "file":
            name = e["name"]
            out[name if "://" in name else f"{proto}://{name}"] = None if e.get("size") is None else int(e["size"])
    return out


def size_of(url: str) -> int:
    fs = filesystem(url)
    return int(_call(url, "size of", lambda: fs.size(_path(fs, url))))


# ---- the whole-tar cache ----------------------------------------------------------------------------------

_tar_sizes: Dict[str, int] = {}  # filled by open_shards (before workers fork): the cache checks against it


def note_size(url: str, size: int) -> None:
    _tar_sizes[url] = size


class TarCache:
    """Whole tars in ``folder`` named by a hash of their URL and their size (a rebuilt tar of another size is
    another entry), least recently read evicted first to stay under ``capacity`` bytes. A tar is written to
    ``<name>.part`` (created exclusively: one process downloads it) and renamed into place when complete."""

    STALE_PART_S = 300  # a .part nobody wrote to for this long belongs to a killed run

    def __init__(self, folder: str, capacity: int):
        self.folder, self.capacity = Path(folder), int(capacity)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._wanted: set = set()
        self._queue: List[str] = []
        self._cv = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        self._touched: Dict[str, float] = {}

    def name(self, url: str) -> Optional[str]:
        size = _tar_sizes.get(url)
        if size is None:
            return None
        digest = hashlib.sha256(redact(url).encode()).hexdigest()[:20]
        return f"{digest}-{size}-{os.path.basename(urlsplit(url).path)}"

    def local(self, url: str) -> Optional[Path]:
        name = self.name(url)
        if name is None:
            return None
        p = self.folder / name
        if not p.is_file():
            return None
        now = time.time()
        if now - self._touched.get(name, 0) > 10:  # the LRU clock: mtime, refreshed at most every 10 s
            self._touched[name] = now
            try:
                os.utime(p)
            except OSError:
                return None
        return p

    def want(self, url: str) -> None:
        """Queue ``url`` for a background download (once per process)."""
        if os.getpid() != self._pid:  # forked: threads and queue belong to the parent
            self.__init__(str(self.folder), self.capacity)
        if url in self._wanted or self.name(url) is None or _tar_sizes[url] > self.capacity:
            return
        self._wanted.add(url)
        with self._cv:
            self._queue.append(url)
            self._cv.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="amd-tar-cache", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                url = self._queue.pop(0)
            try:
                self.download(url)
            except Exception as e:  # noqa: BLE001 (the cache is an optimisation: reads go on by range)
                log.warning("cache: could not keep %s (%s); reading it by range", redact(url), _first_line(e))

    def download(self, url: str) -> Optional[Path]:
        name = self.name(url)
        final, part = self.folder / name, self.folder / f"{name}.part"
        if final.is_file():
            return final
        try:
            fd = os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - part.stat().st_mtime < self.STALE_PART_S:
                    return None  # another process is on it
                part.unlink()
                fd = os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError:
                return None
        size = _tar_sizes[url]
        try:
            self.evict(size)
            with os.fdopen(fd, "wb") as f:
                for start in range(0, size, CACHE_CHUNK):
                    f.write(read_range(url, start, min(size, start + CACHE_CHUNK)))
                f.flush()
                os.fsync(f.fileno())
            if part.stat().st_size != size:
                raise OSError(f"downloaded {part.stat().st_size} bytes, expected {size}")
            os.replace(part, final)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        log.info("cache: kept %s (%d bytes) in %s", redact(url), size, self.folder)
        return final

    def evict(self, incoming: int) -> None:
        """Remove least recently read tars until ``incoming`` more bytes fit under the capacity."""
        entries = []
        for p in self.folder.iterdir():
            try:
                st = p.stat()
            except OSError:
                continue
            if p.name.endswith(".part"):
                if time.time() - st.st_mtime > self.STALE_PART_S:
                    p.unlink(missing_ok=True)
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total + incoming <= self.capacity:
                break
            p.unlink(missing_ok=True)
            total -= size


_cache: Optional[TarCache] = None


def tar_cache() -> Optional[TarCache]:
    """The process's cache, or None when ``data.cache_dir`` is unset."""
    global _cache
    s = _settings
    if not s.cache_dir or s.cache_bytes <= 0:
        return None
    if _cache is None:
        _cache = TarCache(s.cache_dir, s.cache_bytes)
    return _cache
