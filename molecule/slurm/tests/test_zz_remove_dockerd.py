"""Deploy, then playbooks/remove.yml, on a host that runs its own dockerd under systemd (Debian's docker.io;
prepare.yml wrote the lab's daemon.json), run last: this module's name sorts after test_slurm.py.

Before the remove, root's view shows what the deploy did: docker.service runs dockerd without `-H fd://` from
ds01's drop-in, dockerd itself listens on the upstream socket and answers `_ping` there, and the socket users
talk to is held by the gateway's process. The controller then runs the playbook against the molecule
inventory, and root's view shows the host as it was: docker.service restarted (another main process), its
ExecStart and docker.socket back to the package's, dockerd answering on /var/run/docker.sock itself, the
drop-ins gone, daemon.json exactly what prepare wrote, no ds01 file left outside the kept configuration, state
and event log but Slurm's (remove keeps ds01_slurm's configuration, QOS and accounting: docs/admin/remove.md),
and a second run changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

UPSTREAM = "/run/ds01/dockerd.sock"  # ds01_gateway_upstream: where the deploy moves dockerd's socket
USERS = "/var/run/docker.sock"  # the socket users' tools talk to (/var/run is /run)
ACTIVATION = "/run/ds01/docker-activation.sock"  # where the deploy moves docker.socket
DROPINS = (
    "/etc/systemd/system/docker.service.d/ds01-gateway.conf",
    "/etc/systemd/system/docker.socket.d/ds01-gateway.conf",
)
# What prepare.yml wrote before the deploy.
LAB_DAEMON_JSON = {
    "storage-driver": "vfs",
    "bridge": "none",
    "iptables": False,
    "ip-forward": False,
    "log-driver": "journald",
}
KEPT = ("/etc/ds01", "/var/lib/ds01", "/var/log/ds01")
# Slurm's accounting database names its tables after the cluster (ds01_slurm_cluster_name "ds01"): Slurm's.
SLURM_ACCOUNTING = "/var/lib/mysql/slurm_acct_db/ds01_"
SLURM_FILES = ("/etc/slurm/slurm.conf", "/etc/slurm/gres.conf", "/etc/slurm/cgroup.conf", "/etc/slurm/job_submit.lua")

# GET /_ping over a Unix socket, the whole answer (HTTP/1.0: the server closes when it is done).
PING = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\\r\\nHost: docker\\r\\n\\r\\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode("latin-1"))
"""


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


def unit(host, name: str) -> dict:
    """systemctl show's view of a unit: its main process, when it last became active, how it starts."""
    props = ("ActiveState", "MainPID", "ActiveEnterTimestamp", "ExecStart", "DropInPaths", "Listen")
    out = host.check_output("systemctl show %s " + " ".join(f"-p {prop}" for prop in props), name)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def listeners(host, path: str) -> set:
    """The pids that hold a listening Unix socket bound at ``path`` (ss prints the path it was bound as)."""
    names = {path, path.replace("/var/run/", "/run/", 1), path.replace("/run/", "/var/run/", 1)}
    pids = set()
    for line in host.check_output("ss -xlpH").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[1] == "LISTEN" and fields[4] in names:
            pids |= {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
    return pids


def ping(host, path: str) -> tuple:
    """(status line, headers, body) of GET /_ping sent by root to the socket at ``path``."""
    out = host.run("python3 -c %s %s", PING, path)
    assert out.rc == 0, out.stderr
    head, _sep, body = out.stdout.partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = {key.strip().lower(): value.strip() for key, _colon, value in (line.partition(":") for line in lines)}
    return status, headers, body


def ds01_files(host) -> list:
    """Every path named *ds01* on the host's own file systems, outside the kept directories, the users'
    homes (their own files) and /proc, /sys, /tmp."""
    prune = " -o ".join(f"-path {p}" for p in (*KEPT, "/proc", "/sys", "/tmp", "/home", "/dev"))  # noqa: S108
    out = host.check_output(f"find / \\( {prune} \\) -prune -o -name '*ds01*' -print")
    return sorted(line for line in out.splitlines() if line)


def test_remove_gives_dockerd_its_own_socket_back_and_leaves_the_host_clean(host):
    # --- What the deploy did (converge): dockerd on the upstream socket, the gateway on the users' one.
    docker = unit(host, "docker.service")
    dockerd = int(docker["MainPID"])
    gateway = int(unit(host, "ds01-gateway.service")["MainPID"])
    print(f"\nbefore remove: docker.service {docker}")
    assert docker["ActiveState"] == "active"
    assert dockerd > 0 and gateway > 0 and dockerd != gateway
    assert "-H fd://" not in docker["ExecStart"]
    assert DROPINS[0] in docker["DropInPaths"].split()
    assert unit(host, "docker.socket")["Listen"] == f"{ACTIVATION} (Stream)"
    assert json.loads(host.file("/etc/docker/daemon.json").content_string)["hosts"] == [f"unix://{UPSTREAM}"]
    status, headers, body = ping(host, UPSTREAM)
    print(f"before remove: {UPSTREAM} answers {status!r}, Server {headers.get('server')!r}, held by pid {dockerd}")
    assert (status.split()[1], body) == ("200", "OK")
    assert headers["server"].startswith("Docker/")
    assert listeners(host, UPSTREAM) == {dockerd}  # dockerd itself, nobody else
    upstream = host.file(UPSTREAM)
    assert (upstream.user, upstream.group, upstream.mode) == ("root", "root", 0o660)  # root's alone
    print(f"before remove: {USERS} held by {listeners(host, USERS)} (gateway {gateway}, dockerd {dockerd})")
    assert listeners(host, USERS) == {gateway}  # the gateway's socket, not dockerd's
    slurm_before = {path: host.file(path).sha256sum for path in SLURM_FILES}

    # --- Remove.
    first = run_remove()
    print(f"remove changed: {changed(first)}")
    assert "Restart Docker on its own socket" in changed(first)

    # docker.service was restarted by remove: another main process, a later activation, the package's ExecStart.
    after = unit(host, "docker.service")
    print(f"after remove: docker.service {after}")
    assert after["ActiveState"] == "active"
    assert int(after["MainPID"]) not in (0, dockerd)
    assert after["ActiveEnterTimestamp"] != docker["ActiveEnterTimestamp"]
    assert "/usr/sbin/dockerd -H fd://" in after["ExecStart"]
    assert after["DropInPaths"] == ""
    assert unit(host, "docker.socket")["Listen"] == "/run/docker.sock (Stream)"
    for path in DROPINS:
        assert not host.file(path).exists, path
        assert not host.file(os.path.dirname(path)).exists, path  # ds01 made the directory; nothing else is in it

    # dockerd answers on /var/run/docker.sock itself: the socket systemd (docker.socket) bound and handed to
    # dockerd, with the package's owner and mode, and no gateway process left.
    status, headers, body = ping(host, USERS)
    holders = listeners(host, USERS)
    print(f"after remove: {USERS} answers {status!r}, Server {headers.get('server')!r}, held by {holders}")
    assert (status.split()[1], body) == ("200", "OK")
    assert headers["server"].startswith("Docker/")
    assert holders == {1, int(after["MainPID"])}
    users = host.file(USERS)
    assert (users.user, users.group, users.mode) == ("root", "docker", 0o660)
    assert host.run("systemctl is-active ds01-gateway.service").stdout.strip() != "active"
    version = host.run("docker -H unix://%s version --format '{{json .Server}}'", USERS)
    assert version.rc == 0, version.stderr
    print(f"after remove: docker version (root, {USERS}): {version.stdout.strip()}")
    assert headers["server"] == f"Docker/{json.loads(version.stdout)['Version']} (linux)"

    assert json.loads(host.file("/etc/docker/daemon.json").content_string) == LAB_DAEMON_JSON
    assert not host.file("/run/ds01").exists  # dockerd unlinked its upstream socket when it stopped

    # Nothing named ds01 is left but the kept directories and Slurm's accounting tables; Slurm runs as before.
    left = ds01_files(host)
    print(f"after remove: named *ds01* outside {KEPT}: {len(left)} paths, none outside {SLURM_ACCOUNTING}*")
    assert [path for path in left if not path.startswith(SLURM_ACCOUNTING)] == []
    assert left  # the accounting database is Slurm's: remove keeps it
    for kept in KEPT:
        assert host.file(kept).is_directory, kept
    assert {path: host.file(path).sha256sum for path in SLURM_FILES} == slurm_before
    for service in ("slurmctld", "slurmd", "slurmdbd"):
        assert host.service(service).is_running, service
    assert "ds01-student" in host.check_output("sacctmgr -P -n show qos format=Name").split()
    assert host.run("ds01 --help").rc != 0  # the command is gone from PATH

    second = run_remove()
    assert changed(second) == []
    assert int(unit(host, "docker.service")["MainPID"]) == int(after["MainPID"])  # not restarted again
