"""Who is calling: container ids from real /proc/<pid>/cgroup texts, and the peer's credentials."""

from __future__ import annotations

import os
import socket

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import peer

CID = "680f9aa93ee75888d100b4451217cd8126c3cbc535596a16da052bbf395486af"

# Read on this machine (Debian 12, cgroup v1 hybrid, dockerd with the cgroupfs driver) from a
# process inside a running container, and from a host shell.
CGROUPFS_CONTAINER = f"""12:rdma:/
9:name=systemd:/docker/{CID}
8:pids:/docker/{CID}
7:blkio:/docker/{CID}
6:freezer:/docker/{CID}
5:devices:/docker/{CID}
4:memory:/docker/{CID}
3:cpuset:/docker/{CID}
2:cpuacct:/docker/{CID}
1:cpu:/docker/{CID}
0::/docker/{CID}
"""
HOST_SHELL = """9:name=systemd:/
8:pids:/
4:memory:/process_api/36f0139fae1eff591d51141d3dfdc954
1:cpu:/
0::/
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CGROUPFS_CONTAINER, CID),
        (HOST_SHELL, None),
        # systemd driver, cgroup v2, default parent
        (f"0::/system.slice/docker-{CID}.scope\n", CID),
        # systemd driver with the ds01 user slice as parent
        (f"0::/ds01.slice/ds01-student.slice/ds01-student-alice.slice/docker-{CID}.scope\n", CID),
        # cgroupfs driver with --cgroup-parent: no "docker/" component
        (f"0::/ds01-student-alice.slice/{CID}\n", CID),
        # systemd running inside the container (cgroupns=host): sub-cgroups below the id
        (f"1:name=systemd:/docker/{CID}/init.scope\n0::/docker/{CID}/system.slice/cron.service\n", CID),
        # nested engine: the outermost id (ours) wins
        (f"0::/docker/{CID}/docker/{'b' * 64}\n", CID),
        # a user-delegated subtree named after a container id proves nothing
        (f"0::/user.slice/user-1000.slice/user@1000.service/docker-{CID}.scope\n", None),
        # short or upper-case ids are not container ids
        ("0::/docker/680f9aa93ee7\n", None),
        (f"0::/docker/{CID.upper()}\n", None),
        ("garbage without colons\n", None),
        ("", None),
    ],
)
def test_container_id_from_cgroup(text, expected):
    assert peer.container_id_from_cgroup(text) == expected


def test_own_process_is_not_in_a_container():
    text = peer.read_cgroup(os.getpid())
    assert text is not None
    assert peer.container_id_from_cgroup(text) is None


def test_vanished_pid_has_no_cgroup(tmp_path):
    assert peer.read_cgroup(12345, proc_root=str(tmp_path)) is None
    assert peer.pid_namespace(12345, proc_root=str(tmp_path)) is None


def test_peercred_reports_the_connecting_process(tmp_path):
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    conn, _rest = server.accept()
    try:
        cred = peer.peercred(conn)
        assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.getuid(), os.getgid())
    finally:
        for s in (conn, client, server):
            s.close()


def test_root_is_admin_and_unknown_group_is_not():
    root = peer.account_of_uid(0)
    assert root is not None and root.login == "root"
    assert peer.is_admin(root, "no-such-group-ds01", ())
    nobody = peer.account_of_login("nobody")
    assert nobody is not None
    assert not peer.is_admin(nobody, "no-such-group-ds01", ())
    assert peer.is_admin(nobody, "no-such-group-ds01", ("nobody",))
