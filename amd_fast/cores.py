"""How many CPU cores this process may really use: the one answer every part sizes itself by (torch threads,
loader workers and pipelines, shard-building workers, the demo's lanes). Standard library only."""
from __future__ import annotations

import math
import os


def usable_cores() -> int:
    """The affinity mask (a container's or taskset's share), capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)
