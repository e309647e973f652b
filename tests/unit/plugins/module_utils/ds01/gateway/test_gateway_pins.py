"""gateway/pins.py: the pure parts (plans) and the safe open, on a real file system."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import pins


def test_a_create_plan_replaces_every_host_path_and_keeps_volumes():
    body = {
        "Image": "x",
        "HostConfig": {
            "Binds": ["/home/a/p:/w:ro,z", "named:/v", "/home/a/q:/q"],
            "Mounts": [{"Type": "bind", "Source": "/home/a/m", "Target": "/m"}, {"Type": "volume", "Source": "v"}],
        },
    }
    plan = pins.plan_create(body)
    pins.finish_create(body, "/run/ds01", plan)
    base = f"/run/ds01/gateway/pins/{plan['token']}"
    assert body["HostConfig"]["Binds"] == [f"{base}/0:/w:ro,z", "named:/v", f"{base}/1:/q"]
    assert body["HostConfig"]["Mounts"][0]["Source"] == f"{base}/2"
    assert body["HostConfig"]["Mounts"][1] == {"Type": "volume", "Source": "v"}
    assert [s["source"] for s in plan["sources"]] == ["/home/a/p", "/home/a/q", "/home/a/m"]
    assert [s["readonly"] for s in plan["sources"]] == [True, False, False]
    assert pins.plan_of(body["Labels"]) == plan


def test_no_host_path_no_plan():
    body = {"Image": "x", "HostConfig": {"Binds": ["named:/v"]}}
    assert pins.plan_create(body) is None
    assert "Labels" not in body


@pytest.mark.parametrize(
    "label",
    ["", "not json", json.dumps({"token": "../../etc", "sources": []}), json.dumps({"token": "a", "sources": [1]})],
)
def test_a_malformed_label_is_no_plan(label):
    assert pins.plan_of({pins.LABEL: label}) is None


def test_the_safe_open_refuses_a_symlink_anywhere(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(pins.PinError, match="symbolic link"):
        pins.open_dir_safely(str(tmp_path / "link" / "sub"), os.getuid(), os.getgid())
    fd = pins.open_dir_safely(str(real), os.getuid(), os.getgid())
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(real)
    finally:
        os.close(fd)


def test_a_missing_source_is_created_as_the_user(tmp_path):
    fd = pins.open_dir_safely(str(tmp_path / "new" / "deeper"), 4321, 4322)
    try:
        for path in (tmp_path / "new", tmp_path / "new" / "deeper"):
            info = os.stat(path)
            assert (info.st_uid, info.st_gid) == (4321, 4322)
    finally:
        os.close(fd)


def test_dotdot_is_refused(tmp_path):
    with pytest.raises(pins.PinError, match=r"'\.\.'"):
        pins.open_dir_safely(f"{tmp_path}/a/../b", os.getuid(), os.getgid())


def test_pins_left_mounted_are_unmounted_at_start(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    plan = {"token": "t0", "sources": [{"source": str(source), "readonly": False}]}
    pinned = pins.Pinned(plan, str(tmp_path / "run"), lambda *_a: None, os.getuid(), os.getgid()).__enter__()
    target = tmp_path / "run" / "gateway" / "pins" / "t0" / "0"
    try:
        assert (target / "f").read_text() == "x"  # mounted: the checked directory
        pinned.mounted = []  # a gateway that died before unmounting
        assert pins.unmount_all(str(tmp_path / "run")) == 1
        assert list(target.iterdir()) == []
    finally:
        pins.unmount_all(str(tmp_path / "run"))
