"""The resolution table: who gets which limit, and where each value came from."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config

LAB = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "fixtures", "lab", "resource-limits.yaml")
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
G = 1024**3


@pytest.fixture(scope="module")
def lab():
    return config.load_config(LAB)


# login -> (group, listed, override, max_gpu_equivalents, source of it, memory bytes, idle_timeout_h, slice)
RESOLUTION = {
    "alice": ("student", True, False, 2.0, "group:student", 32 * G, 0.5, "ds01-student-alice.slice"),
    "123456@hertie-school.lan": (
        "student",
        True,
        False,
        2.0,
        "group:student",
        32 * G,
        0.5,
        "ds01-student-123456.slice",
    ),
    "carol.smith@hertie-school.lan": (
        "researcher",
        True,
        False,
        4.0,
        "group:researcher",
        64 * G,
        1.0,
        "ds01-researcher-carol_smith.slice",
    ),
    "erin": ("faculty", True, False, 4.0, "group:faculty", 128 * G, 2.0, "ds01-faculty-erin.slice"),
    "datasciencelab": ("admin", True, False, None, "group:admin", 128 * G, 1.0, "ds01-admin-datasciencelab.slice"),
    # unknown login: the default group, not listed anywhere
    "zoe": ("student", False, False, 2.0, "group:student", 32 * G, 0.5, "ds01-student-zoe.slice"),
    # override layered on its group (researcher): override keys win, group keys stay
    "dave": ("researcher", True, True, 4.0, "group:researcher", 64 * G, None, "ds01-researcher-dave.slice"),
    # override for a login in no members file: layered on the default group
    "frank": ("student", True, True, 3.0, "override", 32 * G, 0.5, "ds01-student-frank.slice"),
}


@pytest.mark.parametrize("login", sorted(RESOLUTION))
def test_resolution_table(lab, login):
    group, listed, override, gpueq, gpueq_source, memory, idle, slice_name = RESOLUTION[login]
    limits = lab.resolve(login)
    assert (limits.group, limits.listed, limits.is_override) == (group, listed, override)
    assert limits.max_gpu_equivalents == gpueq
    assert limits.sources["max_gpu_equivalents"] == gpueq_source
    assert limits.memory == memory
    assert limits.idle_timeout_h == idle
    assert limits.slice_name == slice_name


def test_override_keeps_group_values_and_layers_aggregate(lab):
    dave = lab.resolve("dave")
    assert dave.max_cpus == 48 and dave.sources["max_cpus"] == "group:researcher"
    assert dave.max_runtime_h is None and dave.sources["max_runtime_h"] == "override"
    assert dave.aggregate.memory_max == "400G" and dave.sources["aggregate.memory_max"] == "override"
    assert dave.aggregate.cpu_quota == "24000%" and dave.sources["aggregate.cpu_quota"] == "group:researcher"
    assert dave.policies.idle_detection_window == 4  # the group's policy survives the override


def test_null_means_unlimited(lab):
    admin = lab.resolve("datasciencelab")
    assert admin.max_gpu_equivalents is None
    assert admin.max_gpu_slots_per_container is None
    assert admin.aggregate is None  # no aggregate block: accounting only
    assert admin.gpu_quota is None
    student = lab.resolve("alice")
    assert student.gpu_quota == 2.0


def test_defaults_and_builtins_are_attributed(lab):
    alice = lab.resolve("alice")
    assert alice.sources["pids_limit"] == "defaults"
    assert alice.sources["policies.grace_period_m"] == "policies"
    assert alice.sources["policies.keepalive_file"] == "builtin"
    assert alice.sources["policies.idle_detection_window"] == "group:student"


def test_archived_users_are_not_known(lab):
    assert "old.user" not in lab.known_users()
    assert lab.known_users()["dave"] == "researcher"
    assert lab.known_users()["frank"] == "student"


@pytest.mark.parametrize(
    ("login", "rule", "active"),
    [
        ("erin", "idle_timeout_h", True),  # active until 2099
        ("erin", "max_runtime_h", True),
        ("alice", "idle_timeout_h", False),  # expired 2026-02-01
        ("bob", "max_runtime_h", True),  # permanent (expires_on: null)
        ("bob", "idle_timeout_h", False),  # not what bob is exempt from
        ("zoe", "idle_timeout_h", False),  # no exemption at all
    ],
)
def test_exemptions(lab, login, rule, active):
    assert (lab.resolve(login).exemption_for(rule, NOW) is not None) is active


def test_expired_exemption_is_kept_for_audit(lab):
    alice = lab.resolve("alice")
    assert len(alice.exemptions) == 1 and not alice.exemptions[0].active(NOW)


def _write(tmp_path, text, files=None):
    (tmp_path / "resource-limits.yaml").write_text(text)
    for rel, body in (files or {}).items():
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    return str(tmp_path / "resource-limits.yaml")


BASE = "default_group: student\ngroups:\n  student: {}\n"


@pytest.mark.parametrize(
    ("old", "value", "new", "expected"),
    [
        ("max_gpu_slots", 3, "max_gpu_equivalents", 3.0),
        ("max_gpus_per_user", 2, "max_gpu_equivalents", 2.0),
        ("max_mig_instances", 1, "max_gpu_equivalents", 1.0),
        ("max_gpus_per_container", 2, "max_gpu_slots_per_container", 2),
        ("max_mig_per_container", 4, "max_gpu_slots_per_container", 4),
        ("max_runtime", "48h", "max_runtime_h", 48.0),
        ("max_runtime", "2d", "max_runtime_h", 48.0),
        ("idle_timeout", "30m", "idle_timeout_h", 0.5),
        ("gpu_hold_after_stop", "15m", "gpu_hold_after_stop_h", 0.25),
        ("container_hold_after_stop", "1800s", "container_hold_after_stop_h", 0.5),
        ("idle_timeout", None, "idle_timeout_h", None),
    ],
)
def test_legacy_aliases_are_read_with_a_warning(tmp_path, old, value, new, expected):
    rendered = "null" if value is None else value
    path = _write(tmp_path, f"defaults:\n  {old}: {rendered}\n" + BASE)
    loaded = config.load_config(path)
    limits = loaded.resolve("anyone")
    assert getattr(limits, new) == expected
    assert limits.sources[new] == "defaults"
    assert any(f"defaults.{old}: is deprecated; use '{new}'" in w for w in loaded.warnings)


@pytest.mark.parametrize(
    ("old", "value", "new", "expected"),
    [
        ("grace_period", "10m", "grace_period_m", 10.0),
        ("keepalive_max_duration", "1d", "keepalive_max_duration_h", 24.0),
        ("sigterm_grace_seconds", 45, "sigterm_grace_s", 45.0),
        ("created_container_timeout", "1h", "created_container_timeout_m", 60.0),
    ],
)
def test_legacy_policy_aliases(tmp_path, old, value, new, expected):
    path = _write(tmp_path, BASE + f"policies:\n  {old}: {value}\n")
    loaded = config.load_config(path)
    assert getattr(loaded.resolve("x").policies, new) == expected
    assert loaded.warnings


def test_empty_and_comment_only_sections_are_empty(tmp_path):
    path = _write(tmp_path, "defaults:\n# nothing\npolicies:\ngpu_allocation:\n  # all commented out\n" + BASE)
    limits = config.load_config(path).resolve("x")
    assert limits.max_gpu_equivalents == 1.0
    assert limits.policies.grace_period_m == 30.0


def test_members_files_and_inline_members_union(tmp_path):
    path = _write(
        tmp_path,
        "default_group: student\ngroups:\n  student: {}\n  staff:\n    members: [kim]\n    max_cpus: 8\n",
        {"groups/staff.members": "# staff\nlee  # joined 2026\n\n"},
    )
    loaded = config.load_config(path)
    assert loaded.resolve("kim").group == "staff"
    assert loaded.resolve("lee").group == "staff" and loaded.resolve("lee").max_cpus == 8.0


def test_sanitised_member_entry_matches_its_login(tmp_path):
    path = _write(
        tmp_path,
        "default_group: student\ngroups:\n  student: {}\n  staff: {}\n",
        {"groups/staff.members": "first_last\n"},
    )
    assert config.load_config(path).resolve("first.last@lab.example").group == "staff"


def test_slice_name_override_resolves_a_collision(tmp_path):
    path = _write(
        tmp_path,
        BASE,
        {
            "groups/student.members": "alice@a.example\nalice@b.example\n",
            "user-overrides.yaml": "alice@b.example:\n  slice_name: alice_b\n",
        },
    )
    loaded = config.load_config(path)
    assert loaded.resolve("alice@a.example").slice_name == "ds01-student-alice.slice"
    assert loaded.resolve("alice@b.example").slice_name == "ds01-student-alice_b.slice"
    assert loaded.slice_problems(["alice@c.example"])  # a third login would collide again


def test_inline_override_is_replaced_by_file_override(tmp_path):
    path = _write(
        tmp_path, BASE + "user_overrides:\n  kim:\n    max_cpus: 2\n", {"user-overrides.yaml": "kim:\n  max_cpus: 6\n"}
    )
    assert config.load_config(path).resolve("kim").max_cpus == 6.0


def test_explicit_null_aggregate_clears_the_inherited_one(tmp_path):
    text = (
        "defaults:\n  aggregate:\n    memory_max: 10G\n"
        "default_group: student\ngroups:\n  student: {}\n  admin:\n    aggregate: null\n"
    )
    loaded = config.load_config(_write(tmp_path, text, {"groups/admin.members": "root_like\n"}))
    assert loaded.resolve("anyone").aggregate.memory_max == "10G"
    assert loaded.resolve("root_like").aggregate is None


def test_paths_are_relative_to_the_config_directory(tmp_path):
    loaded = config.load_config(_write(tmp_path, BASE + "paths:\n  state_dir: state\n  log_dir: /abs/log\n"))
    assert loaded.paths.state_dir == str(tmp_path / "state")
    assert loaded.paths.log_dir == "/abs/log"
    assert loaded.section("gpu_allocation")["mapping_dir"] == str(tmp_path / "state" / "dcgm-job-mapping")


def test_safe_limits_are_strict():
    limits = config.safe_limits("alice")
    assert limits.safe_defaults and limits.max_gpu_equivalents == 1.0 and limits.allow_full_gpu is False


def test_config_store_keeps_the_last_good_config(tmp_path):
    path = _write(tmp_path, BASE + "defaults:\n  max_cpus: 4\n")
    store = config.ConfigStore(path, min_interval_s=0)
    assert store.resolve("x").max_cpus == 4.0
    (tmp_path / "resource-limits.yaml").write_text("defaults: [broken\n")
    os.utime(path, ns=(1, 1))
    assert store.resolve("x").max_cpus == 4.0  # last good config kept
    assert store.last_error is not None
    (tmp_path / "resource-limits.yaml").write_text(BASE + "defaults:\n  max_cpus: 8\n")
    assert store.resolve("x").max_cpus == 8.0
    assert store.last_error is None


def test_config_store_without_any_good_config_uses_safe_defaults(tmp_path):
    store = config.ConfigStore(str(tmp_path / "missing.yaml"), min_interval_s=0)
    limits = store.resolve("alice")
    assert limits.safe_defaults and limits.allow_full_gpu is False


def test_find_config_path_order(monkeypatch):
    monkeypatch.setenv("DS01_CONFIG", "/env/limits.yaml")
    assert config.find_config_path("/cli/limits.yaml") == "/cli/limits.yaml"
    assert config.find_config_path(None) == "/env/limits.yaml"
    monkeypatch.delenv("DS01_CONFIG")
    assert config.find_config_path(None) == "/etc/ds01/resource-limits.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("32g", 32 * G), ("512m", 512 * 1024**2), ("1.5G", int(1.5 * G)), (1024, 1024), ("2GiB", 2 * G)],
)
def test_parse_size(text, expected):
    assert config.parse_size(text) == expected


def test_lab_config_copy_is_valid_as_shipped(tmp_path):
    """The example we ship in tests/fixtures/lab is itself valid (it feeds the demo and molecule)."""
    shutil.copytree(os.path.dirname(LAB), tmp_path / "lab")
    loaded = config.load_config(str(tmp_path / "lab" / "resource-limits.yaml"))
    assert loaded.warnings == []
    assert set(loaded.groups) == {"student", "researcher", "faculty", "admin"}


FEATURES_ONLY_THROUGH_CONFIG = r"""
import json, sys
sys.modules["ds01.gateway"] = None     # any import of the gateway package now raises ImportError
sys.modules["ds01.images"] = None
sys.path.insert(0, sys.argv[1])
from ds01 import config
loaded = config.load_config(sys.argv[2])
print(json.dumps({"gateway": dict(loaded.section("gateway")), "images": dict(loaded.section("images"))}))
"""


def test_feature_sections_load_in_a_process_that_never_imports_their_feature(tmp_path):
    """A service that loads the config without the gateway or images modules still knows their sections."""
    path = tmp_path / "resource-limits.yaml"
    path.write_text(
        "default_group: student\ngroups:\n  student: {}\n"
        "gateway:\n  socket_mode: 0660\n  max_body_bytes: 1m\nimages:\n  allowed: [ubuntu:22.04]\n"
    )
    core = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "..", "plugins", "module_utils")
    proc = subprocess.run(
        [sys.executable, "-c", FEATURES_ONLY_THROUGH_CONFIG, os.path.abspath(core), str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stderr
    sections = json.loads(proc.stdout)
    assert sections["gateway"]["socket_mode"] == "0660" and sections["gateway"]["max_body_bytes"] == 1024**2
    assert sections["gateway"]["listen"] == "/var/run/docker.sock"  # a default filled in
    assert sections["images"] == {"allowed": ["ubuntu:22.04"], "default": None, "deploy_network": "none"}


@pytest.mark.parametrize(
    ("aggregate", "warned"),
    [
        ("{memory_max: 8G}", True),  # capped, but not the number of processes: builds would escape
        ("{memory_max: 8G, tasks_max: 4096}", False),
        ("null", False),  # a group left uncapped on purpose (admins)
    ],
)
def test_a_capped_group_without_tasks_max_is_warned(tmp_path, aggregate, warned):
    path = tmp_path / "resource-limits.yaml"
    path.write_text(f"default_group: student\ngroups:\n  student:\n    aggregate: {aggregate}\n")
    found = [w for w in config.load_config(str(path)).warnings if "groups.student.aggregate.tasks_max" in w]
    assert bool(found) == warned
    if warned:
        assert "build's steps" in found[0] and "Set it" in found[0]
