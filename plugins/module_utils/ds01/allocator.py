"""The GPU allocator: a pure decision, and the host-wide reservation that makes it safe.

``decide(inventory, holdings, limits, request) -> Grant | Refusal`` is a pure function of what the
GPUs are (``gpu.Inventory``), what Docker says every container holds (``docker_state.ContainerInfo``
list), the user's ``config.Limits`` and the ``Request``. Nothing else is read, nothing is written.

Layers, the same on every path (a count, specific devices, ``all``), in this order:

1. ``POLICY_DENIED`` — a malformed request (count < 1, unknown device, a MIG-mode GPU named
   whole, ``all`` from a non-admin: ``--gpus all`` would take the whole server, so a student is
   told to ask ``--gpus 1``).
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from . import docker_state, fsutil, gpu, intents

log = logging.getLogger(__name__)

EPS = 1e-9
LOCK_NAME = "gpu-allocator.lock"
DEFAULT_LOCK_TIMEOUT_S = 10.0

USER_AT_LIMIT = "USER_AT_LIMIT"
AGGREGATE_GPU_QUOTA_EXCEEDED = "AGGREGATE_GPU_QUOTA_EXCEEDED"
EXCEEDS_CONTAINER_LIMIT = "EXCEEDS_CONTAINER_LIMIT"
CONTAINER_LIMIT = "CONTAINER_LIMIT"
FULL_GPU_NOT_ALLOWED = "FULL_GPU_NOT_ALLOWED"
NO_GPU_AVAILABLE = "NO_GPU_AVAILABLE"
POLICY_DENIED = "POLICY_DENIED"
CODES = (
    USER_AT_LIMIT,
    AGGREGATE_GPU_QUOTA_EXCEEDED,
    EXCEEDS_CONTAINER_LIMIT,
    CONTAINER_LIMIT,
    FULL_GPU_NOT_ALLOWED,
    NO_GPU_AVAILABLE,
    POLICY_DENIED,
)

EVENT_GRANT = "gpu.allocate"
EVENT_REJECT = "gpu.reject"
EVENT_RELEASE = "gpu.release"
EVENT_RECOVERED = "gpu.intent_recovered"

_NAMES_SHOWN = 4


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a container asks for.

    ``count`` slots (default 1); or ``device_ids`` (UUIDs, GPU indices, slot ids — the count is
    their number); or ``all_gpus`` (admins only: every free slot they may have). ``full_gpu``:
    whole GPUs only. ``mig_profile``: preferred MIG profile (``1g.10gb``). ``container``: the
    name the container will get (messages, events). ``admin``: the caller is an admin.
    """

    count: int = 1
    device_ids: tuple = ()
    all_gpus: bool = False
    full_gpu: bool = False
    mig_profile: Optional[str] = None
    container: Optional[str] = None
    admin: bool = False

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "device_ids": list(self.device_ids),
            "all_gpus": self.all_gpus,
            "full_gpu": self.full_gpu,
            "mig_profile": self.mig_profile,
            "container": self.container,
        }


@dataclass(frozen=True)
class Grant:
    """The slots given to one container, in slot order, with their UUIDs and total weight."""

    user: str
    slots: tuple
    uuids: tuple
    gpueq: float
    profiles: tuple = ()  # per slot: the MIG profile, or None for a whole GPU
    container: Optional[str] = None
    intent: Optional[str] = None  # the write-ahead intent's token (``reserve`` sets it)

    def as_dict(self) -> dict:
        return {
            "user": self.user,
            "container": self.container,
            "intent": self.intent,
            "slots": list(self.slots),
            "uuids": list(self.uuids),
            "profiles": list(self.profiles),
            "gpueq": round(self.gpueq, 6),
            "labels": grant_labels(self),
        }


@dataclass(frozen=True)
class Refusal:
    """A request the allocator said no to: a stable ``code`` and a ``sentence`` for the user."""

    code: str
    sentence: str
    user: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.sentence, "user": self.user, "details": dict(self.details)}


Decision = Union[Grant, Refusal]


class AllocationRefused(Exception):
    """Raised by ``reserve`` instead of yielding a grant; ``.refusal`` (and ``.code``/``.sentence``)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.code}: {refusal.sentence}")
        self.refusal = refusal
        self.code = refusal.code
        self.sentence = refusal.sentence


# --------------------------------------------------------------------------------------------
# Helpers for the caller: labels and the DeviceRequest of a grant
# --------------------------------------------------------------------------------------------


def format_gpueq(value: float) -> str:
    """GPU-equivalents for a sentence: ``2.0``, ``0.57``, ``1.14``."""
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def grant_labels(grant: Grant) -> dict:
    """``ds01.gpu.slots`` (``0,1.2``), ``ds01.gpu.uuids``, ``ds01.gpu.gpueq`` for the container, and
    ``ds01.gpu.intent`` (the intent's token) for a grant from ``reserve``."""
    labels = {
        docker_state.SLOTS_LABEL: ",".join(grant.slots),
        docker_state.UUIDS_LABEL: ",".join(grant.uuids),
        docker_state.GPUEQ_LABEL: repr(round(grant.gpueq, 6)),
    }
    if grant.intent:
        labels[intents.LABEL] = grant.intent
    return labels


def device_request(grant: Grant) -> dict:
    """The ``HostConfig.DeviceRequests`` entry, as ``docker create --gpus device=…`` writes it."""
    return {"Driver": "", "Count": 0, "DeviceIDs": list(grant.uuids), "Capabilities": [["gpu"]], "Options": {}}


def sdk_device_request(grant: Grant) -> Any:
    """The same as a ``docker.types.DeviceRequest`` for the docker SDK."""
    import docker

    return docker.types.DeviceRequest(device_ids=list(grant.uuids), capabilities=[["gpu"]])


# --------------------------------------------------------------------------------------------
# Usage views (shared with `ds01 gpu users` and the exporter)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    user: str
    containers: tuple  # every container of the user (any state)
    holders: tuple  # those holding slots
    slots: tuple  # distinct slot ids held
    gpueq: float

    @property
    def holder_names(self) -> list:
        return [c.name for c in self.holders]


def slot_weight(inventory: gpu.Inventory, slot_id: str) -> float:
    try:
        return inventory.slot(slot_id).gpueq
    except KeyError:
        return 0.0  # not a slot of this host: attach_slots never records such ids


def user_usage(inventory: gpu.Inventory, holdings: Iterable[Any], user: str) -> Usage:
    """What ``user`` holds: containers (any state), GPU holders, distinct slots, GPU-equivalents."""
    mine = [c for c in holdings if c.owner == user]
    holders = [c for c in mine if c.slots]
    slots: list = []
    for c in holders:
        slots.extend(s for s in c.slots if s not in slots)
    return Usage(user, tuple(mine), tuple(holders), tuple(slots), sum(slot_weight(inventory, s) for s in slots))


def occupied_slots(holdings: Iterable[Any]) -> dict:
    """slot id → the containers naming it."""
    return docker_state.holders_by_slot(holdings)


def is_free(slot: gpu.Slot, occupied: Mapping[str, Any]) -> bool:
    if slot.slot_id in occupied:
        return False
    return not (slot.kind == gpu.KIND_MIG and str(slot.gpu_index) in occupied)


# --------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------


def _names(containers: Sequence[Any]) -> str:
    names = [c.name for c in containers]
    if not names:
        return ""
    shown = ", ".join(names[:_NAMES_SHOWN])
    if len(names) > _NAMES_SHOWN:
        shown += f" and {len(names) - _NAMES_SHOWN} more"
    return shown


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _refuse(code: str, sentence: str, user: str, **details: Any) -> Refusal:
    return Refusal(code, sentence, user, details)


def _quota_refusal(limits: Any, usage: Usage, cost: float, n: int, what: str = "this request") -> Optional[Refusal]:
    """The quota layer that ``usage.gpueq + cost`` breaks (aggregate first), or None."""
    aggregate = limits.aggregate.gpu_limit if limits.aggregate is not None else None
    personal = limits.max_gpu_equivalents
    total = usage.gpueq + cost
    details = {
        "held_gpueq": round(usage.gpueq, 6),
        "requested_gpueq": round(cost, 6),
        "containers": usage.holder_names,
        "requested_slots": n,
    }
    held, need = format_gpueq(usage.gpueq), format_gpueq(cost)
    if usage.holders:
        first = usage.holders[0].name
        holding = f" (containers: {_names(usage.holders)})"
        todo = (
            f"Stop and remove one (`docker rm -f {first}`) or ask for a smaller MIG slice, then try again."
            if n == 1
            else f"Stop and remove one (`docker rm -f {first}`) or ask for fewer or smaller GPUs, then try again."
        )
    else:
        holding = ""
        todo = "Ask for fewer GPUs or a MIG slice (`--gpus 1`), then try again."
    if aggregate is not None and total > aggregate + EPS:
        return _refuse(
            AGGREGATE_GPU_QUOTA_EXCEEDED,
            f"Together your containers would hold {format_gpueq(total)} GPU-equivalents, above your total of "
            f"{format_gpueq(aggregate)}: you hold {held}{holding} and {what} needs {need}. {todo}",
            limits.user,
            limit=aggregate,
            layer="aggregate.gpu_limit",
            **details,
        )
    if personal is not None and total > personal + EPS:
        return _refuse(
            USER_AT_LIMIT,
            f"You hold {held} of your {format_gpueq(personal)} GPU-equivalents{holding}, and {what} needs "
            f"{need} more. {todo}",
            limits.user,
            limit=personal,
            layer="max_gpu_equivalents",
            **details,
        )
    return None


def _remaining(limits: Any, usage: Usage) -> float:
    aggregate = limits.aggregate.gpu_limit if limits.aggregate else None
    values = [v for v in (limits.max_gpu_equivalents, aggregate) if v is not None]
    return (min(values) - usage.gpueq) if values else float("inf")


def _mig_order(occupied: Mapping[str, Any], inventory: gpu.Inventory, preferred: Optional[str]) -> Any:
    held_on_gpu: dict = {}
    for slot_id in occupied:
        try:
            slot = inventory.slot(slot_id)
        except KeyError:
            continue
        if slot.kind == gpu.KIND_MIG:
            held_on_gpu[slot.gpu_index] = held_on_gpu.get(slot.gpu_index, 0) + 1

    def key(slot: gpu.Slot) -> tuple:
        return (
            0 if preferred is None or slot.profile == preferred else 1,
            slot.compute_slices or 0,
            -held_on_gpu.get(slot.gpu_index, 0),
            slot.gpu_index,
            slot.mig_index or 0,
        )

    return key


def _validate(inventory: gpu.Inventory, request: Request, user: str) -> Optional[Refusal]:
    if request.all_gpus and not request.admin:
        return _refuse(
            POLICY_DENIED,
            "`--gpus all` would take every GPU on the shared server, which only admins may do. "
            "Ask for what you need instead, e.g. `--gpus 1`.",
            user,
            reason="all_gpus",
        )
    if request.all_gpus and request.device_ids:
        return _refuse(POLICY_DENIED, "Ask for `all` GPUs or for specific devices, not both.", user, reason="conflict")
    bad_count = isinstance(request.count, bool) or not isinstance(request.count, int) or request.count < 1
    if not request.device_ids and not request.all_gpus and bad_count:
        return _refuse(
            POLICY_DENIED,
            f"A GPU request must ask for at least one GPU (got {request.count!r}); use e.g. `--gpus 1`.",
            user,
            reason="count",
        )
    if request.mig_profile is not None:
        try:
            gpu.profile_compute_slices(request.mig_profile)
        except ValueError:
            return _refuse(
                POLICY_DENIED,
                f"'{request.mig_profile}' is not a MIG profile name; `ds01 gpu status` lists the profiles "
                "this server has (e.g. 1g.10gb).",
                user,
                reason="profile",
            )
        if request.full_gpu:
            return _refuse(
                POLICY_DENIED,
                "A request cannot ask for a whole GPU and a MIG slice at once; ask for one of them.",
                user,
                reason="conflict",
            )
    return None


def _named_slots(inventory: gpu.Inventory, request: Request, user: str) -> Union[list, Refusal]:
    slots: list = []
    for device_id in request.device_ids:
        slot = inventory.resolve(device_id)
        if slot is None:
            return _refuse(
                POLICY_DENIED,
                f"There is no GPU or MIG instance '{device_id}' on this server; `ds01 gpu status` lists them.",
                user,
                reason="unknown_device",
                device=str(device_id),
            )
        if slot.mig_parent:
            children = ", ".join(s.slot_id for s in inventory.children(slot.gpu_index)) or "none"
            return _refuse(
                POLICY_DENIED,
                f"GPU {slot.slot_id} is split into MIG instances ({children}) and cannot be handed out whole; "
                "ask for one of its instances, or simply `--gpus 1`.",
                user,
                reason="mig_parent",
                device=str(device_id),
            )
        if request.full_gpu and slot.kind == gpu.KIND_MIG:
            return _refuse(
                POLICY_DENIED,
                f"{device_id} is a MIG instance, not a whole GPU; drop the whole-GPU option or name a whole GPU.",
                user,
                reason="conflict",
            )
        if slot not in slots:
            slots.append(slot)
    return slots


def decide(inventory: gpu.Inventory, holdings: Iterable[Any], limits: Any, request: Request) -> Decision:
    """Grant or Refusal for ``limits.user`` asking ``request``, given every container Docker knows.

    ``holdings`` are ``docker_state.ContainerInfo`` (with ``slots`` resolved against the same
    inventory) for *all* containers, GPU or not: they give occupancy, the user's GPU-equivalents
    and the user's container count. Pure: no I/O.
    """
    holdings = list(holdings)
    user = limits.user
    refusal = _validate(inventory, request, user)
    if refusal is not None:
        return refusal
    usage = user_usage(inventory, holdings, user)
    occupied = occupied_slots(holdings)

    named: list = []
    if request.device_ids:
        found = _named_slots(inventory, request, user)
        if isinstance(found, Refusal):
            return found
        named = found

    # Layer: containers per user (any state).
    cap = limits.max_containers_per_user
    if cap is not None and len(usage.containers) >= cap:
        first = usage.containers[0].name
        return _refuse(
            CONTAINER_LIMIT,
            f"You already have {_plural(len(usage.containers), 'container')} (stopped ones count too: "
            f"{_names(usage.containers)}), and your limit is {cap}. Remove one you no longer need "
            f"(`docker rm -f {first}`), then try again.",
            user,
            containers=[c.name for c in usage.containers],
            count=len(usage.containers),
            limit=cap,
        )

    # Which slots may this user have at all?
    allow_whole = bool(limits.allow_full_gpu)
    free = [s for s in inventory.slots() if is_free(s, occupied)]
    if request.all_gpus:
        pool = [s for s in free if allow_whole or s.kind == gpu.KIND_MIG]
        n = max(1, len(pool))
    elif named:
        n = len(named)
    else:
        n = request.count

    # Layer: slots per container (this request only).
    per_container = limits.max_gpu_slots_per_container
    if per_container is not None and n > per_container:
        return _refuse(
            EXCEEDS_CONTAINER_LIMIT,
            f"You asked for {_plural(n, 'GPU')} in one container; your limit is {per_container} per container. "
            f"Ask for {per_container} (`--gpus {per_container}`) or spread the work over several containers.",
            user,
            requested_slots=n,
            limit=per_container,
        )

    # Layer: whole GPUs.
    wants_whole = request.full_gpu or any(s.kind == gpu.KIND_GPU for s in named)
    if wants_whole and not allow_whole:
        return _refuse(
            FULL_GPU_NOT_ALLOWED,
            f"Your group ({limits.group}) may not use a whole GPU; MIG slices are yours to use. "
            "Ask with `--gpus 1` (no device, no whole-GPU option) and you will get a slice.",
            user,
            group=limits.group,
        )
    eligible = [
        s
        for s in inventory.slots()
        if (s.kind == gpu.KIND_GPU and allow_whole) or (s.kind == gpu.KIND_MIG and not request.full_gpu)
    ]
    if not eligible and not named:
        if not allow_whole and inventory.slots():
            return _refuse(
                FULL_GPU_NOT_ALLOWED,
                f"This server has only whole GPUs, and your group ({limits.group}) may not use a whole GPU. "
                "Ask the admins for MIG slices or for whole-GPU access.",
                user,
                group=limits.group,
            )
        return _refuse(
            NO_GPU_AVAILABLE,
            "This server has no GPU that can be handed out (a GPU in MIG mode needs MIG instances). Tell the admins.",
            user,
            free=0,
            total=0,
        )

    # Specific devices: quota, then availability.
    if named:
        cost = sum(s.gpueq for s in named)
        refusal = _quota_refusal(limits, usage, cost, n)
        if refusal is not None:
            return refusal
        taken = [s for s in named if not is_free(s, occupied)]
        if taken:
            slot = taken[0]
            holders = occupied.get(slot.slot_id) or occupied.get(str(slot.gpu_index)) or []
            own = [c for c in holders if c.owner == user]
            by = f"your container {own[0].name}" if own else "another container"
            return _refuse(
                NO_GPU_AVAILABLE,
                f"GPU {slot.slot_id} is held by {by}; nothing was created. Ask for `--gpus {n}` to get any free "
                "one, or see `ds01 gpu status` for what is free.",
                user,
                slot=slot.slot_id,
                held_by_you=bool(own),
            )
        return _grant(user, request, named)

    # A count (or all): the cheapest possible, then what is free.
    cheapest = sum(sorted(s.gpueq for s in eligible)[:n]) if len(eligible) >= n else None
    if cheapest is not None:
        refusal = _quota_refusal(limits, usage, cheapest, n)
        if refusal is not None:
            return refusal
    candidates = [s for s in free if s in eligible]
    whole = sorted((s for s in candidates if s.kind == gpu.KIND_GPU), key=lambda s: s.gpu_index)
    mig = sorted(
        (s for s in candidates if s.kind == gpu.KIND_MIG), key=_mig_order(occupied, inventory, request.mig_profile)
    )
    ordered = mig if request.mig_profile else whole + mig
    if len(ordered) < n:
        return _no_gpu(limits, request, n, len(ordered), eligible=eligible, free=free)
    budget = _remaining(limits, usage)
    chosen: list = []
    total = 0.0
    for slot in ordered:
        if len(chosen) == n:
            break
        if total + slot.gpueq <= budget + EPS:
            chosen.append(slot)
            total += slot.gpueq
    if len(chosen) < n:  # free slots exist, but not ones that fit the quota
        cost = sum(sorted(s.gpueq for s in ordered)[:n])
        refusal = _quota_refusal(limits, usage, cost, n, what="the free GPUs right now")
        if refusal is not None:
            return refusal
        return _no_gpu(limits, request, n, len(chosen), eligible=eligible, free=free)  # pragma: no cover - defensive
    return _grant(user, request, sorted(chosen, key=_slot_sort_key))


def _slot_sort_key(slot: gpu.Slot) -> tuple:
    return (slot.gpu_index, -1 if slot.mig_index is None else slot.mig_index)


def _no_gpu(limits: Any, request: Request, n: int, have: int, *, eligible: list, free: list) -> Refusal:
    kinds = "whole GPUs" if request.full_gpu else ("GPUs and MIG slices" if limits.allow_full_gpu else "MIG slices")
    only_whole_free = not limits.allow_full_gpu and any(s.kind == gpu.KIND_GPU for s in free)
    extra = " (only whole GPUs are free, which your group may not use)" if only_whole_free and not have else ""
    return _refuse(
        NO_GPU_AVAILABLE,
        f"All {kinds} you may use are taken right now: you asked for {n}, {have} free{extra}. Nothing was "
        "created. Try again later; `ds01 gpu status` shows what is free.",
        limits.user,
        requested_slots=n,
        free=have,
        total=len(eligible),
    )


def _grant(user: str, request: Request, slots: Sequence[gpu.Slot]) -> Grant:
    return Grant(
        user=user,
        slots=tuple(s.slot_id for s in slots),
        uuids=tuple(s.uuid for s in slots),
        gpueq=sum(s.gpueq for s in slots),
        profiles=tuple(s.profile for s in slots),
        container=request.container,
    )


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------


class AllocatorLock:
    """The host-wide allocator lock: ``flock`` on a root-owned 0600 file, polled with LOCK_NB.

    A holder that dies loses the lock with its file descriptor (kernel semantics); nothing is
    left to clean up.
    """

    def __init__(self, path: str, poll_s: float = 0.01) -> None:
        self.path = path
        self.poll_s = poll_s
        self._fd: Optional[int] = None

    def acquire(self, timeout_s: float) -> bool:
        """True once held; False after ``timeout_s``. ``OSError`` when the file cannot be opened."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                os.close(fd)
                return False
            time.sleep(min(left, self.poll_s * (0.5 + random.random())))  # noqa: S311 - jitter, not crypto

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


# --------------------------------------------------------------------------------------------
# The reservation
# --------------------------------------------------------------------------------------------

_DEFAULT_CACHE = docker_state.InspectCache()


def lock_path_of(config: Any) -> str:
    return os.path.join(config.paths.run_dir, LOCK_NAME)


def _busy(user: str, timeout_s: float) -> Refusal:
    return _refuse(
        NO_GPU_AVAILABLE,
        f"The GPU allocator is busy with other requests (waited {timeout_s:g} s); nothing was created. "
        "Try again in a few seconds.",
        user,
        reason="allocator_busy",
    )


def _unavailable(user: str, why: str) -> Refusal:
    return _refuse(
        NO_GPU_AVAILABLE,
        f"The GPU allocator cannot check the GPUs right now ({why}); nothing was created. Try again in a minute; "
        "if it persists, tell the admins. Containers without GPUs are not affected.",
        user,
        reason="infrastructure",
    )


class _Events:
    """``gpu.allocate`` / ``gpu.reject`` / ``gpu.release`` into the event log (``events.py``)."""

    def __init__(self, config: Any, event_log: Any, source: str) -> None:
        self.source = source
        self.log = event_log
        if self.log is None and config is not None:
            try:
                from . import events
            except ImportError:
                log.info("events.py is not installed: allocation events go to the service log only")
            else:
                self.log = events.EventLog(events.default_log_path(config))

    def write(self, event_type: str, user: str, **details: Any) -> None:
        log.info("%s user=%s %s", event_type, user, details)
        if self.log is not None:
            self.log.write(event_type, user=user, source=self.source, **details)


def _record_refusal(config: Any, refusal: Refusal) -> None:
    """Keep the refusal for ``ds01 why`` (``refusals.py``); best effort."""
    if config is None:
        return
    try:
        from . import identity, refusals
    except ImportError:
        return
    uid = None
    try:
        import pwd

        uid = pwd.getpwnam(refusal.user).pw_uid
    except KeyError:
        uid = None
    if identity.valid_login(refusal.user):
        refusals.record(
            config.paths.state_dir, refusal.user, refusal.code, refusal.sentence, uid, dict(refusal.details)
        )


def create_answered(exc: BaseException) -> bool:
    """True when ``exc`` carries the daemon's answer to the create (an HTTP status came back, as in
    ``docker.errors.APIError``): nothing is still being made. Anything else may have left a create
    in flight."""
    response = getattr(exc, "response", None)
    return isinstance(getattr(response, "status_code", None), int)


def settle_intents(
    directory: str,
    holdings: Sequence[Any],
    inventory: Optional[gpu.Inventory],
    events: Any = None,
    settle_s: float = intents.SETTLE_S,
    stale_s: float = intents.STALE_S,
) -> list:
    """Apply the intent rule to every intent in ``directory`` (call it holding the allocator lock).

    Fulfilled intents are removed and recorded as ``gpu.intent_recovered``; dead ones are removed
    and recorded as ``gpu.release`` (``intent_expired``). Returns the pending intents as holdings
    (``intents.as_holding``) for ``decide``. ``events``: anything with ``write(type, user, **details)``.
    """
    boot, now = intents.boot_id(), intents.boot_clock()
    pending = []
    for intent in intents.read_all(directory):
        alive = intents.writer_alive(intent, boot)
        age = intents.age_s(intent, boot, now)
        verdict, container = intents.state(intent, holdings, age, alive, settle_s, stale_s)
        if verdict == intents.PENDING:
            pending.append(intents.as_holding(intent, inventory))
            continue
        intents.remove(directory, intent.token)
        shown_age = None if age == float("inf") else round(age, 3)
        common = {
            "intent": intent.token,
            "slots": list(intent.slots),
            "uuids": list(intent.uuids),
            "intent_created_at": intent.created_at,
            "intent_age_s": shown_age,
            "writer_pid": intent.pid,
            "writer_alive": alive,
        }
        if intent.abandoned:
            common["abandoned"] = intent.abandoned
        if verdict == intents.FULFILLED:
            details = {
                **common,
                "recovered": True,
                "container": container.name,
                "container_id": container.id,
                "gpueq": round(intent.gpueq, 6),
                "message": f"container {container.name} was created for {intent.user} after its creator went away "
                "without an answer; it keeps its GPUs",
            }
            event_type = EVENT_RECOVERED
        else:
            details = {
                **common,
                "container": intent.container,
                "intent_expired": True,
                "reason": f"no container appeared within {settle_s:g} s of the grant and its writer is gone: "
                "the create never completed",
            }
            event_type = EVENT_RELEASE
        log.warning("GPU intent %s of %s: %s", intent.token, intent.user, verdict)
        if events is not None:
            events.write(event_type, intent.user, **details)
    return pending


@contextlib.contextmanager
def reserve(
    user: str,
    request: Request,
    *,
    config: Any = None,
    limits: Any = None,
    inventory: Optional[gpu.Inventory] = None,
    client: Any = None,
    lock_path: Optional[str] = None,
    lock_timeout_s: Optional[float] = None,
    cache: Optional[docker_state.InspectCache] = None,
    event_log: Any = None,
    mapping_dir: Optional[str] = None,
    source: str = "allocator",
    intent_settle_s: float = intents.SETTLE_S,
) -> Iterator[Grant]:
    """``with reserve(user, request, config=cfg) as grant:`` create the container inside the block.

    Holds the allocator lock from before Docker is read until the block ends, so the container the
    caller creates is visible to the next decision. Raises ``AllocationRefused`` (never yields) on
    a refusal, a lock not taken within ``lock_timeout_s``, or an inventory/Docker fault. After a
    block that ends normally the dcgm-exporter job mapping is rewritten (when a mapping directory
    is known); an exception in the block is logged as ``gpu.release`` and re-raised.

    Before the grant is yielded, its write-ahead intent is on disk (``<lock dir>/gpu-intents``);
    pending intents count as held in the decision (the module's docstring has the rule;
    ``intent_settle_s`` is its bound, ``intents.SETTLE_S`` unless a test shortens it).

    Everything read can be injected (``limits``, ``inventory``, ``client``, ``lock_path``); the
    defaults come from ``config`` (``paths.run_dir``, ``gpu_allocation``, ``resolve(user)``).
    """
    section: Mapping[str, Any] = config.section("gpu_allocation") if config is not None else {}
    if limits is None:
        if config is not None:
            limits = config.resolve(user)
        else:
            from . import config as config_mod

            limits = config_mod.safe_limits(user)
    if lock_path is None:
        if config is None:
            raise ValueError("reserve() needs a config or an explicit lock_path")
        lock_path = lock_path_of(config)
    timeout = lock_timeout_s if lock_timeout_s is not None else float(section.get("lock_timeout_s") or 10.0)
    if mapping_dir is None:
        mapping_dir = section.get("mapping_dir")
    events = _Events(config, event_log, source)

    def refuse(refusal: Refusal) -> AllocationRefused:
        events.write(
            EVENT_REJECT,
            user,
            code=refusal.code,
            message=refusal.sentence,
            container=request.container,
            request=request.as_dict(),
            **dict(refusal.details),
        )
        _record_refusal(config, refusal)
        return AllocationRefused(refusal)

    lock = AllocatorLock(lock_path)
    own_client = None
    try:
        got = lock.acquire(timeout)
    except OSError as exc:
        raise refuse(_unavailable(user, f"cannot open the allocator lock {lock_path}: {exc.strerror or exc}")) from None
    if not got:
        events.write("gpu.allocation.lock_timeout", user, waited_s=timeout, container=request.container)
        raise refuse(_busy(user, timeout))
    try:
        try:
            inv = inventory if inventory is not None else gpu.inventory_from_config(config)
        except gpu.GpuInventoryError as exc:
            raise refuse(_unavailable(user, str(exc))) from None
        try:
            if client is None:
                own_client = docker_state.client_from_env()
            docker = client if client is not None else own_client
            holdings = docker_state.list_containers(docker, inv, cache if cache is not None else _DEFAULT_CACHE)
        except docker_state.DockerStateError as exc:
            raise refuse(_unavailable(user, str(exc))) from None
        intent_dir = intents.dir_of(lock_path)
        try:
            pending = settle_intents(intent_dir, holdings, inv, events, settle_s=intent_settle_s)
        except OSError as exc:
            raise refuse(
                _unavailable(user, f"cannot read the GPU intents in {intent_dir}: {exc.strerror or exc}")
            ) from None
        outcome = decide(inv, [*holdings, *pending], limits, request)
        if isinstance(outcome, Refusal):
            raise refuse(outcome)
        intent = intents.new(user, outcome, grant_labels(outcome), source)
        outcome = dataclasses.replace(outcome, intent=intent.token)
        intent = dataclasses.replace(intent, labels=grant_labels(outcome))
        try:
            intents.write(intent_dir, intent)
        except OSError as exc:
            raise refuse(
                _unavailable(user, f"cannot record the grant in {intent_dir}: {exc.strerror or exc}")
            ) from None
        events.write(
            EVENT_GRANT,
            user,
            container=request.container,
            slots=list(outcome.slots),
            uuids=list(outcome.uuids),
            gpueq=round(outcome.gpueq, 6),
            profiles=list(outcome.profiles),
            intent=intent.token,
        )
        try:
            yield outcome
        except BaseException as exc:
            _end_intent(intent_dir, intent, exc, events, request, intent_settle_s)
            raise
        _drop_intent(intent_dir, intent)
        if mapping_dir:
            try:
                after = docker_state.list_containers(docker, inv, cache if cache is not None else _DEFAULT_CACHE)
                sync_job_mapping(inv, after, mapping_dir)
            except (docker_state.DockerStateError, OSError) as exc:
                log.warning("the dcgm-exporter job mapping was not updated: %s", exc)
    finally:
        lock.release()
        if own_client is not None:
            own_client.close()


def _drop_intent(directory: str, intent: intents.Intent) -> None:
    """The daemon answered: the container holds the slots, or nothing was made."""
    try:
        intents.remove(directory, intent.token)
    except OSError as exc:  # it stays until it is matched to the container, or goes stale
        log.warning("GPU intent %s could not be removed: %s", intent.token, exc)


def _end_intent(
    directory: str, intent: intents.Intent, exc: BaseException, events: Any, request: Request, settle_s: float
) -> None:
    """The block raised: removed when the daemon answered, abandoned (still held) when it may still create."""
    answered = create_answered(exc)
    if answered:
        _drop_intent(directory, intent)
        reason = f"the container was not created ({type(exc).__name__})"
    else:
        reason = (
            f"the create got no answer from the daemon ({type(exc).__name__}); the slots stay held until the "
            f"container appears or {settle_s:g} s pass"
        )
        try:
            intents.abandon(directory, intent, f"{type(exc).__name__}: {exc}"[:200])
        except OSError as error:  # the file still names this (live) writer: it goes stale instead
            log.warning("GPU intent %s could not be abandoned: %s", intent.token, error)
    events.write(
        EVENT_RELEASE,
        intent.user,
        container=request.container,
        slots=list(intent.slots),
        intent=intent.token,
        pending=not answered,
        reason=reason,
    )


# --------------------------------------------------------------------------------------------
# dcgm-exporter job mapping
# --------------------------------------------------------------------------------------------


def job_id(container: Any) -> str:
    """``<user>/<container name>`` (``unknown/<name>`` when the owner is unknown)."""
    return f"{container.owner or 'unknown'}/{container.name}"


def job_mapping(inventory: gpu.Inventory, holdings: Iterable[Any]) -> dict:
    """GPU index (as text) → sorted job ids of the containers holding it or any of its MIG slots."""
    out: dict = {}
    for container in holdings:
        for slot_id in container.slots:
            try:
                index = str(inventory.slot(slot_id).gpu_index)
            except KeyError:
                continue
            jobs = out.setdefault(index, [])
            if job_id(container) not in jobs:
                jobs.append(job_id(container))
    return {k: sorted(v) for k, v in out.items()}


def sync_job_mapping(inventory: gpu.Inventory, holdings: Iterable[Any], mapping_dir: str) -> dict:
    """Rewrite dcgm-exporter's ``--hpc-job-mapping-dir`` from Docker state; return what it holds.

    dcgm-exporter's format (its ``transformation/hpc.go``): one regular file per GPU, named by the
    GPU's index (only names that parse as integers are read), holding job ids one per line; each
    metric of that GPU is repeated once per job with the label ``hpc_job``. MIG instances have no
    file of their own: their jobs go into their GPU's file. A GPU nobody holds has **no** file (an
    empty file would drop that GPU's metrics). Files are replaced atomically (temp file + rename,
    temp names are not integers, so a half-written file is never read); unchanged files are left.
    """
    wanted = job_mapping(inventory, holdings)
    os.makedirs(mapping_dir, mode=0o755, exist_ok=True)
    for index, jobs in wanted.items():
        path = os.path.join(mapping_dir, index)
        body = "".join(f"{j}\n" for j in jobs)
        try:
            with open(path, encoding="utf-8") as handle:
                if handle.read() == body:
                    continue
        except FileNotFoundError:
            pass
        fsutil.atomic_write(path, body)  # temp names start with '.', never an integer: never read half
    for name in os.listdir(mapping_dir):
        if name.isdigit() and name not in wanted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(mapping_dir, name))
    return wanted
