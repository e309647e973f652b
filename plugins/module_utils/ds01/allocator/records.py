"""The allocator's records: a request, a grant, a refusal (stable codes), and what a grant puts on
the container (labels and the DeviceRequest). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

from .. import docker, intents
from ..record import field, record

EPS = 1e-9

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

NAMES_SHOWN = 4  # containers named in a sentence before "and N more"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@record(frozen=True)
class Request:
    """What a container asks for.

    ``count`` slots (default 1); or ``device_ids`` (UUIDs, GPU indices, slot ids — the count is
    their number); or ``all_gpus`` (every free slot they may have: for a non-admin, as many as the
    quota and the per-container limit allow, at least one). ``full_gpu``:
    whole GPUs only. ``mig_profile``: preferred MIG profile (``1g.10gb``); with ``only_profile``, that
    profile and nothing else. ``label``: the request label the kind came from
    (``ds01.gpu.request=3g.20gb``): the grant's warning names it. ``container``: the name the container
    will get (messages, events). ``admin``: the caller is an admin.
    """

    count: int = 1
    device_ids: tuple = ()
    all_gpus: bool = False
    full_gpu: bool = False
    mig_profile: Optional[str] = None
    only_profile: bool = False
    label: Optional[str] = None
    container: Optional[str] = None
    admin: bool = False

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "device_ids": list(self.device_ids),
            "all_gpus": self.all_gpus,
            "full_gpu": self.full_gpu,
            "mig_profile": self.mig_profile,
            "only_profile": self.only_profile,
            "label": self.label,
            "container": self.container,
        }


@record(frozen=True)
class Grant:
    """The slots given to one container, in slot order, with their UUIDs and total weight."""

    user: str
    slots: tuple
    uuids: tuple
    gpueq: float
    profiles: tuple = ()  # per slot: the MIG profile, or None for a whole GPU
    container: Optional[str] = None
    intent: Optional[str] = None  # the write-ahead intent's token (``reserve`` sets it)
    warnings: tuple = ()  # sentences for the create answer's Warnings (what ``--gpus all`` or a label got)

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


@record(frozen=True)
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
        docker.SLOTS_LABEL: ",".join(grant.slots),
        docker.UUIDS_LABEL: ",".join(grant.uuids),
        docker.GPUEQ_LABEL: repr(round(grant.gpueq, 6)),
    }
    if grant.intent:
        labels[intents.LABEL] = grant.intent
    return labels


def device_request(grant: Grant) -> dict:
    """The ``HostConfig.DeviceRequests`` entry, as ``docker create --gpus device=…`` writes it."""
    return {"Driver": "", "Count": 0, "DeviceIDs": list(grant.uuids), "Capabilities": [["gpu"]], "Options": {}}


def sdk_device_request(grant: Grant) -> Any:
    """The same as a ``docker.types.DeviceRequest`` for the docker SDK."""
    return docker.sdk_device_request(grant.uuids, [["gpu"]])
