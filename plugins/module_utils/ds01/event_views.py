"""Each user's own events, readable by that user, while the event log stays root's and the admins'.

Who writes: the exporter (``ds01 exporter serve``, root) calls ``ViewPass`` after each snapshot refresh; at most
every ``REFRESH_S`` it reads what was appended to the event log since its last pass (``read_new``) and appends
each event whose envelope ``user`` is a login to that login's view:

``<state_dir>/events-by-user/<login>.jsonl``
    one event envelope per line (the chain header dropped, as ``ds01 events`` shows them), oldest first; root's,
    in a root-owned ``0711`` directory (users open their own file by name, cannot list or plant anything), shared
    with that user alone through a POSIX ACL: the notice spool's files and sharing (``notify.Spool``,
    ``notify.open_root_dir``, ``notify.share_with``). Each view keeps its last ``MAX_VIEW_BYTES`` (whole lines).
``<state_dir>/events-by-user/.state.json``
    root-only (``0600``): where the reader stopped (``dev``, ``ino`` and ``offset`` of the file, the last chain
    ``seq`` seen, ``read_at``).
``<state_dir>/events-by-user/.refreshed``
    ``0644``: the time of the last pass (``ds01 events`` tells users how fresh their view is).

Reading incrementally (``read_new``): the file named in the state is continued from its offset; the log is
rotated by rename (logrotate ``nocreate``), so after a rotation that file is found among the plain rotated
siblings by its inode and finished, and every file written since the last pass (rotated siblings last written
after it, then the new log) is read from its start, skipping lines whose chain ``seq`` is not past the last one
seen. A log that shrank under the same inode is read again from its start the same way. A line still being
written (no newline yet) at the end of the live log is left for the next pass; damaged lines are skipped and
counted. The first pass (no state) reads the plain rotated files and the log from their starts. Compressed
rotated files are not read: ``delaycompress`` keeps the newest rotated file plain.

What is refused: a ``user`` that is not a valid login (``identity.valid_login``: no ``/``, no leading ``.``) is
never used as a file name; a login without a passwd entry gets no view (nobody to share it with). Both are
counted in the pass's report. A user's view holds only events whose ``user`` is their login.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

from . import events, fsutil, identity, logs, notify
from .events.chain import rotated_files
from .record import asdict, field, record

log = logs.get(__name__)

VIEWS_DIR = "events-by-user"
STATE_NAME = ".state.json"
REFRESHED_NAME = ".refreshed"
MAX_VIEW_BYTES = 1024 * 1024
REFRESH_S = 60.0
STALE_MIN = 15
MTIME_SLACK_S = 5.0  # a rotated file last written this close before the previous pass is read again (seq dedups)


def view_dir(state_dir: str) -> str:
    return os.path.join(state_dir, VIEWS_DIR)


def view_path(state_dir: str, login: str) -> str:
    """``<state_dir>/events-by-user/<login>.jsonl``; ``ValueError`` for a name that is not a login."""
    if not identity.valid_login(login):
        raise ValueError(f"{login!r} is not a login name")
    return notify.spool_path(view_dir(state_dir), login)


@record(frozen=True)
class ReadState:
    """Where the incremental reader stopped: the file (``dev``, ``ino``), the bytes of it consumed, the last
    chain ``seq`` seen, and the wall time the pass began."""

    dev: int = 0
    ino: int = 0
    offset: int = 0
    seq: int = 0
    read_at: float = 0.0

    @classmethod
    def from_dict(cls, data: Any) -> Optional[ReadState]:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                int(data["dev"]), int(data["ino"]), int(data["offset"]), int(data["seq"]), float(data["read_at"])
            )
        except (KeyError, TypeError, ValueError):
            return None


@record
class Batch:
    """What one ``read_new`` found: the events (log order), the state to keep, the damaged lines skipped and the
    files read."""

    events: list
    state: ReadState
    skipped_lines: int = 0
    files: list = field(default_factory=list)


def _lines(handle: Any, live: bool) -> Iterator[tuple]:
    """``(line without newline, bytes consumed so far)`` from the handle's position; in the ``live`` log a last
    line without its newline is not consumed (a writer may be finishing it)."""
    consumed = 0
    for raw in handle:
        if not raw.endswith(b"\n") and live:
            return
        consumed += len(raw)
        yield raw.rstrip(b"\n"), consumed


def read_new(log_path: str, state: Optional[ReadState], clock: Callable[[], float] = time.time) -> Batch:
    """The events appended to ``log_path`` (and, across a rotation, to its rotated siblings) since ``state``
    (the module docstring says how); ``OSError`` when a file cannot be read."""
    began = clock()
    plan: list = []  # (path, start offset, seq guard or None, live)
    rotated = []
    for mtime, path in rotated_files(log_path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        rotated.append((mtime, path, st))
    try:
        current: Optional[os.stat_result] = os.stat(log_path)
    except FileNotFoundError:
        current = None
    files = [(path, st, False) for _mtime, path, st in rotated]
    if current is not None:
        files.append((log_path, current, True))
    for path, st, live in files:
        if state is None:
            plan.append((path, 0, None, live))
        elif (st.st_dev, st.st_ino) == (state.dev, state.ino):
            if st.st_size >= state.offset:
                plan.append((path, state.offset, None, live))
            else:  # shrank under the same name: read again, past the last seq only
                plan.append((path, 0, state.seq, live))
        elif live or st.st_mtime >= state.read_at - MTIME_SLACK_S:
            plan.append((path, 0, state.seq, live))
    found: list = []
    skipped = 0
    seq = state.seq if state else 0
    new_state = ReadState(state.dev, state.ino, state.offset, seq, began) if state else ReadState(read_at=began)
    read_files = []
    for path, start, guard, live in plan:
        try:
            with open(path, "rb") as handle:
                st, offset, top, got, bad = _read_from(handle, start, guard, live)
        except FileNotFoundError:  # rotated away between the listing and now: the next pass finds it
            continue
        found.extend(got)
        skipped += bad
        seq = max(seq, top)
        read_files.append(path)
        new_state = ReadState(st.st_dev, st.st_ino, offset, seq, began)
    if not plan and state is not None:
        new_state = ReadState(state.dev, state.ino, state.offset, seq, began)
    return Batch(found, new_state, skipped, read_files)


def _read_from(handle: Any, start: int, guard: Optional[int], live: bool) -> tuple:
    """``(stat, offset consumed to, highest seq, events, damaged lines)`` of one file read from ``start``; lines
    whose chain ``seq`` is ``guard`` or less were seen before and are passed over."""
    st = os.fstat(handle.fileno())
    handle.seek(start)
    offset, top, got, bad = start, 0, [], 0
    for raw, consumed in _lines(handle, live):
        offset = start + consumed
        header = events.chain_header(raw)
        if header is not None:
            if guard is not None and header[1] <= guard:
                continue
            top = max(top, header[1])
        event = _event(raw)
        if event is None:
            bad += 1
            continue
        got.append(event)
    return st, offset, top, got, bad


def _event(raw: bytes) -> Optional[dict]:
    if not raw.strip():
        return None
    try:
        return events.normalize(json.loads(raw))
    except (ValueError, RecursionError):
        return None


# -- the pass ------------------------------------------------------------------------------------------------


def load_state(directory: str) -> Optional[ReadState]:
    try:
        with open(os.path.join(directory, STATE_NAME), encoding="utf-8") as handle:
            return ReadState.from_dict(json.load(handle))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("the event views' reader state cannot be read (%s): reading the log from its start", exc)
        return None


def refresh(
    state_dir: str,
    log_path: str,
    passwd: Callable[[str], Any] = pwd.getpwnam,
    clock: Callable[[], float] = time.time,
) -> dict:
    """One pass: new events of the log appended to their users' views. ``{"events": N, "users": {login: n},
    "refused": [user values that are not logins], "unknown": [logins without an account], "skipped_lines": N,
    "errors": [str]}``; ``OSError`` when the directory or the log cannot be used."""
    directory = view_dir(state_dir)
    os.close(notify.open_root_dir(directory))
    state = load_state(directory)
    batch = read_new(log_path, state, clock)
    by_user: dict = {}
    refused: set = set()
    for event in batch.events:
        user = event.get("user")
        if not isinstance(user, str) or not user:
            continue
        if not identity.valid_login(user):
            refused.add(user)
            continue
        by_user.setdefault(user, []).append(event)
    out: dict = {"events": len(batch.events), "users": {}, "refused": sorted(refused), "unknown": []}
    out["skipped_lines"] = batch.skipped_lines
    out["errors"] = []
    spool = notify.Spool(directory, cap=MAX_VIEW_BYTES)
    for login, mine in sorted(by_user.items()):
        try:
            entry = passwd(login)
        except KeyError:
            out["unknown"].append(login)
            continue
        if spool.append_many(login, entry, mine) is None:
            out["errors"].append(f"{login}: the view could not be written (see the log)")
            continue
        out["users"][login] = len(mine)
    fsutil.atomic_write_json(os.path.join(directory, STATE_NAME), asdict(batch.state), mode=0o600)
    stamp = events.format_timestamp(dt.datetime.fromtimestamp(batch.state.read_at, dt.timezone.utc))
    fsutil.atomic_write(os.path.join(directory, REFRESHED_NAME), stamp + "\n", mode=0o644)
    if refused:
        log.warning("event views: %d event user value(s) are not login names and got no view", len(refused))
    return out


class ViewPass:
    """The exporter's hook: ``refresh`` after a snapshot refresh, at most every ``REFRESH_S`` seconds."""

    __name__ = "event_views"

    def __init__(self, config: Any, refresh_s: float = REFRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.refresh_s = refresh_s
        self.clock = clock
        self.at: Optional[float] = None

    def __call__(self, snap: dict) -> None:
        if self.at is not None and self.clock() - self.at < self.refresh_s:
            return
        self.at = self.clock()
        report = refresh(self.config.paths.state_dir, events.default_log_path(self.config))
        for err in report["errors"]:
            log.warning("event views: %s", err)


# -- reading one's own view (ds01 events, as a user) ---------------------------------------------------------


class _OneFile:
    """What ``events.EventStream`` needs of a log: the files to read (one view, never rotated)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def files_for(self, since: Optional[dt.datetime]) -> list:
        return [self.path]


def read_view(state_dir: str, login: str, filters: events.EventFilter) -> events.EventStream:
    """``login``'s events from their view, filtered as ``ds01 events`` filters the log (a missing view holds
    none; ``OSError`` when it cannot be read)."""
    return events.EventStream(_OneFile(view_path(state_dir, login)), filters)


def refreshed_at(state_dir: str) -> Optional[dt.datetime]:
    """The time of the last pass, or None when there has been none (or its stamp is unreadable)."""
    try:
        with open(os.path.join(view_dir(state_dir), REFRESHED_NAME), encoding="utf-8") as handle:
            return events.parse_time(handle.read().strip())
    except (OSError, ValueError):
        return None
