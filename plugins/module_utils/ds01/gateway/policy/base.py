"""The refusal codes, the refusal itself, the limits every check shares, and the create context."""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any, Callable, Optional

from ... import docker, identity
from ...record import field, record

POLICY_DENIED = "POLICY_DENIED"
NOT_OWNER = "NOT_OWNER"
CONTAINER_LIMIT = "CONTAINER_LIMIT"
# Labels only the gateway (or an admin) sets: a caller-supplied value is dropped before the
# gateway writes its own (ownership, protection, GPU holdings, and the legacy owner fallbacks).
GATEWAY_LABELS = identity.SERVER_LABELS
GATEWAY_LABEL_PREFIXES = identity.SERVER_LABEL_PREFIXES


def gateway_label(key: str) -> bool:
    return identity.server_label(key)


SAFE_RUNTIMES = ("", "runc", "io.containerd.runc.v2")
NVIDIA_ENV = docker.NVIDIA_ENV
NVIDIA_VOLUME_DIR = docker.NVIDIA_VOLUME_DIR
# The oldest API version a user may speak: below 1.24 ``POST /containers/{id}/start`` takes a
# HostConfig body that replaces the one checked at create.
MIN_API_VERSION = (1, 24)
# Capabilities a user's container never gets, whatever the config allows: with them, root in a
# container makes setuid binaries and device nodes that stay on the host through a bind mount.
NEVER_CAPABILITIES = ("MKNOD", "SETUID", "SETGID")
# Log drivers that write on the host only (the others send to addresses the daemon connects to).
LOG_DRIVERS = ("", "json-file", "local", "none")
LOG_OPTIONS = (
    "max-size",
    "max-file",
    "compress",
    "labels",
    "labels-regex",
    "env",
    "env-regex",
    "mode",
    "max-buffer-size",
)
# `tag` is a Go template dockerd expands when the container starts and adds to every line: `{{pad .ID N 0}}`
# made a 250 MB tag and log files past max-size (round-9 attack). Plain tags pass; templates do not.
LOG_TAG_MAX = 128
RESTART_NONE = ("", "no")
MAX_CPU_SHARES = 1024  # Docker's default weight: a user's container never outranks another's
MAX_BLKIO_WEIGHT = 500  # the kernel's default weight
LOG_MAX_SIZE = 100 * 1024 * 1024  # a container's log files: at most LOG_MAX_FILES times LOG_MAX_SIZE on the host
LOG_MAX_FILES = 5
# mode=non-blocking keeps a container's output in dockerd's memory, up to max-buffer-size (round-8 attack: 8 GB).
LOG_MAX_BUFFER = 4 * 1024 * 1024
_SIZE = re.compile(r"([0-9]+)([kmg]?)b?", re.IGNORECASE)


def smaller_size(value: Any, limit: int) -> str:
    """A log ``max-size`` no larger than ``limit`` (Docker's units: k, m, g)."""
    match = _SIZE.fullmatch(str(value or ""))
    if match:
        size = int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
        if 0 < size <= limit:
            return str(value)
    return f"{limit // (1 << 20)}m"


SOCKET_PATHS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/ds01/dockerd.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
)


@record(frozen=True)
class Refusal:
    code: str
    sentence: str
    status: int = 403
    event_type: str = "gateway.refused"

    @property
    def message(self) -> str:
        return f"{self.code}: {self.sentence}"


def denied(sentence: str) -> Refusal:
    return Refusal(POLICY_DENIED, sentence)


def combined(refusals: list) -> Optional[Refusal]:
    """The refusals of one request's independent checks as one: a single one unchanged; several as one
    sentence that numbers each original sentence, so the user fixes every problem in one go. Their code
    and status when they share them, else ``POLICY_DENIED`` (403). A malformed body (status 400) is
    answered alone: its other checks read a body that is not what the client meant."""
    if not refusals:
        return None
    malformed = [r for r in refusals if r.status == 400]
    if malformed:
        return malformed[0]
    unique: list = []
    for refusal in refusals:
        if refusal.sentence not in [r.sentence for r in unique]:
            unique.append(refusal)
    if len(unique) == 1:
        return unique[0]
    codes = {r.code for r in unique}
    statuses = {r.status for r in unique}
    events = {r.event_type for r in unique}
    listed = " ".join(f"{n}) {_full_stop(r.sentence)}" for n, r in enumerate(unique, 1))
    return Refusal(
        codes.pop() if len(codes) == 1 else POLICY_DENIED,
        f"this request has {len(unique)} problems; fix them all, then try again: {listed}",
        status=statuses.pop() if len(statuses) == 1 else 403,
        event_type=events.pop() if len(events) == 1 else "gateway.refused",
    )


def _full_stop(sentence: str) -> str:
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def identity_refusal(reason: str) -> Refusal:
    return Refusal(
        POLICY_DENIED,
        f"the ds01 gateway could not establish who is calling ({reason}); nothing was forwarded.",
        event_type="auth.denied",
    )


@record(frozen=True)
class GpuAsk:
    """A GPU request found in a create body. ``count`` -1 means all GPUs. ``kind``: the request label's
    value (``full`` or a MIG profile, ``identity.GPU_REQUEST_LABEL``), empty without one."""

    count: int
    device_ids: tuple = ()
    source: str = "device_requests"  # device_requests | env | image_env | runtime | label
    kind: str = ""

    def describe(self) -> str:
        if self.device_ids:
            return "GPU device(s) " + ",".join(self.device_ids)
        return "all GPUs" if self.count < 0 else f"{self.count} GPU{'s' if self.count != 1 else ''}"


@record
class CreateContext:
    """What the create checks need to know about the caller and the host."""

    login: str
    home: str
    slice_name: str
    group: str
    max_cpus: Optional[float] = None
    memory: Optional[int] = None
    memory_swap: Optional[int] = None
    shm_size: Optional[int] = None
    pids_limit: Optional[int] = None
    allowed_capabilities: tuple = ()
    allowed_devices: tuple = ()
    bind_prefixes: tuple = ("{home}",)
    readonly_bind_prefixes: tuple = ()
    allow_host_network: bool = False
    socket_paths: tuple = SOCKET_PATHS
    image_env: Optional[list] = None  # the image's default Env (None: unknown / not needed)
    container_owners: dict = field(default_factory=dict)  # ref -> labels (None: no such container)
    volume_owners: dict = field(default_factory=dict)  # name -> labels (None: no such volume)
    realpath: Callable[[str], str] = os.path.realpath
    # the first component of a path that is a symlink the caller could have made (None: none)
    unsafe_symlink: Optional[Callable[[str], Optional[str]]] = None  # default: policy.unsafe_symlink
    uid: int = -1  # the caller's uid and primary gid (-1: unknown, nothing is stamped)
    gid: int = -1
    groups: tuple = ()  # every gid the caller is a member of
    now: Optional[dt.datetime] = None
    # dockerd refuses NanoCpus above the host's CPU count, so a limit above it is capped there.
    host_cpus: Optional[int] = field(default_factory=os.cpu_count)

    def cpu_cap(self) -> Optional[float]:
        if self.max_cpus is None:
            return None
        return min(self.max_cpus, float(self.host_cpus)) if self.host_cpus else self.max_cpus
