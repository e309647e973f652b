"""Write-ahead GPU intents: a grant is on disk before its create reaches the daemon.

``allocator.reserve()`` holds the allocator's flock while its caller creates the container. If the
caller dies after forwarding the create but before the daemon finished it, the kernel drops the lock
with the dead process while the daemon still makes the container; without a record, the next decision
would not see the grant and could give the same slot again. So, inside the lock and before the grant
is handed to the caller, ``reserve()`` writes ``<run_dir>/gpu-intents/<token>.json`` (atomic, root's,
0600) naming the user, the container name, the slots, UUIDs and labels granted, when (wall clock for
people, ``CLOCK_BOOTTIME`` and the boot id for the age) and the writer (pid and its start time, so a
reused pid is not mistaken for the writer). Every container the gateway creates with a grant carries
the token as the label ``ds01.gpu.intent`` (a server label: users cannot set it).

The rule (``state()``, pure), applied by every reader that holds the allocator lock:

- **fulfilled** — a container carries the intent's token label, or has the intent's name and exactly
  its UUIDs: that container holds the slots now. The intent is removed and, since a writer that
  finished normally removes its own intent first, the container is one whose creator vanished:
  ``gpu.intent_recovered`` is recorded (``ds01 events`` shows it) and the container keeps its GPUs.
- **dead** — no such container, the intent is at least ``SETTLE_S`` old, and its writer is gone
  (pid not running, a zombie, another process with that pid, another boot, or a writer that let go
  of it because the daemon never answered): the create never completed, the slots are free again
  (``gpu.release`` with ``intent_expired``). An intent whose writer still runs is dropped after
  ``STALE_S`` (a writer that could not remove its file).
- **pending** — otherwise: the intent counts as held (its slots are occupied, its GPU-equivalents
  and one container count against its user) in every decision.

``SETTLE_S`` bounds how long the daemon may still be finishing a create nobody waits for; it is the
time a slot stays blocked after a crash (the longest recovery time).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from . import docker, fsutil, logs
from .record import field, record, replace

log = logs.get(__name__)

DIR_NAME = "gpu-intents"
LABEL = "ds01.gpu.intent"
SETTLE_S = 30.0
STALE_S = 600.0
FILE_MODE = 0o600
DIR_MODE = 0o700

PENDING = "pending"
FULFILLED = "fulfilled"
DEAD = "dead"

_BOOT_ID = "/proc/sys/kernel/random/boot_id"


@record(frozen=True)
class Intent:
    """One grant on its way to the daemon (the JSON file's content)."""

    token: str
    user: str
    container: Optional[str]
    slots: tuple
    uuids: tuple
    gpueq: float
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: str = ""  # ISO-8601 UTC, for people
    boot_id: str = ""
    boot_s: float = 0.0  # CLOCK_BOOTTIME when written: ages are measured on it
    pid: Optional[int] = None  # None once the writer let go of it
    pid_start: Optional[int] = None  # the writer's start time (clock ticks after boot, /proc/<pid>/stat)
    source: str = ""
    abandoned: str = ""  # why the writer let go of it

    def as_dict(self) -> dict:
        return {
            "token": self.token,
            "user": self.user,
            "container": self.container,
            "slots": list(self.slots),
            "uuids": list(self.uuids),
            "gpueq": round(self.gpueq, 6),
            "labels": dict(self.labels),
            "created_at": self.created_at,
            "boot_id": self.boot_id,
            "boot_s": self.boot_s,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "source": self.source,
            "abandoned": self.abandoned,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Intent:
        """The intent in ``doc``; ``ValueError`` when a field is missing or of the wrong type."""
        try:
            token = str(doc["token"])
            user = str(doc["user"])
            slots = tuple(str(s) for s in doc["slots"])
            uuids = tuple(str(u) for u in doc["uuids"])
            pid = doc.get("pid")
            start = doc.get("pid_start")
            return cls(
                token=token,
                user=user,
                container=None if doc.get("container") in (None, "") else str(doc["container"]),
                slots=slots,
                uuids=uuids,
                gpueq=float(doc.get("gpueq") or 0.0),
                labels={str(k): str(v) for k, v in dict(doc.get("labels") or {}).items()},
                created_at=str(doc.get("created_at") or ""),
                boot_id=str(doc.get("boot_id") or ""),
                boot_s=float(doc.get("boot_s") or 0.0),
                pid=None if pid is None else int(pid),
                pid_start=None if start is None else int(start),
                source=str(doc.get("source") or ""),
                abandoned=str(doc.get("abandoned") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an intent record ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------
# The rule (pure)
# --------------------------------------------------------------------------------------------


def matches(intent: Intent, container: Any) -> bool:
    """``container`` (a ``docker.ContainerInfo``) is the one this intent's create made."""
    labels = getattr(container, "labels", None) or {}
    if labels.get(LABEL) == intent.token:
        return True
    if intent.container and container.name == intent.container.lstrip("/"):
        return bool(intent.uuids) and set(container.uuids) == set(intent.uuids)
    return False


def age_s(intent: Intent, boot_id: str, boot_now: float) -> float:
    """Seconds since the intent was written; infinite when it was written in another boot."""
    if not intent.boot_id or intent.boot_id != boot_id:
        return float("inf")
    return max(0.0, boot_now - intent.boot_s)


def state(
    intent: Intent,
    holdings: Iterable[Any],
    age: float,
    writer_alive: bool,
    settle_s: float = SETTLE_S,
    stale_s: float = STALE_S,
) -> tuple:
    """``(FULFILLED, container)``, ``(DEAD, None)`` or ``(PENDING, None)`` by the module's rule."""
    for container in holdings:
        if matches(intent, container):
            return FULFILLED, container
    if (not writer_alive and age >= settle_s) or age >= stale_s:
        return DEAD, None
    return PENDING, None


def as_holding(intent: Intent, inventory: Any = None) -> docker.ContainerInfo:
    """A pending intent as the container it will be, for ``allocator.decide``: it names the intent's
    UUIDs, belongs to its user and is counted like any container (state ``creating``)."""
    name = (intent.container or "").lstrip("/") or f"(being created: {intent.token[:8]})"
    info = docker.ContainerInfo(
        id=f"intent-{intent.token}",
        name=name,
        state="creating",
        owner=intent.user,
        owner_method="intent",
        labels={**dict(intent.labels), LABEL: intent.token, "ds01.user": intent.user},
        gpu=docker.GpuClaim(ids=tuple(intent.uuids), source=docker.GPU_FROM_LABEL),
        slots=tuple(intent.slots),
        uuids=tuple(intent.uuids),
    )
    if inventory is None:
        return info
    resolved = docker.attach_slots(info, inventory)
    return resolved if resolved.slots else info  # an unknown UUID still blocks the slot it was granted as


# --------------------------------------------------------------------------------------------
# The host's facts: boot, clock, processes
# --------------------------------------------------------------------------------------------


def boot_id() -> str:
    try:
        with open(_BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def boot_clock() -> float:
    """Seconds since boot, counting suspend (``CLOCK_BOOTTIME``); the same clock in every process."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def process_start(pid: int) -> Optional[int]:
    """The start time of a running process (field 22 of ``/proc/<pid>/stat``); None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may contain spaces and parentheses
    if len(fields) < 20 or fields[0] in ("Z", "X", "x"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def writer_alive(intent: Intent, current_boot: str) -> bool:
    """The process that wrote the intent still runs (same boot, same pid, same start time)."""
    if intent.pid is None or intent.boot_id != current_boot:
        return False
    started = process_start(intent.pid)
    return started is not None and (intent.pid_start is None or started == intent.pid_start)


# --------------------------------------------------------------------------------------------
# The files
# --------------------------------------------------------------------------------------------


def dir_of(lock_path: str) -> str:
    """``<run_dir>/gpu-intents`` beside the allocator lock."""
    return os.path.join(os.path.dirname(os.path.abspath(lock_path)), DIR_NAME)


def new(user: str, grant: Any, labels: Mapping[str, str], source: str = "") -> Intent:
    """An intent for ``grant`` (an ``allocator.Grant``) written by this process now."""
    pid = os.getpid()
    now = dt.datetime.now(dt.timezone.utc)
    return Intent(
        token=os.urandom(16).hex(),  # as secrets.token_hex(16), without its hmac/hashlib imports
        user=user,
        container=grant.container,
        slots=tuple(grant.slots),
        uuids=tuple(grant.uuids),
        gpueq=float(grant.gpueq),
        labels=dict(labels),
        created_at=now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        boot_id=boot_id(),
        boot_s=boot_clock(),
        pid=pid,
        pid_start=process_start(pid),
        source=source,
    )


def write(directory: str, intent: Intent) -> str:
    """Record ``intent`` (atomic, fsynced, 0600 in a 0700 directory); ``OSError`` for the caller."""
    os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
    path = os.path.join(directory, f"{intent.token}.json")
    fsutil.atomic_write_json(path, intent.as_dict(), mode=FILE_MODE, fsync=True)
    return path


def remove(directory: str, token: str) -> bool:
    """Drop an intent; False when it was not there."""
    try:
        os.unlink(os.path.join(directory, f"{token}.json"))
    except FileNotFoundError:
        return False
    return True


def abandon(directory: str, intent: Intent, why: str) -> Intent:
    """The writer lets go of its intent (the daemon never answered): it stays pending until the
    container appears or ``SETTLE_S`` pass, as if the writer had died."""
    released = replace(intent, pid=None, pid_start=None, abandoned=why)
    write(directory, released)
    return released


def read_all(directory: str) -> list:
    """Every intent on disk (oldest first). Unreadable files are logged and left alone; temp files
    (names starting with ``.``) are skipped."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as handle:
                out.append(Intent.from_dict(json.load(handle)))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("GPU intent %s is unreadable and was not counted: %s", path, exc)
    out.sort(key=lambda i: (i.boot_s, i.token))
    return out
