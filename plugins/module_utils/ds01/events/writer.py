"""Writing the event log: ``render_line`` (the envelope, truncated to fit) and ``EventLog`` (one chained,
atomic append per event under the chain lock, never raising into its caller)."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import math
import os
import stat
import threading
from collections.abc import Mapping
from typing import Any, Optional, Union

from .. import logs
from .chain import (
    CHAIN_GENESIS,
    MAX_BODY_BYTES,
    TAIL_BLOCK,
    chain_files,
    chain_line,
    link_after,
    rotated_files,
    tail_lines,
)
from .common import (
    CONTAINER_KEYS,
    COUNTER_DIRS,
    EVENT_TYPE_RE,
    FILE_MODE,
    OPEN_FLAGS,
    OPEN_FLAGS_RW,
    SCHEMA_VERSION,
    Clock,
    format_timestamp,
    lines_backwards,
    utc_now,
    writer_name,
)
from .drops import count_drop, is_pending, store_drops
from .reader import EventFilter, EventStream

log = logs.get(__package__)  # the one logger of the event log, as before the split

# The longest a writer waits for the chain lock before it writes an unlocked line. Waits are microseconds; 50
# processes appending flat out on 2 loaded cores waited 1.6 s at worst (p99 0.24 s). After a wait ran out, the same
# log object tries only LOCK_RETRY_S until it gets the lock again, so a stuck holder costs each writer one long wait.
LOCK_WAIT_S = 10.0
LOCK_RETRY_S = 0.05
_KEPT_VALUE_MAX = 256


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
        "timestamp": format_timestamp(timestamp or utc_now()),
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
        self._clock = clock or utc_now
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
        return self._counter_dir or COUNTER_DIRS.get(os.path.abspath(self.path))

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
        if counter_dir is not None and is_pending(counter_dir, writer):
            store_drops(counter_dir, writer)  # a count that could not be stored before
        return True

    @property
    def lock_path(self) -> str:
        """The chain lock: ``.<log name>.lock`` beside the log (0600), held across read-the-end + append."""
        directory, base = os.path.split(self.path)
        return os.path.join(directory, f".{base}.lock")

    def _open_lock(self) -> int:
        """The chain lock's descriptor. A lock file root creates takes the log directory's group, as every file
        there does (the ds01_common permissions manifest): a deploy then finds nothing to change."""
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.lock_path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return os.open(self.lock_path, flags)
        if os.geteuid() == 0:
            try:
                os.fchown(fd, -1, os.stat(os.path.dirname(self.path) or ".").st_gid)
            except OSError as exc:
                log.debug("cannot give %s the log directory's group: %s", self.lock_path, exc)
        return fd

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
            lock_fd = self._open_lock()
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
                return link_after(lines_backwards(handle, TAIL_BLOCK))
        rotated = chain_files(self.path)[:-1]
        if not rotated:
            return CHAIN_GENESIS, 1, "start"
        previous = rotated[-1]
        try:
            prev, seq, _kind = link_after(tail_lines(previous))
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
            count_drop(self.counter_dir, writer, why)
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
            for mtime, name in rotated_files(self.path):
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
