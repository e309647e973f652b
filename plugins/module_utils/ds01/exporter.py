"""The ds01 Prometheus exporter (``ds01 exporter serve``): metric families from a cached snapshot.

A scrape never talks to Docker or NVML itself: it renders the last snapshot, which a refresh
(at most every ``cache_s`` seconds, default 15) builds from one Docker list call, the GPU
inventory, the event log's last 24 h and each known user's slice. A failing source is logged,
counted in ``ds01_component_errors_total{component=…}`` and leaves the rest of the snapshot intact.

Families (all labels low-cardinality except ``container``/``user``, which are bounded by the
number of containers and users on one host):

- ``ds01_gpu_slot_info{gpu,slot,uuid,kind,profile}`` 1 — one per allocatable slot (joins with
  dcgm-exporter on ``uuid``); ``ds01_gpu_slot_gpueq{slot}``; ``ds01_gpu_slot_allocated{slot,container,user}`` 1;
  ``ds01_gpu_slot_holders{slot}`` (containers holding it: more than 1 is a double booking).
- ``ds01_gpu_capacity_gpueq``, ``ds01_gpu_allocated_gpueq``.
- ``ds01_user_gpu_equivalents{user,group}``, ``ds01_user_gpus_allocated{user,group}`` (slots),
  ``ds01_user_containers{user,group}``, ``ds01_user_gpu_quota_gpueq{user,group}`` and
  ``ds01_user_container_quota{user,group}`` (only finite quotas: usage/limit is one expression).
- ``ds01_containers{state,type}``, ``ds01_unmanaged_gpu_containers``,
  ``ds01_unmanaged_gpu_container{container,user}`` 1.
- ``ds01_events_24h{event_type}``, ``ds01_refusals_24h{code}``; ``ds01_events_dropped_total{writer}``: events a
  writer (the event's source) could not write to the log (full or read-only file system, …), from the counter
  files in ``<run_dir>/events-dropped/``.
- ``ds01_gateway_requests_total{outcome}``, ``ds01_gateway_request_seconds`` (histogram) when the
  gateway publishes its counters file; ``ds01_{detector,lifecycle}_last_run_timestamp_seconds``.
- Per-user slice: ``ds01_user_memory_bytes``, ``ds01_user_memory_max_bytes``, ``ds01_user_cpu_seconds_total``,
  ``ds01_user_tasks``, ``ds01_user_oom_kills_total``, ``ds01_user_pressure_ratio{resource,kind,window}``.
- ``ds01_component_errors_total{component}``, ``ds01_snapshot_age_seconds``, ``ds01_snapshot_build_seconds``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from . import logs

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.registry import CollectorRegistry

    HAS_PROMETHEUS = True
except ImportError:  # pragma: no cover - the runtime venv pins prometheus_client
    HAS_PROMETHEUS = False

log = logs.get(__name__)


def empty_snapshot() -> dict:
    return {
        "built_at": 0.0,
        "build_seconds": 0.0,
        "slots": [],  # {gpu, slot, uuid, kind, profile, gpueq, container?, user?}
        "containers": [],  # {name, state, type, user, unmanaged_gpu: bool}
        "users": {},  # login -> {group, gpueq, slots, containers, gpu_quota, container_quota}
        "events_24h": {},
        "refusals_24h": {},
        "events_dropped": {},  # writer -> events it could not write (counter files under run_dir)
        "components": {},  # name -> {last_run: epoch|None}
        "gateway": None,  # {"requests": {outcome: n}, "latency": {"buckets": [[le, count]...], "sum": s, "count": n}}
        "slices": {},  # login -> {group, memory_current, memory_max, cpu_usage_seconds, tasks_current, oom_kills, psi}
    }


class SnapshotCache:
    """Builds a snapshot at most every ``cache_s`` seconds; keeps the last one if a build fails."""

    def __init__(self, build: Callable[[dict], dict], cache_s: float = 15.0) -> None:
        self._build = build
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._snapshot = empty_snapshot()
        self.errors: dict[str, int] = {}

    def count_error(self, component: str) -> None:
        self.errors[component] = self.errors.get(component, 0) + 1

    def get(self) -> dict:
        with self._lock:
            if time.time() - self._snapshot["built_at"] >= self.cache_s:
                started = time.monotonic()
                try:
                    snapshot = self._build(self._snapshot)
                except Exception:  # the refresh edge: keep serving the last snapshot
                    log.exception("could not refresh the metrics snapshot")
                    self.count_error("exporter")
                else:
                    snapshot["built_at"] = time.time()
                    snapshot["build_seconds"] = time.monotonic() - started
                    self._snapshot = snapshot
            return self._snapshot


class Ds01Collector:
    """A prometheus_client collector rendering the cached snapshot."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache

    def collect(self) -> Iterable[Any]:
        snap = self.cache.get()
        yield from _slot_families(snap)
        yield from _user_families(snap)
        yield from _container_families(snap)
        yield from _event_families(snap)
        yield from _slice_families(snap)
        yield from _component_families(snap, self.cache.errors)


def _g(name: str, doc: str, labels: Optional[list] = None) -> Any:
    return GaugeMetricFamily(name, doc, labels=labels)


def _slot_families(snap: dict) -> Iterable[Any]:
    info = _g(
        "ds01_gpu_slot_info", "An allocatable GPU or MIG slot (value 1)", ["gpu", "slot", "uuid", "kind", "profile"]
    )
    weight = _g("ds01_gpu_slot_gpueq", "GPU-equivalents of a slot (whole GPU 1.0, MIG slices/7)", ["slot"])
    held = _g("ds01_gpu_slot_allocated", "A slot held by a container (value 1)", ["slot", "container", "user"])
    holders = _g("ds01_gpu_slot_holders", "Containers holding a slot (more than 1: double-booked)", ["slot"])
    capacity = allocated = 0.0
    for slot in snap["slots"]:
        info.add_metric([str(slot["gpu"]), slot["slot"], slot["uuid"], slot["kind"], slot.get("profile") or ""], 1)
        weight.add_metric([slot["slot"]], slot["gpueq"])
        capacity += slot["gpueq"]
        holders.add_metric([slot["slot"]], slot.get("holders", 1 if slot.get("container") else 0))
        if slot.get("container"):
            held.add_metric([slot["slot"], slot["container"], slot.get("user") or "unknown"], 1)
            allocated += slot["gpueq"]
    cap = _g("ds01_gpu_capacity_gpueq", "Allocatable GPU-equivalents on this host")
    cap.add_metric([], capacity)
    alloc = _g("ds01_gpu_allocated_gpueq", "GPU-equivalents held by containers")
    alloc.add_metric([], allocated)
    return [info, weight, held, holders, cap, alloc]


def _user_families(snap: dict) -> Iterable[Any]:
    labels = ["user", "group"]
    gpueq = _g("ds01_user_gpu_equivalents", "GPU-equivalents a user holds", labels)
    slots = _g("ds01_user_gpus_allocated", "GPU/MIG slots a user holds", labels)
    containers = _g("ds01_user_containers", "Containers of a user in any state", labels)
    gpu_quota = _g("ds01_user_gpu_quota_gpueq", "A user's GPU quota in GPU-equivalents (absent: unlimited)", labels)
    cont_quota = _g("ds01_user_container_quota", "A user's container quota (absent: unlimited)", labels)
    for login, user in sorted(snap["users"].items()):
        key = [login, user.get("group") or "unknown"]
        gpueq.add_metric(key, user.get("gpueq", 0.0))
        slots.add_metric(key, user.get("slots", 0))
        containers.add_metric(key, user.get("containers", 0))
        if user.get("gpu_quota") is not None:
            gpu_quota.add_metric(key, user["gpu_quota"])
        if user.get("container_quota") is not None:
            cont_quota.add_metric(key, user["container_quota"])
    return [gpueq, slots, containers, gpu_quota, cont_quota]


def _container_families(snap: dict) -> Iterable[Any]:
    by_state = _g("ds01_containers", "Containers by state and type", ["state", "type"])
    counts: dict = {}
    unmanaged = _g(
        "ds01_unmanaged_gpu_container", "A container holding GPUs without a ds01 allocation", ["container", "user"]
    )
    n_unmanaged = 0
    for container in snap["containers"]:
        key = (container.get("state") or "unknown", container.get("type") or "unknown")
        counts[key] = counts.get(key, 0) + 1
        if container.get("unmanaged_gpu"):
            n_unmanaged += 1
            unmanaged.add_metric([container["name"], container.get("user") or "unknown"], 1)
    for (state, kind), count in sorted(counts.items()):
        by_state.add_metric([state, kind], count)
    total = _g("ds01_unmanaged_gpu_containers", "Containers holding GPUs without a ds01 allocation")
    total.add_metric([], n_unmanaged)
    return [by_state, unmanaged, total]


def _event_families(snap: dict) -> Iterable[Any]:
    events = _g("ds01_events_24h", "Events in the last 24 hours by type", ["event_type"])
    for event_type, count in sorted(snap["events_24h"].items()):
        events.add_metric([event_type], count)
    refusals = _g("ds01_refusals_24h", "Refusals in the last 24 hours by code", ["code"])
    for code, count in sorted(snap["refusals_24h"].items()):
        refusals.add_metric([code], count)
    dropped = CounterMetricFamily(
        "ds01_events_dropped", "Events a writer could not write to the event log", labels=["writer"]
    )
    for writer, count in sorted((snap.get("events_dropped") or {}).items()):
        dropped.add_metric([writer], count)
    out = [events, refusals, dropped]
    gateway = snap.get("gateway")
    if gateway:
        requests = CounterMetricFamily("ds01_gateway_requests", "Requests through the gateway", labels=["outcome"])
        for outcome, count in sorted(gateway.get("requests", {}).items()):
            requests.add_metric([outcome], count)
        out.append(requests)
        latency = gateway.get("latency")
        if latency:
            hist = HistogramMetricFamily("ds01_gateway_request_seconds", "Gateway request latency")
            buckets = [(str(le) if le != "+Inf" else "+Inf", count) for le, count in latency["buckets"]]
            hist.add_metric([], buckets=buckets, sum_value=latency["sum"])
            out.append(hist)
    return out


def _slice_families(snap: dict) -> Iterable[Any]:
    labels = ["user", "group"]
    memory = _g("ds01_user_memory_bytes", "Memory used by a user's slice", labels)
    memory_max = _g("ds01_user_memory_max_bytes", "Memory limit of a user's slice (absent: unlimited)", labels)
    cpu = CounterMetricFamily("ds01_user_cpu_seconds", "CPU time used by a user's slice", labels=labels)
    tasks = _g("ds01_user_tasks", "Tasks in a user's slice", labels)
    ooms = CounterMetricFamily("ds01_user_oom_kills", "OOM kills in a user's slice", labels=labels)
    pressure = _g(
        "ds01_user_pressure_ratio",
        "Share of time a user's work stalled on a resource (PSI)",
        ["user", "group", "resource", "kind", "window"],
    )
    for login, usage in sorted(snap["slices"].items()):
        key = [login, usage.get("group") or "unknown"]
        if usage.get("memory_current") is not None:
            memory.add_metric(key, usage["memory_current"])
        if usage.get("memory_max") is not None:
            memory_max.add_metric(key, usage["memory_max"])
        if usage.get("cpu_usage_seconds") is not None:
            cpu.add_metric(key, usage["cpu_usage_seconds"])
        if usage.get("tasks_current") is not None:
            tasks.add_metric(key, usage["tasks_current"])
        if usage.get("oom_kills") is not None:
            ooms.add_metric(key, usage["oom_kills"])
        for resource, kinds in sorted((usage.get("psi") or {}).items()):
            for kind, values in sorted(kinds.items()):
                for window in ("avg10", "avg60", "avg300"):
                    if window in values:
                        pressure.add_metric([*key, resource, kind, window], values[window] / 100.0)
    return [memory, memory_max, cpu, tasks, ooms, pressure]


def _component_families(snap: dict, errors: dict) -> Iterable[Any]:
    out = []
    for component in ("detector", "lifecycle"):
        last = (snap["components"].get(component) or {}).get("last_run")
        family = _g(f"ds01_{component}_last_run_timestamp_seconds", f"When the {component} last completed a run")
        if last is not None:
            family.add_metric([], last)
        out.append(family)
    errs = CounterMetricFamily("ds01_component_errors", "Errors logged by ds01 components", labels=["component"])
    merged = dict(snap.get("errors") or {})
    for component, count in errors.items():
        merged[component] = merged.get(component, 0) + count
    for component in sorted(set(merged) | {"exporter"}):
        errs.add_metric([component], merged.get(component, 0))
    out.append(errs)
    age = _g("ds01_snapshot_age_seconds", "Age of the snapshot this scrape was served from")
    age.add_metric([], max(0.0, time.time() - snap["built_at"]) if snap["built_at"] else 0.0)
    build = _g("ds01_snapshot_build_seconds", "How long the last snapshot took to build")
    build.add_metric([], snap.get("build_seconds", 0.0))
    out.extend([age, build])
    return out


def make_registry(cache: SnapshotCache) -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Ds01Collector(cache))
    return registry


def serve(cache: SnapshotCache, bind: str, port: int, ready: Optional[Callable[[int], None]] = None) -> None:
    """Serve ``/metrics`` and ``/health`` until interrupted (``port`` 0 picks a free port)."""
    registry = make_registry(cache)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype, status = generate_latest(registry), CONTENT_TYPE_LATEST, 200
            elif path == "/health":
                snap = cache.get()
                healthy = snap["built_at"] > 0
                payload = {
                    "status": "ok" if healthy else "starting",
                    "snapshot_age_s": round(time.time() - snap["built_at"], 3),
                }
                body, ctype, status = json.dumps(payload).encode(), "application/json", 200 if healthy else 503
            else:
                body, ctype, status = b"ds01 exporter: see /metrics and /health\n", "text/plain", 404
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), fmt % args)

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    if ready:
        ready(server.server_address[1])
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
