"""Reading the host for observability: the event log (an incremental 24 h window), OOM counts,
slices (one systemctl call), the detector's inventory, grant files, the gateway's counters and
lifecycle state files."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from .. import config as config_mod
from .. import events, fsutil, grants, logs
from .. import lifecycle as lc
from ..usage import SliceReader
from .records import EXPORTER_SUBDIR, FRESH_S, GATEWAY_COUNTERS, OOM_FILE, REFUSAL_EVENTS, WINDOW_S

log = logs.get(__package__)


def refusal_code(record: Mapping[str, Any]) -> Optional[str]:
    """The refusal code of a refusal event (``details.code``), None for any other event."""
    if record.get("event_type") not in REFUSAL_EVENTS:
        return None
    details = record.get("details") if isinstance(record.get("details"), Mapping) else {}
    code = details.get("code")
    return str(code) if code else "UNKNOWN"


class EventWindow:
    """The event log's last ``window_s`` seconds, kept in memory as (time, type, refusal code).

    Each ``refresh`` reads only what was appended since the last one; a rotated or truncated log is
    read again from its start, together with the rotated files written within the window
    (``events.EventLog.files_for``). Lines are parsed by ``events.normalize`` (the one reader of
    the envelope, old upstream lines included).
    """

    def __init__(self, path: str, window_s: float = WINDOW_S) -> None:
        self.path = path
        self.window_s = window_s
        self._ino: Optional[tuple] = None
        self._pos = 0
        self._items: list = []

    def refresh(self, now: float) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        ino = (st.st_dev, st.st_ino) if st else None
        if ino != self._ino or (st is not None and st.st_size < self._pos):
            self._ino, self._pos, self._items = ino, 0, []
            since = dt.datetime.fromtimestamp(now - self.window_s, dt.timezone.utc)
            for path in events.EventLog(self.path).files_for(since)[:-1]:
                self._read_from(path, 0, None)
        if st is not None and st.st_size > self._pos:
            self._pos = self._read_from(self.path, self._pos, st.st_size)
        cutoff = now - self.window_s
        if self._items and self._items[0][0] < cutoff:
            self._items = [i for i in self._items if i[0] >= cutoff]

    def _read_from(self, path: str, pos: int, size: Optional[int]) -> int:
        """Parse complete lines from ``pos``; returns the position after the last complete line."""
        with open(path, "rb") as handle:
            handle.seek(pos)
            data = handle.read() if size is None else handle.read(size - pos)
        end = data.rfind(b"\n")
        if end < 0:
            return pos
        added = []
        for line in data[: end + 1].splitlines():
            try:
                record = events.normalize(json.loads(line))
            except (ValueError, RecursionError):
                continue
            when = events.event_time(record) if record else None
            if when is None:
                continue
            added.append((when.timestamp(), str(record.get("event_type")), refusal_code(record)))
        if added and self._items and added[0][0] < self._items[-1][0]:
            self._items = sorted(self._items + added, key=lambda i: i[0])
        else:
            self._items.extend(added)
        return pos + end + 1

    def counts(self, now: float) -> tuple:
        """(events by type, refusals by code) within the window ending at ``now``."""
        cutoff = now - self.window_s
        by_type: dict = {}
        by_code: dict = {}
        for when, event_type, code in self._items:
            if when < cutoff:
                continue
            by_type[event_type] = by_type.get(event_type, 0) + 1
            if code:
                by_code[code] = by_code.get(code, 0) + 1
        return by_type, by_code


def event_log_path(config: config_mod.Config) -> str:
    return events.default_log_path(config)


def read_dropped_events(config: config_mod.Config) -> dict:
    """``{writer: events it could not write}`` from ``<run_dir>/events-dropped/`` (``events.py``)."""
    return events.read_drop_counts(events.dropped_dir(config))


def event_writer(config: config_mod.Config, source: str) -> Callable[..., bool]:
    """``emit(event_type, user=…, **details) -> bool`` onto the event log (never raises)."""
    event_log = events.EventLog(events.default_log_path(config))

    def emit(event_type: str, user: Optional[str] = None, **details: Any) -> bool:
        return event_log.write(event_type, user=user, source=source, **details)

    return emit


def oom_rises(previous: Mapping[str, int], current: Mapping[str, Optional[int]]) -> tuple:
    """(rises ``[(login, delta, total)]``, counts to keep). A login seen for the first time sets its
    baseline (no event: its past kills were already there); a count that went down (the slice was
    recreated) is a new baseline too."""
    keep = dict(previous)
    rises = []
    for login, total in sorted(current.items()):
        if total is None:
            continue
        before = previous.get(login)
        if before is not None and total > before:
            rises.append((login, total - before, total))
        keep[login] = total
    return rises, keep


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def load_oom_counts(state_dir: str) -> dict:
    try:
        data = read_json(os.path.join(state_dir, EXPORTER_SUBDIR, OOM_FILE))
    except (OSError, ValueError) as exc:
        log.warning("OOM counts unreadable (%s): starting a new baseline", exc)
        return {}
    counts = (data or {}).get("counts") if isinstance(data, dict) else None
    return {k: int(v) for k, v in (counts or {}).items() if isinstance(v, int)}


def save_json(path: str, data: Any) -> None:
    fsutil.atomic_write_json(path, data)


def systemctl_control_groups(units: Sequence[str], timeout: float = 2.0) -> dict:
    """unit → ControlGroup for every unit in one ``systemctl show`` call ({} when unavailable)."""
    systemctl = shutil.which("systemctl")
    if not systemctl or not units:
        return {}
    try:
        proc = subprocess.run(
            [systemctl, "show", "-p", "Id,ControlGroup", *units],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("systemctl show failed: %s", exc)
        return {}
    if proc.returncode != 0:
        return {}
    return parse_systemctl_show(proc.stdout)


def parse_systemctl_show(text: str) -> dict:
    out = {}
    for block in text.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id") and props.get("ControlGroup", "").startswith("/"):
            out[props["Id"]] = props["ControlGroup"]
    return out


def read_slices(limits_of: Mapping[str, config_mod.Limits], reader: Optional[SliceReader] = None) -> dict:
    """login → usage dict (``SliceUsage.as_dict()`` plus ``group``) for each login."""
    units = {login: limits.slice_name for login, limits in limits_of.items()}
    if reader is None:
        groups = systemctl_control_groups(sorted(set(units.values())))
        reader = SliceReader(control_group=groups.get)  # not yet active: the reader applies systemd's naming rule
    out = {}
    for login, unit in sorted(units.items()):
        usage = reader.read(unit).as_dict()
        usage["group"] = limits_of[login].group
        out[login] = usage
    return out


def read_detector_inventory(config: config_mod.Config, now: float, max_age_s: float = FRESH_S) -> tuple:
    """(inventory or None when missing/stale/garbled, its timestamp or None)."""
    path = os.path.join(config.paths.state_dir, "workloads.json")
    try:
        doc = read_json(path)
    except (OSError, ValueError) as exc:
        log.info("detector inventory unreadable: %s", exc)
        return None, None
    if not isinstance(doc, dict) or doc.get("schema_version") != "1":
        return None, None
    stamp = doc.get("updated_at_epoch")
    if not isinstance(stamp, (int, float)):
        try:
            stamp = os.stat(path).st_mtime
        except OSError:
            stamp = None
    fresh = stamp is not None and now - float(stamp) <= max_age_s and (doc.get("docker") or {}).get("ok", True)
    return (doc if fresh else None), stamp


def read_grant(config: config_mod.Config, login: str, now: float) -> Optional[dict]:
    """The user's bare-metal grant file (``profile.py`` format, read by ``grants.read``) with ``active``; None
    without one."""
    found = grants.read(config.section("bare_metal_access").get("state_dir"), login, now)
    if found is None:
        return None
    doc = found.doc
    return {
        "type": doc.get("type"),
        "granted_by": doc.get("granted_by"),
        "granted_at": doc.get("granted_at"),
        "expires_at": doc.get("expires_at"),
        "active": found.active,
    }


def read_gateway_counters(config: config_mod.Config) -> Optional[dict]:
    path = os.path.join(config.paths.run_dir, GATEWAY_COUNTERS)
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        log.info("gateway counters unreadable: %s", exc)
        return None
    return data if isinstance(data, dict) and isinstance(data.get("requests"), dict) else None


def lifecycle_state(config: config_mod.Config, cid: str) -> dict:
    store = lc.StateStore(os.path.join(config.paths.state_dir, lc.SUBDIR))
    try:
        return store.load(cid)
    except ValueError:
        return {}
