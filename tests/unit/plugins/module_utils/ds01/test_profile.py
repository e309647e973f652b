"""The profile.d renderer, the exempt-users file and the grant format (their shell side: test_profile_shells)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import profile

NOW = 1_800_000_000
UTC = dt.timezone.utc


@pytest.mark.parametrize(
    ("text", "active"),
    [
        ('{"type": "permanent", "expires_epoch": null}', True),
        ('{"type":"permanent"}', True),
        (f'{{"type": "temporary", "expires_epoch": {NOW + 60}}}', True),
        (f'{{"type": "temporary", "expires_epoch": {NOW}}}', False),  # expires at this second
        (f'{{"type": "temporary", "expires_epoch": {NOW - 1}}}', False),
        ('{"type": "temporary", "expires_at": "2099-01-01T00:00:00Z"}', False),  # no epoch: nothing to compare
        (f'{{"type": "temporary", "expires_epoch": "{NOW + 60}"}}', False),  # a string is not an epoch
        (f'{{"type": "temporary",\n "expires_epoch": {NOW + 9},\n "expires_epoch": {NOW + 9}}}', False),
        ("", False),
        ("not json at all", False),
    ],
)
def test_grant_active(text, active):
    assert profile.grant_active(text, NOW) is active


def test_render_grant_temporary():
    granted = dt.datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    text = profile.render_grant("alice", "root", granted, granted + dt.timedelta(hours=24))
    doc = json.loads(text)
    assert doc == {
        "user": "alice",
        "type": "temporary",
        "granted_by": "root",
        "granted_at": "2027-01-15T08:00:00Z",
        "expires_at": "2027-01-16T08:00:00Z",
        "expires_epoch": int(dt.datetime(2027, 1, 16, 8, 0, tzinfo=UTC).timestamp()),
    }
    assert profile.grant_active(text, doc["expires_epoch"] - 1)
    assert not profile.grant_active(text, doc["expires_epoch"])


def test_render_grant_permanent():
    text = profile.render_grant("bob", "admin", dt.datetime(2027, 1, 1, tzinfo=UTC), None)
    doc = json.loads(text)
    assert (doc["type"], doc["expires_at"], doc["expires_epoch"]) == ("permanent", None, None)
    assert profile.grant_active(text, 4_000_000_000)


@pytest.mark.parametrize(
    ("logins", "lines"),
    [
        ([], []),
        (["bob", "alice", "bob"], ["alice", "bob"]),
        (["carol.smith@hertie-school.lan"], ["carol.smith@hertie-school.lan"]),
    ],
)
def test_render_exempt_users(logins, lines):
    text = profile.render_exempt_users(logins)
    assert text.endswith("\n")
    assert [line for line in text.splitlines() if not line.startswith("#")] == lines


@pytest.mark.parametrize("login", ["", "#admin", "two words", "tab\tname"])
def test_render_exempt_users_refuses_unwritable_logins(login):
    with pytest.raises(ValueError, match="cannot be written"):
        profile.render_exempt_users([login])


@pytest.mark.parametrize("greeting", [True, False])
def test_render_scripts_set(greeting):
    scripts = profile.render_scripts(
        "/etc/ds01/gpu-exempt-users", "/var/lib/ds01/bare-metal-grants", "/usr/local/bin/ds01", greeting
    )
    expected = {profile.PATH_SCRIPT, profile.DETERRENT_SCRIPT} | ({profile.GREETING_SCRIPT} if greeting else set())
    assert set(scripts) == expected
    assert all(profile.is_generated(text) for text in scripts.values())


SHELLS = [s for s in ("bash", "dash") if shutil.which(s)]
ODD = "/tmp/it's a dir/$HOME"  # quotes, spaces and a dollar in the configured paths


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    "paths",
    [
        ("/etc/ds01/gpu-exempt-users", "/var/lib/ds01/bare-metal-grants", "/usr/local/bin/ds01"),
        (ODD + "/x", ODD, ODD + "/bin/ds01"),
    ],
)
def test_scripts_parse(shell, paths, tmp_path):
    for name, text in profile.render_scripts(*paths).items():
        script = tmp_path / name
        script.write_text(text)
        proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (name, proc.stderr)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("path_before", "path_after"),
    [
        ("/usr/bin:/bin", "/usr/local/bin:/usr/bin:/bin"),
        ("/usr/local/bin:/usr/bin", "/usr/local/bin:/usr/bin"),
        ("/usr/bin:/usr/local/bin", "/usr/bin:/usr/local/bin"),
        ("/usr/local/bin/x:/bin", "/usr/local/bin:/usr/local/bin/x:/bin"),
    ],
)
def test_path_script(shell, path_before, path_after, tmp_path):
    script = tmp_path / "p.sh"
    script.write_text(profile.render_path_script("/usr/local/bin"))
    out = subprocess.run(
        [shutil.which(shell), "-c", f'. "{script}"; printf %s "$PATH"'],
        env={"PATH": path_before},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == path_after


@pytest.mark.parametrize(
    "path",
    ["relative/lib.so", "/a:b/lib.so", "/a b/lib.so", "/x/$(id).so", "/x/lib.so\n/y", "/x/'q'.so"],
)
def test_cuda_notice_path_that_ld_audit_or_sh_would_split_is_refused(path):
    with pytest.raises(ValueError, match="CUDA notice library path"):
        profile.render_scripts("/e", "/g", "/usr/local/bin/ds01", cuda_notice=path)


def test_cuda_notice_goes_into_ld_audit_of_hidden_logins_only():
    lib = "/usr/local/lib/ds01/libds01-cuda-notice.so"
    script = profile.render_deterrent_script("/e", "/g", banner=False, cuda_notice=lib)
    hidden_branch = script.split('if [ "$__ds01_hide" = 1 ]; then', 1)[1].split("\nfi\n", 1)[0]
    assert f'LD_AUDIT="${{LD_AUDIT:+$LD_AUDIT:}}{lib}"; export LD_AUDIT' in hidden_branch
    assert "LD_AUDIT" not in script.split('if [ "$__ds01_hide" = 1 ]; then', 1)[0]
    assert "LD_AUDIT" not in profile.render_deterrent_script("/e", "/g", banner=False)
