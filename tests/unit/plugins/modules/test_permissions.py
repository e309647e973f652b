"""ds01.infra.permissions: mode arithmetic table-driven, the manifest through the harness."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from ansible_collections.ds01.infra.plugins.modules import permissions


@pytest.mark.parametrize(
    ("current", "spec", "is_dir", "expected"),
    [
        (0o600, "0644", False, 0o644),
        (0o600, "755", True, 0o755),
        (0o600, "u=rwX,go=rX", False, 0o644),  # data file opened up, not made executable
        (0o700, "u=rwX,go=rX", False, 0o755),  # executable stays executable
        (0o700, "u=rwX,go=rX", True, 0o755),
        (0o777, "go-w", False, 0o755),
        (0o664, "go-w", True, 0o644),
        (0o640, "go-w", False, 0o640),  # read bits the service chose are kept
        (0o777, "u=rwx,g=rx,o=", True, 0o750),
        (0o666, "g-wx,o=", False, 0o640),
        (0o644, "a+x", False, 0o755),
        (0o644, "+x", False, 0o755),
        (0o755, "u+s", False, 0o4755),
        (0o755, "g+s", True, 0o2755),
        (0o777, "o+t", True, 0o1777),
        (0o4755, "u=rwx", False, 0o0755),
        (0o644, "u+x-w", False, 0o544),
    ],
)
def test_apply_mode(current, spec, is_dir, expected):
    assert permissions.apply_mode(current, spec, is_dir) == expected


@pytest.mark.parametrize(
    ("spec", "valid"),
    [
        ("0755", True),
        ("1777", True),
        ("go-w", True),
        ("u=rwX,go=rX", True),
        ("o=", True),
        ("rwxr-xr-x", False),
        ("888", False),
        ("u~r", False),
        ("", False),
    ],
)
def test_valid_mode(spec, valid):
    assert permissions.valid_mode(spec) is valid


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def tree(tmp_path):
    old = os.umask(0o077)
    try:
        (tmp_path / "etc/ds01/groups").mkdir(parents=True)
        (tmp_path / "etc/ds01/resource-limits.yaml").write_text("x")
        (tmp_path / "etc/ds01/groups/student.members").write_text("alice\n")
        (tmp_path / "etc/ds01/.staging").mkdir()
        (tmp_path / "opt/ds01/bin").mkdir(parents=True)
        (tmp_path / "opt/ds01/bin/tool").write_text("#!/bin/sh\n")
        (tmp_path / "opt/ds01/bin/tool").chmod(0o700)
        (tmp_path / "outside").write_text("secret")
        (tmp_path / "outside").chmod(0o600)
        os.symlink(tmp_path / "outside", tmp_path / "etc/ds01/link")
        os.symlink(tmp_path / "outside", tmp_path / "opt/ds01/direct")
    finally:
        os.umask(old)
    return tmp_path


RULES = [
    {"path": "/etc/ds01", "dir_mode": "0755", "file_mode": "0644", "recurse": True},
    {"path": "/etc/ds01/.staging", "dir_mode": "0700"},
    {"path": "/opt/ds01", "dir_mode": "0755", "file_mode": "u=rwX,go=rX", "recurse": True},
    {"path": "/opt/ds01/direct", "state": "file", "file_mode": "0666"},
    {"path": "/var/log/ds01", "dir_mode": "0750"},
    {"path": "/var/log/ds01/events.jsonl", "state": "file", "file_mode": "0640"},
    {"path": "/etc/ds01/groups/*.members", "file_mode": "0644"},
    {"path": "/etc/ds01/nothing/*.yaml", "file_mode": "0644"},
    {"path": "/etc/ds01/optional", "create": False},
]


def test_check_apply_idempotent(run_module, tree):
    a = {"root": str(tree), "rules": RULES}
    check = run_module(permissions, a, check=True, diff=True)
    assert check["changed"]
    assert mode(tree / "etc/ds01") == 0o700 and not (tree / "var").exists()
    assert str(tree / "var/log/ds01/events.jsonl") in check["changed_paths"]
    assert "file 0640 " in check["diff"]["after"] and "file 0600 " in check["diff"]["before"]

    applied = run_module(permissions, a)
    assert applied["changed_count"] == check["changed_count"] and applied["changed_paths"] == check["changed_paths"]
    assert mode(tree / "etc/ds01") == 0o755
    assert mode(tree / "etc/ds01/.staging") == 0o700  # the later, narrower rule wins
    assert mode(tree / "etc/ds01/resource-limits.yaml") == 0o644
    assert mode(tree / "opt/ds01/bin/tool") == 0o755
    assert mode(tree / "var/log/ds01") == 0o750 and mode(tree / "var/log/ds01/events.jsonl") == 0o640
    # symlinks reported, never followed: the file they point at keeps its mode
    assert mode(tree / "outside") == 0o600
    assert sorted(applied["symlinks"]) == sorted([str(tree / "etc/ds01/link"), str(tree / "opt/ds01/direct")])
    assert applied["unmatched"] == ["/etc/ds01/nothing/*.yaml", str(tree / "etc/ds01/optional")]

    again = run_module(permissions, a, diff=True)
    assert not again["changed"] and again["changed_count"] == 0 and again["diff"]["after"] == ""


def test_owner_and_group(run_module, tree):
    gid = os.getgid()
    result = run_module(
        permissions,
        {"root": str(tree), "rules": [{"path": "/etc/ds01", "owner": "0", "group": str(gid), "recurse": True}]},
    )
    assert not result["changed"]  # already root's (tests run as the owner)
    result = run_module(
        permissions, {"root": str(tree), "rules": [{"path": "/etc/ds01", "owner": "no-such-user-ds01"}]}, fails=True
    )
    assert "no such user" in result["msg"]


def test_a_socket_in_a_tree_keeps_its_daemons_owner_and_mode(run_module, tmp_path):
    """dockerd's own socket under the run directory (mode 0660, as dockerd makes it): a tree rule that takes
    group write from files leaves it alone, so a second deploy after a Docker restart changes nothing."""
    (tmp_path / "run/ds01").mkdir(parents=True)
    (tmp_path / "run/ds01/lock").write_text("")
    (tmp_path / "run/ds01/lock").chmod(0o664)
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(tmp_path / "run/ds01/dockerd.sock"))
        (tmp_path / "run/ds01/dockerd.sock").chmod(0o660)
        a = {"root": str(tmp_path), "rules": [{"path": "/run/ds01", "file_mode": "go-w", "recurse": True}]}
        result = run_module(permissions, a)
        assert result["changed_paths"] == [str(tmp_path / "run/ds01/lock")]  # the plain file is still settled
        assert result["sockets"] == [str(tmp_path / "run/ds01/dockerd.sock")]
        assert mode(tmp_path / "run/ds01/dockerd.sock") == 0o660
        assert mode(tmp_path / "run/ds01/lock") == 0o644
        assert not run_module(permissions, a)["changed"]
    finally:
        listener.close()


def test_changed_paths_capped_at_50(run_module, tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(70):
        (tmp_path / "d" / f"f{i:02}").write_text("")
        (tmp_path / "d" / f"f{i:02}").chmod(0o600)
    result = run_module(
        permissions, {"root": str(tmp_path), "rules": [{"path": "/d", "file_mode": "0644", "recurse": True}]}
    )
    assert result["changed_count"] == 70 and len(result["changed_paths"]) == 50


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"path": "etc/ds01"}, "not absolute"),
        ({"path": "/etc/ds01", "dir_mode": "rwxr-xr-x"}, "neither octal nor symbolic"),
        ({"path": "/etc/ds01/resource-limits.yaml", "state": "directory"}, "is not a directory"),
    ],
)
def test_bad_rules_fail(run_module, tree, rule, message):
    result = run_module(permissions, {"root": str(tree), "rules": [rule]}, fails=True)
    assert message in result["msg"]
