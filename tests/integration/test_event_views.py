"""``ds01 events`` as two real Unix users: each sees only their own events, from the view the exporter keeps,
and neither can open the other's view or the log.

Users ``evu1`` and ``evu2`` are made with ``useradd`` and removed afterwards. Root writes the events with the
real writer, a real ``ds01 exporter serve`` (root) refreshes the views; the users run ``ds01`` as themselves with
Debian's ``/usr/bin/python3 -m ds01`` over a copy of the core (an interpreter they can execute).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import event_views, events, notify

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "plugins" / "module_utils" / "ds01"
PYTHON = "/usr/bin/python3"
USERS = ("evu1", "evu2")
LIMITS = """
defaults:
  max_gpu_equivalents: 1
default_group: student
groups:
  student:
    members: [evu1, evu2]
paths: {state_dir: state, log_dir: log, run_dir: run}
"""


@pytest.fixture(scope="module")
def accounts():
    assert os.geteuid() == 0, "make test runs as root: these tests create Unix users"
    for name in USERS:
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
    yield USERS
    for name in USERS:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


@pytest.fixture
def sandbox(tmp_path, accounts):
    for path in (tmp_path, *tmp_path.parents):
        if str(path).startswith("/tmp/"):
            os.chmod(path, 0o755)
    for sub in ("state", "log", "run"):
        (tmp_path / sub).mkdir(mode=0o755)
    (tmp_path / "resource-limits.yaml").write_text(LIMITS)
    shutil.copytree(CORE, tmp_path / "pkg" / "ds01", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def as_user(user, *argv):
    home = pwd.getpwnam(user).pw_dir
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", "-i", f"HOME={home}", "PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )


def ds01_as(sandbox, user, *args):
    config = str(sandbox / "resource-limits.yaml")
    return as_user(user, f"PYTHONPATH={sandbox / 'pkg'}", PYTHON, "-m", "ds01", *args, "--config", config)


def refresh_with_exporter(sandbox):
    """A real ``ds01 exporter serve`` (root, no Docker reachable) until it has refreshed the views; then stopped."""
    stamp = sandbox / "state" / event_views.VIEWS_DIR / event_views.REFRESHED_NAME
    if stamp.exists():
        stamp.unlink()
    env = {**os.environ, "DOCKER_HOST": f"unix://{sandbox}/no-docker.sock", "DS01_GPU_TOPOLOGY": ""}
    argv = [sys.executable, "-m", "ds01", "--config", str(sandbox / "resource-limits.yaml")]
    proc = subprocess.Popen(
        [*argv, "exporter", "serve", "--port", "0", "--cache-s", "1"],
        env=env,
        cwd=str(REPO / "plugins" / "module_utils"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _attempt in range(300):
            if stamp.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert stamp.exists(), err


def test_each_user_sees_only_their_own_events_and_nothing_else(sandbox):
    log_path = sandbox / "log" / events.LOG_NAME
    writer = events.EventLog(str(log_path))
    assert writer.write("gpu.allocate", user="evu1", source="gateway", container="evu1-a", slots=["0"])
    assert writer.write("gpu.allocate", user="evu2", source="gateway", container="evu2-secret", slots=["1"])
    assert writer.write("container.remove", user="evu1", source="lifecycle", container="evu1-a")
    assert writer.write("auth.denied", user="../evu2", source="gateway")  # not a login: no view, no escape
    refresh_with_exporter(sandbox)

    seen = {}
    for user in USERS:
        proc = ds01_as(sandbox, user, "events", "--json")
        assert proc.returncode == 0, proc.stderr
        assert f"showing your own events ({user}) as of the last refresh" in proc.stderr
        data = json.loads(proc.stdout)
        assert {e["user"] for e in data["events"]} == {user}
        assert data["view"]["user"] == user and data["count"] == len(data["events"])
        seen[user] = [(e["event_type"], e["details"]["container"]) for e in data["events"]]
    assert seen["evu1"] == [("gpu.allocate", "evu1-a"), ("container.remove", "evu1-a")]
    assert seen["evu2"] == [("gpu.allocate", "evu2-secret")]

    # the same filters as on the log; asking for someone else is refused
    only = ds01_as(sandbox, "evu1", "events", "--type", "container", "--json")
    assert [e["event_type"] for e in json.loads(only.stdout)["events"]] == ["container.remove"]
    other = ds01_as(sandbox, "evu1", "events", "--user", "evu2")
    assert other.returncode == 1 and "only admins may see another user's events" in other.stderr
    assert "evu2-secret" not in other.stdout + other.stderr

    # root-side: modes, owners and ACLs of the directory, the views and the log
    directory = sandbox / "state" / event_views.VIEWS_DIR
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o711 and os.stat(directory).st_uid == 0
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == ["evu1.jsonl", "evu2.jsonl"]
    assert stat.S_IMODE(os.stat(directory / event_views.STATE_NAME).st_mode) == 0o600
    for user in USERS:
        view = directory / f"{user}.jsonl"
        st = os.stat(view)
        assert st.st_uid == 0 and st.st_gid == 0 and stat.S_IMODE(st.st_mode) == 0o640
        assert os.getxattr(view, "system.posix_acl_access") == notify.reader_acl(pwd.getpwnam(user).pw_uid)
    log_st = os.stat(log_path)
    assert log_st.st_uid == 0 and stat.S_IMODE(log_st.st_mode) & 0o044 == 0o040 and log_st.st_gid == 0

    # an actual open() as the other user fails, for the view, the log and the state file; listing the dir too
    probe = "import sys\ntry:\n    open(sys.argv[1], 'rb').read()\nexcept PermissionError:\n    print('EACCES')\n"
    for user, target in (
        ("evu2", directory / "evu1.jsonl"),
        ("evu1", directory / "evu2.jsonl"),
        ("evu1", log_path),
        ("evu2", log_path),
        ("evu1", directory / event_views.STATE_NAME),
    ):
        proc = as_user(user, PYTHON, "-c", probe, str(target))
        assert proc.stdout.strip() == "EACCES", (user, target, proc.stdout, proc.stderr)
    listing = as_user("evu1", "ls", str(directory))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr

    # a new event reaches its user at the next refresh, once
    assert writer.write("quota.alert", user="evu2", source="alerts", measure="gpu")
    refresh_with_exporter(sandbox)
    later = json.loads(ds01_as(sandbox, "evu2", "events", "--json").stdout)
    assert [e["event_type"] for e in later["events"]] == ["gpu.allocate", "quota.alert"]
    assert stat.S_IMODE(os.stat(log_path).st_mode) & 0o004 == 0  # the log itself stays unreadable to users
