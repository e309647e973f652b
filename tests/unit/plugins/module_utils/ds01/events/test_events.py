"""The event log: envelope, size rule, a writer that never raises, a tolerant reader, and ``ds01 events``."""

from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import json
import logging
import os
import stat

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import cli, events

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)


def fixed_clock(moment=T0):
    return lambda: moment


@pytest.fixture
def log_path(tmp_path):
    return str(tmp_path / "events.jsonl")


def lines_of(path):
    with open(path, "rb") as handle:
        return handle.read().split(b"\n")[:-1]


def records(path):
    return [json.loads(line) for line in lines_of(path)]


# -- envelope ------------------------------------------------------------------------------------------


def test_envelope_shape_and_key_order(log_path):
    assert events.EventLog(log_path, clock=fixed_clock()).write(
        "gpu.allocate", user="alice", source="gateway", container="alice-proj", slots=["1.0"]
    )
    (line,) = lines_of(log_path)
    assert line == (
        b'{"prev":"' + b"0" * 64 + b'","seq":1,"chain":"start",'
        b'"timestamp":"2026-11-22T12:00:00.123Z","event_type":"gpu.allocate","schema_version":"1",'
        b'"user":"alice","source":"gateway","details":{"container":"alice-proj","slots":["1.0"]}}'
    )


@pytest.mark.parametrize(
    ("user", "source", "details", "keys"),
    [
        (None, None, {}, ["timestamp", "event_type", "schema_version"]),
        ("", "", {}, ["timestamp", "event_type", "schema_version"]),
        ("alice", None, {}, ["timestamp", "event_type", "schema_version", "user"]),
        (None, "lifecycle", {"n": 0}, ["timestamp", "event_type", "schema_version", "source", "details"]),
        # a None detail is information ("no owner found"), not absence
        (None, None, {"owner": None}, ["timestamp", "event_type", "schema_version", "details"]),
    ],
)
def test_empty_fields_are_omitted(log_path, user, source, details, keys):
    assert events.EventLog(log_path).write("container.create", user=user, source=source, **details)
    (record,) = records(log_path)
    assert list(record) == ["prev", "seq", "chain", *keys]  # the chain header first (a log's first line)


def test_detail_keys_may_share_a_name_with_the_type_parameter(log_path):
    assert events.EventLog(log_path).write("user.added", event_type="x", self="y")  # pylint: disable=kwarg-superseded-by-positional-arg
    assert records(log_path)[0]["details"] == {"event_type": "x", "self": "y"}


def test_timestamp_is_utc_with_z_and_milliseconds(log_path):
    local = dt.datetime(2026, 11, 22, 13, 0, 0, 999999, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    events.EventLog(log_path, clock=fixed_clock(local)).write("a.b")
    assert records(log_path)[0]["timestamp"] == "2026-11-22T12:00:00.999Z"


def test_file_is_created_0640(tmp_path, log_path):
    old = os.umask(0o022)
    try:
        events.EventLog(log_path).write("a.b")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(log_path).st_mode) == 0o640


@pytest.mark.parametrize(
    "event_type",
    [
        "gpu",
        "GPU.allocate",
        "gpu.",
        ".gpu",
        "gpu..allocate",
        "1gpu.allocate",
        "gpu.alloc-ate",
        "gpu allocate",
        "",
        None,
    ],
)
def test_bad_type_is_dropped_and_logged(log_path, caplog, event_type):
    with caplog.at_level(logging.WARNING, logger=events.__name__):
        assert events.EventLog(log_path).write(event_type, user="alice") is False
    assert not os.path.exists(log_path)
    assert "dropped" in caplog.text


@pytest.mark.parametrize("event_type", ["gpu.allocate", "gpu.allocation.lock_timeout", "detection.host_gpu_process_2"])
def test_good_types(log_path, event_type):
    assert events.EventLog(log_path).write(event_type)
    assert records(log_path)[0]["event_type"] == event_type


# -- size rule -----------------------------------------------------------------------------------------


def _line(pad, **extra):
    return events.render_line("gpu.allocate", "alice", "gateway", {"pad": pad, **extra}, timestamp=T0)


def _pad_for(total):
    """A pad length that makes the line (before its chain header) exactly ``total`` bytes."""
    return total - len(_line(""))


LIMIT = events.MAX_BODY_BYTES  # 4000 less room for the longest chain header


def test_the_longest_chain_header_fits_in_4000_bytes():
    body = _line("x" * _pad_for(LIMIT))
    longest = events.chain_line(body, "f" * 64, 10**19 - 1, "unlocked")
    assert len(longest) == events.MAX_LINE_BYTES == 4000
    assert json.loads(longest)["details"]["pad"] == "x" * _pad_for(LIMIT)


def test_line_at_the_limit_is_kept_whole():
    line = _line("x" * _pad_for(LIMIT))
    assert len(line) == LIMIT and line.endswith(b"\n")
    assert json.loads(line)["details"]["pad"] == "x" * _pad_for(LIMIT)


def test_line_one_byte_over_is_truncated_keeping_the_container():
    base = len(_line("", container="alice-proj"))
    kept = _line("x" * (LIMIT - base), container="alice-proj")
    assert len(kept) == LIMIT and "truncated" not in json.loads(kept)["details"]
    line = _line("x" * (LIMIT + 1 - base), container="alice-proj")
    record = json.loads(line)
    assert len(line) < LIMIT
    assert record["details"] == {"truncated": True, "original_size": LIMIT + 1, "container": "alice-proj"}
    assert (record["user"], record["source"], record["event_type"]) == ("alice", "gateway", "gpu.allocate")
    assert record["timestamp"] == "2026-11-22T12:00:00.123Z"


def test_render_line_truncates_above_the_limit():
    line = _line("x" * 10_000, container="c" * 300, container_id="abc123")
    details = json.loads(line)["details"]
    assert details["truncated"] is True and details["original_size"] > 10_000
    assert details["container_id"] == "abc123"
    assert "container" not in details  # too long to keep
    assert "pad" not in details


def test_truncated_event_is_written_and_still_found_by_container(log_path):
    event_log = events.EventLog(log_path)
    assert event_log.write("gpu.allocate", user="alice", container="big-one", blob="y" * 9000)
    (line,) = lines_of(log_path)
    assert len(line) + 1 <= events.MAX_LINE_BYTES
    found = list(event_log.read(events.EventFilter(container="big-one")))
    assert found[0]["details"]["truncated"] is True


def test_event_too_big_even_without_details_is_dropped(log_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert events.EventLog(log_path).write("a.b", user="u" * 5000) is False
    assert not os.path.exists(log_path)
    assert "dropped" in caplog.text


# -- never raises --------------------------------------------------------------------------------------


class Unprintable:
    def __str__(self):
        return "<unprintable thing>"


def test_unserialisable_details_become_text(log_path):
    assert events.EventLog(log_path).write(
        "a.b", when=dt.datetime(2026, 1, 1, tzinfo=UTC), obj=Unprintable(), ratio=float("nan"), nested={"inf": 1e999}
    )
    details = records(log_path)[0]["details"]
    assert details == {
        "when": "2026-01-01 00:00:00+00:00",
        "obj": "<unprintable thing>",
        "ratio": "nan",
        "nested": {"inf": "inf"},
    }


def test_details_json_cannot_hold_are_dropped_without_raising(log_path, caplog):
    cyclic: dict = {}
    cyclic["self"] = cyclic
    event_log = events.EventLog(log_path)
    with caplog.at_level(logging.WARNING):
        assert event_log.write("a.b", loop=cyclic) is False
        assert event_log.write("a.b", mapping={(1, 2): "tuple key"}) is False
    assert not os.path.exists(log_path)
    assert caplog.text.count("dropped") == 2


@pytest.mark.parametrize("where", ["missing_dir", "is_a_directory", "read_only_fs"])
def test_unwritable_path_answers_false_and_logs(tmp_path, caplog, monkeypatch, where):
    if where == "missing_dir":
        path = str(tmp_path / "no" / "such" / "events.jsonl")
    elif where == "is_a_directory":
        path = str(tmp_path)
    else:
        path = str(tmp_path / "events.jsonl")

        def refuse(*_args):
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(events.writer.os, "open", refuse)
    event_log = events.EventLog(path)
    with caplog.at_level(logging.DEBUG, logger=events.__name__):
        assert event_log.write("a.b", x=1) is False
        assert event_log.write("a.b", x=2) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # repeats of the same failure are not a flood
    assert "not recorded" in warnings[0].getMessage()


def test_short_write_is_a_failure_and_never_completed(log_path, monkeypatch, caplog):
    real_write = os.write
    calls = []

    def short(fd, data):
        calls.append(len(data))
        return real_write(fd, data[:10])

    monkeypatch.setattr(events.writer.os, "write", short)
    with caplog.at_level(logging.WARNING):
        assert events.EventLog(log_path).write("a.b", x=1) is False
    assert len(calls) == 1  # no second write that could interleave with another writer's line
    assert "short write" in caplog.text


def test_disk_full_answers_false(log_path, monkeypatch):
    def full(_fd, _data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(events.writer.os, "write", full)
    assert events.EventLog(log_path).write("a.b") is False


def test_one_write_call_per_line(log_path, monkeypatch):
    real_write = os.write
    sizes = []

    def spy(fd, data):
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(events.writer.os, "write", spy)
    event_log = events.EventLog(log_path)
    for i in range(3):
        event_log.write("a.b", i=i, pad="z" * (i * 1000))
    assert sizes == [len(line) + 1 for line in lines_of(log_path)]


def test_default_log_path():
    class Paths:
        log_dir = "/srv/sandbox/log"

    class Config:
        paths = Paths()

    assert events.default_log_path() == "/var/log/ds01/events.jsonl"
    assert events.default_log_path(None) == "/var/log/ds01/events.jsonl"
    assert events.default_log_path(Config()) == "/srv/sandbox/log/events.jsonl"


# -- reader --------------------------------------------------------------------------------------------


def write_lines(path, items):
    with open(path, "a", encoding="utf-8") as handle:
        for item in items:
            handle.write((item if isinstance(item, str) else json.dumps(item)) + "\n")


def ev(ts, event_type="gpu.allocate", user="alice", **details):
    record = {"timestamp": ts, "event_type": event_type, "schema_version": "1", "user": user}
    if details:
        record["details"] = details
    return record


@pytest.fixture
def sample(log_path):
    write_lines(
        log_path,
        [
            ev(
                "2026-11-22T10:00:00.000Z", "gpu.allocate", "alice", container="alice-proj", container_id="a1b2c3d4e5f6"
            ),
            ev("2026-11-22T10:30:00.000Z", "gpuxyz.alloc", "alice", container="alice-other"),
            ev("2026-11-22T11:00:00.000Z", "gpu.release", "bob", container="bob-job"),
            ev("2026-11-22T11:30:00.000Z", "maintenance.idle_kill", "alice", container="alice-proj"),
            {
                "timestamp": "2026-11-22T11:45:00.000Z",
                "event_type": "container.create",
                "schema_version": "1",
                "container": "top-level-c",
            },
            ev("2026-11-22T12:00:00.000Z", "gpu", "carol"),
            ev("2026-11-22T12:30:00.000Z", "gpu.allocation.lock_timeout", "alice"),
        ],
    )
    return events.EventLog(log_path)


def types_of(found):
    return [event["event_type"] for event in found]


CET = dt.timezone(dt.timedelta(hours=1))
PST = dt.timezone(dt.timedelta(hours=-8))

FILTER_TABLE = [
    (
        {},
        [
            "gpu.allocate",
            "gpuxyz.alloc",
            "gpu.release",
            "maintenance.idle_kill",
            "container.create",
            "gpu",
            "gpu.allocation.lock_timeout",
        ],
    ),
    ({"user": "alice"}, ["gpu.allocate", "gpuxyz.alloc", "maintenance.idle_kill", "gpu.allocation.lock_timeout"]),
    ({"user": "ali"}, []),  # exact, not a prefix
    ({"type_prefix": "gpu"}, ["gpu.allocate", "gpu.release", "gpu", "gpu.allocation.lock_timeout"]),
    ({"type_prefix": "gpu."}, ["gpu.allocate", "gpu.release", "gpu", "gpu.allocation.lock_timeout"]),
    ({"type_prefix": "gpu.allocat"}, []),  # prefix on a dot boundary only
    ({"type_prefix": "gpu.allocation"}, ["gpu.allocation.lock_timeout"]),
    ({"container": "alice-proj"}, ["gpu.allocate", "maintenance.idle_kill"]),
    ({"container": "alice"}, []),  # names are exact
    ({"container": "a1b2c3"}, ["gpu.allocate"]),  # id prefix
    ({"container": "a1b2c3d4e5f6" + "0" * 52}, ["gpu.allocate"]),  # full id, event kept the short one
    ({"container": "top-level-c"}, ["container.create"]),
    ({"user": "alice", "type_prefix": "gpu", "container": "alice-proj"}, ["gpu.allocate"]),
    # since <= t < until, compared as instants whatever the zone
    (
        {"since": dt.datetime(2026, 11, 22, 12, 0, tzinfo=CET)},
        ["gpu.release", "maintenance.idle_kill", "container.create", "gpu", "gpu.allocation.lock_timeout"],
    ),
    (
        {"until": dt.datetime(2026, 11, 22, 4, 0, tzinfo=PST)},
        ["gpu.allocate", "gpuxyz.alloc", "gpu.release", "maintenance.idle_kill", "container.create"],
    ),
    (
        {"since": dt.datetime(2026, 11, 22, 11, 0, tzinfo=UTC), "until": dt.datetime(2026, 11, 22, 12, 30, tzinfo=CET)},
        ["gpu.release"],
    ),
    ({"limit": 2}, ["gpu", "gpu.allocation.lock_timeout"]),
    ({"limit": 2, "user": "alice"}, ["maintenance.idle_kill", "gpu.allocation.lock_timeout"]),
    ({"limit": 100, "user": "bob"}, ["gpu.release"]),
    ({"limit": 0}, []),
]


@pytest.mark.parametrize(("filters", "expected"), FILTER_TABLE)
def test_reader_filters(sample, filters, expected):
    assert types_of(sample.read(events.EventFilter(**filters))) == expected


def test_read_accepts_a_mapping_of_filters(sample):
    assert types_of(sample.read({"user": "bob"})) == ["gpu.release"]


def test_since_compares_instants_not_strings(log_path):
    # "+01:00" stamps sort after "Z" stamps as strings; as instants 12:30+01:00 is 11:30Z
    write_lines(log_path, [ev("2026-11-22T12:30:00+01:00", "a.early"), ev("2026-11-22T11:45:00Z", "a.late")])
    since = events.parse_time("2026-11-22T11:40:00Z")
    assert types_of(events.EventLog(log_path).read(events.EventFilter(since=since))) == ["a.late"]


def test_naive_filter_times_are_local(sample, monkeypatch):
    naive = dt.datetime(2026, 11, 22, 12, 0)
    filt = events.EventFilter(since=naive)
    assert filt.since == naive.astimezone()


def test_corrupt_and_blank_lines_are_skipped_and_counted(log_path):
    write_lines(
        log_path,
        [
            ev("2026-11-22T10:00:00Z", "a.one"),
            "",
            "{not json",
            "[1, 2]",
            '"a string"',
            ev("2026-11-22T10:01:00Z", "a.two"),
        ],
    )
    with open(log_path, "ab") as handle:
        handle.write(b'\xff\xfe binary\n{"timestamp": "2026-11-22T10:02:00Z", "event_type": "a.partial", "sch')
    for filters in (events.EventFilter(), events.EventFilter(limit=10)):
        stream = events.EventLog(log_path).read(filters)
        assert types_of(stream) == ["a.one", "a.two"]
        assert stream.skipped_lines == 6


def test_limit_reads_backwards_and_stops_early(log_path):
    write_lines(log_path, ["garbage at the start"] + [ev(f"2026-11-22T10:00:{i:02d}Z", f"a.n{i}") for i in range(30)])
    stream = events.EventLog(log_path).read(events.EventFilter(limit=3))
    assert types_of(stream) == ["a.n27", "a.n28", "a.n29"]
    assert stream.skipped_lines == 0  # never got as far back as the garbage


def test_backwards_reading_across_block_boundaries(log_path, monkeypatch):
    monkeypatch.setattr(events.common, "_READ_BLOCK", 7)
    write_lines(log_path, [ev(f"2026-11-22T10:00:{i:02d}Z", f"a.n{i}", pad="p" * i) for i in range(20)])
    forward = list(events.EventLog(log_path).read(events.EventFilter()))
    backward = list(events.EventLog(log_path).read(events.EventFilter(limit=20)))
    assert forward == backward and len(forward) == 20


def test_old_schema_is_normalised(log_path):
    write_lines(
        log_path,
        [
            {
                "ts": "2025-06-01T14:00:00+02:00",
                "event": "gpu.allocated",
                "user": "carol",
                "container": "c1",
                "gpu": "0",
            },
            {"ts": "2025-06-01T13:00:00", "event": "gpu.released", "details": {"reason": "hold_expired"}, "extra": 1},
        ],
    )
    first, second = events.EventLog(log_path).read()
    assert first == {
        "timestamp": "2025-06-01T12:00:00.000Z",
        "event_type": "gpu.allocated",
        "schema_version": "0",
        "user": "carol",
        "details": {"container": "c1", "gpu": "0"},
    }
    assert second["timestamp"] == "2025-06-01T13:00:00.000Z"  # zone-less stamps were written in UTC
    assert second["details"] == {"reason": "hold_expired", "extra": 1}
    found = events.EventLog(log_path).read(events.EventFilter(container="c1", type_prefix="gpu"))
    assert types_of(found) == ["gpu.allocated"]


def test_missing_log_reads_as_empty(tmp_path):
    stream = events.EventLog(str(tmp_path / "nothing.jsonl")).read(events.EventFilter(limit=5))
    assert list(stream) == [] and stream.skipped_lines == 0


def test_writer_and_reader_round_trip(log_path):
    event_log = events.EventLog(log_path)
    event_log.write("gpu.allocate", user="alice", source="gateway", container="alice-proj", slots=["0", "1.2"])
    (event,) = event_log.read()
    assert event["details"] == {"container": "alice-proj", "slots": ["0", "1.2"]}
    assert events.event_time(event).tzinfo is not None


def test_rotated_files_are_read_when_since_reaches_back(tmp_path):
    live = tmp_path / "events.jsonl"
    old = tmp_path / "events.jsonl-20261120"
    older = tmp_path / "events.jsonl.2"
    gz = tmp_path / "events.jsonl-20261101.gz"
    write_lines(str(older), [ev("2026-11-19T10:00:00Z", "a.older")])
    write_lines(str(old), [ev("2026-11-20T10:00:00Z", "a.old")])
    write_lines(str(live), [ev("2026-11-22T10:00:00Z", "a.live")])
    gz.write_bytes(b"\x1f\x8b not read")
    for path, day in ((older, 19), (old, 20), (live, 22)):
        stamp = dt.datetime(2026, 11, day, 10, 0, 1, tzinfo=UTC).timestamp()
        os.utime(path, (stamp, stamp))
    event_log = events.EventLog(str(live))
    assert types_of(event_log.read()) == ["a.live"]
    since_20 = dt.datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
    assert types_of(event_log.read(events.EventFilter(since=since_20))) == ["a.old", "a.live"]
    since_19 = dt.datetime(2026, 11, 19, 0, 0, tzinfo=UTC)
    assert types_of(event_log.read(events.EventFilter(since=since_19))) == ["a.older", "a.old", "a.live"]
    assert types_of(event_log.read(events.EventFilter(since=since_19, limit=2))) == ["a.old", "a.live"]


def test_unreadable_log_raises_oserror_on_iteration(tmp_path):
    (tmp_path / "events.jsonl").mkdir()
    stream = events.EventLog(str(tmp_path / "events.jsonl")).read()
    with pytest.raises(IsADirectoryError):
        list(stream)


# -- time values ---------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)

TIME_TABLE = [
    ("now", NOW),
    ("30s", NOW - dt.timedelta(seconds=30)),
    ("15m", NOW - dt.timedelta(minutes=15)),
    ("2h", NOW - dt.timedelta(hours=2)),
    ("7d", NOW - dt.timedelta(days=7)),
    ("1w", NOW - dt.timedelta(weeks=1)),
    ("2h ago", NOW - dt.timedelta(hours=2)),
    (" 15 min ", NOW - dt.timedelta(minutes=15)),
    ("2026-11-20T08:00:00Z", dt.datetime(2026, 11, 20, 8, tzinfo=UTC)),
    ("2026-11-20T08:00:00.250z", dt.datetime(2026, 11, 20, 8, 0, 0, 250000, tzinfo=UTC)),
    ("2026-11-20T09:00:00+01:00", dt.datetime(2026, 11, 20, 8, tzinfo=UTC)),
    ("2026-11-20T09:00:00+0100", dt.datetime(2026, 11, 20, 8, tzinfo=UTC)),
    ("2026-11-20T00:00-08:00", dt.datetime(2026, 11, 20, 8, tzinfo=UTC)),
    # no zone: local time
    ("2026-11-20T08:00", dt.datetime(2026, 11, 20, 8).astimezone()),
    ("2026-11-20 08:00:00", dt.datetime(2026, 11, 20, 8).astimezone()),
    ("2026-11-20", dt.datetime(2026, 11, 20).astimezone()),
    ("today", dt.datetime.combine(NOW.astimezone().date(), dt.time()).astimezone()),
    ("yesterday", dt.datetime.combine(NOW.astimezone().date() - dt.timedelta(days=1), dt.time()).astimezone()),
]


@pytest.mark.parametrize(("text", "expected"), TIME_TABLE)
def test_parse_time(text, expected):
    parsed = events.parse_time(text, now=NOW)
    assert parsed.tzinfo is not None
    assert parsed == expected


@pytest.mark.parametrize("text", ["", "soon", "2h later", "-2h", "5y", "2026-13-01", "2026-11-20T25:00", "12:00"])
def test_parse_time_rejects_with_a_sentence(text):
    with pytest.raises(ValueError, match="is not a time: use ISO-8601"):
        events.parse_time(text, now=NOW)


# -- the CLI -------------------------------------------------------------------------------------------


@pytest.fixture
def cli_config(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    path = tmp_path / "resource-limits.yaml"
    path.write_text(f"default_group: student\ndefaults: {{}}\ngroups:\n  student: {{}}\npaths:\n  log_dir: {log_dir}\n")
    return str(path), str(log_dir / "events.jsonl")


def run_cli(capsys, config_path, *argv):
    code = cli.main(["--config", config_path, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_log_then_query_json(capsys, cli_config):
    config_path, log_path = cli_config
    code, _out, err = run_cli(
        capsys,
        config_path,
        "events",
        "log",
        "gpu.allocate",
        "--user",
        "alice",
        "container=alice-proj",
        "n=3",
        "ok=true",
        'slots=["1.0"]',
        "note=two words",
        "--source",
        "test",
    )
    assert (code, err) == (0, "")
    run_cli(
        capsys, config_path, "events", "log", "maintenance.idle_kill", "user=bob", "source=lifecycle", "container=b1"
    )
    with open(log_path, "a") as handle:
        handle.write("corrupt\n")
    code, out, _err = run_cli(capsys, config_path, "events", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["count"], data["skipped_lines"], data["schema_version"]) == (2, 1, "1")
    first, second = data["events"]
    assert first["user"] == "alice" and first["source"] == "test"
    assert first["details"] == {"container": "alice-proj", "n": 3, "ok": True, "slots": ["1.0"], "note": "two words"}
    assert (second["user"], second["source"], second["details"]) == ("bob", "lifecycle", {"container": "b1"})


def test_cli_human_table_is_aligned(capsys, cli_config):
    config_path, log_path = cli_config
    write_lines(
        log_path,
        [
            ev("2026-11-22T10:00:00.000Z", "gpu.allocate", "alice", container="alice-proj", slots=["1.0"]),
            ev("2026-11-22T10:01:00.000Z", "maintenance.idle_kill", "bob", container_id="abcdef123456", reason="idle"),
            {"timestamp": "2026-11-22T10:02:00.000Z", "event_type": "system.start", "schema_version": "1"},
        ],
    )
    code, out, _err = run_cli(capsys, config_path, "events")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIMESTAMP", "EVENT_TYPE", "USER", "CONTAINER", "DETAILS"]
    column = lines[0].index("USER")
    assert [line[column:].split()[0] for line in lines[1:]] == ["alice", "bob", "-"]
    assert lines[1].split()[3:] == ["alice-proj", 'slots=["1.0"]']
    assert lines[2].split()[3:] == ["abcdef123456", "reason=idle"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--user", "alice"], ["gpu.allocate", "gpuxyz.alloc", "maintenance.idle_kill", "gpu.allocation.lock_timeout"]),
        (["--type", "gpu", "--limit", "2"], ["gpu", "gpu.allocation.lock_timeout"]),
        (["--container", "a1b2c3"], ["gpu.allocate"]),
        (
            ["--since", "2026-11-22T12:00:00+01:00", "--until", "2026-11-22T12:00:00Z"],
            ["gpu.release", "maintenance.idle_kill", "container.create"],
        ),
        (["--limit", "1"], ["gpu.allocation.lock_timeout"]),
        (["--all", "--type", "maintenance"], ["maintenance.idle_kill"]),
    ],
)
def test_cli_filters(capsys, cli_config, argv, expected):
    config_path, log_path = cli_config
    write_lines(
        log_path,
        [
            ev(
                "2026-11-22T10:00:00.000Z", "gpu.allocate", "alice", container="alice-proj", container_id="a1b2c3d4e5f6"
            ),
            ev("2026-11-22T10:30:00.000Z", "gpuxyz.alloc", "alice"),
            ev("2026-11-22T11:00:00.000Z", "gpu.release", "bob"),
            ev("2026-11-22T11:30:00.000Z", "maintenance.idle_kill", "alice"),
            ev("2026-11-22T11:45:00.000Z", "container.create", "dave"),
            ev("2026-11-22T12:00:00.000Z", "gpu", "carol"),
            ev("2026-11-22T12:30:00.000Z", "gpu.allocation.lock_timeout", "alice"),
        ],
    )
    code, out, _err = run_cli(capsys, config_path, "events", *argv, "--json")
    assert code == 0
    assert types_of(json.loads(out)["events"]) == expected


def test_cli_default_limit_is_50(capsys, cli_config):
    config_path, log_path = cli_config
    write_lines(log_path, [ev(f"2026-11-22T10:{i // 60:02d}:{i % 60:02d}Z", "a.b", n=i) for i in range(120)])
    _code, out, _err = run_cli(capsys, config_path, "events", "--json")
    data = json.loads(out)
    assert data["count"] == 50 and data["events"][0]["details"]["n"] == 70
    _code, out, _err = run_cli(capsys, config_path, "events", "--all", "--json")
    assert json.loads(out)["count"] == 120


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--since", "last tuesday"], 2, "--since: 'last tuesday' is not a time"),
        (["--until", "soon"], 2, "--until: 'soon' is not a time"),
        (["--since", "now", "--until", "1h"], 2, "is not before --until"),
        (["--limit", "0"], 2, "not 1 or more"),
        (["--limit", "5", "--all"], 2, "not allowed with"),
        (["log", "x.y", "novalue"], 2, "'novalue' is not KEY=VALUE"),
        (["log", "x.y", "--color", "red"], 2, "unknown option --color"),
    ],
)
def test_cli_usage_errors(capsys, cli_config, argv, code, message):
    config_path, _log_path = cli_config
    got, _out, err = run_cli(capsys, config_path, "events", *argv)
    assert got == code
    assert message in err


def test_cli_unreadable_log_says_who_may_read_it(capsys, cli_config, monkeypatch):
    config_path, log_path = cli_config
    write_lines(log_path, [ev("2026-11-22T10:00:00Z")])

    def denied(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(events.EventStream, "_open", staticmethod(denied))
    code, out, err = run_cli(capsys, config_path, "events")
    assert code == cli.EXIT_FAULT and out == ""
    assert err == (
        f"ds01: cannot read {log_path}: permission denied "
        "(the event log is readable by root and the ds01-admin group)\n"
    )


def test_cli_log_exits_0_when_the_event_cannot_be_recorded(capsys, tmp_path):
    config_path = tmp_path / "resource-limits.yaml"
    config_path.write_text(
        f"default_group: student\ngroups:\n  student: {{}}\npaths:\n  log_dir: {tmp_path / 'gone'}\n"
    )
    code, _out, err = run_cli(capsys, str(config_path), "events", "log", "a.b", "x=1")
    assert code == 0
    assert "warning: event a.b not recorded" in err
    code, _out, err = run_cli(capsys, str(config_path), "events", "log", "Not-A-Type")
    assert code == 0
    assert "not recorded" in err


def test_cli_log_exits_0_with_a_broken_config(capsys, tmp_path):
    config_path = tmp_path / "resource-limits.yaml"
    config_path.write_text("groups: [this is not a mapping\n")
    code, _out, err = run_cli(capsys, str(config_path), "events", "log", "a.b")
    assert code == 0
    assert "not recorded: the configuration is invalid" in err


def test_cli_empty_log(capsys, cli_config):
    config_path, _log_path = cli_config
    code, out, err = run_cli(capsys, config_path, "events")
    assert code == 0 and out == "no matching events\n"
    assert "does not exist yet" in err
    code, out, _err = run_cli(capsys, config_path, "events", "--json")
    assert json.loads(out) == {"schema_version": "1", "count": 0, "skipped_lines": 0, "events": []}


# -- the hash chain ------------------------------------------------------------------------------------


def chained_log(path, count, clock=None):
    event_log = events.EventLog(path, clock=clock)
    for n in range(count):
        assert event_log.write("gpu.allocate", user=f"u{n}", source="gateway", container=f"c{n}", n=n)
    return lines_of(path)


def put_lines(path, lines):
    with open(path, "wb") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))


def broken(path):
    report = events.verify_chain(path)
    assert not report.ok and report.status == "broken"
    return report.broken


def test_every_line_links_to_the_one_before(log_path):
    lines = chained_log(log_path, 5)
    assert events.chain_header(lines[0]) == (events.CHAIN_GENESIS, 1, "start")
    for before, line, number in zip(lines, lines[1:], range(2, 6)):
        assert events.chain_header(line) == (events.line_hash(before), number, None)
    report = events.verify_chain(log_path)
    assert (report.ok, report.status, report.lines, report.chained, report.begins) == (True, "intact", 5, 5, "start")


def test_readers_do_not_see_the_chain_header(log_path):
    chained_log(log_path, 2)
    for event in events.EventLog(log_path).read():
        assert not set(events.CHAIN_KEYS) & set(event)
        assert list(event) == ["timestamp", "event_type", "schema_version", "user", "source", "details"]


def test_an_edited_line_is_named(log_path):
    lines = chained_log(log_path, 6)
    lines[2] = lines[2].replace(b'"user":"u2"', b'"user":"zz"')
    put_lines(log_path, lines)
    found = broken(log_path)
    assert (found.line, found.what) == (3, "edited")
    assert "events.jsonl line 3 was edited" in found.message


def test_an_inserted_line_is_named_even_with_a_forged_link(log_path):
    lines = chained_log(log_path, 5)
    forged = events.chain_line(
        events.render_line("gpu.release", "mallory", "gateway", {"container": "c1"}), events.line_hash(lines[1]), 3
    )[:-1]
    put_lines(log_path, [*lines[:2], forged, *lines[2:]])
    found = broken(log_path)
    assert (found.line, found.what) == (3, "inserted")
    assert "line 4 links to events.jsonl line 2" in found.message


def test_a_removed_line_is_named(log_path):
    lines = chained_log(log_path, 6)
    put_lines(log_path, lines[:2] + lines[4:])
    found = broken(log_path)
    assert (found.line, found.what) == (3, "removed")
    assert "2 line(s) were removed between events.jsonl line 2 and events.jsonl line 3" in found.message


def test_a_cut_head_is_named(log_path):
    lines = chained_log(log_path, 6)
    put_lines(log_path, lines[3:])
    found = broken(log_path)
    assert (found.line, found.what) == (1, "head_cut")
    assert "the head of events.jsonl was cut" in found.message


def test_a_line_without_a_link_after_the_chain_began(log_path):
    lines = chained_log(log_path, 3)
    bare = events.render_line("gpu.release", "mallory")[:-1]
    put_lines(log_path, [*lines[:2], bare, lines[2]])
    assert (broken(log_path).line, broken(log_path).what) == (3, "unlinked")


def test_the_chain_runs_across_a_rotation(tmp_path, log_path):
    first = chained_log(log_path, 3)
    os.chmod(log_path, 0o600)
    os.rename(log_path, log_path + "-20261121")
    after = chained_log(log_path, 2)
    assert events.chain_header(after[0]) == (events.line_hash(first[-1]), 4, "rotated")
    assert stat.S_IMODE(os.stat(log_path).st_mode) == 0o600  # the new file took the rotated one's mode
    report = events.verify_chain(log_path)
    assert (report.ok, report.chained, len(report.files)) == (True, 5, 2)
    since = dt.datetime(2000, 1, 1, tzinfo=UTC)  # the reader still reads both files, in order
    assert [e["details"]["n"] for e in events.EventLog(log_path).read(events.EventFilter(since=since))] == [
        0,
        1,
        2,
        0,
        1,
    ]


def test_a_cut_across_a_rotation(log_path):
    first = chained_log(log_path, 4)
    os.rename(log_path, log_path + "-20261121")
    after = chained_log(log_path, 3)
    put_lines(log_path, after[1:])  # the new file's head
    found = broken(log_path)
    assert (found.file, found.line, found.what) == (log_path, 1, "head_cut")
    put_lines(log_path, after)
    put_lines(log_path + "-20261121", first[:2])  # the rotated file's end
    found = broken(log_path)
    assert (found.file, found.line, found.what) == (log_path + "-20261121", 2, "end_cut")
    assert "the end of events.jsonl-20261121 was cut after line 2: 2 line(s) missing" in found.message


def test_the_oldest_kept_file_may_continue_a_file_no_longer_kept(log_path):
    chained_log(log_path, 2)
    os.rename(log_path, log_path + "-20261120")
    chained_log(log_path, 2)
    os.remove(log_path + "-20261120")  # rotated away (logrotate's `rotate N`)
    report = events.verify_chain(log_path)
    assert (report.ok, report.begins) == (True, "rotated")
    assert "continues a file no longer kept" in report.message()


def test_compressed_rotated_files_are_part_of_the_chain(log_path):
    chained_log(log_path, 3)
    with open(log_path, "rb") as plain, gzip.open(log_path + "-20261120.gz", "wb") as packed:
        packed.write(plain.read())
    os.remove(log_path)
    after = chained_log(log_path, 2)
    assert events.chain_header(after[0])[1:] == (4, "rotated")
    report = events.verify_chain(log_path)
    assert (report.ok, report.chained, report.files) == (True, 5, [log_path + "-20261120.gz", log_path])


def test_an_old_log_without_links_verifies_as_unchained(log_path):
    old = [json.dumps({"ts": "2025-06-01T12:00:00Z", "event": "gpu.allocated", "user": "carol"}).encode()] * 3
    put_lines(log_path, old)
    report = events.verify_chain(log_path)
    assert (report.ok, report.status) == (True, "unchained")
    assert report.message().startswith("unchained from events.jsonl line 1")
    new = chained_log(log_path, 2)[3:]
    assert events.chain_header(new[0])[0] == events.line_hash(old[-1])
    report = events.verify_chain(log_path)
    assert (report.ok, report.status, report.chained, report.unchained["count"]) == (True, "intact", 2, 3)
    assert "unchained from events.jsonl line 1 to events.jsonl line 3" in report.message()


def test_a_busy_lock_never_holds_a_writer_back(log_path):
    chained_log(log_path, 1)
    writer = events.EventLog(log_path, lock_wait=0.05)
    holder = os.open(writer.lock_path, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert writer.write("a.b", n=1) and writer.unlocked == 1
        assert writer.write("a.b", n=2) and writer.unlocked == 2  # the second waits only LOCK_RETRY_S
    finally:
        os.close(holder)
    assert writer.write("a.b", n=3) and writer.unlocked == 2
    lines = lines_of(log_path)
    assert [events.chain_header(line)[2] for line in lines] == ["start", "unlocked", "unlocked", None]
    report = events.verify_chain(log_path)  # nobody raced them: their links hold
    assert (report.ok, report.unlocked) == (True, 2)
    assert stat.S_IMODE(os.stat(writer.lock_path).st_mode) == 0o600


def test_an_unlocked_line_that_does_not_link_is_reported(log_path):
    lines = chained_log(log_path, 3)
    racer = events.chain_line(events.render_line("a.b"), events.line_hash(lines[0]), 2, "unlocked")[:-1]
    put_lines(log_path, [*lines[:2], racer, lines[2]])
    found = broken(log_path)
    assert (found.line, found.what) == (3, "unlocked")


def test_cli_verify(capsys, cli_config):
    config_path, log_path = cli_config
    code, out, _err = run_cli(capsys, config_path, "events", "verify")
    assert code == 0 and "empty" in out
    lines = chained_log(log_path, 4)
    code, out, _err = run_cli(capsys, config_path, "events", "verify", "--json")
    data = json.loads(out)
    assert code == 0 and (data["ok"], data["status"], data["lines"], data["broken"]) == (True, "intact", 4, None)
    put_lines(log_path, [lines[0], lines[1].replace(b"u1", b"u9"), *lines[2:]])
    code, out, _err = run_cli(capsys, config_path, "events", "verify")
    assert code == 1 and out.startswith(f"BROKEN at {log_path} line 2 (edited): events.jsonl line 2 was edited")
    code, out, _err = run_cli(capsys, config_path, "events", "--json", "verify")
    assert code == 1 and json.loads(out)["broken"]["line"] == 2


def test_cli_verify_unreadable_is_a_fault(capsys, cli_config):
    config_path, log_path = cli_config
    os.mkdir(log_path)
    code, _out, err = run_cli(capsys, config_path, "events", "verify")
    assert code == 3 and "cannot read" in err


def test_the_chain_lock_takes_the_log_directorys_group(tmp_path):
    """Every file in the log directory has its group (the ds01_common permissions manifest); a lock file root
    creates takes it too, so the next deploy finds nothing to change."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    gid = 4 if os.geteuid() == 0 else os.getegid()  # adm, the admin group's stand-in, when root may chown
    os.chown(log_dir, -1, gid)
    log = events.EventLog(str(log_dir / "events.jsonl"))
    assert log.write("test.lock", source="t")
    info = os.stat(log.lock_path)
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o600)
