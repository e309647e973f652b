"""The slice renderer: which units the lab's config asks for, and what is in them."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, slices

LAB = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "fixtures", "lab", "resource-limits.yaml")


@pytest.fixture(scope="module")
def lab():
    return config.load_config(LAB)


def props(text):
    """``Key=value`` lines of a unit file as a dict (comments and sections dropped)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [
        (None, ()),
        (config.Aggregate(), ()),
        (config.Aggregate(gpu_limit=2.0), ()),  # the allocator's cap, not a systemd property
        (config.Aggregate(memory_max="96G"), (("MemoryMax", "96G"),)),
        (
            config.Aggregate(cpu_quota="9600%", memory_max="96G", memory_high="86G", tasks_max="12288"),
            (("CPUQuota", "9600%"), ("MemoryMax", "96G"), ("MemoryHigh", "86G"), ("TasksMax", "12288")),
        ),
        (config.Aggregate(tasks_max="infinity", cpu_quota="200%"), (("CPUQuota", "200%"), ("TasksMax", "infinity"))),
    ],
)
def test_aggregate_properties(aggregate, expected):
    assert slices.aggregate_properties(aggregate) == expected


def test_aggregate_value_with_a_newline_is_refused():
    with pytest.raises(slices.SliceError, match="line break"):
        slices.aggregate_properties(config.Aggregate(memory_max="1G\nExecStart=/bin/sh"))


# login -> (unit, drop-in values or None)
LAB_USERS = {
    "alice": (
        "ds01-student-alice.slice",
        {"CPUQuota": "9600%", "MemoryMax": "96G", "MemoryHigh": "86G", "TasksMax": "12288"},
    ),
    "bob": ("ds01-student-bob.slice", {"MemoryMax": "96G"}),
    "123456@hertie-school.lan": ("ds01-student-123456.slice", {"MemoryMax": "96G"}),
    "carol.smith@hertie-school.lan": ("ds01-researcher-carol_smith.slice", {"MemoryMax": "320G"}),
    # override user: researcher by membership, memory_max from the override, the rest from the group
    "dave": ("ds01-researcher-dave.slice", {"MemoryMax": "400G", "MemoryHigh": "288G", "CPUQuota": "24000%"}),
    "erin": ("ds01-faculty-erin.slice", {"MemoryMax": "640G"}),
    # override user listed in no members file: default group, the group's aggregate
    "frank": ("ds01-student-frank.slice", {"MemoryMax": "96G"}),
    # the admin group has no aggregate: accounting, no caps, no drop-in
    "datasciencelab": ("ds01-admin-datasciencelab.slice", None),
    # extra user (a home directory), in no members file: default group
    "zoe": ("ds01-student-zoe.slice", {"TasksMax": "12288"}),
}


@pytest.mark.parametrize(("login", "expected"), sorted(LAB_USERS.items()))
def test_lab_user_slices(lab, login, expected):
    unit, dropin = expected
    files = slices.desired_files(lab, ["zoe"])
    assert unit in files
    assert props(files[unit]) == {
        "Description": files[unit].split("Description=", 1)[1].splitlines()[0],
        "Before": "slices.target",
        "CPUAccounting": "true",
        "MemoryAccounting": "true",
        "TasksAccounting": "true",
        "IOAccounting": "true",
    }
    assert login in files[unit]
    path = slices.dropin_path(unit)
    if dropin is None:
        assert path not in files
    else:
        values = props(files[path])
        for key, value in dropin.items():
            assert values[key] == value
        assert values["MemoryAccounting"] == "true"


def test_lab_file_set(lab):
    files = slices.desired_files(lab, ["zoe", "old.user"])
    units = sorted(rel for rel in files if "/" not in rel)
    assert units == sorted(
        ["ds01.slice", "ds01-student.slice", "ds01-researcher.slice", "ds01-faculty.slice", "ds01-admin.slice"]
        + [expected[0] for expected in LAB_USERS.values()]
    )
    # archived logins get no slice even when passed as extra users
    assert not any("old_user" in rel for rel in files)
    # group slices carry no limits
    for group in lab.groups:
        text = files[f"ds01-{group}.slice"]
        assert not {"CPUQuota", "MemoryMax", "MemoryHigh", "TasksMax"} & set(props(text))
    # every file is marked as ds01's
    assert all(slices.is_generated(text) for text in files.values())


def test_rendering_is_deterministic(lab):
    assert slices.desired_files(lab, ["zoe", "amy"]) == slices.desired_files(lab, ["amy", "zoe", "amy"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["alice@other.domain"], "both map to the slice name 'alice'"),
        (["bad login"], "not a valid login"),
        (["-rf"], "not a valid login"),
    ],
)
def test_unusable_extra_users(lab, extra, message):
    with pytest.raises(slices.SliceError, match=message):
        slices.desired_files(lab, extra)


@pytest.mark.parametrize(
    ("text", "generated"),
    [
        (slices.MARKER + "\n[Unit]\n", True),
        ("[Unit]\n" + slices.MARKER + "\n", True),
        ("[Unit]\nDescription=hand written\n", False),
        ("# " + slices.MARKER + "\n", False),  # quoted inside another comment: not our line
    ],
)
def test_is_generated(text, generated):
    assert slices.is_generated(text) is generated


def test_candidate_paths():
    names = ["ds01.slice", "ds01-student-bob.slice", "ds01-student-bob.slice.d", "docker.service", "ds01-x.slice.d"]
    listings = {"ds01-student-bob.slice.d": ["10-resource-limits.conf", "20-admin.conf"], "ds01-x.slice.d": ["a.conf"]}
    assert slices.candidate_paths(names, listings) == [
        "ds01-student-bob.slice",
        "ds01-student-bob.slice.d/10-resource-limits.conf",
        "ds01.slice",
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_lab_units_pass_systemd_analyze_verify(lab, tmp_path):
    for rel, text in slices.desired_files(lab, ["zoe"]).items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    units = sorted(str(p) for p in tmp_path.glob("*.slice"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path) not in proc.stdout + proc.stderr


def test_aggregate_limits_false_leaves_slices_uncapped_and_says_so(tmp_path):
    """``enforcement.aggregate_limits: false`` does what its name says: the lab's slices keep accounting and
    lose every cap, the config check warns, and ``ds01 limits`` reports the totals as not capped."""
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import observe

    with open(LAB, encoding="utf-8") as handle:
        text = handle.read()
    assert "aggregate_limits: true" in text
    shutil.copytree(os.path.dirname(LAB), tmp_path / "lab")
    (tmp_path / "lab" / "resource-limits.yaml").write_text(
        text.replace("aggregate_limits: true", "aggregate_limits: false")
    )
    off = config.load_config(str(tmp_path / "lab" / "resource-limits.yaml"))
    on = config.load_config(LAB)
    files_on, files_off = slices.desired_files(on, ["zoe"]), slices.desired_files(off, ["zoe"])
    assert any(rel.endswith(slices.DROPIN_NAME) for rel in files_on)
    assert not any(rel.endswith(slices.DROPIN_NAME) for rel in files_off)
    assert set(files_off) == {rel for rel in files_on if not rel.endswith(slices.DROPIN_NAME)}
    assert props(files_off["ds01-student-zoe.slice"])["MemoryAccounting"] == "true"
    assert any("enforcement.aggregate_limits: is false" in w for w in off.warnings)
    assert not any("aggregate_limits" in w for w in on.warnings)
    now = dt.datetime.now(dt.timezone.utc)
    report = observe.limits_report(
        off.resolve("zoe"),
        mine=[],
        weights={},
        slice_usage={},
        alerts={},
        grant=None,
        exempt_bare_metal=False,
        now=now,
        source="none",
    )
    assert report["aggregate"]["capped"] is False and report["aggregate"]["memory"]["max_bytes"] is None
    assert (
        report["gpu"]["quota_gpueq"] == 2.0
    )  # aggregate.gpu_limit still counts: it is the allocator's, not a slice cap
