"""What a user and an admin meet on a host that ds01.infra converged (molecule/default)."""

from __future__ import annotations

import json

import pytest

STUDENT = "alice"
RESEARCHER = "carol"
DEFAULT_GROUP_USER = "frank"
EXEMPT = "datasciencelab"


def login_shell(host, user: str, command: str):
    """Run ``command`` in ``user``'s login shell, as ``ssh user@host`` would."""
    return host.run("su - %s -c %s", user, command)


@pytest.mark.parametrize(
    ("path", "mode", "group"),
    [
        ("/etc/ds01", 0o755, "root"),
        ("/etc/ds01/resource-limits.yaml", 0o644, "root"),
        ("/etc/ds01/groups/student.members", 0o644, "root"),
        ("/etc/ds01/user-overrides.yaml", 0o644, "root"),
        ("/etc/ds01/lifecycle-exemptions.yaml", 0o644, "root"),
        ("/etc/ds01/gpu-exempt-users", 0o644, "root"),
        ("/etc/ds01/.staging", 0o700, "root"),
        ("/opt/ds01", 0o755, "root"),
        ("/opt/ds01/venv", 0o755, "root"),
        ("/usr/local/bin/ds01", 0o755, "root"),
        ("/var/lib/ds01", 0o755, "root"),
        ("/var/log/ds01", 0o750, "ds01-admin"),
        ("/var/log/ds01/events.jsonl", 0o640, "ds01-admin"),
        ("/run/ds01", 0o755, "root"),
        ("/etc/logrotate.d/ds01", 0o644, "root"),
        ("/etc/tmpfiles.d/ds01.conf", 0o644, "root"),
        ("/etc/profile.d/ds01-gpu-deterrent.sh", 0o644, "root"),
        ("/etc/systemd/system/ds01-lifecycle.timer", 0o644, "root"),
    ],
)
def test_paths_have_their_owner_and_mode(host, path, mode, group):
    f = host.file(path)
    assert f.exists, path
    assert f.user == "root"
    assert f.group == group
    assert f.mode == mode, f"{path}: {oct(f.mode)}"


def test_admin_group_holds_the_admins(host):
    assert host.group("ds01-admin").exists
    assert "ds01-admin" in host.user(EXEMPT).groups
    assert "ds01-admin" not in host.user(STUDENT).groups


def test_runtime_core_is_a_copy_in_the_venv_with_the_pinned_packages(host):
    where = "import ds01, os; print(os.path.dirname(ds01.__file__))"
    purelib = host.check_output("/opt/ds01/venv/bin/python -c %s", where)
    assert purelib.startswith("/opt/ds01/venv/lib/python3")
    core = host.file(purelib + "/config/__init__.py")
    assert core.is_file and not core.is_symlink
    freeze = host.check_output("/opt/ds01/venv/bin/python -m pip list --format=freeze").lower().split()
    for pin in ("docker==7.1.0", "nvidia-ml-py==13.615.71", "pyyaml==6.0.3", "prometheus-client==0.26.0"):
        assert pin in [line.replace("_", "-") for line in freeze], pin
    launcher = host.file("/usr/local/bin/ds01").content_string
    assert 'exec /opt/ds01/venv/bin/python -m ds01 "$@"' in launcher


def test_config_check_is_green(host):
    result = host.run("ds01 config check")
    assert result.rc == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout


def test_staged_config_is_the_live_one(host):
    live = host.file("/etc/ds01/resource-limits.yaml").content_string
    assert live == host.file("/etc/ds01/.staging/resource-limits.yaml").content_string
    assert "state_dir: /var/lib/ds01" in live


def test_ordinary_user_sees_own_limits(host):
    result = login_shell(host, STUDENT, 'ds01 config show "$USER"')
    assert result.rc == 0, result.stderr
    assert f"User {STUDENT}: group student" in result.stdout
    shown = json.loads(login_shell(host, RESEARCHER, 'ds01 config show "$USER" --json').stdout)
    assert shown["group"] == "researcher"
    assert shown["slice"] == "ds01-researcher-carol.slice"


def test_ordinary_user_cannot_write_state_or_read_the_audit_trail(host):
    assert login_shell(host, STUDENT, "touch /var/lib/ds01/forged").rc != 0
    assert login_shell(host, STUDENT, "cat /var/log/ds01/events.jsonl").rc != 0
    assert login_shell(host, EXEMPT, "cat /var/log/ds01/events.jsonl").rc == 0


def slice_properties(host, unit: str) -> dict:
    out = host.check_output("systemctl show %s -p LoadState -p CPUQuotaPerSecUSec -p MemoryMax -p TasksMax", unit)
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.mark.parametrize(
    ("unit", "cpu", "memory", "tasks"),
    [
        ("ds01-student-alice.slice", "4s", str(8 * 1024**3), "512"),
        ("ds01-researcher-carol.slice", "8s", str(16 * 1024**3), "2048"),
        # frank is in no members file: the default group's caps, from his home directory alone.
        ("ds01-student-frank.slice", "4s", str(8 * 1024**3), "512"),
    ],
)
def test_user_slices_carry_the_configured_caps(host, unit, cpu, memory, tasks):
    props = slice_properties(host, unit)
    assert props["LoadState"] == "loaded"
    assert props["CPUQuotaPerSecUSec"] == cpu
    assert props["MemoryMax"] == memory
    assert props["TasksMax"] == tasks


def test_no_slice_for_a_home_owned_by_root(host):
    assert not host.file("/etc/systemd/system/ds01-student-lostfound.slice").exists


def test_docker_daemon_json_was_merged_not_replaced(host):
    data = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert data["log-driver"] == "journald"
    assert data["cgroup-parent"] == "ds01.slice"
    assert data["exec-opts"] == ["native.umask=normal", "native.cgroupdriver=systemd"]
    assert data["builder"]["Entitlements"] == {"NetworkHost": False, "SecurityInsecure": False}


def test_lifecycle_timer_is_enabled_and_scheduled(host):
    timer = host.service("ds01-lifecycle.timer")
    assert timer.is_enabled
    assert timer.is_running
    assert "ds01-lifecycle.timer" in host.check_output("systemctl list-timers --all --no-legend")


def test_units_pass_systemd_analyze(host):
    units = " ".join(
        "/etc/systemd/system/" + u
        for u in (
            "ds01-detector.service",
            "ds01-lifecycle.service",
            "ds01-lifecycle.timer",
            "ds01-exporter.service",
            "ds01-gateway.service",
        )
    )
    result = host.run("systemd-analyze verify " + units)
    assert result.rc == 0, result.stderr


def test_units_are_hardened(host):
    props = host.check_output(
        "systemctl show ds01-lifecycle.service -p ProtectSystem -p NoNewPrivileges -p ProtectHome -p PrivateTmp"
        " -p ReadWritePaths"
    )
    assert "ProtectSystem=strict" in props
    assert "NoNewPrivileges=yes" in props
    assert "ProtectHome=read-only" in props
    assert "PrivateTmp=yes" in props
    assert "/var/lib/ds01" in props


def test_logrotate_rule_is_valid_and_rotates_by_rename(host):
    rule = host.file("/etc/logrotate.d/ds01").content_string
    assert "/var/log/ds01/events.jsonl" in rule
    assert "nocopytruncate" in rule.split() and "nocreate" in rule.split()  # the event chain runs across files
    assert host.run("logrotate --debug /etc/logrotate.d/ds01").rc == 0


def test_gpu_deterrent_hides_gpus_from_ordinary_login_shells(host):
    shown = login_shell(host, STUDENT, 'echo "[${CUDA_VISIBLE_DEVICES-unset}]"').stdout.strip()
    assert shown == "[]"


def test_gpu_deterrent_spares_exempt_users(host):
    shown = login_shell(host, EXEMPT, 'echo "[${CUDA_VISIBLE_DEVICES-unset}]"').stdout.strip()
    assert shown == "[unset]"


def test_cuda_notice_is_compiled_by_the_role_and_audits_only_hidden_logins(host):
    lib = host.file("/usr/local/lib/ds01/libds01-cuda-notice.so")
    assert lib.exists and lib.user == "root" and lib.mode == 0o644
    student = login_shell(host, STUDENT, 'echo "[${LD_AUDIT-unset}]"; python3 -c "print(6*7)"').stdout.split()
    assert student == ["[/usr/local/lib/ds01/libds01-cuda-notice.so]", "42"]  # loaded, and nothing breaks
    exempt = login_shell(host, EXEMPT, 'echo "[${LD_AUDIT-unset}]"').stdout.strip()
    assert exempt == "[unset]"
