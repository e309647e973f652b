"""Reading the event log: ``EventFilter``, the tolerant ``EventStream`` (older schema normalised, damaged lines
skipped and counted), and the time values the CLI accepts (``parse_time``)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO, Optional

from ..record import record
from .chain import CHAIN_KEYS
from .common import CONTAINER_KEYS, SCHEMA_VERSION, format_timestamp, lines_backwards


@record(frozen=True)
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
        return {key: value for key, value in record.items() if key not in CHAIN_KEYS}
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
    skip = {"timestamp", "ts", "event_type", "event", "schema_version", "user", "source", "details", *CHAIN_KEYS}
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


class EventStream:
    """An iterator of event envelopes with ``skipped_lines`` (blank/corrupt lines seen) and ``files``."""

    def __init__(self, event_log: Any, filters: EventFilter) -> None:  # an EventLog: only its files_for is read
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
            lines = lines_backwards(handle)
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
