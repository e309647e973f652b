"""``ds01 doctor``: each check's decision on prepared inputs (cli/doctor.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from types import SimpleNamespace

import pytest

from ds01 import config as config_mod
from ds01.cli import doctor


def fake_stat(mode: int, uid: int = 0, gid: int = 0, kind: int = stat.S_IFSOCK) -> os.stat_result:
    return os.stat_result((kind | mode, 1, 1, 1, uid, gid, 0, 0, 0, 0))


def test_config_valid_and_invalid_name_the_first_problem_and_the_command():
    assert doctor.decide_config("/etc/ds01/resource-limits.yaml", None).ok
    problem = config_mod.Problem(file="/etc/ds01/resource-limits.yaml", line=7, key="groups.x", message="bad value")
    check = doctor.decide_config("/etc/ds01/resource-limits.yaml", config_mod.ConfigError([problem]))
    assert not check.ok
    assert "line 7" in check.message and "bad value" in check.message and "ds01 config check" in check.message


def test_gateway_down_says_how_to_start_it():
    assert doctor.decide_gateway("/var/run/docker.sock", None).ok
    check = doctor.decide_gateway("/var/run/docker.sock", "Connection refused")
    assert not check.ok and "Connection refused" in check.message and "systemctl start ds01-gateway" in check.message


@pytest.mark.parametrize(
    ("st", "want", "gid", "ok", "words"),
    [
        (fake_stat(0o666), "0666", 999, True, ""),
        (fake_stat(0o660, gid=999), "0660", 999, True, ""),
        (fake_stat(0o660, gid=5), "0660", 999, False, "group is gid 5"),
        (fake_stat(0o666), "0660", 999, False, "mode is 0666, not 0660"),
        (fake_stat(0o644, kind=stat.S_IFREG), "0644", None, False, "not a socket"),
        (None, "0666", None, False, "does not exist"),
    ],
)
def test_gateway_socket_mode_is_what_the_config_says(st, want, gid, ok, words):
    check = doctor.decide_gateway_socket("/var/run/docker.sock", st, want, gid)
    assert check.ok is ok
    assert words in check.message


ROOT_DIR = fake_stat(0o755, kind=stat.S_IFDIR)


@pytest.mark.parametrize(
    ("st", "dir_st", "same", "ok", "words"),
    [
        (fake_stat(0o600), ROOT_DIR, False, True, "root's only"),
        (fake_stat(0o660, gid=0), ROOT_DIR, False, True, "root's only"),
        (fake_stat(0o666), ROOT_DIR, False, False, "lets every user connect"),
        (fake_stat(0o660, gid=999), ROOT_DIR, False, False, "lets group gid 999 connect"),
        (fake_stat(0o600, uid=1000), ROOT_DIR, False, False, "owned by uid 1000"),
        (fake_stat(0o600), fake_stat(0o777, kind=stat.S_IFDIR), False, False, "may be changed by users"),
        (fake_stat(0o600), fake_stat(0o755, uid=1000, kind=stat.S_IFDIR), False, False, "may be changed by users"),
        (fake_stat(0o600), ROOT_DIR, True, False, "served by the Docker daemon itself"),
        (None, ROOT_DIR, False, False, "nothing at /run/ds01/dockerd.sock"),
    ],
)
def test_daemon_socket_is_hidden(st, dir_st, same, ok, words):
    check = doctor.decide_daemon_socket("/run/ds01/dockerd.sock", st, dir_st, "/var/run/docker.sock", same)
    assert check.ok is ok
    assert words in check.message
    if not ok:
        assert "ds01_gateway" in check.message or "daemon.json" in check.message


def test_detector_fresh_stale_and_missing():
    now = 10_000.0
    assert doctor.decide_detector("/s/workloads.json", {"schema_version": "1"}, now - 20, now).ok
    stale = doctor.decide_detector("/s/workloads.json", None, now - 600, now)
    assert not stale.ok and "600 s old" in stale.message and "ds01-detector" in stale.message
    missing = doctor.decide_detector("/s/workloads.json", None, None, now)
    assert not missing.ok and "missing" in missing.message


def test_lifecycle_ran_recently_or_not():
    now = 100_000.0
    assert doctor.decide_lifecycle("/s/lifecycle/last-run.json", now - 300, now).ok
    late = doctor.decide_lifecycle("/s/lifecycle/last-run.json", now - 3600, now)
    assert not late.ok and "60 min ago" in late.message and "ds01-lifecycle.timer" in late.message
    never = doctor.decide_lifecycle("/s/lifecycle/last-run.json", None, now)
    assert not never.ok and "never recorded a run" in never.message


def test_exporter_answers_only_with_ds01_metrics():
    url = "http://127.0.0.1:9101/metrics"
    assert doctor.decide_exporter(url, 200, "# HELP ds01_gpu_slots x\n", None).ok
    assert "without ds01 metrics" in doctor.decide_exporter(url, 200, "go_gc 1\n", None).message
    assert "HTTP 500" in doctor.decide_exporter(url, 500, "", None).message
    down = doctor.decide_exporter(url, None, "", "Connection refused")
    assert not down.ok and "Connection refused" in down.message and "ds01-exporter" in down.message


def test_gpu_backend_answers_or_says_what_to_check():
    inventory = SimpleNamespace(gpus=[1, 2], source="nvml")
    check = doctor.decide_gpu(inventory, None)
    assert check.ok and "NVML answers: 2 GPU(s)" in check.message
    fake = doctor.decide_gpu(SimpleNamespace(gpus=[1], source="fake:/t.yaml"), None)
    assert fake.ok and "fake:/t.yaml" in fake.message
    broken = doctor.decide_gpu(None, "NVML Shared Library Not Found")
    assert not broken.ok and "nvidia-smi" in broken.message


def test_every_member_has_a_slice():
    units = {"alice": "ds01-student-alice.slice", "bob": "ds01-student-bob.slice"}
    assert doctor.decide_slices(units, ["ds01-student-alice.slice", "ds01-student-bob.slice"], True).ok
    missing = doctor.decide_slices(units, ["ds01-student-alice.slice"], True)
    assert not missing.ok and "bob (ds01-student-bob.slice)" in missing.message and "alice" not in missing.message
    assert doctor.decide_slices(units, [], False).ok  # no systemd: nothing to check


def test_slices_are_found_in_either_unit_directory(tmp_path):
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    (etc / "ds01-student-alice.slice").write_text("[Slice]\n")
    (run / "ds01-student-bob.slice").write_text("[Slice]\n")
    found = doctor._unit_files([str(etc), str(run), str(tmp_path / "absent")])
    assert found == {"ds01-student-alice.slice", "ds01-student-bob.slice"}


def test_a_container_holding_a_vanished_gpu_is_named():
    fine = SimpleNamespace(name="a", owner="alice", slots=("0",), unknown_ids=())
    lost = SimpleNamespace(name="b", owner="bob", slots=(), unknown_ids=("GPU-dead",))
    assert doctor.decide_gpu_holders([fine], None).ok
    check = doctor.decide_gpu_holders([fine, lost], None)
    assert not check.ok and "b (bob) holds GPU-dead" in check.message and "a (alice)" not in check.message
    assert "cannot list" in doctor.decide_gpu_holders([], "Docker is down").message


def test_event_log_writable_and_chain():
    assert doctor.decide_event_log("/var/log/ds01/events.jsonl", None).ok
    assert "Read-only file system" in doctor.decide_event_log("/x", "Read-only file system").message
    assert doctor.decide_event_chain({"ok": True, "message": "intact: 3 lines"}, None).ok
    broken = doctor.decide_event_chain({"ok": False, "message": "line 2 was edited"}, None)
    assert not broken.ok and "line 2 was edited" in broken.message
    assert not doctor.decide_event_chain(None, "Permission denied").ok


def test_append_error_opens_without_writing(tmp_path):
    path = tmp_path / "log" / "events.jsonl"
    assert doctor._append_error(str(path)) is None
    assert path.exists() and path.read_bytes() == b""
    path.write_text("x\n")
    assert doctor._append_error(str(path)) is None and path.read_text() == "x\n"
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert doctor._append_error(str(blocked / "events.jsonl")) is not None  # its "directory" is a file


def test_ping_reports_the_answering_process(tmp_path):
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def answer():
        conn, _addr = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    error, pid = doctor.ping(path)
    thread.join()
    server.close()
    assert error is None and pid == os.getpid()
    error, pid = doctor.ping(str(tmp_path / "absent.sock"))
    assert error and pid is None


def test_exit_3_and_the_config_check_when_no_config_can_be_read(tmp_path, monkeypatch, capsys):
    from ds01 import cli

    path = tmp_path / "resource-limits.yaml"
    path.write_text("groups: [unclosed\n")
    monkeypatch.setattr(config_mod, "load_last_good", lambda _path: None)
    rc = cli.main(["--config", str(path), "doctor", "--json"])
    out = capsys.readouterr()
    assert rc == 3
    checks = json.loads(out.out)["checks"]
    assert [c["name"] for c in checks] == ["config"] and not checks[0]["ok"]
    assert "ds01 config check" in checks[0]["message"]
    assert "nothing else was checked" in out.err
