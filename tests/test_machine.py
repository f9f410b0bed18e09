"""Machine facts (`tlviz.machine`): memory and CPUs, container limits included, under faked cgroup files."""
from __future__ import annotations

import os

import pytest

from tlviz import config, machine


def _files(tmp_path, **contents):
    out = {}
    for name, text in contents.items():
        p = tmp_path / name
        p.write_text(text)
        out[name] = str(p)
    return out


def test_memory_is_the_cgroup_limit_when_lower(tmp_path):
    physical = machine.machine_bytes(cgroup_files=())
    f = _files(tmp_path, v2=f"{512 * 2**20}\n", v1="9223372036854771712\n", unlimited="max\n")
    assert machine.machine_bytes(cgroup_files=(f["v2"],)) == 512 * 2**20
    # cgroup v1's "no limit" is a huge number; v2's is "max": both leave the physical memory
    assert machine.machine_bytes(cgroup_files=(f["v1"],)) == physical
    assert machine.machine_bytes(cgroup_files=(f["unlimited"],)) == physical
    assert machine.machine_bytes(cgroup_files=(str(tmp_path / "missing"),)) == physical


def test_cpu_quota_from_cgroup_v2_and_v1(tmp_path):
    f = _files(tmp_path, v2="150000 100000\n", v2max="max 100000\n", quota="200000\n", period="100000\n",
               noquota="-1\n", empty="")
    assert machine.cgroup_cpu_quota(f["v2"]) == pytest.approx(1.5)
    assert machine.cgroup_cpu_quota(f["v2max"]) is None
    missing = str(tmp_path / "none")
    assert machine.cgroup_cpu_quota(missing, (f["quota"], f["period"])) == pytest.approx(2.0)
    assert machine.cgroup_cpu_quota(missing, (f["noquota"], f["period"])) is None
    assert machine.cgroup_cpu_quota(missing, (missing, missing)) is None


def test_cpu_count_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert machine.cpu_count(quota=None) == 8
    assert machine.cpu_count(quota=2.0) == 2
    assert machine.cpu_count(quota=1.5) == 2  # a part of a CPU still runs a job
    assert machine.cpu_count(quota=0.2) == 1
    assert machine.cpu_count(quota=64.0) == 8  # a quota above the affinity does not add CPUs
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3
    assert machine.cpu_count(quota=None) == 1


def test_defaults_follow_the_container(monkeypatch):
    """Inside a 2-CPU, 4 GB container the defaults are one job of 512 MB, whatever the host has."""
    monkeypatch.delenv("TLVIZ_MEMORY_MB", raising=False)
    monkeypatch.delenv("TLVIZ_MAX_JOBS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(machine, "cgroup_cpu_quota", lambda *a, **k: 2.0)
    monkeypatch.setattr(machine, "machine_bytes", lambda *a, **k: 4 * 2**30)
    assert machine.cpu_count() == 2
    assert machine.default_memory_mb() == 512
    assert config.default("TLVIZ_MEMORY_MB") == 512
    assert config.default("TLVIZ_MAX_JOBS") == 1
    # a 16-CPU, 64 GB slice: half the CPUs, memory allowing (1,536 MB budget + 1.5 GB each)
    monkeypatch.setattr(machine, "cgroup_cpu_quota", lambda *a, **k: 16.0)
    monkeypatch.setattr(machine, "machine_bytes", lambda *a, **k: 64 * 2**30)
    assert config.default("TLVIZ_MEMORY_MB") == machine.MAX_DEFAULT_MB
    assert config.default("TLVIZ_MAX_JOBS") == 8
    # memory, not CPUs, is the limit on a 16-CPU, 8 GB slice: 8 GB // (1 GB + 1.5 GB) = 3
    monkeypatch.setattr(machine, "machine_bytes", lambda *a, **k: 8 * 2**30)
    assert config.default("TLVIZ_MAX_JOBS") == 3


def test_an_explicit_setting_wins(monkeypatch):
    monkeypatch.setattr(machine, "machine_bytes", lambda *a, **k: 4 * 2**30)
    monkeypatch.setenv("TLVIZ_MEMORY_MB", "300")
    assert machine.jobs_that_fit(300 * 2**20, cpus=16, total_bytes=4 * 2**30) == 2
    monkeypatch.setenv("TLVIZ_MAX_JOBS", "5")
    assert config.count("TLVIZ_MAX_JOBS") == 5
