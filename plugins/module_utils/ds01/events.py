"""The audit trail: one JSON object per line in ``<paths.log_dir>/events.jsonl``.

Envelope, schema "1" (compact JSON, keys in this order, ASCII only)::

    {"timestamp": "2026-11-22T12:00:00.123Z", "event_type": "gpu.allocate", "schema_version": "1",
     "user": "alice", "source": "gateway", "details": {"container": "alice-proj", "slots": ["1.0"]}}

- ``timestamp``: UTC, ISO-8601 with a ``Z`` suffix, millisecond precision.
- ``event_type``: ``category.action`` (``^[a-z][a-z0-9_]*(\\.[a-z0-9_]+)+$``); an event with any other type is
  dropped and logged, never written.
- ``user`` and ``source`` are omitted when empty, ``details`` when there are none.
- A line is at most ``MAX_LINE_BYTES`` (4000) bytes, newline included, so that one ``write()`` of it is atomic
  on every filesystem and pipe (below PIPE_BUF). A larger event keeps its envelope and gets
  ``details = {"truncated": true, "original_size": <bytes of the full line>}`` plus the ``container``,
  ``container_id`` and ``container_name`` keys of the original details when they are short strings (so
  ``ds01 events --container`` still finds it); if even that does not fit, the event is dropped.

Writing: every line is one ``os.write()`` on a descriptor opened ``O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC``
(mode 0640) for that line, so concurrent writers in many processes never interleave, logrotate's
``copytruncate`` is harmless, and a rotated-away file is never written to. ``EventLog.write`` never raises into
its caller: any failure (no permission, disk full, a read-only file system, a short write, an unusable type) is
logged with ``logging`` and answered with ``False``.

A full file system can cut a line short (a short ``write()``). So that such a fragment never swallows the next
event, a writer that finds the file not ending in a newline starts its line with one: the fragment becomes a line
of its own, which readers skip and count. Before it does, one zero-length ``write()`` waits for a write that may
be in progress (Linux file systems hold the inode lock across a write), so a line another process is still
writing is not mistaken for a fragment; where that cannot be told apart, the cost is one blank line.

Events that cannot be written are counted, never silently lost: per process (``dropped_in_process()``, and
``EventLog.dropped``/``last_error`` per log) and per writer (the event's ``source``) in a small counter file,
``<paths.run_dir>/events-dropped/<writer>.json`` (``{"writer", "dropped", "last_error", "last_dropped_at"}``,
replaced atomically under a per-writer lock that is only tried, never waited for). ``run_dir`` is a different
file system from the log's (tmpfs), so the count survives a full log disk; the exporter publishes it as
``ds01_events_dropped_total{writer}``. A log learns its counter directory from ``default_log_path(config)``
(every writer gets its path there) or from ``EventLog(counter_dir=…)``; without one, drops are counted in the
process only. A count that could not be stored (lock busy, run_dir unwritable) is kept and added at the next
attempt or at exit.

Reading (``EventLog.read``) is tolerant: blank and unparseable lines are skipped and counted, the older
upstream schema (``ts``/``event`` keys, extra fields at top level) is normalised to the envelope above, and
filters compare real timezone-aware datetimes. Rotated files (``events.jsonl.1``, ``events.jsonl-YYYYMMDD``;
compressed ones are not read) are included when ``since`` reaches back before their last write.
"""

from __future__ import annotations

import atexit
import datetime as dt
import fcntl
import json
import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional, Union

from . import fsutil

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
LOG_NAME = "events.jsonl"
DEFAULT_LOG_DIR = "/var/log/ds01"
MAX_LINE_BYTES = 4000  # PIPE_BUF (4096) minus headroom, as upstream; the newline counts
FILE_MODE = 0o640
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
# Read access as well, to see whether the file ends in a newline (root's services can; others fall back).
OPEN_FLAGS_RW = (OPEN_FLAGS & ~os.O_WRONLY) | os.O_RDWR
DROPPED_SUBDIR = "events-dropped"  # under paths.run_dir: one counter file per writer
_DROP_LOCK_TRIES = 20  # x 1 ms: a busy counter lock is retried briefly, then the count waits for the next try
_WRITER_RE = re.compile(r"[^a-z0-9_.-]+")

EVENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
ENVELOPE_KEYS = ("timestamp", "event_type", "schema_version", "user", "source", "details")
# Details keys that survive truncation (when short strings): what the container filter looks at.
CONTAINER_KEYS = ("container", "container_id", "container_name")
_KEPT_VALUE_MAX = 256
_READ_BLOCK = 64 * 1024

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def format_timestamp(moment: dt.datetime) -> str:
    """``2026-11-22T12:00:00.123Z``: UTC, millisecond precision (a naive value is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_log_path(config: Any = None) -> str:
    """``<config.paths.log_dir>/events.jsonl``; ``/var/log/ds01/events.jsonl`` without a config.

    Also notes the config's counter directory for that log (``dropped_dir``), so that an ``EventLog`` made from
    this path counts its lost events where the exporter reads them.
    """
    paths = getattr(config, "paths", None) if config is not None else None
    path = os.path.join(getattr(paths, "log_dir", None) or DEFAULT_LOG_DIR, LOG_NAME)
    counter_dir = dropped_dir(config)
    if counter_dir:
        _COUNTER_DIRS[os.path.abspath(path)] = counter_dir
    return path


def dropped_dir(config: Any) -> Optional[str]:
    """``<config.paths.run_dir>/events-dropped``, or None without a config."""
    run_dir = getattr(getattr(config, "paths", None), "run_dir", None) if config is not None else None
    return os.path.join(run_dir, DROPPED_SUBDIR) if run_dir else None


def writer_name(source: Optional[str]) -> str:
    """The writer an event's ``source`` counts under: lower case, ``[a-z0-9_.-]``, ``unknown`` when empty."""
    name = _WRITER_RE.sub("-", str(source or "").lower()).strip("-.")[:64]
    return name or "unknown"


# -- counting what could not be written --------------------------------------------------------------

_COUNTER_DIRS: dict[str, str] = {}  # abspath of a log -> its counter directory (from default_log_path)
_DROPS: dict[str, int] = {}  # writer -> events this process could not write
_PENDING: dict[tuple[str, str], list] = {}  # (counter dir, writer) -> [count not yet stored, last error]
_DROPS_LOCK = threading.Lock()


def dropped_in_process() -> dict[str, int]:
    """Events this process could not write, by writer."""
    with _DROPS_LOCK:
        return dict(_DROPS)


def _count_drop(counter_dir: Optional[str], writer: str, why: str) -> None:
    with _DROPS_LOCK:
        _DROPS[writer] = _DROPS.get(writer, 0) + 1
        if counter_dir is None:
            return
        entry = _PENDING.setdefault((counter_dir, writer), [0, why])
        entry[0] += 1
        entry[1] = why
    _store_drops(counter_dir, writer)


def _store_drops(counter_dir: str, writer: str) -> bool:
    """Add this process's not yet stored drops to the writer's counter file; False when they stay pending."""
    key = (counter_dir, writer)
    with _DROPS_LOCK:
        entry = _PENDING.get(key)
        if not entry or entry[0] == 0:
            return True
        count, why = entry[0], entry[1]
    lock_fd = -1
    try:
        os.makedirs(counter_dir, mode=0o755, exist_ok=True)
        lock_fd = os.open(os.path.join(counter_dir, f".{writer}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        for _attempt in range(_DROP_LOCK_TRIES):
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.001)
        else:
            log.debug("counter lock of writer %s is busy: %d dropped events stay pending", writer, count)
            return False
        path = os.path.join(counter_dir, f"{writer}.json")
        stored = read_drop_file(path)
        fsutil.atomic_write_json(
            path,
            {
                "schema_version": SCHEMA_VERSION,
                "writer": writer,
                "dropped": stored + count,
                "last_error": why,
                "last_dropped_at": format_timestamp(_utc_now()),
            },
        )
    except OSError as exc:
        log.debug("cannot store the dropped-event count of writer %s in %s: %s", writer, counter_dir, exc)
        return False
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    with _DROPS_LOCK:
        entry = _PENDING.get(key)
        if entry:
            entry[0] -= count
    return True


def _store_all_pending() -> None:
    for counter_dir, writer in list(_PENDING):
        _store_drops(counter_dir, writer)


atexit.register(_store_all_pending)


def read_drop_file(path: str) -> int:
    """The count in one counter file (0 when it is missing; a damaged one is logged and read as 0)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return 0
    except ValueError as exc:
        log.warning("dropped-event counter %s is damaged (%s); counting again from 0", path, exc)
        return 0
    value = data.get("dropped") if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def read_drop_counts(counter_dir: Optional[str]) -> dict[str, int]:
    """``{writer: events it could not write}`` from the counter files in ``counter_dir`` (empty when none)."""
    counts: dict[str, int] = {}
    if not counter_dir:
        return counts
    try:
        names = sorted(os.listdir(counter_dir))
    except FileNotFoundError:
        return counts
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            counts[name[: -len(".json")]] = read_drop_file(os.path.join(counter_dir, name))
    return counts


# -- writing -----------------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """``value`` with NaN/Infinity floats replaced by their text (JSON has no spelling for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_finite(item) for item in value]
    return value


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        return json.dumps(_finite(obj), separators=(",", ":"), default=str, allow_nan=False)


def _short_container_keys(details: Mapping[str, Any]) -> dict:
    return {
        key: details[key]
        for key in CONTAINER_KEYS
        if isinstance(details.get(key), str) and len(details[key]) <= _KEPT_VALUE_MAX
    }


def render_line(
    event_type: str,
    user: Optional[str] = None,
    source: Optional[str] = None,
    details: Optional[Mapping[str, Any]] = None,
    *,
    timestamp: Optional[dt.datetime] = None,
) -> bytes:
    """The bytes of one event line (newline included), truncated to fit ``MAX_LINE_BYTES``.

    Raises ``ValueError`` for a bad event type or an event that cannot be made to fit, ``TypeError`` or
    ``ValueError`` for details JSON cannot hold even as text (non-string keys, cycles). ``EventLog.write``
    turns all of these into ``False`` and a log line.
    """
    if not isinstance(event_type, str) or not EVENT_TYPE_RE.match(event_type):
        raise ValueError(f"event type {event_type!r} is not of the form category.action (lower case)")
    envelope: dict[str, Any] = {
        "timestamp": format_timestamp(timestamp or _utc_now()),
        "event_type": event_type,
        "schema_version": SCHEMA_VERSION,
    }
    for key, value in (("user", user), ("source", source)):
        if value is not None and value != "":
            envelope[key] = value if isinstance(value, str) else str(value)
    if details:
        envelope["details"] = dict(details)
    line = (_dumps(envelope) + "\n").encode("ascii")
    if len(line) <= MAX_LINE_BYTES:
        return line
    original_size = len(line)
    envelope["details"] = {"truncated": True, "original_size": original_size, **_short_container_keys(details or {})}
    line = (_dumps(envelope) + "\n").encode("ascii")
    if len(line) > MAX_LINE_BYTES:
        envelope["details"] = {"truncated": True, "original_size": original_size}
        line = (_dumps(envelope) + "\n").encode("ascii")
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(
            f"event {event_type} is {original_size} bytes and its user/source alone exceed {MAX_LINE_BYTES}"
        )
    log.info("event %s truncated: %d bytes > %d", event_type, original_size, MAX_LINE_BYTES)
    return line


class EventLog:
    """The JSONL event log at ``path``: ``write`` appends one event, ``read`` queries it.

    ``dropped`` counts the events this log object could not write and ``last_error`` says why the last one was
    lost; ``counter_dir`` is where drops are counted per writer (default: the one ``default_log_path`` noted).
    """

    def __init__(self, path: str, clock: Optional[Clock] = None, counter_dir: Optional[str] = None) -> None:
        self.path = os.fspath(path)
        self._clock = clock or _utc_now
        self._counter_dir = counter_dir
        self._failing = False  # after a failure, repeats of it are logged at debug level until a success
        self.dropped = 0
        self.last_error: Optional[str] = None

    def __repr__(self) -> str:
        return f"EventLog({self.path!r})"

    @property
    def counter_dir(self) -> Optional[str]:
        return self._counter_dir or _COUNTER_DIRS.get(os.path.abspath(self.path))

    # -- write ---------------------------------------------------------------------------------------
    def write(
        self, event_type: str, /, user: Optional[str] = None, source: Optional[str] = None, **details: Any
    ) -> bool:
        """Append one event; True when the whole line reached the file. Never raises."""
        writer = writer_name(source)
        try:
            line = render_line(event_type, user, source, details, timestamp=self._clock())
        except (TypeError, ValueError, RecursionError) as exc:
            log.warning("event %r dropped: %s", event_type, exc)
            self._dropped(writer, f"event {event_type!r} cannot be written: {exc}")
            return False
        readable = True
        try:
            fd = os.open(self.path, OPEN_FLAGS_RW, FILE_MODE)
        except PermissionError:
            readable = False  # may write but not read: append without looking at the end
            try:
                fd = os.open(self.path, OPEN_FLAGS, FILE_MODE)
            except OSError as exc:
                self._failed(event_type, writer, f"cannot open {self.path}: {exc.strerror or exc}")
                return False
        except OSError as exc:
            self._failed(event_type, writer, f"cannot open {self.path}: {exc.strerror or exc}")
            return False
        try:
            if readable and _ends_inside_a_line(fd):
                line = b"\n" + line  # end the fragment a short write left, so it cannot swallow this event
            written = os.write(fd, line)
        except OSError as exc:
            self._failed(event_type, writer, f"cannot write {self.path}: {exc.strerror or exc}")
            return False
        finally:
            try:
                os.close(fd)
            except OSError as exc:  # e.g. a deferred write error reported at close (NFS)
                log.warning("closing %s after event %s: %s", self.path, event_type, exc)
        if written != len(line):
            # Never complete it with a second write: another writer's line could land in between.
            self._failed(event_type, writer, f"short write to {self.path} ({written} of {len(line)} bytes)")
            return False
        self._failing = False
        counter_dir = self.counter_dir
        if counter_dir is not None and (counter_dir, writer) in _PENDING:
            _store_drops(counter_dir, writer)  # a count that could not be stored before
        return True

    def _failed(self, event_type: str, writer: str, why: str) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "event %s not recorded: %s", event_type, why)
        self._failing = True
        self._dropped(writer, f"event {event_type} not recorded: {why}")

    def _dropped(self, writer: str, why: str) -> None:
        self.dropped += 1
        self.last_error = why
        try:
            _count_drop(self.counter_dir, writer, why)
        except Exception:  # the never-raise edge: counting must not turn a lost event into a crash of the caller
            log.exception("could not count a dropped event of writer %s", writer)

    # -- read ----------------------------------------------------------------------------------------
    def read(self, filters: Union[EventFilter, Mapping[str, Any], None] = None) -> EventStream:
        """The events matching ``filters`` in file order (oldest first), as an iterator of envelopes.

        A missing log reads as empty; a log that exists but cannot be read raises ``OSError`` (e.g.
        ``PermissionError``) when iteration starts. ``.skipped_lines`` of the returned stream counts the
        blank and unparseable lines seen (final once it is exhausted).
        """
        if filters is None:
            filters = EventFilter()
        elif not isinstance(filters, EventFilter):
            filters = EventFilter(**dict(filters))
        return EventStream(self, filters)

    def files_for(self, since: Optional[dt.datetime]) -> list[str]:
        """The files a query reads, oldest first: rotated ones last written at/after ``since``, then the log."""
        files = []
        if since is not None:
            cutoff = since.timestamp()
            for mtime, name in _rotated(self.path):
                if mtime >= cutoff:
                    files.append(name)
        files.append(self.path)
        return files


def _ends_inside_a_line(fd: int, rounds: int = 3) -> bool:
    """True when the file ends in a fragment (no final newline) that no write in progress is still extending.

    A zero-length ``write()`` takes the inode lock, so it returns only after a write in progress has finished;
    if the size is then unchanged, the fragment is what a short write left behind.
    """
    for _round in range(rounds):
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return False
        os.write(fd, b"")
        if os.fstat(fd).st_size == size:
            return True
    return False


_ROTATED_RE = re.compile(r"^(?:\.(?P<n>\d+)|-(?P<date>\d{8,14}))$")


def _rotated(path: str) -> list[tuple[float, str]]:
    """``(mtime, path)`` of the plain rotated siblings of ``path``, oldest first."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    found = []
    for name in names:
        if not name.startswith(base):
            continue
        match = _ROTATED_RE.match(name[len(base) :])
        if match is None:
            continue
        full = os.path.join(directory, name)
        try:
            mtime = os.stat(full).st_mtime
        except OSError:
            continue
        # Age order: older files first; ``.N`` grows with age, ``-DATE`` shrinks with it.
        age_key = -int(match.group("n")) if match.group("n") else int(match.group("date"))
        found.append((mtime, age_key, full))
    found.sort()
    return [(mtime, full) for mtime, _age, full in found]


# -- reading -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """What ``EventLog.read`` returns: every condition given must hold (AND).

    - ``user``: exact login.
    - ``type_prefix``: ``gpu`` (or ``gpu.``) matches ``gpu`` and ``gpu.allocate``, not ``gpuxyz.a``.
    - ``container``: a name (exact) or an id prefix, looked up in ``container``/``container_name``/
      ``container_id`` at top level or in ``details``.
    - ``since`` <= timestamp < ``until``: timezone-aware datetimes (naive ones are taken as local time).
    - ``limit``: only the last N matching events (still returned oldest first); None for all.
    """

    user: Optional[str] = None
    type_prefix: Optional[str] = None
    container: Optional[str] = None
    since: Optional[dt.datetime] = None
    until: Optional[dt.datetime] = None
    limit: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.astimezone())
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be 0 or more, not {self.limit}")

    def matches(self, event: Mapping[str, Any]) -> bool:
        if self.user is not None and event.get("user") != self.user:
            return False
        if self.type_prefix:
            prefix = self.type_prefix.rstrip(".")
            event_type = event.get("event_type")
            if not isinstance(event_type, str) or not (event_type == prefix or event_type.startswith(prefix + ".")):
                return False
        if self.container and not _container_matches(event, self.container):
            return False
        if self.since is not None or self.until is not None:
            moment = event_time(event)
            if moment is None:
                return False
            if self.since is not None and moment < self.since:
                return False
            if self.until is not None and moment >= self.until:
                return False
        return True


_HEX_RE = re.compile(r"^[0-9a-f]+$")


def _container_values(event: Mapping[str, Any]) -> Iterator[str]:
    details = event.get("details")
    for holder in (event, details if isinstance(details, Mapping) else {}):
        for key in CONTAINER_KEYS:
            value = holder.get(key)
            if isinstance(value, str) and value:
                yield value


def _container_matches(event: Mapping[str, Any], wanted: str) -> bool:
    wanted_is_hex = bool(_HEX_RE.match(wanted))
    for value in _container_values(event):
        if value == wanted:
            return True
        # an id prefix (docker's short ids), or a full id asked about an event that kept a short one
        if (
            wanted_is_hex
            and _HEX_RE.match(value)
            and (value.startswith(wanted) or (len(value) >= 12 and wanted.startswith(value)))
        ):
            return True
    return False


def container_of(event: Mapping[str, Any]) -> Optional[str]:
    """The container an event is about (name preferred over id), or None."""
    details = event.get("details")
    details = details if isinstance(details, Mapping) else {}
    for key in ("container", "container_name", "container_id"):
        for holder in (event, details):
            value = holder.get(key)
            if isinstance(value, str) and value:
                return value
    return None


_OFFSET_NO_COLON_RE = re.compile(r"([+-]\d{2})(\d{2})$")


def _parse_iso(text: str) -> dt.datetime:
    """``datetime.fromisoformat`` plus what Python 3.9's lacks: a ``Z`` suffix and ``+HHMM`` offsets."""
    text = text.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    else:
        text = _OFFSET_NO_COLON_RE.sub(r"\1:\2", text) if "T" in text or " " in text else text
    return dt.datetime.fromisoformat(text)


def event_time(event: Mapping[str, Any]) -> Optional[dt.datetime]:
    """The aware datetime of an event's ``timestamp`` (a zone-less stamp is UTC), or None."""
    value = event.get("timestamp")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value, dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = _parse_iso(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)


def normalize(record: Mapping[str, Any]) -> Optional[dict]:
    """A parsed line as a schema-1 envelope; None when it is no event at all.

    The older upstream schema (``ts``, ``event``, fields at top level) becomes ``timestamp``, ``event_type``
    and ``details``; its ``schema_version`` is kept if it had one, else ``"0"``.
    """
    if not isinstance(record, Mapping):
        return None
    if record.get("schema_version") == SCHEMA_VERSION and "event_type" in record:
        return dict(record)
    event_type = record.get("event_type", record.get("event"))
    timestamp = record.get("timestamp", record.get("ts"))
    if not isinstance(event_type, str) or not event_type:
        return None
    event: dict[str, Any] = {"timestamp": timestamp, "event_type": event_type}
    event["schema_version"] = str(record.get("schema_version", "0"))
    for key in ("user", "source"):
        if record.get(key) not in (None, ""):
            event[key] = record[key]
    details = dict(record["details"]) if isinstance(record.get("details"), Mapping) else {}
    skip = {"timestamp", "ts", "event_type", "event", "schema_version", "user", "source", "details"}
    for key, value in record.items():
        if key not in skip:
            details.setdefault(key, value)
    if details:
        event["details"] = details
    moment = event_time(event)
    if moment is not None:
        event["timestamp"] = format_timestamp(moment)
    return event


def _parse_line(raw: bytes) -> Optional[dict]:
    try:
        return normalize(json.loads(raw))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def _lines_backwards(handle: BinaryIO, block: int = _READ_BLOCK) -> Iterator[bytes]:
    """The lines of ``handle`` (bytes, newline stripped) from the last to the first."""
    end = os.fstat(handle.fileno()).st_size
    tail = b""
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        chunk = handle.read(end - start) + tail
        end = start
        parts = chunk.split(b"\n")
        tail = parts[0]  # may be the end of a line that starts in an earlier block
        yield from reversed(parts[1:])
    yield tail


class EventStream:
    """An iterator of event envelopes with ``skipped_lines`` (blank/corrupt lines seen) and ``files``."""

    def __init__(self, event_log: EventLog, filters: EventFilter) -> None:
        self.filters = filters
        self.files = event_log.files_for(filters.since)
        self.skipped_lines = 0
        self._events = self._generate()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict:
        return next(self._events)

    def _generate(self) -> Iterator[dict]:
        limit = self.filters.limit
        if limit == 0:
            return
        if limit is None:
            for path in self.files:
                yield from self._matching(self._forward(path))
            return
        found: deque = deque()
        for path in reversed(self.files):
            for event in self._matching(self._backward(path)):
                found.appendleft(event)
                if len(found) >= limit:
                    yield from found
                    return
        yield from found

    def _matching(self, lines: Iterable[bytes]) -> Iterator[dict]:
        for raw in lines:
            event = _parse_line(raw) if raw.strip() else None
            if event is None:
                self.skipped_lines += 1
                continue
            if self.filters.matches(event):
                yield event

    @staticmethod
    def _open(path: str) -> Optional[BinaryIO]:
        try:
            return open(path, "rb")  # closed by the generators below
        except FileNotFoundError:
            return None

    def _forward(self, path: str) -> Iterator[bytes]:
        handle = self._open(path)
        if handle is None:
            return
        with handle:
            for raw in handle:
                yield raw.rstrip(b"\n")

    def _backward(self, path: str) -> Iterator[bytes]:
        handle = self._open(path)
        if handle is None:
            return
        with handle:
            lines = _lines_backwards(handle)
            first = next(lines, None)
            if first:  # b"" after the final newline is the end of the file, not a blank line
                yield first
            yield from lines


# -- time values for the CLI -------------------------------------------------------------------------

_RELATIVE_RE = re.compile(r"^(\d+)\s*(s|sec|secs|m|min|mins|h|hr|hrs|d|day|days|w|wk|wks)(?:\s+ago)?$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, now: Optional[dt.datetime] = None) -> dt.datetime:
    """A timezone-aware datetime from a CLI value; ``ValueError`` with a sentence when it is none.

    Accepted: ISO-8601 (``2026-11-22``, ``2026-11-22T14:30``, ``…Z``, ``…+01:00``; without a zone it is local
    time), ``now``, ``today``/``yesterday`` (local midnight), and ``30s``/``15m``/``2h``/``7d``/``1w``
    meaning that long ago.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        now = now.astimezone()
    text = (value or "").strip().lower()
    if text == "now":
        return now
    if text in ("today", "yesterday"):
        local = now.astimezone()
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if text == "yesterday":
            # one calendar day back in local time (not 24 h: days around a DST change are 23 or 25 h)
            day = (midnight - dt.timedelta(hours=12)).date()
            midnight = dt.datetime(day.year, day.month, day.day).astimezone()
        else:
            midnight = dt.datetime(local.year, local.month, local.day).astimezone()
        return midnight
    match = _RELATIVE_RE.match(text)
    if match:
        return now - dt.timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)[0]])
    try:
        moment = _parse_iso((value or "").strip())
    except (ValueError, IndexError):
        raise ValueError(
            f"{value!r} is not a time: use ISO-8601 (2026-11-22 or 2026-11-22T14:30[Z|+01:00]), "
            "now, today, yesterday, or an age such as 30s, 15m, 2h, 7d, 1w"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()
