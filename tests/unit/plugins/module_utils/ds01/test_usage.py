"""Slice usage on cgroup v2, v1-hybrid and v1 layouts (fake sysfs trees), and on this machine's real one."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import usage

UNIT = "ds01-student-alice.slice"
CG = "ds01.slice/ds01-student.slice/ds01-student-alice.slice"
PSI = "some avg10=1.50 avg60=0.75 avg300=0.10 total=12345\nfull avg10=0.50 avg60=0.25 avg300=0.00 total=678\n"


def _tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        ("ds01.slice", "/ds01.slice"),
        ("ds01-student.slice", "/ds01.slice/ds01-student.slice"),
        (UNIT, "/" + CG),
        ("-.slice", "/"),
    ],
)
def test_systemd_naming_rule(unit, expected):
    assert usage.systemd_control_group(unit) == expected


def test_v2(tmp_path):
    _tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory pids\n",
            f"{CG}/memory.current": "1048576\n",
            f"{CG}/memory.max": "103079215104\n",
            f"{CG}/cpu.stat": "usage_usec 2500000\nuser_usec 1\n",
            f"{CG}/pids.current": "12\n",
            f"{CG}/pids.max": "max\n",
            f"{CG}/memory.events": "low 0\nhigh 3\nmax 1\noom 2\noom_kill 2\n",
            f"{CG}/cpu.pressure": PSI,
            f"{CG}/memory.pressure": PSI,
            f"{CG}/io.pressure": PSI,
        },
    )
    got = usage.SliceReader(str(tmp_path), control_group=lambda unit: None).read(UNIT)
    assert got.layout == "v2" and got.exists
    assert (got.memory_current, got.memory_max, got.cpu_usage_seconds) == (1048576, 103079215104, 2.5)
    assert (got.tasks_current, got.tasks_max, got.oom_kills) == (12, None, 2)
    assert got.psi["memory"]["some"]["avg10"] == 1.5 and got.psi["io"]["full"]["total"] == 678


def test_hybrid_reads_v1_controllers_and_unified_psi(tmp_path):
    _tree(
        tmp_path,
        {
            "unified/cgroup.controllers": "\n",
            f"unified/{CG}/cpu.pressure": PSI,
            f"memory/{CG}/memory.usage_in_bytes": "2048\n",
            f"memory/{CG}/memory.limit_in_bytes": f"{usage.UNLIMITED_V1}\n",
            f"memory/{CG}/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
            f"cpuacct/{CG}/cpuacct.usage": "3000000000\n",
            f"pids/{CG}/pids.current": "7\n",
            f"pids/{CG}/pids.max": "12288\n",
        },
    )
    got = usage.SliceReader(str(tmp_path), control_group=lambda unit: "/" + CG).read(UNIT)
    assert got.layout == "hybrid" and got.exists
    assert (got.memory_current, got.memory_max, got.oom_kills) == (2048, None, 5)
    assert (got.cpu_usage_seconds, got.tasks_current, got.tasks_max) == (3.0, 7, 12288)
    assert got.psi["cpu"]["some"]["avg60"] == 0.75 and "memory" not in got.psi


def test_v1_combined_cpu_cpuacct_and_no_psi(tmp_path):
    _tree(
        tmp_path,
        {
            f"memory/{CG}/memory.usage_in_bytes": "10\n",
            f"memory/{CG}/memory.limit_in_bytes": "4096\n",
            f"cpu,cpuacct/{CG}/cpuacct.usage": "500000000\n",
        },
    )
    got = usage.SliceReader(str(tmp_path), control_group=lambda unit: None).read(UNIT)
    assert got.layout == "v1" and got.memory_max == 4096 and got.cpu_usage_seconds == 0.5
    assert got.psi == {} and got.oom_kills is None


def test_missing_slice_is_unknown_not_zero(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("")
    got = usage.SliceReader(str(tmp_path), control_group=lambda unit: None).read(UNIT)
    assert not got.exists and got.memory_current is None and got.cpu_usage_seconds is None


def test_this_machine_root_cgroup_reads_real_numbers():
    """On the real /sys/fs/cgroup the root slice has memory and CPU usage on any layout."""
    if not os.path.isdir("/sys/fs/cgroup"):
        pytest.fail("no /sys/fs/cgroup on this machine")
    got = usage.SliceReader().read("-.slice")
    assert got.layout in ("v2", "hybrid", "v1")
    assert got.cpu_usage_seconds is not None and got.cpu_usage_seconds > 0
    if got.layout != "v1":
        assert "cpu" in got.psi


@pytest.mark.parametrize(
    ("pid1", "root"),
    [
        ("12:memory:/\n1:name=systemd:/init.scope\n0::/init.scope\n", ""),  # a host, cgroup v1/hybrid
        ("0::/init.scope\n", ""),  # a host, cgroup v2
        ("5:memory:/docker/abc\n1:name=systemd:/docker/abc/init.scope\n", "/docker/abc"),  # systemd in a container
        ("0::/docker/abc/init.scope\n", "/docker/abc"),
    ],
)
def test_systemd_root_is_where_its_cgroup_tree_starts(tmp_path, pid1, root):
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "cgroup").write_text(pid1)
    reader = usage.SliceReader(str(tmp_path / "sys"), control_group=lambda unit: None, proc_root=str(tmp_path / "proc"))
    assert reader.systemd_root() == root


@pytest.mark.parametrize("told", [None, "/docker/abc/" + CG])
def test_a_slice_of_systemd_in_a_container_is_read_below_the_containers_cgroup(tmp_path, told):
    """systemd in a container that shares the host's cgroup namespace (molecule) keeps its slices below its own
    cgroup: ``systemctl show -p ControlGroup`` says the full path; the naming rule needs the root put in front."""
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "cgroup").write_text("1:name=systemd:/docker/abc/init.scope\n")
    _tree(
        tmp_path / "sys",
        {
            f"memory/docker/abc/{CG}/memory.usage_in_bytes": "4096\n",
            f"memory/docker/abc/{CG}/memory.limit_in_bytes": "67108864\n",
            f"memory/docker/abc/{CG}/memory.oom_control": "oom_kill 2\n",
            f"pids/docker/abc/{CG}/pids.max": "24\n",
        },
    )
    reader = usage.SliceReader(str(tmp_path / "sys"), control_group=lambda unit: told, proc_root=str(tmp_path / "proc"))
    got = reader.read(UNIT)
    assert got.exists and (got.memory_max, got.oom_kills, got.tasks_max) == (67108864, 2, 24)


def test_v1_oom_kills_are_summed_over_the_slices_children(tmp_path):
    """On cgroup v1 the kernel counts an OOM kill in the killed task's own cgroup (a container scope or a
    service below the slice), not in the slice whose MemoryMax was hit."""
    _tree(
        tmp_path,
        {
            f"memory/{CG}/memory.oom_control": "oom_kill 1\n",
            f"memory/{CG}/docker-abc.scope/memory.oom_control": "oom_kill 2\n",
            f"memory/{CG}/run-u7.service/memory.oom_control": "oom_kill 3\n",
            f"memory/{CG}/run-u7.service/inner/memory.oom_control": "oom_kill 4\n",
        },
    )
    got = usage.SliceReader(str(tmp_path), control_group=lambda unit: "/" + CG, proc_root=str(tmp_path)).read(UNIT)
    assert got.oom_kills == 10
