"""The login greeting without Python: the exporter pre-renders it, real ``bash -l -i`` logins print it.

Users ``grt1`` (a listed student with notices), ``grt2`` (another student) and ``grt3`` (not listed: the
default group) are created with ``useradd -m`` and removed afterwards. The profile.d scripts are rendered into
a temp dir and sourced from each user's ``~/.bash_profile`` the way ``/etc/profile`` does. The greetings are
written by a real ``ds01 exporter serve`` (root, the checkout's venv) into root's state directory; the users run
``ds01 limits`` as themselves with Debian's ``/usr/bin/python3 -m ds01`` over a copy of the core.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config as config_mod
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import greetings, notify, profile
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import observe as ob

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "plugins" / "module_utils" / "ds01"
PYTHON = "/usr/bin/python3"
USERS = ("grt1", "grt2", "grt3")
LIMITS = """
defaults:
  max_gpu_equivalents: 1
  max_containers_per_user: 3
default_group: student
groups:
  student:
    members: [grt1, grt2]
  guest:
    max_gpu_equivalents: 0.5
paths: {state_dir: state, log_dir: log, run_dir: run}
"""
SOURCE_LOOP = 'for i in {dir}/*.sh; do if [ -r "$i" ]; then . "$i"; fi; done; unset i\n'


@pytest.fixture(scope="module")
def accounts():
    assert os.geteuid() == 0, "make test runs as root: these tests create Unix users"
    made = []
    for name in USERS:
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
        made.append(name)
    yield USERS
    for name in made:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


@pytest.fixture
def sandbox(tmp_path, accounts):
    """Config, root's state dir, the core copy, the rendered profile.d, each user's ~/.bash_profile."""
    for path in (tmp_path, *tmp_path.parents):
        if str(path).startswith("/tmp/"):
            os.chmod(path, 0o755)
    for sub in ("state", "log", "run", "profile.d"):
        (tmp_path / sub).mkdir(mode=0o755)
    (tmp_path / "resource-limits.yaml").write_text(LIMITS)
    shutil.copytree(CORE, tmp_path / "pkg" / "ds01", ignore=shutil.ignore_patterns("__pycache__"))
    scripts = profile.render_scripts(
        str(tmp_path / "gpu-exempt-users"),
        str(tmp_path / "grants"),
        str(tmp_path / "bin" / "ds01"),
        greeting_dir=str(tmp_path / "state" / greetings.GREETINGS_DIR),
    )
    for name, text in scripts.items():
        (tmp_path / "profile.d" / name).write_text(text)
    for name in USERS:
        home = Path(pwd.getpwnam(name).pw_dir)
        (home / ".bash_profile").write_text(SOURCE_LOOP.format(dir=tmp_path / "profile.d"))
        shutil.chown(home / ".bash_profile", name)
        shutil.rmtree(home / ".local", ignore_errors=True)
    return tmp_path


def login(user, command="echo logged-in", interactive=True):
    """A real login shell of ``user`` (bash -l, interactive with -i), empty environment but HOME/USER/PATH."""
    home = pwd.getpwnam(user).pw_dir
    env = ["env", "-i", f"HOME={home}", f"USER={user}", f"LOGNAME={user}", "PATH=/usr/bin:/bin", "TERM=dumb"]
    flags = ["-l", "-i", "-c"] if interactive else ["-l", "-c"]
    return subprocess.run(
        ["runuser", "-u", user, "--", *env, "/bin/bash", *flags, command],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        cwd="/",
    )


def ds01_as(sandbox, user, *args):
    home = pwd.getpwnam(user).pw_dir
    environ = [f"HOME={home}", "PATH=/usr/bin:/bin", f"PYTHONPATH={sandbox / 'pkg'}", "LC_ALL=C.UTF-8"]
    argv = [PYTHON, "-m", "ds01", *args, "--config", str(sandbox / "resource-limits.yaml")]
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", "-i", *environ, *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )


def spool(sandbox, user, title, at):
    entry = pwd.getpwnam(user)
    record = {"at": at, "level": "WARNING", "title": title, "lines": ["x"], "quota": None, "container": None}
    kept = notify.Spool(notify.spool_dir(str(sandbox / "state"))).append(user, entry, record)
    assert kept is not None


def iso(delta_s):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=delta_s)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_exporter_until_greetings(sandbox):
    """``ds01 exporter serve`` (no Docker reachable) until every user's greeting file exists; then stopped."""
    files = [sandbox / "state" / greetings.GREETINGS_DIR / u for u in USERS]
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
            if all(f.exists() for f in files) or proc.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert all(f.exists() for f in files), err
    return files


def test_exporter_prerenders_and_login_prints_with_notices_until_seen(sandbox):
    spool(sandbox, "grt1", "QUOTA ALMOST REACHED", iso(-3600))
    spool(sandbox, "grt1", "IDLE CONTAINER", iso(-60))
    files = run_exporter_until_greetings(sandbox)

    st = os.stat(files[0])
    assert st.st_uid == 0 and st.st_mode & 0o007 == 0  # root's, nobody else but its user (ACL) reads it
    theirs = subprocess.run(["runuser", "-u", "grt2", "--", "cat", str(files[0])], capture_output=True, check=False)
    assert theirs.returncode != 0 and b"Permission denied" in theirs.stderr

    first = login("grt1")
    assert first.returncode == 0 and first.stdout.splitlines()[-1] == "logged-in"
    lines = first.stdout.splitlines()[:-1]
    assert lines[0].startswith("grt1 (student) | GPU 0/1 gpueq") and "containers 0/3" in lines[0]
    assert lines[1:] == ["2 new notices for you: run `ds01 limits` to read them."]
    assert "Traceback" not in first.stderr

    quiet = login("grt1", interactive=False)  # scripts, `ssh host cmd`: no greeting
    assert quiet.stdout == "logged-in\n"

    shown = ds01_as(sandbox, "grt1", "limits")  # --config after the sub-command
    assert shown.returncode == 0, shown.stderr
    assert "IDLE CONTAINER" in shown.stdout and "QUOTA ALMOST REACHED" in shown.stdout
    again = login("grt1")
    assert [x for x in again.stdout.splitlines() if "notice" in x] == []  # seen: no longer announced

    spool(sandbox, "grt1", "CONTAINER STOPPED", iso(0))
    config = config_mod.load_config(str(sandbox / "resource-limits.yaml"))
    snap = ob.build_snapshot(config, None, persist=False)
    greetings.write_all(config, snap, dt.datetime.now(dt.timezone.utc))
    third = login("grt1")
    assert "1 new notice for you: run `ds01 limits` to read it." in third.stdout.splitlines()

    other = login("grt3")  # not listed: the default group's line, no notices
    assert other.stdout.splitlines()[0].startswith("grt3 (student, default group) | GPU 0/1 gpueq")
    assert len(other.stdout.splitlines()) == 2


def test_stale_or_missing_greeting_prints_nothing(sandbox):
    files = run_exporter_until_greetings(sandbox)
    old = time.time() - (greetings.STALE_MIN + 1) * 60  # the exporter has been down for 16 minutes
    os.utime(files[0], (old, old))
    stale = login("grt1")
    assert stale.returncode == 0 and stale.stdout == "logged-in\n"
    files[1].unlink()
    missing = login("grt2")
    assert missing.returncode == 0 and missing.stdout == "logged-in\n"
    for proc in (stale, missing):  # no tool complains either: only bash's job-control note and the banner
        noise = [x for x in proc.stderr.splitlines() if x not in profile.BANNER and not x.startswith("bash: ")]
        assert noise == []
