"""Counting what could not be written: per process, per log, and per writer in a counter file under
``<paths.run_dir>/events-dropped/`` that the exporter publishes (see the package docstring)."""

from __future__ import annotations

import atexit
import json
import os
import threading
from typing import Optional

from .. import fsutil, logs
from .common import SCHEMA_VERSION, format_timestamp, utc_now

log = logs.get(__package__)  # the one logger of the event log, as before the split

_DROP_LOCK_WAIT_S = 0.02  # a busy counter lock is polled (every ~1 ms) this long, then the count waits for the next try

_DROPS: dict[str, int] = {}  # writer -> events this process could not write
_PENDING: dict[tuple[str, str], list] = {}  # (counter dir, writer) -> [count not yet stored, last error]
_DROPS_LOCK = threading.Lock()


def dropped_in_process() -> dict[str, int]:
    """Events this process could not write, by writer."""
    with _DROPS_LOCK:
        return dict(_DROPS)


def is_pending(counter_dir: str, writer: str) -> bool:
    """Whether this process counted drops of ``writer`` for ``counter_dir`` (a later success stores any left)."""
    return (counter_dir, writer) in _PENDING


def count_drop(counter_dir: Optional[str], writer: str, why: str) -> None:
    with _DROPS_LOCK:
        _DROPS[writer] = _DROPS.get(writer, 0) + 1
        if counter_dir is None:
            return
        entry = _PENDING.setdefault((counter_dir, writer), [0, why])
        entry[0] += 1
        entry[1] = why
    store_drops(counter_dir, writer)


def store_drops(counter_dir: str, writer: str) -> bool:
    """Add this process's not yet stored drops to the writer's counter file; False when they stay pending."""
    key = (counter_dir, writer)
    with _DROPS_LOCK:
        entry = _PENDING.get(key)
        if not entry or entry[0] == 0:
            return True
        count, why = entry[0], entry[1]
    lock = fsutil.FileLock(os.path.join(counter_dir, f".{writer}.lock"), mode=0o600)
    try:
        if not lock.acquire(_DROP_LOCK_WAIT_S, poll_s=0.001):
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
                "last_dropped_at": format_timestamp(utc_now()),
            },
        )
    except OSError as exc:
        log.debug("cannot store the dropped-event count of writer %s in %s: %s", writer, counter_dir, exc)
        return False
    finally:
        lock.release()
    with _DROPS_LOCK:
        entry = _PENDING.get(key)
        if entry:
            entry[0] -= count
    return True


def _store_all_pending() -> None:
    for counter_dir, writer in list(_PENDING):
        store_drops(counter_dir, writer)


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
