"""The event log's envelope constants, the log's path, the writer an event counts under, and reading a file's
lines from the end (the package docstring, ``events/__init__.py``, describes the whole)."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable, Optional

SCHEMA_VERSION = "1"
LOG_NAME = "events.jsonl"
DEFAULT_LOG_DIR = "/var/log/ds01"
MAX_LINE_BYTES = 4000  # PIPE_BUF (4096) minus headroom, as upstream; the newline counts
FILE_MODE = 0o640
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
# Read access as well, to see whether the file ends in a newline (root's services can; others fall back).
OPEN_FLAGS_RW = (OPEN_FLAGS & ~os.O_WRONLY) | os.O_RDWR
DROPPED_SUBDIR = "events-dropped"  # under paths.run_dir: one counter file per writer
_WRITER_RE = re.compile(r"[^a-z0-9_.-]+")

EVENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
ENVELOPE_KEYS = ("timestamp", "event_type", "schema_version", "user", "source", "details")
# Details keys that survive truncation (when short strings): what the container filter looks at.
CONTAINER_KEYS = ("container", "container_id", "container_name")
_READ_BLOCK = 64 * 1024

Clock = Callable[[], dt.datetime]
COUNTER_DIRS: dict[str, str] = {}  # abspath of a log -> its counter directory (from default_log_path)


def utc_now() -> dt.datetime:
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
        COUNTER_DIRS[os.path.abspath(path)] = counter_dir
    return path


def dropped_dir(config: Any) -> Optional[str]:
    """``<config.paths.run_dir>/events-dropped``, or None without a config."""
    run_dir = getattr(getattr(config, "paths", None), "run_dir", None) if config is not None else None
    return os.path.join(run_dir, DROPPED_SUBDIR) if run_dir else None


def writer_name(source: Optional[str]) -> str:
    """The writer an event's ``source`` counts under: lower case, ``[a-z0-9_.-]``, ``unknown`` when empty."""
    name = _WRITER_RE.sub("-", str(source or "").lower()).strip("-.")[:64]
    return name or "unknown"


def lines_backwards(handle: BinaryIO, block: Optional[int] = None) -> Iterator[bytes]:
    """The lines of ``handle`` (bytes, newline stripped) from the last to the first, read in blocks of ``block``
    bytes (``_READ_BLOCK``, looked up at the call, when None)."""
    block = block or _READ_BLOCK
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
