"""The audit trail: one JSON object per line in ``<paths.log_dir>/events.jsonl``.

Envelope, schema "1" (compact JSON, keys in this order, ASCII only)::

    {"timestamp": "2026-11-22T12:00:00.123Z", "event_type": "gpu.allocate", "schema_version": "1",
     "user": "alice", "source": "gateway", "details": {"container": "alice-proj", "slots": ["1.0"]}}

- ``timestamp``: UTC, ISO-8601 with a ``Z`` suffix, millisecond precision.
- ``event_type``: ``category.action`` (``^[a-z][a-z0-9_]*(\\.[a-z0-9_]+)+$``); an event with any other type is
  dropped and logged, never written.
- ``user`` and ``source`` are omitted when empty, ``details`` when there are none.
- A line is at most ``MAX_LINE_BYTES`` (4000) bytes, newline and chain header included, so that one ``write()``
  of it is atomic on every filesystem and pipe (below PIPE_BUF): the envelope may use ``MAX_BODY_BYTES`` (4000 less
  the longest chain header). A larger event keeps its envelope and gets
  ``details = {"truncated": true, "original_size": <bytes of the full line>}`` plus the ``container``,
  ``container_id`` and ``container_name`` keys of the original details when they are short strings (so
  ``ds01 events --container`` still finds it); if even that does not fit, the event is dropped.

The chain (tamper evidence). Every line starts with a header, ``{"prev":"<sha256 hex>","seq":N[,"chain":KIND],``
then the envelope above: ``prev`` is sha256 of the previous line's bytes (newline excluded), ``seq`` numbers the lines
of the log across rotations (each is the previous header's number plus the lines since it). ``KIND`` marks a line
that begins a file: ``rotated`` (``prev`` links to the last line of the newest rotated file), ``start`` (no file came
before: ``prev`` is 64 zeros); or ``unlocked`` (written without the lock, below). An edited line no longer matches the
``prev`` of the line after it; an inserted one is skipped by the link after it; a removed one leaves a gap in
``seq``; a cut head leaves a first line that is not marked as beginning its file. ``verify_chain`` reads the log and
its rotated files (compressed ones too) and names the first such line. What a hash chain alone cannot show: lines
cut from the very end, and a writer with root who recomputes every link after an edit.

Writing: every line is one ``os.write()`` on a descriptor opened ``O_RDWR|O_APPEND|O_CREAT|O_CLOEXEC`` (mode
0640) for that line, so concurrent writers in many processes never interleave. To know the previous line, a
writer holds the chain lock (``flock`` on ``.events.jsonl.lock`` beside the log, 0600) from before it opens the log
until its line is written: it reads the log's last line (or, in an empty log, the end of the newest rotated file),
hashes it and appends. That is a few microseconds of work, so writers stay concurrent; a busy lock is waited for
in the kernel's queue (no writer starves), and never longer than ``lock_wait`` (``LOCK_WAIT_S``): past it the line
is written anyway, marked ``unlocked`` with its best-guess link, and counted in ``EventLog.unlocked``; verify
accepts it only if its links hold. Rotation is by rename (logrotate ``nocopytruncate``, ``nocreate``): the first
writer after it creates the new file and gives it the rotated file's owner, group and mode; a writer that opened
the old file just before the rename finishes its line there, under the lock, before anyone starts the new file,
so no line is lost between the two and the chain runs on. ``EventLog.write`` never raises into its caller: any
failure (no permission, disk full, a read-only file system, a short write, an unusable type) is logged with
``logging`` and answered with ``False``.

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

Reading (``EventLog.read``) drops the chain header's keys (``CHAIN_KEYS``) from each envelope and is tolerant:
blank and unparseable lines are skipped and counted, the older upstream schema (``ts``/``event`` keys, extra fields
at top level) is normalised to the envelope above, and filters compare real timezone-aware datetimes. Rotated files
(``events.jsonl.1``, ``events.jsonl-YYYYMMDD``; compressed ones are not read) are included when ``since`` reaches
back before their last write.

The package, one module per section: ``common`` (envelope constants, the log's path, reading lines from the end),
``drops`` (counting what could not be written), ``chain`` (the header, the link, the chain's files), ``writer``
(``render_line``, ``EventLog``), ``reader`` (``EventFilter``, ``EventStream``, ``normalize``, ``parse_time``) and
``verify`` (``verify_chain``).
"""

from __future__ import annotations

from .chain import (
    CHAIN_GENESIS,
    CHAIN_HEADROOM,
    CHAIN_KEYS,
    CHAIN_KINDS,
    MAX_BODY_BYTES,
    chain_files,
    chain_header,
    chain_line,
    line_hash,
)
from .common import (
    CONTAINER_KEYS,
    DEFAULT_LOG_DIR,
    DROPPED_SUBDIR,
    ENVELOPE_KEYS,
    EVENT_TYPE_RE,
    FILE_MODE,
    LOG_NAME,
    MAX_LINE_BYTES,
    OPEN_FLAGS,
    OPEN_FLAGS_RW,
    SCHEMA_VERSION,
    Clock,
    default_log_path,
    dropped_dir,
    format_timestamp,
    writer_name,
)
from .drops import (
    dropped_in_process,
    read_drop_counts,
    read_drop_file,
)
from .reader import (
    EventFilter,
    EventStream,
    container_of,
    event_time,
    normalize,
    parse_time,
)
from .verify import (
    ChainBreak,
    ChainReport,
    verify_chain,
)
from .writer import (
    LOCK_RETRY_S,
    LOCK_WAIT_S,
    EventLog,
    render_line,
)

__all__ = [
    "CHAIN_GENESIS",
    "CHAIN_HEADROOM",
    "CHAIN_KEYS",
    "CHAIN_KINDS",
    "CONTAINER_KEYS",
    "DEFAULT_LOG_DIR",
    "DROPPED_SUBDIR",
    "ENVELOPE_KEYS",
    "EVENT_TYPE_RE",
    "FILE_MODE",
    "LOCK_RETRY_S",
    "LOCK_WAIT_S",
    "LOG_NAME",
    "MAX_BODY_BYTES",
    "MAX_LINE_BYTES",
    "OPEN_FLAGS",
    "OPEN_FLAGS_RW",
    "SCHEMA_VERSION",
    "ChainBreak",
    "ChainReport",
    "Clock",
    "EventFilter",
    "EventLog",
    "EventStream",
    "chain_files",
    "chain_header",
    "chain_line",
    "container_of",
    "default_log_path",
    "dropped_dir",
    "dropped_in_process",
    "event_time",
    "format_timestamp",
    "line_hash",
    "normalize",
    "parse_time",
    "read_drop_counts",
    "read_drop_file",
    "render_line",
    "verify_chain",
    "writer_name",
]
