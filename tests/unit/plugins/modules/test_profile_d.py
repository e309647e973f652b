"""ds01.infra.profile_d through the AnsibleModule harness."""

from __future__ import annotations

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import profile
from ansible_collections.ds01.infra.plugins.modules import profile_d


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "profile.d"
    d.mkdir()
    return d


def test_check_apply_idempotent(run_module, dest):
    check = run_module(profile_d, {"dest_dir": str(dest)}, check=True, diff=True)
    assert check["changed"]
    assert sorted(check["created"]) == sorted(str(dest / n) for n in profile.ALL_SCRIPTS)
    assert list(dest.iterdir()) == []
    assert all(d["before"] == "" and profile.MARKER in d["after"] for d in check["diff"])

    applied = run_module(profile_d, {"dest_dir": str(dest)})
    assert applied["changed"]
    for name in profile.ALL_SCRIPTS:
        assert (dest / name).stat().st_mode & 0o777 == 0o644
    assert 'CUDA_VISIBLE_DEVICES=""' in (dest / profile.DETERRENT_SCRIPT).read_text()

    again = run_module(profile_d, {"dest_dir": str(dest)})
    assert not again["changed"]


def test_greeting_off_removes_only_our_greeting(run_module, dest):
    run_module(profile_d, {"dest_dir": str(dest)})
    (dest / "other.sh").write_text("echo hi\n")
    result = run_module(profile_d, {"dest_dir": str(dest), "greeting": False}, diff=True)
    assert result["removed"] == [str(dest / profile.GREETING_SCRIPT)]
    assert not (dest / profile.GREETING_SCRIPT).exists() and (dest / "other.sh").exists()


def test_absent_leaves_foreign_file_of_the_same_name(run_module, dest):
    run_module(profile_d, {"dest_dir": str(dest)})
    (dest / profile.PATH_SCRIPT).write_text("# written by hand\n")
    result = run_module(profile_d, {"dest_dir": str(dest), "state": "absent"})
    assert sorted(result["removed"]) == sorted(
        str(dest / n) for n in (profile.DETERRENT_SCRIPT, profile.GREETING_SCRIPT)
    )
    assert (dest / profile.PATH_SCRIPT).read_text() == "# written by hand\n"


def test_mode_drift_is_repaired(run_module, dest):
    run_module(profile_d, {"dest_dir": str(dest)})
    (dest / profile.PATH_SCRIPT).chmod(0o600)
    check = run_module(profile_d, {"dest_dir": str(dest)}, check=True)
    assert check["changed"] and (dest / profile.PATH_SCRIPT).stat().st_mode & 0o777 == 0o600
    result = run_module(profile_d, {"dest_dir": str(dest)})
    assert result["changed"] and (dest / profile.PATH_SCRIPT).stat().st_mode & 0o777 == 0o644


def test_shell_rejection_installs_nothing(run_module, dest, monkeypatch):
    calls = []

    def fake_run_command(self, argv, **kwargs):
        calls.append((argv, kwargs))
        return (2, "", "syntax error") if argv[0].endswith("dash") else (0, "", "")

    monkeypatch.setattr(
        profile_d.AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: "/bin/" + name
    )
    monkeypatch.setattr(profile_d.AnsibleModule, "run_command", fake_run_command)
    result = run_module(profile_d, {"dest_dir": str(dest)}, fails=True)
    assert "nothing was installed" in result["msg"] and result["stderr"] == "syntax error"
    assert [c[0][:2] for c in calls] == [["/bin/bash", "-n"], ["/bin/dash", "-n"]]
    assert all(c[1]["environ_update"] == {"LC_ALL": "C"} for c in calls)
    assert list(dest.iterdir()) == []  # temp file cleaned up, nothing installed


def test_missing_dest_dir_fails(run_module, tmp_path):
    result = run_module(profile_d, {"dest_dir": str(tmp_path / "nope")}, fails=True)
    assert "does not exist" in result["msg"]
