"""Observability: what the exporter, ``ds01 limits``, ``ds01 why`` and the quota alerts see.

One place gathers the facts (pure functions over plain data, adapters at the edges):

- **GPU slots** from ``gpu.py``'s inventory (NVML or the fake topology), each with its weight
  (``gpu.gpueq``: whole GPU 1.0, MIG slices/7) and its holder, matched by UUID or slot id.
- **Containers** from the detector's inventory (``<state_dir>/workloads.json``) while it is fresh
  (written within ``FRESH_S`` by a watcher that could reach Docker), else one Docker list call.
- **Per-user usage vs quota** for every known user (``config.known_users()``) and every owner.
- **Events** of the last 24 h from the JSONL log, read incrementally (``EventWindow`` keeps the file
  position between refreshes, so a scrape never re-reads the whole log), counted by type and
  refusals by code (``gpu.reject`` / ``auth.denied`` / ``gateway.refused`` details); and the events each
  writer could not write (``events.read_drop_counts`` of ``<run_dir>/events-dropped/``).
- **Component runs**: the detector inventory's own timestamp, the lifecycle's ``last-run.json``.
- **Slices** (``usage.SliceReader``): memory, CPU, tasks, OOM kills, PSI. A rise in a user's OOM
  count is recorded once as a ``resource.oom_kill`` event; the counts are carried in the snapshot
  and persisted in ``<state_dir>/exporter/oom-counts.json`` so a restart does not re-alert.

Every source that fails is logged and counted in ``snapshot["errors"][component]``; the rest of
the snapshot is still built. ``build_snapshot`` also writes ``<state_dir>/exporter/gpu-slots.json``
(slot → uuid, gpueq) so ``ds01 limits --brief`` can weigh MIG slots without opening NVML.

The quota-alert pass (``run_alerts``) and the DCGM job mapping sync (``allocator.sync_job_mapping``)
run after each refresh (``Observer.refresh``). Estimating when a GPU frees up for ``ds01 why``
(``estimate_release``) is pure over the holders' limits and lifecycle state.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from . import config as config_mod
from . import events, fsutil, identity, quota_alerts
from . import lifecycle as lc
from .usage import SliceReader

log = logging.getLogger(__name__)

FRESH_S = 90.0  # the detector watcher saves every 30 s sweep: three missed sweeps is stale
WINDOW_S = 24 * 3600.0
EXPORTER_SUBDIR = "exporter"
OOM_FILE = "oom-counts.json"
SLOTS_FILE = "gpu-slots.json"
GATEWAY_COUNTERS = os.path.join("gateway", "metrics.json")  # under run_dir, when the gateway publishes it
REFUSAL_EVENTS = frozenset({"gpu.reject", "auth.denied", "gateway.refused"})
OOM_EVENT = "resource.oom_kill"
ALERT_EVENT = "quota.alert"
QUOTA_CODES = frozenset({"USER_AT_LIMIT", "AGGREGATE_GPU_QUOTA_EXCEEDED", "CONTAINER_LIMIT"})
SWEEP_MARGIN = dt.timedelta(minutes=5)  # the lifecycle timer's period: actions land within one sweep


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class Holding:
    """One container as observability needs it, whichever source described it."""

    id: str
    name: str
    user: Optional[str]
    state: str
    type: str
    slots: tuple = ()
    uuids: tuple = ()
    gpueq: float = 0.0
    managed: bool = False
    unmanaged_gpu: bool = False
    started_at: Optional[str] = None
    created_at: Optional[str] = None
    finished_at: Optional[str] = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def holds_gpu(self) -> bool:
        return bool(self.slots or self.uuids)

    @property
    def owner(self) -> Optional[str]:  # the name docker_state.ContainerInfo and the allocator use
        return self.user

    def as_dict(self) -> dict:
        out = asdict(self)
        out["slots"], out["uuids"] = list(self.slots), list(self.uuids)
        out.pop("labels")
        return out


def _split(value: Any) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value if str(v).strip())
    return tuple(v.strip() for v in str(value or "").split(",") if v.strip())


def _float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _iso(when: Optional[dt.datetime]) -> Optional[str]:
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z") if when else None


def _epoch_iso(value: Any) -> Optional[str]:
    if isinstance(value, (int, float)) and value > 0:
        return _iso(dt.datetime.fromtimestamp(value, dt.timezone.utc))
    parsed = lc.parse_time(value) if value else None
    return _iso(parsed)


def holding_from_labels(
    cid: str,
    name: str,
    state: str,
    labels: Mapping[str, str],
    *,
    started_at: Any = None,
    created_at: Any = None,
    finished_at: Any = None,
    unmanaged_gpu: bool = False,
    weights: Optional[Mapping[str, float]] = None,
) -> Holding:
    """A ``Holding`` from a container's ds01 labels (``ds01.user``, ``ds01.gpu.*``, type)."""
    slots = _split(labels.get("ds01.gpu.slots"))
    gpueq = _float(labels.get("ds01.gpu.gpueq"), -1.0)
    if gpueq < 0:
        gpueq = weigh(slots, weights or {})
    return Holding(
        id=cid,
        name=name,
        user=labels.get("ds01.user") or None,
        state=(state or "unknown").lower(),
        type=lc.container_type_of(labels),
        slots=slots,
        uuids=_split(labels.get("ds01.gpu.uuids") or labels.get("ds01.gpu.uuid")),
        gpueq=gpueq,
        managed=str(labels.get("ds01.managed", "")).lower() in ("1", "true", "yes"),
        unmanaged_gpu=unmanaged_gpu,
        started_at=_epoch_iso(started_at),
        created_at=_epoch_iso(created_at),
        finished_at=_epoch_iso(finished_at),
        labels=dict(labels),
    )


def weigh(slots: Iterable[str], weights: Mapping[str, float]) -> float:
    """GPU-equivalents of slot ids from the inventory's weights; an unknown whole-GPU id is 1.0."""
    total = 0.0
    for slot in slots:
        if slot in weights:
            total += weights[slot]
        elif "." not in slot:
            total += 1.0
    return total


def holdings_from_summaries(summaries: Iterable[Mapping[str, Any]], weights: Mapping[str, float]) -> list:
    """Holdings from Docker's list call (``GET /containers/json?all=1``) entries."""
    out = []
    for s in summaries:
        names = s.get("Names") or []
        name = names[0].lstrip("/") if names else str(s.get("Id", ""))[:12]
        out.append(
            holding_from_labels(
                str(s.get("Id", "")),
                name,
                str(s.get("State") or ""),
                s.get("Labels") or {},
                created_at=s.get("Created"),
                weights=weights,
            )
        )
    return out


def holdings_from_inventory(doc: Mapping[str, Any], weights: Mapping[str, float]) -> list:
    """Holdings from the detector's inventory records (see ``detector`` module docstring)."""
    out = []
    for record in (doc.get("containers") or {}).values():
        slots = _split(record.get("gpu_slots"))
        uuids = tuple(d for d in _split(record.get("gpu_devices")) if d.startswith(("GPU-", "MIG-")))
        origin = record.get("origin") or "unknown"
        ctype = record.get("container_type") or origin
        out.append(
            Holding(
                id=str(record.get("id") or ""),
                name=str(record.get("name") or ""),
                user=record.get("user") or None,
                state=str(record.get("status") or "unknown"),
                type=ctype if ctype in config_mod.CONTAINER_TYPES else _origin_type(origin),
                slots=slots,
                uuids=uuids if slots else (),
                gpueq=weigh(slots, weights),
                managed=bool(record.get("managed")),
                unmanaged_gpu=bool(record.get("unmanaged_gpu")),
                started_at=_epoch_iso(record.get("started_at")),
                created_at=_epoch_iso(record.get("created")),
            )
        )
    return out


def _origin_type(origin: str) -> str:
    return {"devcontainer": "devcontainer", "compose": "compose", "raw-docker": "docker"}.get(origin, "unknown")


# --------------------------------------------------------------------------------------------
# GPU slots
# --------------------------------------------------------------------------------------------


def slot_table(inventory: Any) -> list:
    """``[{gpu, slot, uuid, kind, profile, gpueq}]`` for every allocatable slot of ``gpu.Inventory``
    (weights from ``gpu.gpueq``, the one weight function)."""
    from . import gpu as gpu_mod

    rows = []
    for slot in inventory.slots():
        rows.append(
            {
                "gpu": int(slot.gpu_index),
                "slot": str(slot.slot_id),
                "uuid": str(slot.uuid),
                "kind": slot.kind,
                "profile": slot.profile,
                "gpueq": float(gpu_mod.gpueq(slot)),
            }
        )
    return rows


def load_gpu_inventory(config: config_mod.Config) -> Any:
    from . import gpu as gpu_mod

    return gpu_mod.inventory_from_config(config)


def assign_holders(slots: Sequence[Mapping[str, Any]], holdings: Iterable[Holding]) -> list:
    """Each slot row with ``container``/``user`` of the container holding it (by UUID, else slot id), and
    ``holders``: how many containers hold it (more than one is a double booking, alerted on)."""
    by_uuid: dict = {}
    by_slot: dict = {}
    for h in holdings:
        for uuid in h.uuids:
            by_uuid.setdefault(uuid, []).append(h)
        for slot in h.slots:
            by_slot.setdefault(slot, []).append(h)
    out = []
    for slot in slots:
        row = dict(slot)
        found = {id(h): h for h in by_uuid.get(row.get("uuid"), []) + by_slot.get(row["slot"], [])}
        holders = list(found.values())
        if holders:
            row["container"], row["user"] = holders[0].name, holders[0].user
        row["holders"] = len(holders)
        out.append(row)
    return out


def slot_weights(slots: Iterable[Mapping[str, Any]]) -> dict:
    return {row["slot"]: float(row["gpueq"]) for row in slots}


# --------------------------------------------------------------------------------------------
# Per-user usage (pure)
# --------------------------------------------------------------------------------------------


def user_totals(holdings: Iterable[Holding]) -> dict:
    """login → {gpueq, slots, containers} over every container the login owns (any state)."""
    out: dict = {}
    for h in holdings:
        if not h.user:
            continue
        row = out.setdefault(h.user, {"gpueq": 0.0, "slots": 0, "containers": 0})
        row["containers"] += 1
        row["gpueq"] = round(row["gpueq"] + h.gpueq, 6)
        row["slots"] += len(h.slots)
    return out


def memory_limit_bytes(value: Optional[str], total_ram: Optional[int] = None) -> Optional[int]:
    """A systemd size (``64G``, ``80%``, ``infinity``) in bytes; None when unlimited or unknown."""
    if value is None:
        return None
    text = str(value).strip()
    if text in ("", "infinity"):
        return None
    if text.endswith("%"):
        if not total_ram:
            return None
        return int(total_ram * float(text[:-1]) / 100.0)
    try:
        return config_mod.parse_size(text)
    except (ValueError, TypeError):
        return None


def host_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def quota_measures(totals: Mapping[str, Any], limits: config_mod.Limits, memory_current: Optional[int]) -> dict:
    """The three measures the quota alerts watch: ``{name: (used, limit or None)}``."""
    aggregate_max = limits.aggregate.memory_max if limits.aggregate else None
    measures = {
        "gpu": (float(totals.get("gpueq", 0.0)), limits.gpu_quota),
        "containers": (float(totals.get("containers", 0)), limits.max_containers_per_user),
    }
    mem_limit = memory_limit_bytes(aggregate_max, host_memory_bytes())
    if memory_current is not None and mem_limit:
        measures["memory"] = (float(memory_current), float(mem_limit))
    return measures


def usage_bar(used: float, limit: Optional[float], width: int = 10) -> str:
    """``[#####.....] 50%``; unlimited: ``(no limit)``."""
    if limit is None:
        return "(no limit)"
    ratio = used / limit if limit > 0 else 1.0
    filled = min(width, max(0, round(ratio * width)))
    return "[" + "#" * filled + "." * (width - filled) + f"] {ratio * 100:.0f}%"


# --------------------------------------------------------------------------------------------
# Events: an incremental reader of the JSONL log (last 24 h)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# OOM kills
# --------------------------------------------------------------------------------------------


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


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def load_oom_counts(state_dir: str) -> dict:
    try:
        data = _read_json(os.path.join(state_dir, EXPORTER_SUBDIR, OOM_FILE))
    except (OSError, ValueError) as exc:
        log.warning("OOM counts unreadable (%s): starting a new baseline", exc)
        return {}
    counts = (data or {}).get("counts") if isinstance(data, dict) else None
    return {k: int(v) for k, v in (counts or {}).items() if isinstance(v, int)}


def save_json(path: str, data: Any) -> None:
    fsutil.atomic_write_json(path, data)


# --------------------------------------------------------------------------------------------
# Slices: one systemctl call for every user's cgroup
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Sources at the edge
# --------------------------------------------------------------------------------------------


def read_detector_inventory(config: config_mod.Config, now: float, max_age_s: float = FRESH_S) -> tuple:
    """(inventory or None when missing/stale/garbled, its timestamp or None)."""
    path = os.path.join(config.paths.state_dir, "workloads.json")
    try:
        doc = _read_json(path)
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


def docker_holdings(client: Any, weights: Mapping[str, float], inventory: Any = None, cache: Any = None) -> list:
    """Holdings from ``docker_state.list_containers`` (one list call; inspects only of containers the
    ``InspectCache`` does not know yet), slots resolved against the GPU inventory."""
    from . import docker_state

    return [holding_from_info(info, weights) for info in docker_state.list_containers(client, inventory, cache=cache)]


def holding_from_info(info: Any, weights: Mapping[str, float]) -> Holding:
    """A ``Holding`` from a ``docker_state.ContainerInfo``: slots from its DeviceRequests (the record
    of what it holds), gpueq from the inventory's weights (the label when slots are unresolved)."""
    labels = dict(info.labels or {})
    slots = tuple(info.slots) or _split(labels.get("ds01.gpu.slots"))
    labelled = _float(labels.get("ds01.gpu.gpueq"), 0.0) if slots else 0.0
    gpueq = weigh(slots, weights) if info.slots else labelled
    infra = (
        str(labels.get("ds01.protected", "")).lower() == "true"
        or str(labels.get("ds01.monitoring", "")).lower() == "true"
    )
    return Holding(
        id=info.id,
        name=info.name,
        user=info.owner,
        state=(info.state or "unknown").lower(),
        type=lc.container_type_of(labels),
        slots=slots,
        uuids=tuple(info.uuids),
        gpueq=gpueq,
        managed=bool(info.managed),
        unmanaged_gpu=bool(info.has_gpu and "ds01.gpu.slots" not in labels and not infra),
        started_at=_iso(info.started_at),
        created_at=_iso(info.created),
        finished_at=_iso(info.finished_at),
        labels=labels,
    )


def docker_client_from_env(timeout: float = 10.0) -> Any:
    import docker

    return docker.from_env(timeout=timeout)


def read_grant(config: config_mod.Config, login: str, now: float) -> Optional[dict]:
    """The user's bare-metal grant file (``profile.py`` format) with ``active``; None without one."""
    from . import profile

    directory = config.section("bare_metal_access").get("state_dir")
    if not directory or not identity.valid_login(login):
        return None
    path = os.path.join(directory, f"{login}.json")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(65536)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.info("grant file %s unreadable: %s", path, exc)
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    return {
        "type": doc.get("type"),
        "granted_by": doc.get("granted_by"),
        "granted_at": doc.get("granted_at"),
        "expires_at": doc.get("expires_at"),
        "active": profile.grant_active(text, now),
    }


def read_gateway_counters(config: config_mod.Config) -> Optional[dict]:
    path = os.path.join(config.paths.run_dir, GATEWAY_COUNTERS)
    try:
        data = _read_json(path)
    except (OSError, ValueError) as exc:
        log.info("gateway counters unreadable: %s", exc)
        return None
    return data if isinstance(data, dict) and isinstance(data.get("requests"), dict) else None


def sync_job_mapping(config: config_mod.Config, snap: Mapping[str, Any]) -> bool:
    """dcgm-exporter's ``--hpc-job-mapping-dir`` from the snapshot's holdings, through the
    allocator's ``sync_job_mapping`` (the one writer of that format). False when it cannot run."""
    from . import allocator

    inventory = snap.get("_inventory")
    if inventory is None:
        log.info("no GPU inventory in this snapshot: the job mapping is left as it is")
        return False
    holders = [h for h in snap.get("_holdings") or [] if h.slots]
    allocator.sync_job_mapping(inventory, holders, config.section("gpu_allocation")["mapping_dir"])
    return True


# --------------------------------------------------------------------------------------------
# The snapshot
# --------------------------------------------------------------------------------------------


class Observer:
    """Long-lived state for the exporter: the event window, the Docker client, the slice reader.

    ``build(previous)`` is what ``SnapshotCache`` calls; ``refresh_hooks`` run after each build
    (the quota-alert pass, the job-mapping sync) and never fail the build.
    """

    def __init__(
        self,
        config: config_mod.Config,
        *,
        docker_client: Any = None,
        inventory: Any = None,
        slice_reader: Optional[SliceReader] = None,
        emit: Optional[Callable[..., Any]] = None,
        after: Sequence[Callable[[dict], None]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.docker_client = docker_client
        self.inventory = inventory
        self.slice_reader = slice_reader
        self.emit = emit
        self.after = list(after)
        self.clock = clock
        self.events = EventWindow(event_log_path(config))
        self.inspect_cache: Any = None
        try:
            from . import docker_state

            self.inspect_cache = docker_state.InspectCache()
        except ImportError:
            log.info("docker_state unavailable: no inspect cache")

    def build(self, previous: dict) -> dict:
        now = dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)
        if self.docker_client is None:
            try:
                self.docker_client = docker_client_from_env()
            except Exception as exc:  # noqa: BLE001 - the Docker edge: the snapshot goes on without it
                log.warning("cannot reach Docker: %s", exc)
        snap = build_snapshot(
            self.config,
            previous,
            docker_client=self.docker_client,
            inventory=self.inventory,
            now=now,
            events=self.events,
            slice_reader=self.slice_reader,
            emit=self.emit,
            inspect_cache=self.inspect_cache,
        )
        for hook in self.after:
            try:
                hook(snap)
            except Exception:
                name = getattr(hook, "__name__", "hook")
                log.exception("%s failed after the snapshot refresh", name)
                _count(snap, name)
        return snap


def _count(snap: dict, component: str) -> None:
    errors = snap.setdefault("errors", {})
    errors[component] = errors.get(component, 0) + 1


def build_snapshot(
    config: config_mod.Config,
    previous: Optional[dict],
    *,
    docker_client: Any = None,
    inventory: Any = None,
    now: Optional[dt.datetime] = None,
    events: Optional[EventWindow] = None,
    slice_reader: Optional[SliceReader] = None,
    emit: Optional[Callable[..., Any]] = None,
    persist: bool = True,
    inspect_cache: Any = None,
) -> dict:
    """The exporter snapshot (``exporter.empty_snapshot()`` shape, plus ``errors``, ``oom_counts``,
    ``containers_source`` and the private ``_holdings``/``_limits``/``_slot_table`` the alert pass
    and the next build reuse); see the module docstring for the sources. ``persist=False`` writes
    no file (``ds01 alerts run --dry-run``); ``emit=None`` records no OOM event."""
    from . import exporter  # prometheus_client is imported only where metrics are rendered

    now = now or dt.datetime.now(dt.timezone.utc)
    t = now.timestamp()
    previous = previous or {}
    snap = exporter.empty_snapshot()
    snap["errors"] = {}
    state_dir = config.paths.state_dir

    def guarded(component: str, func: Callable[[], Any], default: Any = None) -> Any:
        try:
            return func()
        except Exception as exc:
            log.warning("%s unavailable for the metrics snapshot: %s", component, exc, exc_info=log.isEnabledFor(10))
            _count(snap, component)
            return default

    # GPU slots and their weights
    inv_box: list = [inventory]

    def gpu_slots() -> list:
        if inv_box[0] is None:
            inv_box[0] = load_gpu_inventory(config)
        return slot_table(inv_box[0])

    slots = guarded("gpu", gpu_slots, default=None)
    if slots is None:
        slots = previous.get("_slot_table") or []
    weights = slot_weights(slots)
    snap["_slot_table"] = slots
    snap["_inventory"] = inv_box[0]

    # Containers: the detector's inventory when fresh, else Docker
    doc, detector_stamp = guarded("detector", lambda: read_detector_inventory(config, t), default=(None, None))
    holdings = None
    if doc is not None:
        holdings = holdings_from_inventory(doc, weights)
        snap["containers_source"] = "detector"
    elif docker_client is not None:
        holdings = guarded("docker", lambda: docker_holdings(docker_client, weights, inv_box[0], inspect_cache))
        snap["containers_source"] = "docker" if holdings is not None else "none"
    else:
        _count(snap, "docker")
        snap["containers_source"] = "none"
    if holdings is None:
        holdings = previous.get("_holdings") or []
    snap["_holdings"] = holdings

    snap["slots"] = assign_holders(slots, holdings)
    snap["containers"] = [
        {"name": h.name, "state": h.state, "type": h.type, "user": h.user, "unmanaged_gpu": h.unmanaged_gpu}
        for h in holdings
    ]

    # Users: every known user and every owner
    totals = user_totals(holdings)
    logins = set(guarded("config", config.known_users, default={}) or {}) | set(totals)
    limits_of = {}
    for login in sorted(logins):
        limits = guarded("config", lambda login=login: config.resolve(login))
        if limits is None:
            continue
        limits_of[login] = limits
        row = totals.get(login, {"gpueq": 0.0, "slots": 0, "containers": 0})
        snap["users"][login] = {
            "group": limits.group,
            "gpueq": row["gpueq"],
            "slots": row["slots"],
            "containers": row["containers"],
            "gpu_quota": limits.gpu_quota,
            "container_quota": limits.max_containers_per_user,
        }
    snap["_limits"] = limits_of

    # Events of the last 24 h
    window = events or EventWindow(event_log_path(config))

    def count_events() -> tuple:
        window.refresh(t)
        return window.counts(t)

    by_type, by_code = guarded("events", count_events, default=({}, {}))
    snap["events_24h"], snap["refusals_24h"] = by_type, by_code
    dropped = guarded("events", lambda: read_dropped_events(config), default=previous.get("events_dropped"))
    snap["events_dropped"] = dropped or {}

    # Component runs
    snap["components"]["detector"] = {"last_run": float(detector_stamp) if detector_stamp is not None else None}

    def lifecycle_run() -> Optional[float]:
        data = _read_json(os.path.join(state_dir, lc.SUBDIR, lc.LAST_RUN_FILE))
        value = (data or {}).get("last_run") if isinstance(data, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    snap["components"]["lifecycle"] = {"last_run": guarded("lifecycle", lifecycle_run)}
    snap["gateway"] = guarded("gateway", lambda: read_gateway_counters(config))

    # Slices and OOM kills
    slices = guarded("slices", lambda: read_slices(limits_of, slice_reader), default={})
    snap["slices"] = slices
    prior_counts = previous.get("oom_counts")
    if prior_counts is None:
        prior_counts = guarded("oom", lambda: load_oom_counts(state_dir), default={})
    rises, counts = oom_rises(prior_counts, {u: s.get("oom_kills") for u, s in slices.items()})
    snap["oom_counts"] = counts
    for login, delta, total in rises:
        group = limits_of[login].group if login in limits_of else None
        if emit is not None:
            details = {"group": group, "oom_kills": delta, "total_oom_kills": total}
            guarded("events", lambda login=login, details=details: emit(OOM_EVENT, user=login, **details))
    if persist and counts != prior_counts:
        guarded(
            "oom",
            lambda: save_json(
                os.path.join(state_dir, EXPORTER_SUBDIR, OOM_FILE), {"schema_version": "1", "counts": counts}
            ),
        )
    if persist and slots and slots != previous.get("_slot_table"):
        guarded(
            "gpu",
            lambda: save_json(
                os.path.join(state_dir, EXPORTER_SUBDIR, SLOTS_FILE),
                {"schema_version": "1", "slots": {r["slot"]: {"uuid": r["uuid"], "gpueq": r["gpueq"]} for r in slots}},
            ),
        )
    return snap


# --------------------------------------------------------------------------------------------
# The quota-alert pass
# --------------------------------------------------------------------------------------------


def run_alerts(
    config: config_mod.Config,
    snap: Mapping[str, Any],
    now: dt.datetime,
    *,
    dry_run: bool = False,
    deliver: Optional[Callable[[str, Any, str], Any]] = None,
    emit: Optional[Callable[..., Any]] = None,
) -> dict:
    """One pass over the snapshot's users: evaluate, deliver, record (see ``quota_alerts``).

    Returns ``{"schema_version": "1", "now", "dry_run", "users": {login: {"alerts": [..], "delivered": [..]}},
    "errors": [str]}`` (only logins with an alert level or a change are listed).
    """
    state_dir = config.paths.state_dir
    report: dict = {"schema_version": "1", "now": _iso(now), "dry_run": dry_run, "users": {}, "errors": []}
    limits_of = snap.get("_limits") or {}
    for login, user in sorted((snap.get("users") or {}).items()):
        try:
            limits = limits_of.get(login) or config.resolve(login)
            memory = (snap.get("slices") or {}).get(login, {}).get("memory_current")
            measures = quota_measures(user, limits, memory)
            prior = quota_alerts.load_state(state_dir, login)
            sent, state = quota_alerts.evaluate(measures, prior, now, limits.policies.quota_alert_cooldown_h)
            if not state and not prior:
                continue
            entry = {
                "alerts": [dict(v, measure=k) for k, v in sorted(state.items())],
                "delivered": [{"measure": a.measure, "level": a.level, "sentence": a.sentence()} for a in sent],
            }
            report["users"][login] = entry
            if dry_run:
                continue
            if state != prior:
                quota_alerts.save_state(state_dir, login, state)
            for alert in sent:
                if deliver is not None:
                    deliver(
                        login,
                        alert,
                        lc.quota_line(limits, float(user.get("gpueq", 0.0)), int(user.get("containers", 0))),
                    )
                if emit is not None:
                    emit(
                        ALERT_EVENT,
                        user=login,
                        measure=alert.measure,
                        level=alert.level,
                        used=alert.used,
                        limit=alert.limit,
                    )
        except Exception as exc:
            log.exception("quota alert for %s failed", login)
            report["errors"].append(f"{login}: {type(exc).__name__}: {exc}")
    return report


def alert_notice(alert: quota_alerts.Alert) -> lc.Notice:
    level = "ALERT" if alert.level >= 100 else "WARNING"
    title = f"QUOTA {'REACHED' if alert.level >= 100 else 'ALMOST REACHED'} — {quota_alerts.LABELS[alert.measure]}"
    return lc.Notice(level, title, (alert.sentence(), "`ds01 limits` shows your quota and what uses it."))


def notifier_delivery(notifier: Any) -> Callable[[str, Any, str], Any]:
    def deliver(login: str, alert: quota_alerts.Alert, quota: str) -> Any:
        return notifier.deliver(login, None, alert_notice(alert), quota)

    return deliver


# --------------------------------------------------------------------------------------------
# ``ds01 why``: when does a GPU free up?
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    container: str
    user: Optional[str]
    slots: tuple
    gpueq: float
    at: Optional[dt.datetime]  # None: no cap applies, nobody can tell
    reason: str

    def as_dict(self) -> dict:
        return {
            "container": self.container,
            "user": self.user,
            "slots": list(self.slots),
            "gpueq": self.gpueq,
            "expected_free_at": _iso(self.at),
            "reason": self.reason,
        }


def estimate_release(
    holder: Holding, limits: Optional[config_mod.Limits], state: Mapping[str, Any], now: dt.datetime
) -> Release:
    """The earliest time the lifecycle frees ``holder``'s GPU, from its owner's limits and its
    lifecycle state (first start, idle streak); pure."""
    candidates: list = []
    if limits is not None:
        hold_h = limits.gpu_hold_after_stop_h
        if holder.state in lc.STOPPED_STATES:
            finished = lc.parse_time(holder.finished_at) or lc.parse_time(state.get("finished_at"))
            if hold_h is not None and not limits.exemption_for("gpu_hold_after_stop_h", now, holder.name):
                base = finished or now
                candidates.append(
                    (base + dt.timedelta(hours=hold_h), f"stopped; its GPU is released {hold_h:g} h after the stop")
                )
        elif holder.state in lc.RUNNING_STATES:
            run_h = lc.effective_timeout(limits, holder.type, "max_runtime_h")
            first = lc.parse_time(state.get("first_started_at")) or lc.parse_time(holder.started_at)
            if run_h is not None and first is not None and not limits.exemption_for("max_runtime_h", now, holder.name):
                at = first + dt.timedelta(hours=run_h) + dt.timedelta(hours=hold_h or 0.0)
                candidates.append((at, f"max runtime {run_h:g} h since its first start"))
            idle_h = lc.effective_timeout(limits, holder.type, "idle_timeout_h")
            streak = int(state.get("idle_streak", 0) or 0)
            if idle_h is not None and streak > 0 and not limits.exemption_for("idle_timeout_h", now, holder.name):
                since = lc.parse_time(state.get("last_active")) or first or now
                candidates.append((since + dt.timedelta(hours=idle_h), f"idle; stopped after {idle_h:g} h idle"))
        elif holder.state == "created":
            timeout_m = limits.policies.created_container_timeout_m
            created = lc.parse_time(holder.created_at)
            if timeout_m is not None and created is not None:
                candidates.append(
                    (created + dt.timedelta(minutes=timeout_m), "never started; removed after the created timeout")
                )
    if not candidates:
        return Release(
            holder.name, holder.user, holder.slots, holder.gpueq, None, "no runtime cap or idle stop applies"
        )
    at, reason = min(candidates, key=lambda c: c[0])
    at = max(at, now) + SWEEP_MARGIN
    return Release(holder.name, holder.user, holder.slots, holder.gpueq, at, reason)


def removal_advice(code: str, mine: Sequence[Holding], details: Mapping[str, Any], limits: config_mod.Limits) -> list:
    """Which of the user's containers to remove to get under a quota (stopped ones first)."""

    def order(h: Holding) -> tuple:
        return (h.state in lc.RUNNING_STATES, -h.gpueq, h.name)

    if code in ("USER_AT_LIMIT", "AGGREGATE_GPU_QUOTA_EXCEEDED"):
        quota = limits.gpu_quota
        held = sum(h.gpueq for h in mine)
        want = _float(details.get("requested_gpueq") or details.get("gpueq") or details.get("requested"), 0.0)
        need = held + want - quota if quota is not None else 0.0
        out, freed = [], 0.0
        for h in sorted((h for h in mine if h.gpueq > 0), key=order):
            if freed >= need - 1e-9 and out:
                break
            out.append(h)
            freed += h.gpueq
        return out
    if code == "CONTAINER_LIMIT":
        cap = limits.max_containers_per_user or 0
        extra = max(1, len(mine) - cap + 1)
        return sorted(mine, key=order)[:extra]
    return []


# --------------------------------------------------------------------------------------------
# Lifecycle state for a container (readable by users: 0644 files)
# --------------------------------------------------------------------------------------------


def lifecycle_state(config: config_mod.Config, cid: str) -> dict:
    store = lc.StateStore(os.path.join(config.paths.state_dir, lc.SUBDIR))
    try:
        return store.load(cid)
    except ValueError:
        return {}


# --------------------------------------------------------------------------------------------
# ``ds01 limits``: quota and usage side by side (pure over gathered facts)
# --------------------------------------------------------------------------------------------


def limits_report(
    limits: config_mod.Limits,
    *,
    mine: Sequence[Holding],
    slice_usage: Optional[Mapping[str, Any]],
    alerts: Mapping[str, Any],
    grant: Optional[Mapping[str, Any]],
    exempt_bare_metal: bool,
    now: dt.datetime,
    source: str,
    errors: Sequence[str] = (),
) -> dict:
    """The ``ds01 limits --json`` document (shape in ``cli.observe``'s docstring)."""
    held = round(sum(h.gpueq for h in mine), 6)
    agg = limits.aggregate if limits.slice_caps else None  # enforcement.aggregate_limits: false = no caps
    usage = slice_usage or {}
    mem_max = memory_limit_bytes(agg.memory_max if agg else None, host_memory_bytes())
    if mem_max is None:
        mem_max = usage.get("memory_max")
    types = limits.lifecycle_table()
    note = None
    if limits.safe_defaults:
        note = "no valid configuration could be loaded: the safe default limits apply"
    elif not limits.listed:
        note = f"{limits.user} is not listed in any group: the default group's limits ({limits.group}) apply"
    alert_rows = []
    for measure, entry in sorted(alerts.items()):
        alert = quota_alerts.Alert(
            measure, int(entry.get("level", 0)), _float(entry.get("used")), _float(entry.get("limit"))
        )
        alert_rows.append(
            {
                "measure": measure,
                "level": alert.level,
                "used": alert.used,
                "limit": alert.limit,
                "sent_at": entry.get("sent_at"),
                "sentence": alert.sentence() if measure in quota_alerts.LABELS else "",
            }
        )
    return {
        "schema_version": "1",
        "user": limits.user,
        "group": limits.group,
        "listed": limits.listed,
        "note": note,
        "now": _iso(now),
        "source": source,
        "gpu": {
            "used_gpueq": held,
            "quota_gpueq": limits.gpu_quota,
            "slots": sum(len(h.slots) for h in mine),
            "max_slots_per_container": limits.max_gpu_slots_per_container,
            "allow_full_gpu": limits.allow_full_gpu,
            "holders": [
                {"container": h.name, "state": h.state, "slots": list(h.slots), "gpueq": h.gpueq}
                for h in sorted(mine, key=lambda h: h.name)
                if h.holds_gpu
            ],
        },
        "containers": {
            "count": len(mine),
            "max": limits.max_containers_per_user,
            "items": [
                {"name": h.name, "state": h.state, "type": h.type, "gpueq": h.gpueq}
                for h in sorted(mine, key=lambda h: h.name)
            ],
        },
        "aggregate": {
            "slice": limits.slice_name,
            "slice_exists": bool(usage.get("exists")),
            "capped": limits.slice_caps,
            "memory": {
                "used_bytes": usage.get("memory_current"),
                "max_bytes": mem_max,
                "high": agg.memory_high if agg else None,
            },
            "cpu": {"quota": agg.cpu_quota if agg else None, "usage_seconds": usage.get("cpu_usage_seconds")},
            "tasks": {
                "current": usage.get("tasks_current"),
                "max": usage.get("tasks_max")
                if usage.get("tasks_max") is not None
                else (agg.tasks_max if agg else None),
            },
            "oom_kills": usage.get("oom_kills"),
        },
        "per_container": {
            "max_cpus": limits.max_cpus,
            "memory_bytes": limits.memory,
            "shm_size_bytes": limits.shm_size,
            "pids_limit": limits.pids_limit,
        },
        "lifecycle": {
            "idle_timeout_h": limits.idle_timeout_h,
            "max_runtime_h": limits.max_runtime_h,
            "gpu_hold_after_stop_h": limits.gpu_hold_after_stop_h,
            "container_hold_after_stop_h": limits.container_hold_after_stop_h,
            "by_type": types,
        },
        "exemptions": [e.as_dict() for e in limits.active_exemptions(now)],
        "bare_metal": {
            "exempt": exempt_bare_metal,
            "grant": dict(grant) if grant else None,
            "gpu_on_host": exempt_bare_metal or bool(grant and grant.get("active")),
        },
        "alerts": alert_rows,
        "errors": list(errors),
    }


def _gib(n: Optional[float]) -> str:
    return "?" if n is None else f"{n / 1024**3:.1f}"


def _num(value: Optional[float]) -> str:
    return "∞" if value is None else f"{value:g}"


def brief_line(report: Mapping[str, Any]) -> str:
    """The login greeting's one line: group, GPU and container usage vs quota, memory, alerts."""
    gpu, cont, mem = report["gpu"], report["containers"], report["aggregate"]["memory"]
    parts = [
        f"{report['user']} ({report['group']}{'' if report['listed'] else ', default group'})",
        f"GPU {_num(gpu['used_gpueq'])}/{_num(gpu['quota_gpueq'])} gpueq "
        + usage_bar(gpu["used_gpueq"], gpu["quota_gpueq"]),
        f"containers {cont['count']}/{_num(cont['max'])}",
    ]
    if mem["used_bytes"] is not None or mem["max_bytes"] is not None:
        limit = "" if mem["max_bytes"] is None else f"/{_gib(mem['max_bytes'])}"
        parts.append(f"memory {_gib(mem['used_bytes'])}{limit} GiB")
    if report["alerts"]:
        alerts = ", ".join(f"{a['measure']} {a['level']}%" for a in report["alerts"])
        parts.append(f"QUOTA ALERT: {alerts} (ds01 limits)")
    line = " | ".join(parts)
    notices = report.get("notices") or []
    if not notices:
        return line
    from .notify import render_record

    head = f"{len(notices)} notice(s) for you since you last looked (all of the last week: ds01 limits):"
    return "\n".join([line, head] + [render_record(n).rstrip("\n") for n in notices])


def _hours_text(value: Optional[float]) -> str:
    return "none" if value is None else f"{value:g} h"


def limits_text(report: Mapping[str, Any]) -> str:
    """The human rendering of ``ds01 limits``."""
    gpu, cont, agg = report["gpu"], report["containers"], report["aggregate"]
    out = [f"{report['user']} — group {report['group']}"]
    if report.get("note"):
        out.append(f"  note: {report['note']}")
    full = "whole GPUs allowed" if gpu["allow_full_gpu"] else "MIG slices only"
    per = _num(gpu["max_slots_per_container"])
    out.append(
        f"GPU         {_num(gpu['used_gpueq'])} / {_num(gpu['quota_gpueq'])} GPU-equivalents  "
        f"{usage_bar(gpu['used_gpueq'], gpu['quota_gpueq'])}   {gpu['slots']} slot(s); max {per} per container, {full}"
    )
    for h in gpu["holders"]:
        out.append(
            f"              {h['container']} ({h['state']}): slot {','.join(h['slots']) or '?'}, {h['gpueq']:g} gpueq"
        )
    out.append(f"Containers  {cont['count']} / {_num(cont['max'])}  {usage_bar(cont['count'], cont['max'])}")
    for c in cont["items"]:
        out.append(f"              {c['name']} ({c['state']}, {c['type']})")
    mem = agg["memory"]
    out.append(
        f"Memory      {_gib(mem['used_bytes'])} / {_gib(mem['max_bytes']) if mem['max_bytes'] else '∞'} GiB  "
        + (usage_bar(mem["used_bytes"] or 0, mem["max_bytes"]) if mem["max_bytes"] else "(no limit)")
        + "   all your containers together"
    )
    cpu = agg["cpu"]
    used = "unknown" if cpu["usage_seconds"] is None else f"{cpu['usage_seconds']:.0f} s used"
    out.append(f"CPU         quota {cpu['quota'] or 'none'}; {used}")
    tasks = agg["tasks"]
    out.append(f"Tasks       {tasks['current'] if tasks['current'] is not None else '?'} / {tasks['max'] or '∞'}")
    if not agg["slice_exists"]:
        out.append(f"              (your slice {agg['slice']} has no cgroup yet: nothing running)")
    pc = report["per_container"]
    out.append(
        f"Per container: {_num(pc['max_cpus'])} CPUs, {_gib(pc['memory_bytes'])} GiB memory, "
        f"{_gib(pc['shm_size_bytes'])} GiB shm, {_num(pc['pids_limit'])} processes"
    )
    lcy = report["lifecycle"]
    out.append(
        f"Lifecycle: GPU released {_hours_text(lcy['gpu_hold_after_stop_h'])} after a stop, stopped containers "
        f"removed after {_hours_text(lcy['container_hold_after_stop_h'])}; GPU containers, by how they were started:"
    )
    for name, v in lcy["by_type"].items():
        out.append(
            f"  {name:<13} "
            + ("never stopped for idleness" if v["idle_timeout_h"] is None else f"idle {v['idle_timeout_h']:g} h")
            + f" ({v['idle_timeout_h_from']}), max runtime {_hours_text(v['max_runtime_h'])}"
            + f" ({v['max_runtime_h_from']})"
        )
    for e in report["exemptions"]:
        scope = f"container {e['container']}" if e["container"] else "all your containers"
        until = f"until {e['expires_on']}" if e["expires_on"] else "no end date"
        out.append(
            f"Exemption: {', '.join(e['exempt_from'])} for {scope}, {until}"
            + (f" ({e['reason']})" if e["reason"] else "")
        )
    bm = report["bare_metal"]
    if bm["exempt"]:
        out.append("Bare metal: you may use the GPUs outside containers (exempt)")
    elif bm["grant"]:
        g = bm["grant"]
        state = "active" if g["active"] else "expired"
        out.append(f"Bare metal: grant {state} ({g['type']}, until {g['expires_at'] or 'revoked'})")
    for a in report["alerts"]:
        out.append(f"ALERT {a['measure']} {a['level']}%: {a['sentence']}")
    notices = report.get("notices") or []
    if notices:
        out.append(f"Notices sent to you in the last week ({len(notices)}, newest last):")
        out.extend(f"  {n['at']}  [{n.get('level', '')}] {n.get('title', '')}" for n in notices)
    for err in report["errors"]:
        out.append(f"(incomplete: {err})")
    return "\n".join(out)
