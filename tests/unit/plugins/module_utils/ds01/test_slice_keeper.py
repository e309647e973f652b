"""The gateway's half of the slices: a login the deploy did not know gets its capped slice, in the role's own
words, before its first container; deployed slices are left to the role. systemctl is a real script here
that records its calls (the molecule scenario runs the real one under systemd)."""

from __future__ import annotations

import os
import stat
import textwrap

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, slice_keeper, slices

LIMITS = """
default_group: student
groups:
  student:
    members: [alice]
    aggregate: {cpu_quota: "200%", memory_max: 4G, tasks_max: 256}
"""


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "resource-limits.yaml"
    path.write_text(textwrap.dedent(LIMITS))
    calls = tmp_path / "calls"
    tool = tmp_path / "systemctl"
    tool.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n[ -e {tmp_path}/fail ] && {{ echo "Access denied" >&2; exit 1; }}\nexit 0\n'
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    keeper = slice_keeper.SliceKeeper(
        etc_dir=str(tmp_path / "etc"), run_dir=str(tmp_path / "run"), booted=lambda: True, systemctl=[str(tool)]
    )
    return tmp_path, path, keeper, calls


def reloads(calls) -> int:
    return calls.read_text().count("daemon-reload") if calls.exists() else 0


def test_a_login_made_after_the_deploy_gets_its_capped_slice_once(setup):
    tmp, path, keeper, calls = setup
    cfg = config.load_config(str(path))
    written = keeper.ensure(cfg, "newbie")
    expected = slices.files_for(cfg, "newbie")
    assert sorted(os.path.relpath(p, tmp / "run") for p in written) == sorted(expected)
    assert "ds01-student-newbie.slice.d/10-resource-limits.conf" in expected
    dropin = (tmp / "run" / "ds01-student-newbie.slice.d" / "10-resource-limits.conf").read_text()
    assert "MemoryMax=4G" in dropin and "TasksMax=256" in dropin and "CPUQuota=200%" in dropin
    assert reloads(calls) == 1
    assert keeper.ensure(cfg, "newbie") == [] and reloads(calls) == 1  # checked once per process


def test_slices_the_role_installed_are_left_to_the_role(setup):
    tmp, path, keeper, calls = setup
    cfg = config.load_config(str(path))
    for rel, text in slices.files_for(cfg, "alice").items():
        (tmp / "etc" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "etc" / rel).write_text(text)
    assert keeper.ensure(cfg, "alice") == []
    assert not (tmp / "run").exists() and reloads(calls) == 0


def test_a_changed_cap_is_written_again(setup):
    tmp, path, keeper, calls = setup
    keeper.ensure(config.load_config(str(path)), "newbie")
    path.write_text(textwrap.dedent(LIMITS).replace("memory_max: 4G", "memory_max: 2G"))
    written = keeper.ensure(config.load_config(str(path)), "newbie")
    assert [os.path.basename(p) for p in written] == ["10-resource-limits.conf"]
    assert "MemoryMax=2G" in (tmp / "run" / "ds01-student-newbie.slice.d" / "10-resource-limits.conf").read_text()
    assert reloads(calls) == 2


def test_a_failed_reload_refuses_with_a_sentence_and_is_tried_again(setup):
    tmp, path, keeper, calls = setup
    (tmp / "fail").write_text("")
    cfg = config.load_config(str(path))
    with pytest.raises(slice_keeper.SliceError) as err:
        keeper.ensure(cfg, "newbie")
    assert "systemd could not load your resource slice" in err.value.sentence and "Access denied" in err.value.sentence
    os.unlink(tmp / "fail")
    assert keeper.ensure(cfg, "newbie") == []  # the files are there, but not loaded: the next create reloads
    assert reloads(calls) == 2
    assert keeper.ensure(cfg, "newbie") == [] and reloads(calls) == 2


def test_nothing_happens_where_systemd_is_not_running(setup):
    tmp, path, _keeper, calls = setup
    keeper = slice_keeper.SliceKeeper(etc_dir=str(tmp / "etc"), run_dir=str(tmp / "run"), booted=lambda: False)
    assert keeper.ensure(config.load_config(str(path)), "newbie") == []
    assert not (tmp / "run").exists() and reloads(calls) == 0
