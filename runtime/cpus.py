"""How many CPUs this process may use, without importing torch: the launcher sizes the KServe host's processes by
it, the workers their threads."""

from __future__ import annotations

import os
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" microseconds, or "max <period>"


def available_cpus(cpu_max: Path = CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU quota rounded up (a container
    limited to 4 CPUs on a 64-CPU node gets 4, where the affinity alone says 64)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        return max(1, min(cpus, -(-int(quota) // int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or "max": no quota
        return cpus
