"""ds01.infra.gpu_access: the pure parts table-driven, the module through the harness."""

from __future__ import annotations

import pytest

from ansible_collections.ds01.infra.plugins.modules import gpu_access

GROUP = "root:x:0:\nvideo:x:44:mallory,alice\nusers:x:100:bob\n"


@pytest.mark.parametrize(
    ("current", "wanted", "exclusive", "expected"),
    [
        ([], ["a", "b"], False, (["a", "b"], ["a", "b"], [])),
        (["m", "a"], ["a", "b"], False, (["m", "a", "b"], ["b"], [])),
        (["m", "a"], ["a", "b"], True, (["a", "b"], ["b"], ["m"])),
        (["a", "b"], ["b", "a", "a"], True, (["a", "b"], [], [])),
        (["m"], [], True, ([], [], ["m"])),
        (["m"], [], False, (["m"], [], [])),
    ],
)
def test_reconcile(current, wanted, exclusive, expected):
    assert gpu_access.reconcile(current, wanted, exclusive) == expected


@pytest.mark.parametrize(
    ("text", "group", "members"),
    [
        (GROUP, "video", ["mallory", "alice"]),
        (GROUP, "root", []),
        (GROUP, "vid", None),
        ("video:x:44\n", "video", None),  # a malformed line is no group
    ],
)
def test_parse_group_members(text, group, members):
    assert gpu_access.parse_group_members(text, group) == members


def test_replace_group_members_keeps_every_other_byte():
    out = gpu_access.replace_group_members(GROUP + "# trailing comment\n", "video", ["alice", "bob"])
    assert out == "root:x:0:\nvideo:x:44:alice,bob\nusers:x:100:bob\n# trailing comment\n"
    with pytest.raises(KeyError):
        gpu_access.replace_group_members(GROUP, "render", [])


@pytest.mark.parametrize(("mode", "decimal", "udev"), [(0o666, "438", '"0666"'), (0o660, "432", '"0660"')])
def test_renderers(mode, decimal, udev):
    assert f"NVreg_DeviceFileMode={decimal}\n" in gpu_access.render_modprobe(mode)
    rule = gpu_access.render_udev_rule(mode)
    assert f"MODE={udev}" in rule and 'KERNEL=="nvidia[0-9]*|nvidiactl|' in rule


@pytest.fixture
def root(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "group").write_text(GROUP)
    (tmp_path / "etc" / "passwd").write_text(
        "".join(f"{u}:x:{i}:{i}::/home/{u}:/bin/sh\n" for i, u in enumerate(["root", "alice", "bob", "mallory"]))
    )
    return tmp_path


def test_sandbox_check_apply_idempotent(run_module, root):
    a = {"root": str(root), "video_members": ["alice", "bob"], "exclusive": True, "exempt_users": ["bob"]}
    check = run_module(gpu_access, a, check=True, diff=True)
    assert check["changed"] and check["members_added"] == ["bob"] and check["members_removed"] == ["mallory"]
    assert (root / "etc" / "group").read_text() == GROUP and not (root / "etc" / "udev").exists()
    assert {"before": {"video": ["mallory", "alice"]}, "after": {"video": ["alice", "bob"]}}.items() <= check["diff"][
        -1
    ].items()

    applied = run_module(gpu_access, a)
    assert applied["changed"] and not applied["udev_reloaded"]
    assert "video:x:44:alice,bob\n" in (root / "etc" / "group").read_text()
    assert (root / "etc/ds01/gpu-exempt-users").read_text().splitlines()[-1] == "bob"
    assert (root / "etc/modprobe.d/ds01-nvidia.conf").stat().st_mode & 0o777 == 0o644

    again = run_module(gpu_access, a)
    assert not again["changed"]


def test_unknown_login_fails(run_module, root):
    result = run_module(gpu_access, {"root": str(root), "video_members": ["alice", "nobody"]}, fails=True)
    assert "nobody" in result["msg"]


def test_missing_group_fails(run_module, root):
    result = run_module(
        gpu_access, {"root": str(root), "video_members": ["alice"], "video_group": "render"}, fails=True
    )
    assert "render does not exist" in result["msg"]


def test_bad_mode_fails(run_module, root):
    result = run_module(gpu_access, {"root": str(root), "device_mode": "rw-rw-rw-"}, fails=True)
    assert "octal" in result["msg"]


def test_real_root_uses_gpasswd_and_udevadm(run_module, tmp_path, monkeypatch):
    """root=/ with the file paths pointed at a temp dir: commands mocked, argv asserted."""
    group = tmp_path / "group"
    group.write_text(GROUP)
    calls = []

    def fake_run_command(self, argv, **kwargs):
        calls.append(argv)
        assert kwargs["environ_update"] == {"LC_ALL": "C"}
        return 0, "", ""

    monkeypatch.setattr(gpu_access.AnsibleModule, "run_command", fake_run_command)
    monkeypatch.setattr(
        gpu_access.AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: "/usr/bin/" + name
    )
    monkeypatch.setattr(gpu_access, "missing_logins", lambda root, logins: [])
    monkeypatch.setattr(gpu_access, "live_device_changes", lambda mode: [])
    real_under = gpu_access.under
    monkeypatch.setattr(
        gpu_access, "under", lambda root, path: str(group) if path == "/etc/group" else real_under(root, path)
    )
    a = {
        "udev_rules_file": str(tmp_path / "99.rules"),
        "modprobe_file": str(tmp_path / "nv.conf"),
        "video_members": ["alice", "bob"],
        "exclusive": True,
    }
    result = run_module(gpu_access, a)
    assert result["udev_reloaded"]
    assert calls == [
        ["/usr/bin/gpasswd", "-M", "alice,bob", "video"],
        ["/usr/bin/udevadm", "control", "--reload"],
        ["/usr/bin/udevadm", "trigger", "--action=change", "--sysname-match=nvidia*"],
    ]

    calls.clear()
    result = run_module(gpu_access, dict(a, exclusive=False, video_members=["carol"]))
    assert calls == [["/usr/bin/gpasswd", "-a", "carol", "video"]]  # files unchanged: no udev reload
