"""Role ds01_gateway in a sandbox root: daemon.json merged, drop-ins and unit installed, idempotent."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

PLAY = """
- hosts: localhost
  connection: local
  gather_facts: true
  gather_subset: [min]
  vars:
    ds01_root: {root}
    ds01_manage_system: false
  roles:
    - ds01.infra.ds01_gateway
"""


def _play(repo_root, playbook, *extra):
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(repo_root / ".collections"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [str(repo_root / ".venv/bin/ansible-playbook"), str(playbook), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recap = proc.stdout.rsplit("PLAY RECAP", 1)[1]
    return int(recap.split("changed=")[1].split()[0]), proc.stdout


@pytest.mark.slow
def test_role_moves_the_socket_keeps_other_keys_and_is_idempotent(repo_root, tmp_path):
    root = tmp_path / "root"
    (root / "etc/docker").mkdir(parents=True)
    daemon_json = root / "etc/docker/daemon.json"
    daemon_json.write_text(
        json.dumps(
            {
                "log-driver": "json-file",
                "hosts": ["tcp://0.0.0.0:2375"],
                "cgroup-parent": "ds01.slice",
                "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
                "default-runtime": "nvidia",
            }
        )
    )
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY.format(root=root))

    changed, _out = _play(repo_root, playbook, "--check", "--diff")
    assert changed > 0
    assert json.loads(daemon_json.read_text())["hosts"] == ["tcp://0.0.0.0:2375"]  # check mode changed nothing

    changed, _rest = _play(repo_root, playbook)
    assert changed > 0
    config = json.loads(daemon_json.read_text())
    assert config == {
        "log-driver": "json-file",
        "cgroup-parent": "ds01.slice",
        "hosts": ["unix:///run/ds01/dockerd.sock"],
        "group": "root",  # the daemon's own socket: root's alone, never the docker group's
        # attack round 12 (F5): with nvidia the default runtime, build steps (which the gateway cannot give
        # NVIDIA_VISIBLE_DEVICES=void) reached every GPU their image's env named; the runtime stays for --gpus
        "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
        "default-runtime": "runc",
    }
    units = root / "etc/systemd/system"
    service = (units / "ds01-gateway.service").read_text()
    assert service.startswith("#\n# Ansible managed")
    assert (
        "gateway serve --listen /var/run/docker.sock --upstream /run/ds01/dockerd.sock --socket-group docker "
        "--socket-mode 0666" in service
    )
    assert "Restart=always" in service and "Requires=docker.service" in service
    dropin = (units / "docker.service.d/ds01-gateway.conf").read_text()
    assert "ExecStart=\n" in dropin and "-H fd://" not in dropin.split("ExecStart=\n", 1)[1]
    assert (
        "ListenStream=\nListenStream=/run/ds01/docker-activation.sock"
        in (units / "docker.socket.d/ds01-gateway.conf").read_text()
    )
    mtime = daemon_json.stat().st_mtime_ns

    changed, _rest = _play(repo_root, playbook)
    assert changed == 0
    assert daemon_json.stat().st_mtime_ns == mtime
