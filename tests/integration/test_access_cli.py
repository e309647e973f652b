"""``ds01 access grant/revoke/status/list/sweep`` with real Unix users, judged by what lands on disk.

Users ``acc1``, ``acc2`` (ordinary) and ``accadm`` (an admin through ``access_control.admin_users``, not
root) are created with ``useradd -m`` and removed afterwards. They run the CLI as themselves through
``runuser``, with Debian's ``/usr/bin/python3 -m ds01`` over a copy of the core (the checkout's venv
interpreter lives under /root, which other users cannot execute); root runs the same copy. The state and
log directories are root's, as on a host (``/var/lib/ds01``, ``/var/log/ds01``).

Expiry is decided with ``--now`` (``ds01 access sweep`` and the periodic caller, ``ds01 lifecycle run``),
so no test waits for an hour; one grant of two seconds shows ``status`` reading the real clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "plugins" / "module_utils" / "ds01"
PYTHON = "/usr/bin/python3"
USERS = ("acc1", "acc2", "accadm")
LIMITS = """
defaults:
  max_gpu_equivalents: 1
  max_containers_per_user: 2
default_group: student
groups:
  student:
    members: [acc1, acc2, accadm]
bare_metal_access: {default_grant_duration_h: 24}
access_control: {admin_users: [accadm]}
paths: {state_dir: state, log_dir: log, run_dir: run}
"""


@pytest.fixture(scope="module")
def accounts():
    assert os.geteuid() == 0, "make test runs as root: these tests create Unix users"
    made = []
    for name in USERS:
        if subprocess.run(["id", name], capture_output=True, check=False).returncode != 0:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
            made.append(name)
    yield USERS
    for name in made:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


@pytest.fixture
def sandbox(tmp_path, accounts):
    """A config in ``tmp_path`` readable by everyone, root's state/log/run dirs, and a copy of the core."""
    for path in (tmp_path, *tmp_path.parents):
        if str(path).startswith("/tmp/"):
            os.chmod(path, 0o755)
    for sub in ("state", "log", "run"):
        (tmp_path / sub).mkdir(mode=0o755)
    (tmp_path / "resource-limits.yaml").write_text(LIMITS)
    shutil.copytree(CORE, tmp_path / "pkg" / "ds01", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def ds01(sandbox, *args, user=None, env=None):
    """``ds01 --config … ARGS`` as ``user`` (root when None); returns the CompletedProcess."""
    argv = [PYTHON, "-m", "ds01", "--config", str(sandbox / "resource-limits.yaml"), *args]
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(sandbox / "pkg"), "LC_ALL": "C.UTF-8", **(env or {})}
    prefix = ["runuser", "-u", user, "--"] if user else []
    environ_args = ["env", "-i", *(f"{k}={v}" for k, v in environ.items())]
    return subprocess.run([*prefix, *environ_args, *argv], capture_output=True, text=True, check=False, cwd="/")


def events(sandbox):
    path = sandbox / "log" / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def snapshot(root):
    """Every file under ``root`` but the code copy: content hash and mtime (what a refused command must not touch)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if "pkg" in path.relative_to(root).parts:
            continue
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path)] = (digest, st.st_mtime_ns, st.st_mode)
    return out


def iso(epoch):
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_admin_grants_user_sees_it_others_cannot_touch_it_revoke_removes_it(sandbox):
    grant_file = sandbox / "state" / "bare-metal-grants" / "acc1.json"
    before = time.time()
    done = ds01(sandbox, "access", "grant", "acc1", "--for", "2h")
    assert done.returncode == 0, done.stderr
    assert "acc1 may use GPUs outside containers until" in done.stdout
    grant = json.loads(grant_file.read_text())
    assert grant["user"] == "acc1" and grant["granted_by"] == "root" and grant["type"] == "temporary"
    assert before + 7200 - 2 <= grant["expires_epoch"] <= time.time() + 7200 + 1
    assert oct(grant_file.stat().st_mode & 0o777) == "0o644"
    assert oct(grant_file.parent.stat().st_mode & 0o777) == "0o711"
    [granted] = [e for e in events(sandbox) if e["event_type"] == "access.grant"]
    assert granted["user"] == "acc1" and granted["details"]["granted_by"] == "root"
    assert granted["details"]["expires_at"] == grant["expires_at"]

    # the user sees their grant, as themselves
    mine = ds01(sandbox, "access", "status", "--json", user="acc1")
    assert mine.returncode == 0, mine.stderr
    status = json.loads(mine.stdout)
    assert status["user"] == "acc1" and [g["active"] for g in status["grants"]] == [True]
    assert status["grants"][0]["expires_epoch"] == grant["expires_epoch"]
    text = ds01(sandbox, "access", "status", user="acc1").stdout
    assert f"acc1 holds a bare-metal GPU grant (until {grant['expires_at']})" in text
    nosy = ds01(sandbox, "access", "status", "acc2", user="acc1")
    assert nosy.returncode == 1 and "you can only see your own grant" in nosy.stderr

    # a non-admin can neither grant nor revoke, and nothing on disk moves
    frozen = snapshot(sandbox)
    for argv in (("grant", "acc2"), ("grant", "acc1", "--permanent"), ("revoke", "acc1"), ("list",)):
        refused = ds01(sandbox, "access", *argv, user="acc2")
        assert refused.returncode == 1, (argv, refused.stdout, refused.stderr)
        assert "only admins (root or the ds01-admin group)" in refused.stderr and "ask one of them" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert snapshot(sandbox) == frozen

    # an admin who is not root can look at anyone's grant, but changing one needs root (sudo): said, not crashed
    theirs = ds01(sandbox, "access", "status", "acc1", "--json", user="accadm")
    assert theirs.returncode == 0 and json.loads(theirs.stdout)["grants"][0]["user"] == "acc1"
    unprivileged = ds01(sandbox, "access", "grant", "acc2", user="accadm")
    assert unprivileged.returncode == 3, unprivileged.stderr
    assert "run the command as root (`sudo ds01 access ...`). Nothing was changed." in unprivileged.stderr
    assert "internal error" not in unprivileged.stderr
    assert snapshot(sandbox) == frozen

    listing = ds01(sandbox, "access", "list", "--json")
    assert [(g["user"], g["active"]) for g in json.loads(listing.stdout)["grants"]] == [("acc1", True)]

    revoked = ds01(sandbox, "access", "revoke", "acc1")
    assert revoked.returncode == 0 and "acc1's grant is revoked" in revoked.stdout
    assert not grant_file.exists()
    [gone] = [e for e in events(sandbox) if e["event_type"] == "access.revoke"]
    assert gone["user"] == "acc1" and gone["details"] == {"revoked_by": "root", "reason": "manual"}
    after = json.loads(ds01(sandbox, "access", "status", "--json", user="acc1").stdout)
    assert after["grants"] == []
    again = ds01(sandbox, "access", "revoke", "acc1")
    assert again.returncode == 0 and "had no grant; nothing to revoke" in again.stdout


def test_expiry_warns_an_hour_ahead_once_and_records_the_end_once(sandbox):
    assert ds01(sandbox, "access", "grant", "acc1", "--for", "90m").returncode == 0
    grant_path = sandbox / "state" / "bare-metal-grants" / "acc1.json"
    end = json.loads(grant_path.read_text())["expires_epoch"]
    record = sandbox / "state" / "access-notices" / "acc1.json"

    def expiry_events():
        return [e for e in events(sandbox) if e["event_type"] in ("access.expiry_warning", "access.expire")]

    early = ds01(sandbox, "access", "sweep", "--now", iso(end - 7200), "--json")
    assert early.returncode == 0, early.stderr
    assert json.loads(early.stdout)["actions"] == [] and expiry_events() == []

    dry = json.loads(ds01(sandbox, "access", "sweep", "--now", iso(end - 1800), "--dry-run", "--json").stdout)
    assert [a["kind"] for a in dry["actions"]] == ["warn"]
    assert expiry_events() == [] and not record.exists()

    warned = ds01(sandbox, "access", "sweep", "--now", iso(end - 1800), "--json")
    assert warned.returncode == 0, warned.stderr
    [warning] = expiry_events()
    assert warning["event_type"] == "access.expiry_warning" and warning["user"] == "acc1"
    assert warning["details"]["expires_at"] == iso(end) and warning["details"]["granted_by"] == "root"
    message = warning["details"]["message"]
    assert message.startswith("Your bare-metal GPU access ends at ") and "(in 30 minutes)" in message
    assert "Ask an admin to run `ds01 access grant`" in message
    assert json.loads(record.read_text()) == {"expires_epoch": end, "warned": True, "expired": False}
    # the user is told where they will look: their notice spool (shown by the next login greeting)
    spooled = [json.loads(line) for line in (sandbox / "state" / "notices" / "acc1.jsonl").read_text().splitlines()]
    assert [n["lines"] for n in spooled] == [[message]]

    later = ds01(sandbox, "access", "sweep", "--now", iso(end - 1500), "--json")
    assert json.loads(later.stdout)["actions"] == [] and len(expiry_events()) == 1

    # the periodic caller: the lifecycle timer's `ds01 lifecycle run`, which does this before it needs Docker
    # (here Docker is unreachable on purpose, so the sweep cannot act on the shared engine's containers)
    periodic = ds01(
        sandbox, "lifecycle", "run", "--now", iso(end + 60), env={"DOCKER_HOST": "unix:///nonexistent.sock"}
    )
    assert periodic.returncode == 3 and "cannot reach the Docker engine" in periodic.stderr
    warning_again, ended = expiry_events()
    assert warning_again == warning
    assert ended["event_type"] == "access.expire" and ended["user"] == "acc1" and ended["source"] == "lifecycle"
    assert ended["details"]["message"] == (
        f"Your bare-metal GPU access ended at {dt.datetime.fromtimestamp(end, dt.timezone.utc):%Y-%m-%d %H:%M} UTC: "
        "new login shells hide the GPUs. Use a container (`docker run --gpus 1 ...`), "
        "or ask an admin to grant access again."
    )
    assert json.loads(record.read_text()) == {"expires_epoch": end, "warned": True, "expired": True}
    assert grant_path.exists(), "an ended grant stays, so `status` can say when it ended"

    quiet = ds01(sandbox, "access", "sweep", "--now", iso(end + 600), "--json")
    assert json.loads(quiet.stdout)["actions"] == [] and len(expiry_events()) == 2

    # renewed: a new end, warned afresh; revoked: its record goes
    assert ds01(sandbox, "access", "grant", "acc1", "--for", "3h").returncode == 0
    renewed_end = json.loads(grant_path.read_text())["expires_epoch"]
    renewed = json.loads(ds01(sandbox, "access", "sweep", "--now", iso(renewed_end - 600), "--json").stdout)
    assert [(a["user"], a["kind"]) for a in renewed["actions"]] == [("acc1", "warn")]
    assert "(in 10 minutes)" in expiry_events()[-1]["details"]["message"]
    assert ds01(sandbox, "access", "revoke", "acc1").returncode == 0
    assert ds01(sandbox, "access", "sweep", "--json").returncode == 0
    assert not record.exists()

    # the sweep is for admins only
    refused = ds01(sandbox, "access", "sweep", user="acc2")
    assert refused.returncode == 1 and "only admins" in refused.stderr


def test_a_grant_that_ran_out_reads_as_expired_and_a_permanent_one_never_expires(sandbox):
    assert ds01(sandbox, "access", "grant", "acc2", "--for", "2s").returncode == 0
    assert ds01(sandbox, "access", "grant", "acc1", "--permanent").returncode == 0
    end = json.loads((sandbox / "state" / "bare-metal-grants" / "acc2.json").read_text())["expires_epoch"]
    while time.time() < end + 1:
        time.sleep(0.5)
    status = json.loads(ds01(sandbox, "access", "status", "--json", user="acc2").stdout)
    assert [g["active"] for g in status["grants"]] == [False]
    text = ds01(sandbox, "access", "status", user="acc2").stdout
    assert f"acc2's grant expired at {iso(end)}" in text and "ask an admin to renew" in text
    swept = json.loads(ds01(sandbox, "access", "sweep", "--now", iso(end + 10 * 365 * 86400), "--json").stdout)
    assert [(a["user"], a["kind"]) for a in swept["actions"]] == [("acc2", "expire")]
    permanent = json.loads(ds01(sandbox, "access", "status", "--json", user="acc1").stdout)
    assert [(g["type"], g["active"], g["expires_at"]) for g in permanent["grants"]] == [("permanent", True, None)]
    listing = json.loads(ds01(sandbox, "access", "list", "--json").stdout)
    assert sorted((g["user"], g["active"]) for g in listing["grants"]) == [("acc1", True), ("acc2", False)]
