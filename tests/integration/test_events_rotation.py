"""The audit trail's hash chain through a real logrotate run, with writers appending while it rotates.

The logrotate rule is the one ``ds01_common`` installs, rendered by a real ``ansible`` template task. Ten writer
processes append while ``logrotate --force`` renames the log; afterwards every event is in exactly one file, the new
file starts with a line linked to the rotated file's last line, took its owner, group and mode, and
``ds01 events verify`` passes. A second rotation compresses the first rotated file (``delaycompress``), and the chain
still verifies through the ``.gz``. Then a cut head of the live file is named.
"""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import events

REPO = Path(__file__).resolve().parents[2]
CORE_PARENT = REPO / "plugins" / "module_utils"
TEMPLATE = REPO / "roles" / "ds01_common" / "templates" / "logrotate.d" / "ds01.j2"
WRITERS = 10
EVENTS_EACH = 400

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from ds01 import events

import os, time
path, writer, count, flag = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
log = events.EventLog(path)
sys.stdin.buffer.read(1)

def write(seqs):
    return sum(not log.write("test.rotation", user=f"w{writer}", source="stress", writer=writer, seq=seq)
               for seq in seqs)

quarter = count // 4
failed = write(range(quarter))  # before the rotation, for certain
sys.stdout.write("h")
sys.stdout.flush()
failed += write(range(quarter, count - quarter))  # while logrotate runs, as it happens
deadline = time.monotonic() + 300
while not os.path.exists(flag) and time.monotonic() < deadline:
    time.sleep(0.01)
failed += write(range(count - quarter, count))  # after the rotation, for certain
sys.exit(1 if failed else (2 if log.unlocked else 0))
"""


def render_rule(tmp_path, log_dir):
    dest = tmp_path / "ds01.logrotate"
    variables = {
        "__ds01_common_log_path": str(log_dir),
        "ds01_common_logrotate_rotate": 30,
        "ds01_common_logrotate_maxsize": "100M",
        "ds01_common_admin_group": "adm",
    }
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections"), "ANSIBLE_LOCAL_TEMP": str(tmp_path)}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "localhost",
            "-c",
            "local",
            "-i",
            "localhost,",
            "-m",
            "ansible.builtin.template",
            "-a",
            f"src={TEMPLATE} dest={dest}",
            "-e",
            json.dumps({**variables, "ansible_python_interpreter": sys.executable}),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest


def logrotate(rule, state):
    proc = subprocess.run(
        ["logrotate", "--force", "--state", str(state), str(rule)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def ds01_verify(log_dir, tmp_path):
    config = tmp_path / "resource-limits.yaml"
    config.write_text(
        f"default_group: student\ndefaults: {{}}\ngroups:\n  student: {{}}\npaths:\n  log_dir: {log_dir}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CORE_PARENT)}
    proc = subprocess.run(
        [sys.executable, "-m", "ds01", "--config", str(config), "events", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else proc.stderr


def test_writers_keep_the_chain_through_a_real_logrotate(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o750)
    path = log_dir / "events.jsonl"
    adm = grp.getgrnam("adm").gr_gid
    events.EventLog(str(path)).write("test.rotation", source="setup")
    os.chown(path, 0, adm)
    rule = render_rule(tmp_path, log_dir)
    assert "nocopytruncate" in rule.read_text().split()
    state = tmp_path / "logrotate.state"

    flag = tmp_path / "rotated"
    children = [
        subprocess.Popen(
            [sys.executable, "-S", "-c", CHILD, str(CORE_PARENT), str(path), str(w), str(EVENTS_EACH), str(flag)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for w in range(WRITERS)
    ]
    for child in children:
        child.stdin.write(b"g")
        child.stdin.close()
    # Each writer has written its first quarter and goes on writing while logrotate runs; its last quarter
    # waits for the rotation, so every writer has lines in both files however the machine schedules them.
    assert [child.stdout.read(1) for child in children] == [b"h"] * WRITERS
    logrotate(rule, state)
    flag.touch()
    assert [child.wait(timeout=300) for child in children] == [0] * WRITERS
    for child in children:
        child.stdout.close()
    rotated = [p for p in log_dir.iterdir() if p.name.startswith("events.jsonl-")]
    assert len(rotated) == 1 and path.exists()

    # every event once, in one file or the other; the new file continues the rotated one
    lines = rotated[0].read_bytes().splitlines() + path.read_bytes().splitlines()
    seen = Counter((e["details"]["writer"], e["details"]["seq"]) for e in map(json.loads, lines[1:]))
    assert set(seen.values()) == {1} and len(seen) == WRITERS * EVENTS_EACH
    in_old = {json.loads(line)["details"]["writer"] for line in rotated[0].read_bytes().splitlines()[1:]}
    in_new = {json.loads(line)["details"]["writer"] for line in path.read_bytes().splitlines()}
    assert in_old == in_new == set(range(WRITERS))  # every writer wrote on both sides of the rotation
    first_new = path.read_bytes().splitlines()[0]
    assert events.chain_header(first_new)[::2] == (
        events.line_hash(rotated[0].read_bytes().splitlines()[-1]),
        "rotated",
    )
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, adm, 0o640)
    code, report = ds01_verify(log_dir, tmp_path)
    assert code == 0 and (report["status"], report["lines"], report["chained"]) == ("intact", len(lines), len(lines))

    # a second rotation compresses the first rotated file; the chain runs through the .gz
    rotated[0].rename(log_dir / "events.jsonl-20200101")
    events.EventLog(str(path)).write("test.rotation", source="after")
    logrotate(rule, state)
    assert (log_dir / "events.jsonl-20200101.gz").exists()
    events.EventLog(str(path)).write("test.rotation", source="after")
    code, report = ds01_verify(log_dir, tmp_path)
    assert code == 0 and report["status"] == "intact" and len(report["files"]) == 3
    assert report["chained"] == len(lines) + 2

    # a cut head of the live file (after the rotations) is named
    path.write_bytes(b"")
    for _n in range(3):
        events.EventLog(str(path)).write("test.rotation", source="after")
    kept = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(kept[1:]) + b"\n")
    code, report = ds01_verify(log_dir, tmp_path)
    assert code == 1 and report["broken"]["what"] == "head_cut" and report["broken"]["line"] == 1
