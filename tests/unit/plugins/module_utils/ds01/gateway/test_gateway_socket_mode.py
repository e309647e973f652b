"""``gateway.socket_mode`` and the system-account rule: who may use the gateway's socket."""

from __future__ import annotations

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, identity


def load(tmp_path, extra: str):
    path = tmp_path / "resource-limits.yaml"
    path.write_text("default_group: student\ngroups:\n  student: {}\n" + extra)
    return config.load_config(str(path))


@pytest.mark.parametrize(
    ("written", "mode"),
    [
        ("", "0666"),
        ('  socket_mode: "0660"\n', "0660"),
        ("  socket_mode: 0660\n", "0660"),
        ("  socket_mode: 0666\n", "0666"),
    ],
)
def test_socket_mode_defaults_to_every_login_and_reads_yaml_octal(tmp_path, written, mode):
    cfg = load(tmp_path, "gateway:\n" + (written or "  socket_group: docker\n"))
    assert cfg.sections["gateway"]["socket_mode"] == mode


@pytest.mark.parametrize("written", ['"0777"', "0777", '"rw"', "true"])
def test_other_socket_modes_are_refused_with_the_choices(tmp_path, written):
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, f"gateway:\n  socket_mode: {written}\n")
    assert "gateway.socket_mode" in err.value.render() and '"0660" (socket_group only)' in err.value.render()


@pytest.mark.parametrize(
    ("uid", "system"),
    [(0, False), (1, True), (33, True), (999, True), (1000, False), (60000, False), (65534, True), (2**32 - 2, True)],
)
def test_system_accounts(uid, system):
    assert identity.system_account(uid) is system
