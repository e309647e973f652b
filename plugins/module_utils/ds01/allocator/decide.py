"""The pure decision: ``decide(inventory, holdings, limits, request) -> Grant | Refusal``, and the
usage views it shares with ``ds01 gpu users`` and the exporter (the layers and the placement
rule are in the package's docstring). No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

from .. import docker, gpu
from ..record import record, replace
from .records import (
    AGGREGATE_GPU_QUOTA_EXCEEDED,
    CONTAINER_LIMIT,
    EPS,
    EXCEEDS_CONTAINER_LIMIT,
    FULL_GPU_NOT_ALLOWED,
    NAMES_SHOWN,
    NO_GPU_AVAILABLE,
    POLICY_DENIED,
    USER_AT_LIMIT,
    Decision,
    Grant,
    Refusal,
    Request,
    format_gpueq,
)

# --------------------------------------------------------------------------------------------
# Usage views (shared with `ds01 gpu users` and the exporter)
# --------------------------------------------------------------------------------------------


@record(frozen=True)
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
    return docker.holders_by_slot(holdings)


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
    shown = ", ".join(names[:NAMES_SHOWN])
    if len(names) > NAMES_SHOWN:
        shown += f" and {len(names) - NAMES_SHOWN} more"
    return shown


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def make_refusal(code: str, sentence: str, user: str, **details: Any) -> Refusal:
    return Refusal(code, sentence, user, details)


WEIGHTS = "a whole GPU counts 1.0, a MIG slice its compute slices out of 7 (1g = 0.14, 3g = 0.43)"


def _quota_todo(usage: Usage, cost: float, n: int, room: float, smallest: Optional[float]) -> str:
    """What the user can do about a quota refusal: only what can succeed.

    ``room``: GPU-equivalents left under the tightest quota; ``smallest``: the lightest slot this user
    may have on this server (None when unknown). A smaller slice is offered only when one exists and fits.
    """
    options = []
    if usage.holders:
        options.append(f"stop and remove one (`docker rm -f {usage.holders[0].name}`)")
    if smallest is not None:
        fewer = n > 1 and (n - 1) * smallest <= room + EPS
        smaller = cost / n > smallest + EPS and n * smallest <= room + EPS
        whole = cost / n >= 1.0 - EPS
        if fewer and smaller:
            options.append(
                ("ask for fewer GPUs or a MIG slice" if whole else "ask for fewer or smaller GPUs")
                + " (`--gpus 1` takes the smallest free slot)"
            )
        elif fewer:
            options.append("ask for fewer GPUs")
        elif smaller:
            options.append(
                "ask for a MIG slice (`--gpus 1` takes the smallest free slot)"
                if whole
                else "ask for a smaller MIG slice (`--gpus 1` takes the smallest free slot)"
            )
    if not options:
        lightest = "" if smallest is None else f" (the lightest slot you may have counts {format_gpueq(smallest)})"
        return f"No request of yours fits the quota{lightest}: ask the admins for a larger quota."
    text = " or ".join(options)
    return text[0].upper() + text[1:] + ", then try again."


def _quota_refusal(
    limits: Any,
    usage: Usage,
    cost: float,
    n: int,
    what: str = "this request",
    smallest: Optional[float] = None,
) -> Optional[Refusal]:
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
    holding = f" (containers: {_names(usage.holders)})" if usage.holders else ""
    room = min(x for x in (aggregate, personal, float("inf")) if x is not None) - usage.gpueq
    todo = f"GPU-equivalents: {WEIGHTS}. " + _quota_todo(usage, cost, n, room, smallest)
    if aggregate is not None and total > aggregate + EPS:
        return make_refusal(
            AGGREGATE_GPU_QUOTA_EXCEEDED,
            f"Together your containers would hold {format_gpueq(total)} GPU-equivalents, above your total of "
            f"{format_gpueq(aggregate)}: you hold {held}{holding} and {what} needs {need}. {todo}",
            limits.user,
            limit=aggregate,
            layer="aggregate.gpu_limit",
            **details,
        )
    if personal is not None and total > personal + EPS:
        return make_refusal(
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
    if request.all_gpus and request.device_ids:
        return make_refusal(
            POLICY_DENIED, "Ask for `all` GPUs or for specific devices, not both.", user, reason="conflict"
        )
    bad_count = isinstance(request.count, bool) or not isinstance(request.count, int) or request.count < 1
    if not request.device_ids and not request.all_gpus and bad_count:
        return make_refusal(
            POLICY_DENIED,
            f"A GPU request must ask for at least one GPU (got {request.count!r}); use e.g. `--gpus 1`.",
            user,
            reason="count",
        )
    if request.only_profile:
        profiles = sorted({str(s.profile) for s in inventory.slots() if s.kind == gpu.KIND_MIG and s.profile})
        if request.mig_profile not in profiles:
            offer = f"its MIG profiles are {', '.join(profiles)}" if profiles else "it has no MIG slices"
            return make_refusal(
                POLICY_DENIED,
                f"{request.label or request.mig_profile}: this server has no MIG profile '{request.mig_profile}'; "
                f"{offer}. Ask for one of them, `full` for a whole GPU, or leave the label out.",
                user,
                reason="profile",
                profiles=profiles,
            )
    if request.mig_profile is not None:
        try:
            gpu.profile_compute_slices(request.mig_profile)
        except ValueError:
            return make_refusal(
                POLICY_DENIED,
                f"'{request.mig_profile}' is not a MIG profile name; `ds01 gpu status` lists the profiles "
                "this server has (e.g. 1g.10gb).",
                user,
                reason="profile",
            )
        if request.full_gpu:
            return make_refusal(
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
            return make_refusal(
                POLICY_DENIED,
                f"There is no GPU or MIG instance '{device_id}' on this server; `ds01 gpu status` lists them.",
                user,
                reason="unknown_device",
                device=str(device_id),
            )
        if slot.mig_parent:
            children = ", ".join(s.slot_id for s in inventory.children(slot.gpu_index)) or "none"
            return make_refusal(
                POLICY_DENIED,
                f"GPU {slot.slot_id} is split into MIG instances ({children}) and cannot be handed out whole; "
                "ask for one of its instances, or simply `--gpus 1`.",
                user,
                reason="mig_parent",
                device=str(device_id),
            )
        if request.full_gpu and slot.kind == gpu.KIND_MIG:
            return make_refusal(
                POLICY_DENIED,
                f"{device_id} is a MIG instance, not a whole GPU; drop the whole-GPU option or name a whole GPU.",
                user,
                reason="conflict",
            )
        if request.only_profile and slot.profile != request.mig_profile:
            return make_refusal(
                POLICY_DENIED,
                f"{device_id} is not a MIG {request.mig_profile} instance; name one, or drop the device or "
                f"{request.label or 'the profile'}.",
                user,
                reason="conflict",
            )
        if slot not in slots:
            slots.append(slot)
    return slots


def decide(inventory: gpu.Inventory, holdings: Iterable[Any], limits: Any, request: Request) -> Decision:
    """Grant or Refusal for ``limits.user`` asking ``request``, given every container Docker knows.

    ``holdings`` are ``docker.ContainerInfo`` (with ``slots`` resolved against the same
    inventory) for *all* containers, GPU or not: they give occupancy, the user's GPU-equivalents
    and the user's container count. Pure: no I/O. A grant for a request that came with a request
    label (``request.label``) carries a warning naming the slots it got.
    """
    decision = _decide(inventory, holdings, limits, request)
    if isinstance(decision, Grant) and request.label:
        slots = [inventory.slot(slot_id) for slot_id in decision.slots]
        shown = ", ".join(slot_words(s) for s in slots)
        decision = replace(decision, warnings=(*decision.warnings, f"{request.label}: granted {shown}"))
    return decision


def slot_words(slot: gpu.Slot) -> str:
    """``MIG 3g.20gb (GPU 2, instance 1, slot 2.0)`` or ``whole GPU 0``: a slot in a user's sentence (the
    instance is the GPU instance id ``nvidia-smi`` shows; the slot is the id ``ds01 gpu status`` shows)."""
    if slot.kind == gpu.KIND_MIG:
        instance = slot.gpu_instance_id if slot.gpu_instance_id is not None else slot.mig_index
        return f"MIG {slot.profile} (GPU {slot.gpu_index}, instance {instance}, slot {slot.slot_id})"
    return f"whole GPU {slot.gpu_index}"


def _kind_fits(slot: gpu.Slot, request: Request, allow_whole: bool) -> bool:
    """The slot is of a kind the request may get: whole GPUs when allowed and no MIG profile is required,
    MIG slices unless whole GPUs are asked for (of the one profile when it is required)."""
    if slot.kind == gpu.KIND_GPU:
        return allow_whole and not request.only_profile
    return not request.full_gpu and (not request.only_profile or slot.profile == request.mig_profile)


def _decide(inventory: gpu.Inventory, holdings: Iterable[Any], limits: Any, request: Request) -> Decision:
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
        return make_refusal(
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
    if request.all_gpus and not request.admin:
        # `--gpus all` from a user (devcontainer templates send it): "the GPUs I may have"
        mine = _all_i_may_have(limits, usage, occupied, inventory, free, request)
        if mine is not None:
            return mine
        request = replace(request, all_gpus=False, count=1)  # not even one: refused as `--gpus 1`
    if request.all_gpus:
        pool = [s for s in free if _kind_fits(s, request, allow_whole)]
        n = max(1, len(pool))
    elif named:
        n = len(named)
    else:
        n = request.count

    # Layer: slots per container (this request only).
    per_container = limits.max_gpu_slots_per_container
    if per_container is not None and n > per_container:
        return make_refusal(
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
        return make_refusal(
            FULL_GPU_NOT_ALLOWED,
            f"Your group ({limits.group}) may not use a whole GPU; MIG slices are yours to use. "
            "Ask with `--gpus 1` (no device, no whole-GPU option) and you will get a slice.",
            user,
            group=limits.group,
        )
    smallest = min(
        (s.gpueq for s in inventory.slots() if s.kind == gpu.KIND_MIG or (s.kind == gpu.KIND_GPU and allow_whole)),
        default=None,
    )
    eligible = [s for s in inventory.slots() if _kind_fits(s, request, allow_whole)]
    if not eligible and not named:
        if not allow_whole and inventory.slots():
            return make_refusal(
                FULL_GPU_NOT_ALLOWED,
                f"This server has only whole GPUs, and your group ({limits.group}) may not use a whole GPU. "
                "Ask the admins for MIG slices or for whole-GPU access.",
                user,
                group=limits.group,
            )
        return make_refusal(
            NO_GPU_AVAILABLE,
            "This server has no GPU that can be handed out (a GPU in MIG mode needs MIG instances). Tell the admins.",
            user,
            free=0,
            total=0,
        )

    # Specific devices: quota, then availability.
    if named:
        cost = sum(s.gpueq for s in named)
        refusal = _quota_refusal(limits, usage, cost, n, smallest=smallest)
        if refusal is not None:
            return refusal
        taken = [s for s in named if not is_free(s, occupied)]
        if taken:
            slot = taken[0]
            holders = occupied.get(slot.slot_id) or occupied.get(str(slot.gpu_index)) or []
            own = [c for c in holders if c.owner == user]
            by = f"your container {own[0].name}" if own else "another container"
            return make_refusal(
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
        refusal = _quota_refusal(limits, usage, cheapest, n, smallest=smallest)
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
        refusal = _quota_refusal(limits, usage, cost, n, what="the free GPUs right now", smallest=smallest)
        if refusal is not None:
            return refusal
        return _no_gpu(limits, request, n, len(chosen), eligible=eligible, free=free)  # pragma: no cover - defensive
    return _grant(user, request, sorted(chosen, key=_slot_sort_key))


def _all_i_may_have(
    limits: Any, usage: Usage, occupied: Mapping[str, Any], inventory: gpu.Inventory, free: list, request: Request
) -> Optional[Grant]:
    """A non-admin's ``--gpus all``: as many free slots as the per-container limit and the quota allow, in
    the order ``--gpus N`` takes them, with a Warning saying what was granted; None when not even one fits."""
    allow_whole = bool(limits.allow_full_gpu)
    ordered = sorted(
        (s for s in free if s.kind == gpu.KIND_GPU and _kind_fits(s, request, allow_whole)), key=lambda s: s.gpu_index
    )
    ordered += sorted(
        (s for s in free if s.kind == gpu.KIND_MIG and _kind_fits(s, request, allow_whole)),
        key=_mig_order(occupied, inventory, request.mig_profile),
    )
    per_container = limits.max_gpu_slots_per_container
    budget = _remaining(limits, usage)
    chosen: list = []
    total = 0.0
    skipped = False  # a free slot left out because the quota had no room for it
    for slot in ordered:
        if per_container is not None and len(chosen) >= per_container:
            break
        if total + slot.gpueq <= budget + EPS:
            chosen.append(slot)
            total += slot.gpueq
        else:
            skipped = True
    if not chosen:
        return None
    if per_container is not None and len(chosen) >= per_container and len(ordered) > len(chosen):
        why = "your limit per container"
    elif skipped:
        why = f"what your GPU quota has room for ({format_gpueq(total)} GPU-equivalents)"
    else:
        why = "every free slot you may use"
    chosen.sort(key=_slot_sort_key)
    shown = ", ".join(
        f"MIG {s.profile} ({s.slot_id})" if s.kind == gpu.KIND_MIG else f"GPU {s.slot_id}" for s in chosen
    )
    sentence = f"--gpus all: granted {_plural(len(chosen), 'GPU slot')} ({shown}), {why}"
    return replace(_grant(limits.user, request, chosen), warnings=(sentence,))


def _slot_sort_key(slot: gpu.Slot) -> tuple:
    return (slot.gpu_index, -1 if slot.mig_index is None else slot.mig_index)


def _no_gpu(limits: Any, request: Request, n: int, have: int, *, eligible: list, free: list) -> Refusal:
    kinds = "whole GPUs" if request.full_gpu else ("GPUs and MIG slices" if limits.allow_full_gpu else "MIG slices")
    if request.only_profile:
        kinds = f"MIG {request.mig_profile} slices"
    only_whole_free = not limits.allow_full_gpu and any(s.kind == gpu.KIND_GPU for s in free)
    extra = " (only whole GPUs are free, which your group may not use)" if only_whole_free and not have else ""
    return make_refusal(
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
