"""A notice reaches a user's terminal through logind: a real login (``login -f`` on a pty that ``script`` holds,
which gives the terminal to the user as sshd or getty's login would) registers a real session with systemd-logind
(pam_systemd), the notifier asks logind for the user's sessions (sd-login in libsystemd), and the box lands on that
pty. Root-side evidence: the typescript, which records what the user's terminal received.

(``su -`` on a pty registers a session too, but leaves the terminal root's: the notifier rightly refuses to write
to a terminal its user does not own.)"""

from __future__ import annotations

import json
import time
import uuid

import pytest

STUDENT = "alice"
PYTHON = "/opt/ds01/venv/bin/python"
DELIVER = """
import json, sys
from ds01 import notify
notice = notify.Message("WARNING", sys.argv[1], ("Delivered through logind's sessions.",))
print(json.dumps(notify.Notifier().deliver(sys.argv[2], None, notice)))
"""


def wait_for(what, check, timeout: float = 60.0, every: float = 1.0):
    """Polls ``check()`` until it returns something true; fails with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(every)


def sessions_of(host, user: str) -> list:
    """``(session id, tty)`` of ``user``'s sessions as ``loginctl`` lists them (TTY may be empty)."""
    out = host.check_output("loginctl list-sessions --no-legend")
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == user:
            tty = host.check_output("loginctl show-session %s -p TTY --value", fields[0]).strip()
            rows.append((fields[0], tty))
    return rows


def test_logind_runs_on_the_host(host):
    service = host.service("systemd-logind.service")
    assert service.is_running, host.run("journalctl -u systemd-logind -n 30 --no-pager").stdout


def test_a_notice_reaches_the_pty_of_a_real_logind_session(host):
    typescript = f"/root/mol-typescript-{uuid.uuid4().hex[:8]}"
    token = f"MOL LOGIND NOTICE {uuid.uuid4().hex[:8]}"
    before = {sid for sid, _tty in sessions_of(host, STUDENT)}
    # A login on a new pty, detached from this exec: script(1) holds the pty's master and records its output;
    # the pipe keeps its input open (no input: the login shell waits) until the session is ended below.
    login = f"sleep 120 | script -q -f -c 'login -f {STUDENT}' {typescript}"
    host.run("setsid -f bash -c %s </dev/null >/dev/null 2>&1", login)
    try:
        tty = wait_for(
            f"a logind session of {STUDENT} with a TTY",
            lambda: next((t for s, t in sessions_of(host, STUDENT) if s not in before and t), None),
        )
        assert tty.startswith("pts/")
        assert host.file("/dev/" + tty).user == STUDENT  # the login gave the terminal to its user
        run = host.run("%s -c %s %s %s", PYTHON, DELIVER, token, STUDENT)
        assert run.rc == 0, run.stderr
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert "/dev/" + tty in result["terminals"], (result, host.run("loginctl list-sessions").stdout)
        wait_for("the notice in the typescript", lambda: token in host.file(typescript).content_string)
        recorded = host.file(typescript).content_string
        assert f"[WARNING] {token}" in recorded and "Delivered through logind's sessions." in recorded
    finally:
        for session, _tty in sessions_of(host, STUDENT):
            if session not in before:
                host.run("loginctl terminate-session %s", session)
        host.run("rm -f %s", typescript)
