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
its caller: any failure (no permission, disk full, a short write, an unusable type) is logged with ``logging``
and answered with ``False``.

Reading (``EventLog.read``) is tolerant: blank and unparseable lines are skipped and counted, the older
upstream schema (``ts``/``event`` keys, extra fields at top level) is normalised to the envelope above, and
filters compare real timezone-aware datetimes. Rotated files (``events.jsonl.1``, ``events.jsonl-YYYYMMDD``;
compressed ones are not read) are included when ``since`` reaches back before their last write.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional, Union

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
LOG_NAME = "events.jsonl"
DEFAULT_LOG_DIR = "/var/log/ds01"
MAX_LINE_BYTES = 4000  # PIPE_BUF (4096) minus headroom, as upstream; the newline counts
FILE_MODE = 0o640
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)

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
    """``<config.paths.log_dir>/events.jsonl``; ``/var/log/ds01/events.jsonl`` without a config."""
    log_dir = getattr(getattr(config, "paths", None), "log_dir", None) if config is not None else None
    return os.path.join(log_dir or DEFAULT_LOG_DIR, LOG_NAME)


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
    """The JSONL event log at ``path``: ``write`` appends one event, ``read`` queries it."""

    def __init__(self, path: str, clock: Optional[Clock] = None) -> None:
        self.path = os.fspath(path)
        self._clock = clock or _utc_now
        self._failing = False  # after a failure, repeats of it are logged at debug level until a success

    def __repr__(self) -> str:
        return f"EventLog({self.path!r})"

    # -- write ---------------------------------------------------------------------------------------
    def write(
        self, event_type: str, /, user: Optional[str] = None, source: Optional[str] = None, **details: Any
    ) -> bool:
        """Append one event; True when the whole line reached the file. Never raises."""
        try:
            line = render_line(event_type, user, source, details, timestamp=self._clock())
        except (TypeError, ValueError, RecursionError) as exc:
            log.warning("event %r dropped: %s", event_type, exc)
            return False
        try:
            fd = os.open(self.path, OPEN_FLAGS, FILE_MODE)
        except OSError as exc:
            self._failed(event_type, f"cannot open {self.path}: {exc.strerror or exc}")
            return False
        try:
            written = os.write(fd, line)
        except OSError as exc:
            self._failed(event_type, f"cannot write {self.path}: {exc.strerror or exc}")
            return False
        finally:
            try:
                os.close(fd)
            except OSError as exc:  # e.g. a deferred write error reported at close (NFS)
                log.warning("closing %s after event %s: %s", self.path, event_type, exc)
        if written != len(line):
            # Never complete it with a second write: another writer's line could land in between.
            self._failed(event_type, f"short write to {self.path} ({written} of {len(line)} bytes)")
            return False
        self._failing = False
        return True

    def _failed(self, event_type: str, why: str) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "event %s not recorded: %s", event_type, why)
        self._failing = True

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
