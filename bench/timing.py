"""Honest timing for the bench: warm-up, device synchronisation, medians with spread.

Rules every measurement in ``bench/`` follows (so numbers from different parts and
different machines can be compared):

* warm-up calls first (allocator caches, Triton autotune/compile, cuDNN/cuBLAS
  heuristics, DALI prefetch) — never counted;
* on CUDA each repeat is bracketed by CUDA events recorded on the current stream and
  read after one ``torch.cuda.synchronize()``, so kernel time is measured, not launch
  time; on CPU ``time.perf_counter`` around a call that returns when the work is done;
* the reported number is the **median** of the repeats, with the min/max and the
  inter-quartile range kept alongside it (`Timing`), never a single run or a mean;
* every record carries the device and the software versions (`environment`).
"""
from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``n`` timed repeats (warm-up excluded)."""

    samples: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def iqr(self) -> tuple[float, float]:
        """25th and 75th percentiles (equal to min/max for fewer than 4 samples)."""
        if self.n < 4:
            return (self.min, self.max)
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return (q[0], q[2])

    def to_ms(self) -> dict:
        """The JSON fields every timed entry carries (milliseconds)."""
        return {
            "ms_median": self.median * 1e3,
            "ms_spread": [self.min * 1e3, self.max * 1e3],
            "ms_iqr": [v * 1e3 for v in self.iqr],
            "repeats": self.n,
        }


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU, where calls are synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    *,
    device: torch.device | str,
    warmup: int = 2,
    repeats: int = 5,
) -> Timing:
    """Time ``fn()`` (whole call, including any backward it runs) ``repeats`` times after ``warmup`` calls.

    CUDA: one pair of events per repeat, a single synchronize at the end (no host sync
    between repeats, so the GPU queue stays full as it would in training).
    CPU: ``perf_counter`` around each call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (got {repeats}); pass --repeats 1 or more")
    device = torch.device(device)
    for _ in range(max(0, warmup)):
        fn()
    synchronize(device)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        return Timing(tuple(s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(tuple(samples))


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    device: torch.device | str,
    warmup: int = 2,
    repeats: int = 5,
    inner: int = 1,
) -> dict[str, Timing]:
    """Per-call seconds of several implementations of one op, their repeats taken in turn
    (a, b, c, a, b, c, ...) so that a change in machine load (other processes, clocks, thermal)
    hits every implementation alike instead of whichever happened to run then.

    Each repeat times ``inner`` back-to-back calls and divides: on CUDA, kernels of tens of
    microseconds need a few calls in flight so that launch latency is not what gets measured.
    """
    if repeats < 1 or inner < 1:
        raise ValueError(f"repeats and inner must be >= 1 (got {repeats}, {inner}); pass --repeats 1 or more")
    device = torch.device(device)
    for fn in fns.values():
        for _ in range(max(0, warmup)):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end) / 1e3 / inner)
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples[name].append((time.perf_counter() - t0) / inner)
    return {name: Timing(tuple(v)) for name, v in samples.items()}


def cuda_peak_memory(fn: Callable[[], object], device: torch.device | str) -> int:
    """Peak bytes allocated by torch on ``device`` during one ``fn()`` call, above what was live before.

    Inputs created before the call are not counted, so the number is the op's own
    working set (activations saved for backward, outputs, gradients, temporaries).
    """
    device = torch.device(device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


# Published peak DRAM bandwidth (bytes/s) by GPU name fragment, most specific first.
# SXM H100 80GB HBM3: 3.35 TB/s; PCIe: 2.0 TB/s; NVL: 3.9 TB/s; H200 (SXM/NVL): 4.8 TB/s.
_PEAK_BANDWIDTH = (
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),
    ("H200", 4.8e12),
)


def copy_bandwidth(device: torch.device | str, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s of a device-to-device ``copy_`` of ``nbytes`` (read + write counted), median of ``repeats``:
    the bandwidth a memory-bound kernel can really reach on this device, measured in the same run."""
    device = torch.device(device)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, warmup=2, repeats=repeats)
    del src, dst
    return 2 * nbytes / t.median


def peak_bandwidth(device: torch.device | str) -> float | None:
    """The device's published peak memory bandwidth in bytes/s, or None when unknown (CPU, other GPUs)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, bw in _PEAK_BANDWIDTH:
        if fragment in name:
            return bw
    return None


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # not installed, or fails to import on this machine: record that, don't crash
        return None
    return getattr(mod, "__version__", "unknown")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1/5/15-minute load averages of the machine (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def device_label(device: torch.device | str) -> str:
    """Short name used in output file names: ``cpu``, ``h100``, ``h200`` or the sanitized GPU name."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for tag in ("H200", "H100", "A100", "L40S", "B200"):
        if tag in name:
            return tag.lower()
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def environment(device: torch.device | str) -> dict:
    """Device, software versions and date recorded with every bench run."""
    device = torch.device(device)
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_label": device_label(device),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "dali": _version("nvidia.dali"),
        "av": _version("av"),
        "timm": _version("timm"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        "peak_bandwidth_bytes_per_s": peak_bandwidth(device),
        # Other processes on the machine skew CPU numbers badly (oversubscribed OpenMP threads):
        # recorded so a reader can tell a quiet run from a busy one.
        "loadavg_start": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu_name=props.name,
            gpu_memory_bytes=props.total_memory,
            gpu_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return env
