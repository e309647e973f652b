"""The exporter's snapshot: every source gathered once per refresh (``build_snapshot``), the
long-lived ``Observer`` around it, and the job-mapping sync run after a refresh."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from .. import allocator, exporter, logs
from .. import config as config_mod
from .. import lifecycle as lc
from ..record import replace
from ..usage import SliceReader
from .accounting import (
    assign_holders,
    container_type,
    held_slots,
    load_gpu_inventory,
    slot_table,
    slot_weights,
    unmanaged_gpu,
    user_totals,
)
from .docker_reads import docker_client_from_env, docker_containers, inspect_cache
from .readers import (
    EventWindow,
    event_log_path,
    load_oom_counts,
    oom_rises,
    read_detector_inventory,
    read_dropped_events,
    read_gateway_counters,
    read_json,
    read_slices,
    save_json,
)
from .records import EXPORTER_SUBDIR, OOM_EVENT, OOM_FILE, SLOTS_FILE, containers_from_inventory, count_error

log = logs.get(__package__)


def sync_job_mapping(config: config_mod.Config, snap: Mapping[str, Any]) -> bool:
    """dcgm-exporter's ``--hpc-job-mapping-dir`` from the snapshot's holdings, through the
    allocator's ``sync_job_mapping`` (the one writer of that format). False when it cannot run."""
    inventory = snap.get("_inventory")
    if inventory is None:
        log.info("no GPU inventory in this snapshot: the job mapping is left as it is")
        return False
    holders = [replace(h, slots=held_slots(h)) for h in snap.get("_holdings") or [] if held_slots(h)]
    allocator.sync_job_mapping(inventory, holders, config.section("gpu_allocation")["mapping_dir"])
    return True


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
        self.inspect_cache: Any = inspect_cache()

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
                count_error(snap, name)
        return snap


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
    ``containers_source`` and the private ``_holdings`` (``docker.ContainerInfo``), ``_limits`` and
    ``_slot_table`` the alert pass and the next build reuse); see the package docstring, ``observe``,
    for the sources. ``persist=False`` writes no file (``ds01 alerts run --dry-run``); ``emit=None``
    records no OOM event."""
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
            count_error(snap, component)
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
        holdings = containers_from_inventory(doc)
        snap["containers_source"] = "detector"
    elif docker_client is not None:
        holdings = guarded("docker", lambda: docker_containers(docker_client, inv_box[0], inspect_cache))
        snap["containers_source"] = "docker" if holdings is not None else "none"
    else:
        count_error(snap, "docker")
        snap["containers_source"] = "none"
    if holdings is None:
        holdings = previous.get("_holdings") or []
    snap["_holdings"] = holdings

    snap["slots"] = assign_holders(slots, holdings)
    snap["containers"] = [
        {
            "name": h.name,
            "state": h.state,
            "type": container_type(h),
            "user": h.owner,
            "unmanaged_gpu": unmanaged_gpu(h),
        }
        for h in holdings
    ]

    # Users: every known user and every owner
    totals = user_totals(holdings, weights)
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
        data = read_json(os.path.join(state_dir, lc.SUBDIR, lc.LAST_RUN_FILE))
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
