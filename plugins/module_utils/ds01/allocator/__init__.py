"""The GPU allocator: a pure decision, and the host-wide reservation that makes it safe.

``decide(inventory, holdings, limits, request) -> Grant | Refusal`` is a pure function of what the
GPUs are (``gpu.Inventory``), what Docker says every container holds (``docker.ContainerInfo``
list), the user's ``config.Limits`` and the ``Request``. Nothing else is read, nothing is written.

Layers, the same on every path (a count, specific devices, ``all``), in this order:

1. ``POLICY_DENIED`` — a malformed request (count < 1, unknown device, a MIG-mode GPU named
   whole, ``all`` together with devices). ``all`` from a non-admin is "the GPUs I may have": as many
   free slots as the quota and ``max_gpu_slots_per_container`` allow, with a Warning naming them
   (``Grant.warnings``); when not even one fits, it is decided as ``--gpus 1``.
2. ``CONTAINER_LIMIT`` — the user already has ``max_containers_per_user`` containers (any state).
3. ``EXCEEDS_CONTAINER_LIMIT`` — the slots of *this* request exceed ``max_gpu_slots_per_container``
   (never compared with the user's total: reference §13 #14).
4. ``FULL_GPU_NOT_ALLOWED`` — a whole GPU asked for (``full_gpu`` or by device) when
   ``allow_full_gpu`` is false.
5. ``AGGREGATE_GPU_QUOTA_EXCEEDED`` then ``USER_AT_LIMIT`` — what the user holds **plus this
   request** above ``aggregate.gpu_limit``, then above ``max_gpu_equivalents`` (GPU-equivalents,
   ``gpu.gpueq``; a MIG slot weighs its slices / 7, never 0.0). ``None`` is unlimited; comparisons
   allow ε = 1e-9.
6. ``NO_GPU_AVAILABLE`` — not enough free slots of the allowed kinds.

Placement (deterministic): a slot is free when no container names it (nor, for a MIG instance,
its parent GPU). Whole-GPU requests (``full_gpu``) take the free whole GPUs by index (a GPU in MIG
mode is never handed out whole). Otherwise users allowed whole GPUs get free whole GPUs first,
then MIG slices; users who are not get MIG slices only. MIG slices are chosen smallest first
(fewest compute slices), then on the GPU that already has the most MIG holders (packing, so whole
MIG GPUs and big slices stay free for big requests), then by slot id. A preferred ``mig_profile``
puts that profile first (other slices remain the fallback). Slots are taken in that order while
they fit the remaining quota, so a user near the limit gets a slice that fits rather than a refusal.

``reserve(user, request, …)`` is the only way to act on a decision: it takes the exclusive lock
``<paths.run_dir>/gpu-allocator.lock`` (``fcntl.flock``, polled up to
``gpu_allocation.lock_timeout_s``; the kernel drops it if the holder dies), reads Docker fresh
inside it, decides, and **yields the Grant while still holding the lock**: the caller creates the
container with ``grant_labels(grant)`` and ``device_request(grant)`` inside the ``with`` block.
A refusal — including a lock not taken in time, an unreadable inventory, Docker not answering —
raises ``AllocationRefused`` before the block runs, so no caller can use a grant it did not get
(reference §13 #10: upstream released the lock before ``docker create`` and went on without it).

A grant outlives the process that made it. The lock dies with its holder, but a create already
forwarded to the daemon does not: the daemon may finish it after the caller was killed. So inside
the lock, before the grant is yielded, ``reserve()`` writes a **write-ahead intent**
(``<run_dir>/gpu-intents/<token>.json``, ``intents.py``: user, container name, slots, UUIDs and
labels granted, created_at, the writer's pid and start time), and the grant's labels carry the token
(``ds01.gpu.intent``). Every decision counts pending intents as held (``intents.as_holding``: their
slots occupied, their GPU-equivalents and one container against their user). The rule, applied
inside the lock before each decision:

- a container carrying the token label (or the intent's name with exactly its UUIDs) exists: it
  holds the slots now; the intent is removed and ``gpu.intent_recovered`` (``recovered: true``)
  records that a container whose creator vanished was found and keeps its GPUs;
- no such container, the intent is at least ``intents.SETTLE_S`` (30 s) old and its writer is gone
  (pid not running or reused, another boot, or the writer let go of it after no answer): the create
  never completed; the intent is removed and ``gpu.release`` (``intent_expired: true``) recorded. A
  writer that still runs loses its intent only after ``intents.STALE_S`` (600 s);
- otherwise it is pending and counts as held.

The block's end decides the intent's fate: a block that ends normally (the daemon answered, created
or refused) removes it; an exception carrying the daemon's answer (``docker.errors.APIError``: an HTTP
status came back) removes it; any other exception (no answer: a timeout, a lost connection, the
gateway's ``CreateUnanswered``) leaves it abandoned, pending until the container appears or
``SETTLE_S`` pass, since the daemon may still be making the container.

The package: ``records`` (Request, Grant, Refusal, codes, labels), ``decide`` (the pure decision and
the usage views), ``reservation`` (the lock, the intents, ``reserve``), ``jobs`` (dcgm-exporter's job
mapping). Its public names are all here; ``reservation``'s (the lock, the event log, the intents) load on
first use, so ``ds01 gpu plan``, which only decides, does not import them.
"""

from __future__ import annotations

from typing import Any

from .decide import Usage, decide, is_free, make_refusal, occupied_slots, slot_weight, user_usage
from .jobs import job_id, job_mapping, sync_job_mapping
from .records import (
    AGGREGATE_GPU_QUOTA_EXCEEDED,
    CODES,
    CONTAINER_LIMIT,
    EPS,
    EVENT_GRANT,
    EVENT_RECOVERED,
    EVENT_REJECT,
    EVENT_RELEASE,
    EXCEEDS_CONTAINER_LIMIT,
    FULL_GPU_NOT_ALLOWED,
    NO_GPU_AVAILABLE,
    POLICY_DENIED,
    USER_AT_LIMIT,
    AllocationRefused,
    Decision,
    Grant,
    Refusal,
    Request,
    device_request,
    format_gpueq,
    grant_labels,
    sdk_device_request,
)

_RESERVE_NAMES = (
    "DEFAULT_LOCK_TIMEOUT_S",
    "LOCK_NAME",
    "create_answered",
    "lock_path_of",
    "reserve",
    "settle_intents",
)


def __getattr__(name: str) -> Any:
    """The reservation's names, loaded on first use (``ds01 gpu plan`` only decides, and skips its imports)."""
    if name in _RESERVE_NAMES:
        from . import reservation

        return getattr(reservation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AGGREGATE_GPU_QUOTA_EXCEEDED",
    "CODES",
    "CONTAINER_LIMIT",
    "EPS",
    "EVENT_GRANT",
    "EVENT_RECOVERED",
    "EVENT_REJECT",
    "EVENT_RELEASE",
    "EXCEEDS_CONTAINER_LIMIT",
    "FULL_GPU_NOT_ALLOWED",
    "NO_GPU_AVAILABLE",
    "POLICY_DENIED",
    "USER_AT_LIMIT",
    "AllocationRefused",
    "Decision",
    "Grant",
    "Refusal",
    "Request",
    "Usage",
    "decide",
    "device_request",
    "format_gpueq",
    "grant_labels",
    "is_free",
    "job_id",
    "job_mapping",
    "make_refusal",
    "occupied_slots",
    "sdk_device_request",
    "slot_weight",
    "sync_job_mapping",
    "user_usage",
]
