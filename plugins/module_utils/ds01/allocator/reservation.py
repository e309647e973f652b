"""Acting on a decision: the host-wide lock, a fresh read of Docker inside it, the write-ahead
intent, and the grant yielded while the lock is held (``reserve``; the rule is in the package's
docstring)."""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

from .. import config as config_mod
from .. import docker, events, fsutil, gpu, identity, intents, logs, refusals
from ..record import replace
from .decide import decide, make_refusal
from .jobs import sync_job_mapping
from .records import (
    EVENT_GRANT,
    EVENT_RECOVERED,
    EVENT_REJECT,
    EVENT_RELEASE,
    NO_GPU_AVAILABLE,
    AllocationRefused,
    Grant,
    Refusal,
    Request,
    grant_labels,
)

log = logs.get(__name__.rsplit(".", 1)[0])

LOCK_NAME = "gpu-allocator.lock"
DEFAULT_LOCK_TIMEOUT_S = 10.0

# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The reservation
# --------------------------------------------------------------------------------------------

_DEFAULT_CACHE = docker.InspectCache()


def lock_path_of(config: Any) -> str:
    return os.path.join(config.paths.run_dir, LOCK_NAME)


def _busy(user: str, timeout_s: float) -> Refusal:
    return make_refusal(
        NO_GPU_AVAILABLE,
        f"The GPU allocator is busy with other requests (waited {timeout_s:g} s); nothing was created. "
        "Try again in a few seconds.",
        user,
        reason="allocator_busy",
    )


def _unavailable(user: str, why: str) -> Refusal:
    return make_refusal(
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
    cache: Optional[docker.InspectCache] = None,
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
        limits = config.resolve(user) if config is not None else config_mod.safe_limits(user)
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

    lock = fsutil.FileLock(lock_path)  # the host-wide allocator lock: root's 0600, polled with jitter
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
                own_client = docker.reader_from_env(docker.DECISION_TIMEOUT_S)
            reader = client if client is not None else own_client
            holdings = docker.list_containers(
                reader, inv, cache if cache is not None else _DEFAULT_CACHE, managed_by_labels=True
            )
        except docker.DockerStateError as exc:
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
        outcome = replace(outcome, intent=intent.token)
        intent = replace(intent, labels=grant_labels(outcome))
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
                after = docker.list_containers(
                    reader, inv, cache if cache is not None else _DEFAULT_CACHE, managed_by_labels=True
                )
                sync_job_mapping(inv, after, mapping_dir)
            except (docker.DockerStateError, OSError) as exc:
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
