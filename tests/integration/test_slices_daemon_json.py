"""Role ds01_slices, its daemon.json merge in a sandbox root: BuildKit entitlements off, other keys kept."""

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
  tasks:
    - name: Merge daemon.json only
      ansible.builtin.include_role:
        name: ds01.infra.ds01_slices
        tasks_from: docker.yml
"""


def _play(repo_root, playbook):
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(repo_root / ".collections"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [str(repo_root / ".venv/bin/ansible-playbook"), str(playbook)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(proc.stdout.rsplit("PLAY RECAP", 1)[1].split("changed=")[1].split()[0])


@pytest.mark.slow
def test_builder_entitlements_are_turned_off_and_other_builder_keys_kept(repo_root, tmp_path):
    root = tmp_path / "root"
    (root / "etc/docker").mkdir(parents=True)
    daemon_json = root / "etc/docker/daemon.json"
    daemon_json.write_text(
        json.dumps(
            {
                "log-driver": "json-file",
                "builder": {"GC": {"enabled": True}, "Entitlements": {"NetworkHost": True, "SecurityInsecure": True}},
            }
        )
    )
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY.format(root=root))
    assert _play(repo_root, playbook) > 0
    config = json.loads(daemon_json.read_text())
    assert config["builder"] == {
        "GC": {"enabled": True},
        "Entitlements": {"NetworkHost": False, "SecurityInsecure": False},
    }
    assert config["log-driver"] == "json-file"
    assert config["cgroup-parent"] == "ds01.slice"
    assert _play(repo_root, playbook) == 0  # idempotent
