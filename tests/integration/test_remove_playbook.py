"""playbooks/remove.yml in the demo's sandbox root: the demo deploys, remove takes every file ds01 installed
away and keeps only the configuration, the state and the event log; daemon.json gets back exactly what it
had before the deploy; a second remove changes nothing; ``ds01_remove_state=true`` takes the kept state too;
check mode reports and touches nothing. (molecule/default/tests/test_zz_remove.py runs it on a systemd host.)
"""

from __future__ import annotations

import json

from demo_harness import Demo, changed_tasks, snapshot

REMOVE = "playbooks/remove.yml"
KEPT = ("etc/ds01", "var/lib/ds01", "var/log/ds01")
# Slurm's own configuration (the demo turns ds01_slurm on): Slurm needs it, remove leaves it (docs/admin/remove.md).
SLURM = ("etc/slurm",)
# What a lab's daemon.json had before ds01 (the role must give it back key for key).
LAB_DAEMON_JSON = {
    "log-driver": "journald",
    "exec-opts": ["native.umask=normal", "native.cgroupdriver=cgroupfs"],
    "hosts": ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375"],
    "builder": {"gc": {"enabled": True}},
    "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
    "default-runtime": "nvidia",  # the deploy makes it runc (build steps reach no GPU); remove gives it back
}


def files_outside(root, kept) -> list:
    """Files (and links) under ``root`` that are not inside one of the ``kept`` directories."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if any(rel == k or rel.startswith(k + "/") for k in kept):
            continue
        if not path.is_dir() or path.is_symlink():
            out.append(rel)
    return out


def test_remove_keeps_only_the_state_and_gives_daemon_json_back(tmp_path):
    demo = Demo(tmp_path)
    daemon_json = demo.root / "etc" / "docker" / "daemon.json"
    daemon_json.parent.mkdir(parents=True)
    daemon_json.write_text(json.dumps(LAB_DAEMON_JSON))
    # Files of the lab that are not ds01's: they must survive the remove.
    profile_d = demo.root / "etc" / "profile.d"
    profile_d.mkdir(parents=True)
    (profile_d / "lab.sh").write_text("export LAB=1\n")

    demo.converge()
    deployed = json.loads(daemon_json.read_text())
    assert deployed["cgroup-parent"] == "ds01.slice"
    assert deployed["hosts"] == ["unix:///run/ds01/dockerd.sock"]
    assert deployed["default-runtime"] == "runc" and deployed["runtimes"] == LAB_DAEMON_JSON["runtimes"]
    assert (demo.root / "var/lib/ds01/daemon-json-before.json").is_file()
    installed = files_outside(demo.root, KEPT)
    for path in (
        "opt/ds01/venv/bin/python",
        "usr/local/bin/ds01",
        "etc/systemd/system/ds01.slice",
        "etc/systemd/system/ds01-gateway.service",
        "etc/systemd/system/docker.service.d/ds01-gateway.conf",
        "etc/systemd/system/ds01-lifecycle.timer",
        "etc/profile.d/ds01-gpu-deterrent.sh",
        "etc/udev/rules.d/99-ds01-nvidia.rules",
        "etc/modprobe.d/ds01-nvidia.conf",
        "etc/logrotate.d/ds01",
        "usr/local/share/man/man1/ds01.1",
    ):
        assert path in installed, path

    before_check = snapshot(demo.root)
    checked = demo.converge("--check", playbook=REMOVE)
    assert checked["stats"]["localhost"]["changed"] > 0
    assert snapshot(demo.root) == before_check, "check mode changed files"

    first = demo.converge(playbook=REMOVE)
    assert first["stats"]["localhost"]["changed"] > 0
    assert files_outside(demo.root, KEPT + SLURM) == ["etc/docker/daemon.json", "etc/profile.d/lab.sh"]
    assert json.loads(daemon_json.read_text()) == LAB_DAEMON_JSON
    assert (demo.root / "etc/ds01/resource-limits.yaml").is_file()
    assert (demo.root / "var/log/ds01").is_dir()
    assert not (demo.root / "run/ds01").exists()
    assert not (demo.root / "etc/systemd/system/docker.service.d").exists()
    removed = snapshot(demo.root)

    second = demo.converge(playbook=REMOVE)
    assert second["stats"]["localhost"]["changed"] == 0, f"changed on the second run: {changed_tasks(second)}"
    assert snapshot(demo.root) == removed

    demo.converge("-e", "ds01_remove_state=true", playbook=REMOVE)
    assert files_outside(demo.root, SLURM) == ["etc/docker/daemon.json", "etc/profile.d/lab.sh"]
    assert not any((demo.root / k).exists() for k in KEPT)
    assert json.loads(daemon_json.read_text()) == LAB_DAEMON_JSON


def test_demo_converges_then_changes_nothing_and_remove_takes_away_what_ds01_wrote(tmp_path):
    """``make demo``'s converge (``ansible-playbook -i inventory/demo playbooks/site.yml``) twice into a fresh
    sandbox root: the first run changes things, the second reports ``changed=0`` and leaves every file's bytes,
    mode and mtime as they were (the runtime venv installed from a wheelhouse as ``scripts/demo.sh`` does). On
    that root, where ds01 wrote daemon.json itself, remove takes it away with the rest; and before the deploy, a
    remove where ds01 never was changes nothing. (One sandbox for both: a converge costs minutes.)"""
    demo = Demo(tmp_path)
    daemon_json = demo.root / "etc" / "docker" / "daemon.json"

    never = demo.converge(playbook=REMOVE)
    assert never["stats"]["localhost"]["changed"] == 0, changed_tasks(never)
    assert files_outside(demo.root, ()) == []

    first = demo.converge()
    assert first["stats"]["localhost"]["changed"] > 0
    assert (demo.root / "etc" / "ds01" / "resource-limits.yaml").is_file()
    assert (demo.root / "opt" / "ds01" / "venv" / "bin" / "python").exists()
    assert daemon_json.is_file()
    deployed = snapshot(demo.root)

    second = demo.converge()
    assert second["stats"]["localhost"]["changed"] == 0, f"changed on the second run: {changed_tasks(second)}"
    assert second["stats"]["localhost"]["failures"] == 0
    assert snapshot(demo.root) == deployed

    demo.converge(playbook=REMOVE)
    assert not daemon_json.exists()
    assert files_outside(demo.root, KEPT + SLURM) == []
