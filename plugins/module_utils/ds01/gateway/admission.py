"""Adapters from the gateway to the allocator, the GPU inventory and the event log.

The gateway holds the allocator's reservation (a host-wide flock) from before the decision
until the daemon has answered the create, so two concurrent creates can never be granted the
same slot (reference §13 #10). The reservation's context manager is entered and left in a
worker thread (flock waits block); the asyncio loop keeps serving other connections meanwhile.

The grant outlives the gateway: the allocator records a write-ahead intent before the grant is
handed over, and its labels (``ds01.gpu.intent``) tie the container to it. ``Reservation.exit``
says whether the daemon answered the create: answered (created or refused), the intent goes;
unanswered (the upstream connection failed, the answer could not be passed on), the allocator
keeps the slots held until the container appears or the intent settles (the allocator). A
gateway killed mid-create leaves the intent with its dead pid, and the next decision finds it.

Fail safe: a GPU request the allocator cannot decide (NVML down, lock timeout, an exception
inside it) is refused with a sentence; it is never forwarded unchecked.

The allocator is called directly (``allocator.reserve``, ``allocator.Request``,
``allocator.grant_labels``): user → gateway (creates.py) → here → allocator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from .. import allocator, docker, events, gpu, logs
from ..identity import GPU_REQUEST_LABEL
from ..record import field, record

log = logs.get(__name__)

NO_GPU_AVAILABLE = "NO_GPU_AVAILABLE"


class CreateUnanswered(Exception):
    """Raised into the allocator's reservation when the daemon's answer to the create never came back."""


class AdmissionRefused(Exception):
    def __init__(self, code: str, sentence: str) -> None:
        super().__init__(f"{code}: {sentence}")
        self.code = code
        self.sentence = sentence


@record
class Grant:
    uuids: list
    labels: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)  # sentences for the create answer's Warnings


def _undecided(reason: str) -> AdmissionRefused:
    return AdmissionRefused(
        NO_GPU_AVAILABLE,
        f"the GPU allocator cannot decide right now ({reason}); nothing was created. "
        "Try again in a minute; if it persists, tell the admins. Containers without GPUs are not affected.",
    )


class Reservation:
    """``enter()`` → Grant or AdmissionRefused; ``exit()`` releases (after the daemon answered).

    ``manager``: the allocator's reservation (``allocator.reserve``); ``refusal``: why there is none."""

    def __init__(self, manager: Any = None, refusal: Optional[AdmissionRefused] = None) -> None:
        self._manager = manager
        self._refusal = refusal
        self._entered = False

    def enter(self) -> Grant:
        if self._refusal is not None:
            raise self._refusal
        try:
            grant = self._manager.__enter__()
            answer = Grant(list(grant.uuids), dict(allocator.grant_labels(grant)), list(grant.warnings))
        except allocator.AllocationRefused as exc:
            raise AdmissionRefused(exc.code, exc.sentence) from None
        except Exception as exc:  # the allocator's edge: whatever failed, the request is not forwarded
            log.exception("the allocator failed")
            raise _undecided(f"{type(exc).__name__}: {exc}") from None
        self._entered = True
        return answer

    def exit(self, answered: bool = True) -> None:
        """Release the reservation; ``answered``: the daemon's answer to the create came back."""
        if self._entered:
            self._entered = False
            try:
                if answered:
                    self._manager.__exit__(None, None, None)
                else:
                    unanswered = CreateUnanswered("the Docker daemon's answer to the create never came back")
                    self._manager.__exit__(CreateUnanswered, unanswered, None)
            except Exception:  # releasing must not fail the create that already happened
                log.exception("releasing the GPU reservation failed")


class Admission:
    """The real allocator behind the gateway (``allocator.reserve``), plus the GPU inventory."""

    def __init__(self, store: Any, upstream: Optional[str] = None) -> None:
        self.store = store
        self.upstream = upstream
        self._client: Any = None
        # The create-time facts of every container made through the gateway, put here before its create is answered
        # (``remember``): the allocator inspects only containers it has not seen, and an inspect of a container its
        # owner keeps busy in the daemon (an archive upload locks it) would wait, and every GPU request with it.
        self.facts = docker.InspectCache()

    def remember(self, inspect: Mapping[str, Any]) -> None:
        """Keep a container's create-time facts from its inspect document."""
        cid = str(inspect.get("Id") or "")
        if cid:
            self.facts.put(cid, docker.create_facts(inspect))

    def client(self) -> Any:
        """A reader of the daemon's own socket (the allocator lists holdings with it: ``docker.Engine``)."""
        if self._client is None and self.upstream:
            self._client = docker.Engine(self.upstream, timeout=docker.DECISION_TIMEOUT_S)
        return self._client

    def reservation(self, login: str, ask: Any, limits: Any, details: dict, admin: bool = False) -> Reservation:
        try:
            manager = _reserve(self.store, login, ask, limits, details, self.client(), admin, self.facts)
        except AdmissionRefused as exc:
            return Reservation(refusal=exc)
        except Exception as exc:  # the allocator's edge
            log.exception("preparing the GPU reservation failed")
            return Reservation(refusal=_undecided(f"{type(exc).__name__}: {exc}"))
        return Reservation(manager)

    def inventory_uuids(self) -> Optional[set]:
        """UUIDs of every GPU and MIG instance present now, or None when the inventory is unavailable."""
        try:
            return _inventory_uuids(self.store)
        except Exception:  # NVML down: the caller proceeds (fail safe) and logs
            log.exception("the GPU inventory is unavailable")
            return None


def _reserve(
    store: Any,
    login: str,
    ask: Any,
    limits: Any,
    details: dict,
    client: Any,
    admin: bool = False,
    facts: Optional[docker.InspectCache] = None,
) -> Any:
    """``allocator.reserve(...)`` for this request: its context manager, entered by ``Reservation.enter``."""
    if ask.count < 0 and not admin and ask.source != "device_requests":
        # an image's or an -e NVIDIA_VISIBLE_DEVICES=all is not a request typed for GPUs: only `--gpus all`
        # is read as "the GPUs I may have" (allocator.decide)
        where = "in the image" if ask.source == "image_env" else "in the container's environment"
        raise AdmissionRefused(
            allocator.POLICY_DENIED,
            f"NVIDIA_VISIBLE_DEVICES=all ({where}) would reach every GPU of the shared server. Ask with "
            "`--gpus all` for the GPUs you may have, or `--gpus 1`; or run with `-e NVIDIA_VISIBLE_DEVICES=void` "
            "for no GPU.",
        )
    kind = request_kind(ask)
    if ask.count < 0:
        request = allocator.Request(
            count=1, all_gpus=True, container=details.get("container") or None, admin=admin, **kind
        )
    elif ask.device_ids:
        request = allocator.Request(
            count=len(ask.device_ids),
            device_ids=tuple(ask.device_ids),
            container=details.get("container") or None,
            admin=admin,
            **kind,
        )
    else:
        request = allocator.Request(
            count=max(1, ask.count), container=details.get("container") or None, admin=admin, **kind
        )
    config = store.get()
    if config is None:
        raise _undecided("no valid configuration has ever been loaded, so the allocator has no lock path")
    return allocator.reserve(login, request, config=config, limits=limits, client=client, cache=facts, source="gateway")


def request_kind(ask: Any) -> dict:
    """The allocator's Request fields for the request label's kind (``ask.kind``): ``full`` asks for whole
    GPUs only, anything else for that MIG profile only; the label goes along for the grant's warning."""
    kind = str(getattr(ask, "kind", "") or "")
    if not kind:
        return {}
    label = f"{GPU_REQUEST_LABEL}={kind}"
    if kind == "full":
        return {"full_gpu": True, "label": label}
    return {"mig_profile": kind, "only_profile": True, "label": label}


def _inventory_uuids(store: Any) -> Optional[set]:
    try:
        inventory = gpu.inventory_from_config(store.get())
    except gpu.GpuInventoryError as exc:
        log.warning("the GPU inventory is unavailable: %s", exc)
        return None
    slots = list(inventory.slots()) + list(inventory.mig_parents())
    return {slot.uuid for slot in slots}


def write_event(config: Any, event_type: str, user: Optional[str], details: dict) -> bool:
    path = events.default_log_path(config)
    return bool(events.EventLog(path).write(event_type, user=user, source="gateway", **details))
