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
"""

from __future__ import annotations

import atexit
import datetime as dt
import fcntl
import gzip
import hashlib
import json
import logging
import math
import os
import re
import stat
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

# -- the hash chain (see "The chain" above) --
CHAIN_GENESIS = "0" * 64  # the ``prev`` of a log's first line when no earlier file exists
CHAIN_KINDS = ("rotated", "start", "unlocked")
CHAIN_KEYS = ("prev", "seq", "chain")  # the chain header's keys; readers drop them from the envelope
# The longest a writer waits for the chain lock before it writes an unlocked line. Waits are microseconds; 50
# processes appending flat out on 2 loaded cores waited 1.6 s at worst (p99 0.24 s). After a wait ran out, the same
# log object tries only LOCK_RETRY_S until it gets the lock again, so a stuck holder costs each writer one long wait.
LOCK_WAIT_S = 10.0
LOCK_RETRY_S = 0.05
_CHAIN_HEADER_RE = re.compile(rb'^\{"prev":"([0-9a-f]{64})","seq":([0-9]{1,19})(?:,"chain":"([a-z]+)")?,')
# The most bytes a chain header adds to a line: ``"prev":"<64 hex>",`` ``"seq":<19 digits>,`` ``"chain":"unlocked",``
CHAIN_HEADROOM = len('"prev":"",') + 64 + len('"seq":,') + 19 + len('"chain":"unlocked",')
MAX_BODY_BYTES = MAX_LINE_BYTES - CHAIN_HEADROOM  # what render_line may use, so that every header fits
_SEQ_LOOKBACK_LINES = 64  # lines a writer looks back past fragments for the last sequence number
_TAIL_BLOCK = 8192  # a writer reads the log's end in blocks this big (a line is at most 4000 bytes)
_VERIFY_RECENT = 1024  # line hashes verify keeps, to tell an insertion or a cut end from an edit

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
    """The bytes of one event line before its chain header (newline included), truncated to fit
    ``MAX_BODY_BYTES``, so that the line with any header (``chain_line``) fits ``MAX_LINE_BYTES``.

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
    if len(line) <= MAX_BODY_BYTES:
        return line
    original_size = len(line)
    envelope["details"] = {"truncated": True, "original_size": original_size, **_short_container_keys(details or {})}
    line = (_dumps(envelope) + "\n").encode("ascii")
    if len(line) > MAX_BODY_BYTES:
        envelope["details"] = {"truncated": True, "original_size": original_size}
        line = (_dumps(envelope) + "\n").encode("ascii")
    if len(line) > MAX_BODY_BYTES:
        raise ValueError(
            f"event {event_type} is {original_size} bytes and its user/source alone exceed {MAX_BODY_BYTES}"
        )
    log.info("event %s truncated: %d bytes > %d", event_type, original_size, MAX_BODY_BYTES)
    return line


def chain_line(body: bytes, prev: str, seq: int, kind: Optional[str] = None) -> bytes:
    """``body`` (a ``render_line`` result) with its chain header: ``{"prev":…,"seq":…[,"chain":kind],…``."""
    header = f'{{"prev":"{prev}","seq":{seq}' + (f',"chain":"{kind}"' if kind else "")
    return header.encode("ascii") + b"," + body[1:]


def line_hash(line: bytes) -> str:
    """The link to a line: sha256 (hex) of its bytes without the newline that ends it."""
    return hashlib.sha256(line).hexdigest()


def chain_header(line: bytes) -> Optional[tuple]:
    """``(prev, seq, kind)`` of a chained line (kind None for an ordinary one), or None for a line without a link."""
    match = _CHAIN_HEADER_RE.match(line)
    if match is None:
        return None
    kind = match.group(3).decode("ascii") if match.group(3) else None
    return match.group(1).decode("ascii"), int(match.group(2)), kind


class EventLog:
    """The JSONL event log at ``path``: ``write`` appends one event, ``read`` queries it.

    ``dropped`` counts the events this log object could not write and ``last_error`` says why the last one was
    lost; ``counter_dir`` is where drops are counted per writer (default: the one ``default_log_path`` noted).
    """

    def __init__(
        self,
        path: str,
        clock: Optional[Clock] = None,
        counter_dir: Optional[str] = None,
        lock_wait: float = LOCK_WAIT_S,
    ) -> None:
        self.path = os.fspath(path)
        self.lock_wait = lock_wait
        self._clock = clock or _utc_now
        self._counter_dir = counter_dir
        self._failing = False  # after a failure, repeats of it are logged at debug level until a success
        self.dropped = 0
        self.last_error: Optional[str] = None
        self.unlocked = 0  # lines written without the chain lock
        self._unlocked_why = ""
        self._lock_stuck = False  # the last wait for the lock ran out: wait only briefly until it is had again

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
        lock_fd = self._take_lock()
        try:
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
                fragment = readable and _ends_inside_a_line(fd)
                prev, seq, kind = self._link(fd) if readable else (CHAIN_GENESIS, 0, "unlocked")
                if lock_fd < 0:
                    kind = "unlocked"
                line = chain_line(line, prev, seq, kind)
                if fragment:
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
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)  # releases the flock
        if written != len(line):
            # Never complete it with a second write: another writer's line could land in between.
            self._failed(event_type, writer, f"short write to {self.path} ({written} of {len(line)} bytes)")
            return False
        self._failing = False
        if lock_fd < 0:
            self.unlocked += 1
            log.log(
                logging.DEBUG if self.unlocked > 1 else logging.WARNING,
                "event %s written without the chain lock (%s): ds01 events verify reports it if its link broke",
                event_type,
                self._unlocked_why,
            )
        counter_dir = self.counter_dir
        if counter_dir is not None and (counter_dir, writer) in _PENDING:
            _store_drops(counter_dir, writer)  # a count that could not be stored before
        return True

    @property
    def lock_path(self) -> str:
        """The chain lock: ``.<log name>.lock`` beside the log (0600), held across read-the-end + append."""
        directory, base = os.path.split(self.path)
        return os.path.join(directory, f".{base}.lock")

    def _take_lock(self) -> int:
        """A descriptor holding the chain lock, or -1 when it stayed busy for ``lock_wait`` seconds (or cannot be
        opened): the line is then written unlocked, never held back longer.

        A busy lock is waited for by a blocking ``flock`` in a helper thread (the kernel queues the waiters, so none
        is starved the way polling writers are); a waiter that gave up leaves the thread to drop the lock when it
        comes. Not ``fsutil.FileLock``: its bounded wait polls, and in the 50 x 1000 test a polling wait (0.1 ms
        doubling to 5 ms) left 35 of the 50 writers past a 0.5 s deadline at least once, where queued waits all
        finished within 1.6 s (p99 0.24 s) on the same loaded 2-core machine.
        """
        try:
            lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            self._unlocked_why = f"cannot open the chain lock {self.lock_path}: {exc.strerror or exc}"
            return -1
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._lock_stuck = False
            return lock_fd
        except BlockingIOError:
            pass
        except OSError as exc:
            self._unlocked_why = f"cannot lock {self.lock_path}: {exc.strerror or exc}"
            os.close(lock_fd)
            return -1
        got = threading.Event()
        guard = threading.Lock()
        state: dict = {"abandoned": False, "error": None}

        def wait() -> None:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            except OSError as exc:
                state["error"] = exc
            with guard:
                if state["abandoned"]:
                    os.close(lock_fd)  # the writer went on without it
                    return
                got.set()

        threading.Thread(target=wait, name="ds01-events-lock", daemon=True).start()
        wait_s = min(self.lock_wait, LOCK_RETRY_S) if self._lock_stuck else self.lock_wait
        got.wait(wait_s)
        with guard:
            if not got.is_set():
                state["abandoned"] = True
                self._lock_stuck = True
                self._unlocked_why = f"the chain lock {self.lock_path} stayed busy for {wait_s:g} s"
                return -1
        self._lock_stuck = False
        if state["error"] is not None:
            os.close(lock_fd)
            self._unlocked_why = f"cannot lock {self.lock_path}: {state['error'].strerror or state['error']}"
            return -1
        return lock_fd

    def _link(self, fd: int) -> tuple:
        """``(prev, seq, kind)`` for a line appended now to the open log ``fd``.

        A non-empty log links to its last line; an empty one (new, or just rotated) to the last line of the newest
        rotated file (kind ``rotated``, and the new file takes that file's owner, group and mode), or, without
        one, starts the chain (kind ``start``).
        """
        size = os.fstat(fd).st_size
        if size > 0:
            with open(fd, "rb", closefd=False) as handle:
                return _link_after(_lines_backwards(handle, _TAIL_BLOCK))
        rotated = chain_files(self.path)[:-1]
        if not rotated:
            return CHAIN_GENESIS, 1, "start"
        previous = rotated[-1]
        try:
            prev, seq, _kind = _link_after(_tail_lines(previous))
        except (OSError, EOFError, ValueError) as exc:  # zlib.error is not an OSError; gzip wraps it
            log.warning("cannot read the end of %s to carry the chain on (%s); starting it again", previous, exc)
            return CHAIN_GENESIS, 1, "start"
        _take_attributes(fd, previous)
        return prev, seq, "rotated"

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


_ROTATED_RE = re.compile(r"^(?:\.(?P<n>\d+)|-(?P<date>\d{8,14}))(?P<gz>\.gz)?$")


def _rotated_siblings(path: str, compressed: bool) -> list[tuple[float, int, str]]:
    """``(mtime, age key, path)`` of the rotated siblings of ``path`` (``.gz`` ones too when ``compressed``)."""
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
        if match is None or (match.group("gz") and not compressed):
            continue
        full = os.path.join(directory, name)
        try:
            mtime = os.stat(full).st_mtime
        except OSError:
            continue
        # Age order: older files first; ``.N`` grows with age, ``-DATE`` shrinks with it.
        age_key = -int(match.group("n")) if match.group("n") else int(match.group("date"))
        found.append((mtime, age_key, full))
    return found


def _rotated(path: str) -> list[tuple[float, str]]:
    """``(mtime, path)`` of the plain rotated siblings of ``path``, oldest first."""
    return [(mtime, full) for mtime, _age, full in sorted(_rotated_siblings(path, compressed=False))]


def chain_files(path: str) -> list[str]:
    """The files the chain runs through, oldest first: every rotated sibling (compressed ones too), by the age its
    name gives, then the log itself (listed even when it does not exist)."""
    ordered = sorted(_rotated_siblings(path, compressed=True), key=lambda item: (item[1], item[2]))
    return [full for _mtime, _age, full in ordered] + [path]


def _link_after(lines: Iterator[bytes]) -> tuple:
    """``(prev, seq, None)`` for a line written after ``lines`` (a file's lines, last first, as
    ``_lines_backwards`` gives them): ``prev`` links to the last line, ``seq`` counts on from the last line that has
    a header (lines without one, such as fragments or pre-chain lines, count too; 1 when none is near)."""
    last = next(lines, None)
    if last == b"":  # the file ends with a newline: what follows it is no line
        last = next(lines, None)
    if last is None:
        return CHAIN_GENESIS, 1, None
    distance = 1
    line: Optional[bytes] = last
    while line is not None and distance <= _SEQ_LOOKBACK_LINES:
        header = chain_header(line)
        if header is not None:
            return line_hash(last), header[1] + distance, None
        line = next(lines, None)
        distance += 1
    return line_hash(last), 1, None


def _tail_lines(path: str) -> Iterator[bytes]:
    """The last lines of a rotated file (gzip-compressed or not), last first, as ``_lines_backwards`` gives them."""
    if not path.endswith(".gz"):
        with open(path, "rb") as handle:
            yield from _lines_backwards(handle, _TAIL_BLOCK)
        return
    with gzip.open(path, "rb") as handle:
        kept = deque(handle, maxlen=_SEQ_LOOKBACK_LINES + 1)  # the whole file streams through once
    if kept and kept[-1].endswith(b"\n"):
        yield b""
    for line in reversed(kept):
        yield line.rstrip(b"\n")


def _take_attributes(fd: int, model: str) -> None:
    """Give a log file just started after a rotation the owner, group and mode (at most 0640) of the file it
    continues: logrotate renames the log and creates nothing (``nocreate``), so the first writer creates it."""
    try:
        want, have = os.stat(model), os.fstat(fd)
        if (have.st_uid, have.st_gid) != (want.st_uid, want.st_gid):
            os.fchown(fd, want.st_uid, want.st_gid)
        mode = stat.S_IMODE(want.st_mode) & FILE_MODE
        if stat.S_IMODE(have.st_mode) != mode:
            os.fchmod(fd, mode)
    except OSError as exc:
        log.debug("cannot give the new event log the attributes of %s: %s", model, exc)


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


# -- verifying the chain -----------------------------------------------------------------------------


@dataclass
class ChainBreak:
    """The first place the chain does not hold: ``file`` and 1-based ``line``, what it looks like, and a sentence.

    ``what``: ``edited``, ``inserted``, ``removed``, ``head_cut``, ``end_cut``, ``restarted``, ``unlinked`` (a line
    without a link after the chain began), ``unlocked`` (a line written without the lock that does not link).
    """

    file: str
    line: int
    what: str
    message: str


@dataclass
class ChainReport:
    """What ``verify_chain`` found across the log and its rotated files (oldest first)."""

    files: list
    lines: int = 0
    chained: int = 0
    unlocked: int = 0  # lines written without the chain lock whose links still hold
    begins: str = ""  # "start": the chain's first line is here; "rotated": it continues a file no longer kept
    first: Optional[tuple] = None  # (file, line) of the first chained line
    unchained: Optional[dict] = None  # {"count", "from": [file, line], "to": [file, line]}: lines before the chain
    broken: Optional[ChainBreak] = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    @property
    def status(self) -> str:
        if self.broken is not None:
            return "broken"
        if self.lines == 0:
            return "empty"
        return "intact" if self.chained else "unchained"

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "status": self.status,
            "files": list(self.files),
            "lines": self.lines,
            "chained": self.chained,
            "unlocked": self.unlocked,
            "begins": self.begins or None,
            "unchained": self.unchained,
            "broken": None if self.broken is None else dict(vars(self.broken)),
            "message": self.message(),
        }

    def message(self) -> str:
        if self.broken is not None:
            return self.broken.message
        if self.lines == 0:
            return "the event log is empty: nothing to verify"
        if not self.chained:
            start = self.unchained["from"] if self.unchained else [self.files[0], 1]
            return (
                f"unchained from {_where(*start)}: none of the {self.lines} line(s) carries a link "
                "(written before the chain existed); nothing is verified"
            )
        text = f"intact: {self.chained} linked line(s) in {len(self.files)} file(s) verify"
        if self.begins == "rotated":
            text += f"; the chain begins at {_where(*self.first)}, which continues a file no longer kept"
        if self.unchained:
            text += (
                f"; unchained from {_where(*self.unchained['from'])} to {_where(*self.unchained['to'])} "
                f"({self.unchained['count']} line(s) written before the chain existed, not covered)"
            )
        if self.unlocked:
            text += f"; {self.unlocked} line(s) were written without the chain lock (their links hold)"
        return text


def _where(path: str, line: int) -> str:
    return f"{os.path.basename(path)} line {line}"


def _file_lines(path: str) -> Iterator[bytes]:
    """Every line of a log file (gzip-compressed or not), newline stripped; a final fragment is a line too."""
    opener: Callable[..., BinaryIO] = gzip.open if path.endswith(".gz") else open  # type: ignore[assignment]
    with opener(path, "rb") as handle:
        for raw in handle:
            yield raw[:-1] if raw.endswith(b"\n") else raw


def verify_chain(path: str) -> ChainReport:
    """Check the hash chain of the log at ``path`` and of its rotated files; stop at the first break.

    Raises ``OSError`` (and ``EOFError``/``zlib.error`` for a damaged ``.gz``) when a file cannot be read.
    """
    files = [name for name in chain_files(path) if os.path.lexists(name)]
    report = ChainReport(files=files)
    prev_hash: Optional[str] = None
    prev_kind: Optional[str] = None
    expected_seq: Optional[int] = None  # the number the next line should carry
    recent: deque = deque()  # (hash, (file, line), ordinal) of the last _VERIFY_RECENT lines
    index: dict = {}  # hash -> ordinal (position in the stream of lines) of the lines in ``recent``
    ordinal = 0
    for name in files:
        for line_no, raw in enumerate(_file_lines(name), 1):
            ordinal += 1
            report.lines += 1
            here = (name, line_no)
            digest = line_hash(raw)
            header = chain_header(raw)
            problem: Optional[ChainBreak] = None
            if header is None:
                if report.chained:
                    problem = _unlinked(here, raw)
                else:
                    if report.unchained is None:
                        report.unchained = {"count": 0, "from": list(here), "to": list(here)}
                    report.unchained["count"] += 1
                    report.unchained["to"] = list(here)
            else:
                prev, seq, kind = header
                if prev_hash is None:
                    problem = _first_link(report, here, seq, kind)
                elif prev != prev_hash:
                    problem = _broken_link(here, prev, seq, kind, prev_kind, expected_seq, recent, index.get(prev))
                elif (
                    expected_seq is not None and seq != expected_seq and "unlocked" not in (kind, prev_kind)
                ):  # the link holds, so the number itself was changed
                    problem = ChainBreak(
                        name,
                        line_no,
                        "edited",
                        f"{_where(*here)} was edited: it is number {seq} in the chain where {expected_seq} was due",
                    )
                if problem is None:
                    report.chained += 1
                    report.unlocked += kind == "unlocked"
                    if report.first is None:
                        report.first = here
                    expected_seq = seq
                prev_kind = kind
            if problem is not None:
                report.broken = problem
                return report
            if expected_seq is not None:
                expected_seq += 1
            prev_hash = digest
            recent.append((digest, here, ordinal))
            index[digest] = ordinal
            if len(recent) > _VERIFY_RECENT:
                old_digest, _old_place, old_ordinal = recent.popleft()
                if index.get(old_digest) == old_ordinal:
                    del index[old_digest]
    return report


def _unlinked(here: tuple, raw: bytes) -> ChainBreak:
    try:
        parsed = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        why = "it carries no link: it was inserted, or its link was edited away"
    else:
        why = "it is not an event line (blank, cut short by a failed write, or damaged)"
    return ChainBreak(here[0], here[1], "unlinked", f"{_where(*here)} breaks the chain: {why}")


def _first_link(report: ChainReport, here: tuple, seq: int, kind: Optional[str]) -> Optional[ChainBreak]:
    """The first linked line of all, when no line comes before it."""
    if kind in ("start", "rotated"):
        report.begins = kind
        return None
    if kind == "unlocked":
        return ChainBreak(
            here[0],
            here[1],
            "unlocked",
            f"{_where(*here)} was written without the chain lock and links to no line that is kept: not verifiable",
        )
    return ChainBreak(
        here[0],
        here[1],
        "head_cut",
        f"the head of {os.path.basename(here[0])} was cut: its first line (number {seq} in the chain) links to a "
        "line that is gone and is not the line the file began with",
    )


def _broken_link(
    here: tuple,
    prev: str,
    seq: int,
    kind: Optional[str],
    prev_kind: Optional[str],
    expected: Optional[int],
    recent: deque,
    linked: Optional[int],
) -> ChainBreak:
    """Name what happened where a line does not link to the line before it (``recent``: the lines before it, as
    ``(hash, (file, line), ordinal)``; ``linked``: the ordinal of the recent line it does link to, if any)."""
    name, line_no = here
    previous = recent[-1][1]
    if kind == "start":
        return ChainBreak(
            name,
            line_no,
            "restarted",
            f"the chain starts again at {_where(*here)}: the line before it ({_where(*previous)}) is not linked to "
            "(a writer could not read the end of the previous file, or the line was forged)",
        )
    if "unlocked" in (kind, prev_kind):
        return ChainBreak(
            name,
            line_no,
            "unlocked",
            f"{_where(*here)} does not link to {_where(*previous)}, and one of them was written without the chain "
            "lock: a race between writers that could not take the lock, or an edit",
        )
    if linked is not None:
        position = linked - recent[0][2]
        first_inserted = recent[position + 1][1]
        count = recent[-1][2] - linked
        return ChainBreak(
            first_inserted[0],
            first_inserted[1],
            "inserted",
            f"{_where(*first_inserted)} was inserted ({count} line(s) in all): {_where(*here)} links to "
            f"{_where(*recent[position][1])}, the line before it",
        )
    if line_no == 1 and kind is None:
        gap = f" ({seq - expected} line(s) missing)" if expected is not None and seq > expected else ""
        return ChainBreak(
            name,
            line_no,
            "head_cut",
            f"the head of {os.path.basename(name)} was cut{gap}: its first line (number {seq} in the chain) is not "
            f"the line the file began with, and does not link to the end of {os.path.basename(previous[0])}",
        )
    if expected is not None and seq > expected:
        missing = seq - expected
        if line_no == 1:
            return ChainBreak(
                previous[0],
                previous[1],
                "end_cut",
                f"the end of {os.path.basename(previous[0])} was cut after line {previous[1]}: {missing} line(s) "
                f"missing before {_where(*here)}, the next file's first line",
            )
        return ChainBreak(
            name,
            line_no,
            "removed",
            f"{missing} line(s) were removed between {_where(*previous)} and {_where(*here)} "
            f"(number {expected} in the chain was due, {seq} came)",
        )
    return ChainBreak(
        previous[0],
        previous[1],
        "edited",
        f"{_where(*previous)} was edited: {_where(*here)} no longer links to it",
    )


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
