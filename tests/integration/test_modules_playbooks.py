"""Every declarative module through real ``ansible-playbook`` runs against a sandbox root.

For each module: ``--check --diff`` (reports changed, leaves every checksum and mtime alone) → apply
(changed) → apply again (not changed) → the diff says what a user would want to see. Results are read
from the ``ansible.posix.json`` stdout callback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = Path(__file__).resolve().parent / "module_playbooks"
LAB = REPO / "tests" / "fixtures" / "lab"
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"


def run_playbook(name, sandbox, tmp_path, *flags):
    """(rc, the module task's result) for one ansible-playbook run."""
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }
    extra = json.dumps({"sandbox": str(sandbox), "ansible_python_interpreter": sys.executable})
    proc = subprocess.run(
        [str(PLAYBOOK_BIN), "-i", "localhost,", "-e", extra, str(PLAYBOOKS / name), *flags],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"ansible-playbook printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    tasks = data["plays"][0]["tasks"]
    module_task = [t for t in tasks if t["task"]["name"] not in ("Gathering Facts",)][-1]
    result = module_task["hosts"]["localhost"]
    assert proc.returncode == 0, json.dumps(result, indent=1)
    return result


def snapshot(root):
    """Everything under ``root``: content hash, mtime, mode, owner."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None
        out[str(path)] = (digest, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid)
    return out


def diff_texts(result):
    diffs = result.get("diff") or []
    diffs = diffs if isinstance(diffs, list) else [diffs]
    return {d.get("after_header"): d for d in diffs}


def cycle(name, sandbox, tmp_path):
    """check → apply → apply again; returns (check result, applied result, second result)."""
    before = snapshot(sandbox)
    check = run_playbook(name, sandbox, tmp_path, "--check", "--diff")
    assert check["changed"] is True
    assert snapshot(sandbox) == before, "check mode touched the sandbox"
    applied = run_playbook(name, sandbox, tmp_path, "--diff")
    assert applied["changed"] is True
    settled = snapshot(sandbox)
    again = run_playbook(name, sandbox, tmp_path, "--diff")
    assert again["changed"] is False
    assert snapshot(sandbox) == settled, "the second run touched the sandbox"
    return check, applied, again


def test_permissions_manifest(tmp_path):
    sandbox = tmp_path / "root"
    old = os.umask(0o077)  # the drift the manifest exists for (reference §13 #1)
    try:
        (sandbox / "etc/ds01/.staging").mkdir(parents=True)
        (sandbox / "etc/ds01/resource-limits.yaml").write_text("default_group: student\n")
        (sandbox / "opt/ds01/venv/bin").mkdir(parents=True)
        (sandbox / "opt/ds01/venv/bin/ds01").write_text("#!/bin/sh\n")
        (sandbox / "opt/ds01/venv/bin/ds01").chmod(0o700)
        os.symlink("/etc/shadow", sandbox / "opt/ds01/venv/bin/shadow-link")
        (sandbox / "var/lib/ds01").mkdir(parents=True)
        (sandbox / "var/lib/ds01").chmod(0o775)
    finally:
        os.umask(old)

    check, applied, _again = cycle("permissions.yml", sandbox, tmp_path)
    assert check["changed_paths"] == applied["changed_paths"]
    assert applied["symlinks"] == [str(sandbox / "opt/ds01/venv/bin/shadow-link")]
    after = check["diff"]["after"]
    assert f"file 0644 root:root {sandbox}/etc/ds01/resource-limits.yaml" in after
    assert f"file 0755 root:root {sandbox}/opt/ds01/venv/bin/ds01" in after
    assert f"dir  0755 root:root {sandbox}/var/lib/ds01\n" in after
    assert f"dir  0750 root:root {sandbox}/var/log/ds01\n" in after
    assert f"file 0640 root:root {sandbox}/var/log/ds01/events.jsonl" in after
    # the broad /etc/ds01 rule is overridden by the later .staging rule: never opened, not even once
    assert str(sandbox / "etc/ds01/.staging") not in applied["changed_paths"]

    def mode(rel):
        return oct((sandbox / rel).stat().st_mode & 0o7777)

    assert mode("etc/ds01") == "0o755" and mode("etc/ds01/resource-limits.yaml") == "0o644"
    assert mode("etc/ds01/.staging") == "0o700"
    assert mode("opt/ds01/venv/bin/ds01") == "0o755"
    assert mode("var/lib/ds01") == "0o755" and mode("var/lib/ds01/bare-metal-grants") == "0o711"
    assert mode("var/log/ds01") == "0o750" and mode("var/log/ds01/events.jsonl") == "0o640"
    assert mode("run/ds01") == "0o755"


def test_gpu_access(tmp_path):
    sandbox = tmp_path / "root"
    (sandbox / "etc").mkdir(parents=True)
    (sandbox / "etc/group").write_text("root:x:0:\nvideo:x:44:mallory\nusers:x:100:\n")
    (sandbox / "etc/passwd").write_text(
        "".join(f"{u}:x:{1000 + i}:100::/home/{u}:/bin/sh\n" for i, u in enumerate(["alice", "bob", "mallory"]))
    )

    check, applied, _again = cycle("gpu_access.yml", sandbox, tmp_path)
    diffs = diff_texts(check)
    assert 'MODE="0666"' in diffs[f"{sandbox}/etc/udev/rules.d/99-ds01-nvidia.rules"]["after"]
    assert "NVreg_DeviceFileMode=438" in diffs[f"{sandbox}/etc/modprobe.d/ds01-nvidia.conf"]["after"]
    exempt = diffs[f"{sandbox}/etc/ds01/gpu-exempt-users"]["after"]
    assert [line for line in exempt.splitlines() if not line.startswith("#")] == ["datasciencelab", "erin"]
    group_diff = diffs["video members"]
    assert group_diff["before"] == {"video": ["mallory"]} and group_diff["after"] == {"video": ["alice", "bob"]}
    assert applied["members_added"] == ["alice", "bob"] and applied["members_removed"] == ["mallory"]
    assert "video:x:44:alice,bob\n" in (sandbox / "etc/group").read_text()
    assert applied["udev_reloaded"] is False  # a sandbox root never runs udevadm


def test_user_slices_lab(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze comes from Debian's systemd package (make system-deps)"
    sandbox = tmp_path / "root"
    shutil.copytree(LAB, sandbox / "etc/ds01")
    check, applied, again = cycle("user_slices.yml", sandbox, tmp_path)
    assert check["daemon_reload_needed"] and applied["daemon_reload_needed"] and not again["daemon_reload_needed"]
    assert applied["validated"] is True
    units = sandbox / "etc/systemd/system"
    expected_users = {
        "alice": "ds01-student-alice.slice",
        "bob": "ds01-student-bob.slice",
        "123456@hertie-school.lan": "ds01-student-123456.slice",
        "carol.smith@hertie-school.lan": "ds01-researcher-carol_smith.slice",
        "dave": "ds01-researcher-dave.slice",
        "erin": "ds01-faculty-erin.slice",
        "frank": "ds01-student-frank.slice",
        "datasciencelab": "ds01-admin-datasciencelab.slice",
        "zoe": "ds01-student-zoe.slice",
    }
    assert applied["users"] == expected_users
    diffs = diff_texts(check)
    dave = diffs[f"{units}/ds01-researcher-dave.slice.d/10-resource-limits.conf"]["after"]
    assert "MemoryMax=400G\n" in dave and "CPUQuota=24000%\n" in dave  # override on top of the group
    zoe = diffs[f"{units}/ds01-student-zoe.slice.d/10-resource-limits.conf"]["after"]
    assert "MemoryMax=96G\n" in zoe and "TasksMax=12288\n" in zoe  # default group, no members entry
    assert not (units / "ds01-admin-datasciencelab.slice.d").exists()

    # the installed tree passes systemd-analyze verify as it sits in the unit directory
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in units.glob("*.slice"))],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    assert proc.returncode == 0 and str(units) not in proc.stderr, proc.stderr


def test_profile_d(tmp_path):
    sandbox = tmp_path / "root"
    (sandbox / "etc/profile.d").mkdir(parents=True)
    check, _applied, _again = cycle("profile_d.yml", sandbox, tmp_path)
    diffs = diff_texts(check)
    deterrent = diffs[f"{sandbox}/etc/profile.d/ds01-gpu-deterrent.sh"]["after"]
    assert 'CUDA_VISIBLE_DEVICES=""' in deterrent and f"{sandbox}/etc/ds01/gpu-exempt-users" in deterrent
    assert f"{sandbox}/var/lib/ds01/greetings/" in diffs[f"{sandbox}/etc/profile.d/ds01-greeting.sh"]["after"]
    assert "GPUs on this server are for containers" in deterrent  # the banner, on by default
    for name in ("ds01-path.sh", "ds01-gpu-deterrent.sh", "ds01-greeting.sh"):
        assert (sandbox / "etc/profile.d" / name).stat().st_mode & 0o777 == 0o644


def test_gpu_facts_in_a_playbook(tmp_path):
    """Facts a template can use: check mode and a real run agree, nothing changes, the weights add up."""
    sandbox = tmp_path / "root"
    sandbox.mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "topology" / "demo.yaml", sandbox / "topology.yaml")
    for flags in (("--check",), ()):
        shown = run_playbook("gpu_facts.yml", sandbox, tmp_path, *flags)["msg"]
        assert shown["backend"] == "fake"
        assert shown["slots"] == ["0", "1", "2.0", "2.1", "2.2", "2.3", *[f"3.{n}" for n in range(7)]]
        assert float(shown["gpueq"]) == pytest.approx(4.0)
