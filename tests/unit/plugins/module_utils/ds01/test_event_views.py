"""The per-user event views: the incremental reader (offsets, rotation by rename, a line still being written,
a shrunk log) and the pass that appends each user's events to their own view (odd logins refused)."""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import event_views as ev
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import events


def write(path, user, n=1, source="test"):
    log = events.EventLog(str(path))
    for i in range(n):
        assert log.write("test.thing", user=user, source=source, n=i)


def users(batch):
    return [(e.get("user"), (e.get("details") or {}).get("n")) for e in batch.events]


def rotate(path, suffix="-20260101"):
    """logrotate's rename (nocopytruncate, nocreate): the next writer starts the new file."""
    os.rename(path, str(path) + suffix)


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "log" / "events.jsonl"


@pytest.fixture(autouse=True)
def _log_dir(log_path):
    log_path.parent.mkdir()


def test_first_pass_reads_everything_then_only_what_is_new(log_path):
    write(log_path, "alice", 2)
    first = ev.read_new(str(log_path), None)
    assert users(first) == [("alice", 0), ("alice", 1)]
    assert first.state.offset == os.path.getsize(log_path) and first.state.seq == 2
    again = ev.read_new(str(log_path), first.state)
    assert again.events == [] and again.state.offset == first.state.offset
    write(log_path, "bob")
    third = ev.read_new(str(log_path), again.state)
    assert users(third) == [("bob", 0)] and third.state.seq == 3


def test_rotation_by_rename_finishes_the_old_file_and_reads_the_new_one(log_path):
    write(log_path, "alice")
    state = ev.read_new(str(log_path), None).state
    write(log_path, "alice", 2)  # after the pass, before the rotation
    rotate(log_path)
    missing = ev.read_new(str(log_path), state)  # rotated, the new log not created yet (nocreate)
    assert users(missing) == [("alice", 0), ("alice", 1)]
    write(log_path, "bob", 2)
    after = ev.read_new(str(log_path), missing.state)
    assert users(after) == [("bob", 0), ("bob", 1)]
    assert (after.state.ino, after.state.seq) == (os.stat(log_path).st_ino, 5)


def test_rotation_between_passes_loses_and_repeats_nothing(log_path):
    write(log_path, "alice")
    state = ev.read_new(str(log_path), None).state
    write(log_path, "carol")
    rotate(log_path)
    write(log_path, "bob")  # the old file's tail and the new log, both in one pass
    batch = ev.read_new(str(log_path), state)
    assert users(batch) == [("carol", 0), ("bob", 0)]
    assert ev.read_new(str(log_path), batch.state).events == []


def test_a_line_still_being_written_waits_for_its_newline(log_path):
    write(log_path, "alice")
    with open(log_path, "ab") as handle:
        handle.write(b'{"timestamp":"2026-01-01T00:00:00.000Z","event_type":"test.half","schema_version":"1","us')
    batch = ev.read_new(str(log_path), None)
    assert users(batch) == [("alice", 0)] and batch.skipped_lines == 0
    with open(log_path, "ab") as handle:
        handle.write(b'er":"bob"}\n')
    rest = ev.read_new(str(log_path), batch.state)
    assert [(e["event_type"], e["user"]) for e in rest.events] == [("test.half", "bob")]


def test_a_cut_fragment_is_skipped_and_counted(log_path):
    write(log_path, "alice")
    with open(log_path, "ab") as handle:
        handle.write(b'{"prev":"cut sho')  # a full disk cut this line; the next writer ends it with a newline
    write(log_path, "bob")
    batch = ev.read_new(str(log_path), None)
    assert users(batch) == [("alice", 0), ("bob", 0)] and batch.skipped_lines == 1


def test_a_log_that_shrank_is_read_again_past_the_last_seq(log_path):
    write(log_path, "alice", 3)
    state = ev.read_new(str(log_path), None).state
    # copytruncate (which ds01's logrotate file forbids, but a hand-made one may do): a copy, then size 0
    (log_path.parent / "events.jsonl-20260101").write_bytes(log_path.read_bytes())
    os.truncate(log_path, 0)
    write(log_path, "bob")  # the writer links to the copy's last line: seq 4
    batch = ev.read_new(str(log_path), state)
    assert users(batch) == [("bob", 0)] and batch.state.seq == 4
    assert ev.read_new(str(log_path), batch.state).events == []


def test_state_round_trips_and_rejects_garbage():
    state = ev.ReadState(1, 2, 3, 4, 5.5)
    assert ev.ReadState.from_dict(json.loads(json.dumps(state.__dict__))) == state
    assert ev.ReadState.from_dict({"dev": "x"}) is None and ev.ReadState.from_dict([1]) is None


# -- the pass -------------------------------------------------------------------------------------------------

ACCOUNTS = {"alice": SimpleNamespace(pw_uid=4242, pw_gid=4242), "bob": SimpleNamespace(pw_uid=4243, pw_gid=4243)}


def passwd(login):
    return ACCOUNTS[login]


def test_pass_writes_each_users_own_events_and_refuses_odd_logins(tmp_path, log_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    write(log_path, "alice", 2)
    write(log_path, "bob")
    for odd in ("../escape", "a/b", ".hidden", "x\ny"):
        write(log_path, odd)
    write(log_path, "ghost")  # a valid login with no account
    write(log_path, None)
    report = ev.refresh(str(state_dir), str(log_path), passwd=passwd)
    assert report["users"] == {"alice": 2, "bob": 1}
    assert report["refused"] == sorted(["../escape", "a/b", ".hidden", "x\ny"])
    assert report["unknown"] == ["ghost"] and report["errors"] == []
    directory = state_dir / ev.VIEWS_DIR
    assert sorted(os.listdir(directory)) == [ev.REFRESHED_NAME, ev.STATE_NAME, "alice.jsonl", "bob.jsonl"]
    assert not (tmp_path / "escape.jsonl").exists() and not (state_dir / "escape.jsonl").exists()
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(directory / ev.STATE_NAME).st_mode) == 0o600
    for login in ("alice", "bob"):
        st = os.stat(directory / f"{login}.jsonl")
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o007 == 0
        acl = os.getxattr(directory / f"{login}.jsonl", "system.posix_acl_access")
        assert acl == ev.notify.reader_acl(ACCOUNTS[login].pw_uid)
    mine = [json.loads(x) for x in (directory / "alice.jsonl").read_text().splitlines()]
    assert [e["user"] for e in mine] == ["alice", "alice"] and "prev" not in mine[0] and "seq" not in mine[0]

    write(log_path, "alice")
    second = ev.refresh(str(state_dir), str(log_path), passwd=passwd)
    assert second["users"] == {"alice": 1} and second["events"] == 1
    shown = list(ev.read_view(str(state_dir), "alice", events.EventFilter(limit=2)))
    assert [(e["user"], e["details"]["n"]) for e in shown] == [("alice", 1), ("alice", 0)]
    assert ev.refreshed_at(str(state_dir)) is not None


def test_views_keep_their_last_bytes(tmp_path, log_path, monkeypatch):
    monkeypatch.setattr(ev, "MAX_VIEW_BYTES", 2000)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    write(log_path, "alice", 40)
    ev.refresh(str(state_dir), str(log_path), passwd=passwd)
    view = state_dir / ev.VIEWS_DIR / "alice.jsonl"
    kept = [json.loads(x)["details"]["n"] for x in view.read_text().splitlines()]
    assert os.path.getsize(view) <= 2000 and kept[-1] == 39 and kept == list(range(kept[0], 40))


def test_view_path_refuses_names_that_are_not_logins(tmp_path):
    for odd in ("../x", "a/b", ".", "..", "", ".state"):
        with pytest.raises(ValueError, match="is not a login name"):
            ev.view_path(str(tmp_path), odd)
    assert ev.view_path(str(tmp_path), "alice") == str(tmp_path / ev.VIEWS_DIR / "alice.jsonl")
