"""ds01.infra.user_slices through the AnsibleModule harness."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import slices
from ansible_collections.ds01.infra.plugins.modules import user_slices

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
LAB = FIXTURES / "lab"


@pytest.fixture
def lab_copy(tmp_path):
    target = tmp_path / "etc-ds01"
    shutil.copytree(LAB, target)
    return target


def args(lab_copy, unit_dir, **extra):
    return dict(config=str(lab_copy / "resource-limits.yaml"), unit_dir=str(unit_dir), validate=False, **extra)


def snapshot(directory):
    return {
        str(p.relative_to(directory)): (
            p.read_bytes() if p.is_file() else b"",
            p.stat().st_mtime_ns,
            oct(p.stat().st_mode & 0o777),
        )
        for p in sorted(Path(directory).rglob("*"))
    }


def test_check_apply_idempotent(run_module, lab_copy, tmp_path):
    units = tmp_path / "units"
    check = run_module(user_slices, args(lab_copy, units, extra_users=["zoe"]), check=True, diff=True)
    assert check["changed"] and check["daemon_reload_needed"]
    assert not units.exists()  # check mode touched nothing
    assert str(units / "ds01-student-zoe.slice") in check["created"]
    assert any(
        d["after_header"].endswith("ds01-researcher-dave.slice.d/10-resource-limits.conf") for d in check["diff"]
    )

    applied = run_module(user_slices, args(lab_copy, units, extra_users=["zoe"]))
    assert applied["changed"] and applied["created"] == check["created"]
    assert (units / "ds01-researcher-dave.slice.d" / "10-resource-limits.conf").read_text().count("MemoryMax=400G") == 1
    assert not (units / "ds01-admin-datasciencelab.slice.d").exists()
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in units.rglob("*") if p.is_file())

    before = snapshot(units)
    again = run_module(user_slices, args(lab_copy, units, extra_users=["zoe"]), diff=True)
    assert not again["changed"] and not again["daemon_reload_needed"] and again["diff"] == []
    assert snapshot(units) == before


def test_prune_removes_only_generated_files(run_module, lab_copy, tmp_path):
    units = tmp_path / "units"
    run_module(user_slices, args(lab_copy, units, extra_users=["zoe", "yann"]))
    # an admin's own unit and drop-in beside ours
    (units / "ds01-custom.slice").write_text("[Slice]\nCPUAccounting=true\n")
    (units / "ds01-student-yann.slice.d" / "50-admin.conf").write_text("[Slice]\nMemoryMax=1G\n")

    result = run_module(user_slices, args(lab_copy, units, extra_users=["zoe"]))
    assert sorted(result["removed"]) == [
        str(units / "ds01-student-yann.slice"),
        str(units / "ds01-student-yann.slice.d" / "10-resource-limits.conf"),
    ]
    assert (units / "ds01-custom.slice").exists()
    assert (units / "ds01-student-yann.slice.d" / "50-admin.conf").exists()  # directory kept: not empty

    run_module(user_slices, args(lab_copy, units, extra_users=["zoe", "xena"]))
    kept = run_module(user_slices, args(lab_copy, units, prune=False))
    assert not kept["removed"] and (units / "ds01-student-xena.slice").exists()


def test_dropin_removed_when_aggregate_goes_even_without_prune(run_module, lab_copy, tmp_path):
    units = tmp_path / "units"
    run_module(user_slices, args(lab_copy, units))
    limits = lab_copy / "resource-limits.yaml"
    text = limits.read_text()
    start = text.index('    aggregate:\n      cpu_quota: "32000%"')
    end = text.index("      gpu_limit: 4.0\n", start) + len("      gpu_limit: 4.0\n")
    limits.write_text(text[:start] + text[end:])  # faculty loses its aggregate block

    result = run_module(user_slices, args(lab_copy, units, prune=False))
    assert result["removed"] == [str(units / "ds01-faculty-erin.slice.d" / "10-resource-limits.conf")]
    assert not (units / "ds01-faculty-erin.slice.d").exists()
    assert (units / "ds01-faculty-erin.slice").exists()


def test_changed_unit_content_is_rewritten(run_module, lab_copy, tmp_path):
    units = tmp_path / "units"
    run_module(user_slices, args(lab_copy, units))
    dropin = units / "ds01-student-alice.slice.d" / "10-resource-limits.conf"
    dropin.write_text(dropin.read_text().replace("96G", "1G"))
    result = run_module(user_slices, args(lab_copy, units), diff=True)
    assert result["updated"] == [str(dropin)] and result["daemon_reload_needed"]
    assert "-MemoryMax=1G" not in result["diff"][0]["after"] and "MemoryMax=96G" in result["diff"][0]["after"]
    assert "MemoryMax=96G" in dropin.read_text()


def test_config_error_fails_before_writing(run_module, tmp_path):
    units = tmp_path / "units"
    bad = FIXTURES / "invalid" / "32-many-problems-at-once" / "resource-limits.yaml"
    result = run_module(user_slices, {"config": str(bad), "unit_dir": str(units), "validate": False}, fails=True)
    assert result["msg"].startswith("ds01: the configuration has")
    assert len(result["problems"]) > 1 and all("message" in p for p in result["problems"])
    assert not units.exists()


def test_collision_fails_before_writing(run_module, lab_copy, tmp_path):
    units = tmp_path / "units"
    result = run_module(user_slices, args(lab_copy, units, extra_users=["alice@elsewhere.org"]), fails=True)
    assert "slice name 'alice'" in result["msg"]
    assert not units.exists()


def test_verify_complaint_fails_and_writes_nothing(run_module, lab_copy, tmp_path, monkeypatch):
    units = tmp_path / "units"
    calls = []

    def fake_run_command(self, argv, **kwargs):
        calls.append((argv, kwargs))
        staged = os.path.dirname(argv[-1])
        return 0, "", f"{staged}/ds01-student.slice:7: Unknown key 'Bogus' in section [Slice], ignoring.\n"

    monkeypatch.setattr(
        user_slices.AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: "/usr/bin/" + name
    )
    monkeypatch.setattr(user_slices.AnsibleModule, "run_command", fake_run_command)
    result = run_module(user_slices, dict(args(lab_copy, units), validate=True), fails=True)
    assert "nothing was written" in result["msg"]
    assert result["problems"] == ["ds01-student.slice:7: Unknown key 'Bogus' in section [Slice], ignoring."]
    argv, kwargs = calls[0]
    assert argv[:3] == ["/usr/bin/systemd-analyze", "verify", "--man=no"]
    assert kwargs["environ_update"] == {"LC_ALL": "C"}
    assert not units.exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_real_verify_passes_the_lab(run_module, lab_copy, tmp_path):
    result = run_module(user_slices, dict(args(lab_copy, tmp_path / "u", extra_users=["zoe"]), validate=True))
    assert result["validated"] and result["changed"]


def test_marker_is_what_pruning_looks_for(run_module, lab_copy, tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    (units / "ds01-student-ghost.slice").write_text(slices.MARKER + "\n[Slice]\n")
    result = run_module(user_slices, args(lab_copy, units), check=True)
    assert str(units / "ds01-student-ghost.slice") in result["removed"]
    assert (units / "ds01-student-ghost.slice").exists()
