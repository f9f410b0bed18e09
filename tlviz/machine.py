"""Facts about the machine a job runs on: its memory and its CPUs, container limits included.

A leaf module: it imports nothing from tlviz, so `tlviz.config` can build its defaults from it.

* `machine_bytes()`: physical memory, or the cgroup (container, systemd slice) limit when lower.
* `cpu_count()`: the CPUs this process may use: its CPU affinity, capped by the cgroup CPU quota.
* `default_memory_mb()` and `jobs_that_fit(budget_bytes)`: the formulas behind the defaults of
  ``TLVIZ_MEMORY_MB`` and ``TLVIZ_MAX_JOBS``.
"""
from __future__ import annotations

import math
import os

#: The default per-job memory budget is an eighth of the machine, between these bounds (MB).
MIN_DEFAULT_MB = 256
MAX_DEFAULT_MB = 1536
#: What a worker process needs beyond its budget (TensorFlow, the model, the image set).
JOB_OVERHEAD_BYTES = int(1.5 * 2**30)

_CGROUP_MEMORY = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_CGROUP_CPU_V2 = "/sys/fs/cgroup/cpu.max"
_CGROUP_CPU_V1 = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def machine_bytes(cgroup_files=_CGROUP_MEMORY) -> int:
    """Physical memory in bytes, or the cgroup (container) limit when that is lower.

    Args:
        cgroup_files: the cgroup v2 and v1 limit files to read. Defaults to the standard places.

    Returns:
        Bytes; 8 GiB when the machine does not say.
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    for path in cgroup_files:
        text = _read(path)
        if text and text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return int(total)


def cgroup_cpu_quota(v2_file: str = _CGROUP_CPU_V2, v1_files=_CGROUP_CPU_V1) -> float | None:
    """The cgroup CPU quota in CPUs (``cpu.max`` of cgroup v2, else ``cfs_quota_us`` of v1); None when unlimited."""
    text = _read(v2_file)
    if text:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = float(parts[0]), float(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    quota, period = (_read(p) for p in v1_files)
    try:
        q, p = float(quota), float(period)
    except (TypeError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def cpu_count(quota: float | None | bool = True) -> int:
    """The CPUs this process may use: its CPU affinity, capped by the cgroup CPU quota (rounded up).

    Args:
        quota: the quota in CPUs, None for none, or True (the default) to read it from the cgroup.

    Returns:
        At least 1.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if quota is True:
        quota = cgroup_cpu_quota()
    if quota:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, int(cpus))


def default_memory_mb(total_bytes: int | None = None) -> int:
    """The default of ``TLVIZ_MEMORY_MB``: an eighth of the machine's memory, between 256 and 1,536 MB."""
    total = machine_bytes() if total_bytes is None else total_bytes
    return int(min(max(total / 8 / 2**20, MIN_DEFAULT_MB), MAX_DEFAULT_MB))


def jobs_that_fit(budget_bytes: int, cpus: int | None = None, total_bytes: int | None = None) -> int:
    """How many heavy jobs fit at once: half the CPUs, and no more than memory holds at budget + overhead.

    Args:
        budget_bytes: one job's working-memory budget.
        cpus: CPUs to count with. Defaults to `cpu_count()`.
        total_bytes: memory to count with. Defaults to `machine_bytes()`.

    Returns:
        ``max(1, min(cpus // 2, memory // (budget + JOB_OVERHEAD_BYTES)))``.
    """
    cpus = cpu_count() if cpus is None else cpus
    total = machine_bytes() if total_bytes is None else total_bytes
    return int(max(1, min(cpus // 2, total // (budget_bytes + JOB_OVERHEAD_BYTES))))
