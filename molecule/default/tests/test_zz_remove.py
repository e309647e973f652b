"""playbooks/remove.yml on the converged systemd host, run last (this module's name sorts after the others):
the controller runs the playbook against the molecule inventory, then root's view of the host shows that
ds01's units are stopped and gone, no ds01 file is left outside the kept configuration, state and event log,
daemon.json holds exactly what the lab had before the deploy (prepare.yml), the engine still answers on its
own socket, and a second run changes nothing.

In this scenario no dockerd runs inside the host: the test machine's engine socket is mounted at the path the
gateway moves the daemon to (molecule.yml), so there is no docker.service to restart. The restart is shown on a
host that runs its own dockerd under systemd, in molecule/slurm/tests/test_zz_remove_dockerd.py: docker.service
restarted by remove, dockerd answering on /var/run/docker.sock itself, daemon.json as the lab had it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

DAEMON = "unix:///run/ds01/dockerd.sock"  # the engine's own socket, mounted by molecule.yml
API = "DOCKER_API_VERSION=1.41"
# What prepare.yml wrote before the deploy.
LAB_DAEMON_JSON = {"log-driver": "journald", "exec-opts": ["native.umask=normal", "native.cgroupdriver=cgroupfs"]}
KEPT = ("/etc/ds01", "/var/lib/ds01", "/var/log/ds01")
UNITS = (
    "ds01-gateway.service",
    "ds01-detector.service",
    "ds01-exporter.service",
    "ds01-lifecycle.timer",
    "ds01-lifecycle.service",
)


def run_remove() -> dict:
    """One run of playbooks/remove.yml from the controller; the ansible.posix.json document."""
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_FORCE_COLOR": "0"}
    config = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.cfg"
    if "ANSIBLE_CONFIG" not in env and config.is_file():
        env["ANSIBLE_CONFIG"] = str(config)
    proc = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "playbooks/remove.yml"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    # the JSON document, then whatever molecule's own callbacks print after it (profile_tasks' timings)
    document, _end = json.JSONDecoder().raw_decode(proc.stdout, proc.stdout.index("{"))
    return document


def changed(data: dict) -> list:
    return [
        task["task"]["name"]
        for play in data["plays"]
        for task in play["tasks"]
        for result in task["hosts"].values()
        if result.get("changed")
    ]


def ds01_files(host) -> list:
    """Every path named *ds01* on the host's own file systems, outside the kept directories, the users'
    homes (their own files) and /proc, /sys, /tmp."""
    prune = " -o ".join(f"-path {p}" for p in (*KEPT, "/proc", "/sys", "/tmp", "/home", "/dev"))  # noqa: S108
    out = host.check_output(f"find / \\( {prune} \\) -prune -o -name '*ds01*' -print")
    return sorted(line for line in out.splitlines() if line)


def test_remove_leaves_the_host_clean_and_docker_on_its_own_socket(host):
    assert host.file("/etc/systemd/system/ds01-gateway.service").exists  # deployed (converge)
    assert host.service("ds01-gateway.service").is_running

    first = run_remove()
    assert changed(first)

    for unit in UNITS:
        assert host.run("systemctl is-active %s", unit).stdout.strip() != "active", unit
        assert not host.file(f"/etc/systemd/system/{unit}").exists, unit
    # What is left named ds01: the engine's socket mount (the daemon's, not ds01's) and its directory.
    assert ds01_files(host) == ["/run/ds01"]  # dockerd.sock is not named *ds01*: find does not list it
    assert not host.file("/etc/systemd/system/docker.service.d").exists
    assert not host.file("/etc/systemd/system/docker.socket.d").exists
    assert not host.file("/var/run/docker.sock").exists  # the gateway's socket went with it
    assert json.loads(host.file("/etc/docker/daemon.json").content_string) == LAB_DAEMON_JSON
    for kept in KEPT:
        assert host.file(kept).is_directory, kept
    assert host.file("/etc/ds01/resource-limits.yaml").is_file
    # The engine answers on its own socket, as the daemon itself (the gateway is gone).
    version = host.run("%s docker -H %s version --format '{{json .Server}}'", API, DAEMON)
    assert version.rc == 0, version.stderr
    assert json.loads(version.stdout)["Version"]
    assert host.run("ds01 --help").rc != 0  # the command is gone from PATH

    second = run_remove()
    assert changed(second) == []
