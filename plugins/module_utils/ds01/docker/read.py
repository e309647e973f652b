"""Reading every container: one list call, and inspects only of containers never seen before.

``containers(all=True)`` (one list call) has labels, names and state but neither ``DeviceRequests``
nor the environment, so a container is inspected once for its create-time facts
(``records.create_facts``). Those never change for a container id (``docker update`` cannot touch
them), so an ``InspectCache`` keeps them: in memory for a long-running caller (the gateway, the
detector, the exporter), and in a small file for one-shot commands (``ds01 gpu plan``):
``<paths.run_dir>/docker-facts.json``, root's, mode 0600, replaced atomically (``fsutil``). A cold
decision then costs one list call plus inspects of the containers created since the last run.
The file is trusted only when it is a regular file owned by root (or by the reader) that nobody
else may write; anything else, or a file that does not parse, is ignored and rewritten. Ids no
longer listed are pruned on each read. ``benchmarks/allocation.py`` measures it.
"""

from __future__ import annotations

import _thread  # the lock without the threading module (a cold command's import cost)
import json
import os
import stat
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, Union

from .. import fsutil, logs
from .engine import Engine, EngineError, EngineNotFound, engine_from_env
from .records import DockerStateError, container_info, create_facts

log = logs.get(__name__)

FACTS_FILE = "docker-facts.json"
FACTS_SCHEMA = 1
_MAX_FACTS_BYTES = 64 << 20


def facts_cache_path(config: Any) -> str:
    """Where the create-time facts of containers are cached across processes."""
    return os.path.join(config.paths.run_dir, FACTS_FILE)


class InspectCache:
    """Create-time facts by container id (``records.create_facts``); thread-safe.

    Only what Docker cannot change after create is kept, so an entry is never stale. With a
    ``path`` the cache is read from that file on first use and ``flush`` writes it back when it
    changed (best effort: a reader that may not write there still works, only slower).
    """

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path
        self._lock = _thread.allocate_lock()
        self._facts: dict = {}
        self._loaded = path is None
        self._dirty = False

    def _load(self) -> None:
        self._loaded = True
        try:
            facts = _read_facts_file(self.path or "")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring the container facts cache %s (%s); it will be rewritten", self.path, exc)
            self._dirty = True
            return
        self._facts.update(facts)

    def get(self, cid: str) -> Optional[Mapping[str, Any]]:
        with self._lock:
            if not self._loaded:
                self._load()
            return self._facts.get(cid)

    def put(self, cid: str, facts: Mapping[str, Any]) -> None:
        with self._lock:
            self._facts[cid] = facts
            self._dirty = True

    def keep_only(self, ids: Iterable[str]) -> None:
        keep = set(ids)
        with self._lock:
            for cid in [c for c in self._facts if c not in keep]:
                del self._facts[cid]
                self._dirty = True

    def flush(self) -> bool:
        """Write the file when the cache changed since it was read; True when it was written."""
        with self._lock:
            if self.path is None or not self._dirty:
                return False
            text = json.dumps({"schema": FACTS_SCHEMA, "containers": self._facts}, separators=(",", ":"))
            try:
                fsutil.atomic_write(self.path, text, mode=0o600)
            except OSError as exc:
                log.info("the container facts cache %s was not written: %s", self.path, exc)
                return False
            self._dirty = False
            return True

    def __len__(self) -> int:
        return len(self._facts)


def _valid_facts(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("HostConfig"), dict)
        and isinstance(entry.get("Config"), dict)
        and isinstance(entry.get("Mounts"), list)
    )


def _read_facts_file(path: str) -> dict:
    """The cached facts by id; ``ValueError`` with the reason when the file is not to be trusted."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
            raise ValueError(f"owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}")
        if info.st_size > _MAX_FACTS_BYTES:
            raise ValueError(f"{info.st_size} bytes is too big")
        doc = json.loads(handle.read())
    if not isinstance(doc, dict) or doc.get("schema") != FACTS_SCHEMA or not isinstance(doc.get("containers"), dict):
        raise ValueError(f"not a schema {FACTS_SCHEMA} facts file")
    facts = doc["containers"]
    if not all(isinstance(k, str) and _valid_facts(v) for k, v in facts.items()):
        raise ValueError("an entry is not a container's facts")
    return facts


# How long a GPU decision waits for one answer of the daemon (a list, an inspect: milliseconds when it is well). A
# container its owner keeps busy (an upload into it) makes its inspect wait until this runs out, while the
# allocator's lock is held, so it is short.
DECISION_TIMEOUT_S = 10.0


def reader_from_env(timeout: float = 30.0) -> Any:
    """A client that can list and inspect: the standard-library ``Engine`` on a Unix socket, else
    the SDK's client (``sdk.client_from_env``). ``DockerStateError`` when there is none."""
    engine = engine_from_env(timeout)
    if engine is not None:
        return engine
    from . import sdk  # tcp/ssh/TLS: the SDK knows them

    return sdk.client_from_env(timeout)


def _errors(client: Any) -> tuple:
    """What a read may raise: the engine's errors and OSError, and the SDK's when it is in use."""
    if isinstance(client, Engine):
        return (EngineError, OSError)
    from . import sdk

    return (EngineError, *sdk.DOCKER_ERRORS)


def _not_found(exc: BaseException) -> bool:
    if isinstance(exc, EngineNotFound):
        return True
    sdk = sys.modules.get(f"{__package__}.sdk")
    return sdk is not None and isinstance(exc, sdk.NotFound)


def skip_unreadable(summary: Mapping[str, Any], error: Exception) -> None:
    """``list_containers``' ``on_error`` for a reader that can do without one container (metrics, a user's own
    listing, the DCGM job mapping): it is left out, with a warning. A container can stay unreadable for as long as
    its owner keeps it busy in the daemon (an upload into it still arriving holds it); the allocator never skips."""
    log.warning("left out container %s, which the Docker daemon did not let be read: %s", summary.get("Names"), error)


def list_containers(
    client: Any,
    inventory: Any = None,
    cache: Optional[InspectCache] = None,
    detail: Union[bool, Callable[[Mapping[str, Any]], bool]] = False,
    filters: Optional[Mapping[str, Any]] = None,
    on_error: Optional[Callable[[Mapping[str, Any], DockerStateError], None]] = None,
    managed_by_labels: bool = False,
) -> list:
    """Every container (all states) as ``ContainerInfo``: one list call, then inspects of the
    containers the cache does not know, and of every container ``detail`` asks for (True: all of
    them; a function: those whose list summary it answers True for), which also fills
    ``started_at``/``finished_at``/``pid``/``exit_code``/``restart_count`` and ``attrs``.
    ``client``: an ``Engine`` or an SDK client. A cache with a file is flushed after the read.
    ``DockerStateError`` when Docker does not answer; a container whose inspect fails is left out
    and given to ``on_error`` when there is one (else the whole read fails). ``managed_by_labels`` (the
    allocator): a container the gateway made (``ds01.managed=true``) whose inspect fails is read from its list
    summary, whose ``ds01.gpu.*`` labels are what the gateway wrote into its DeviceRequests, and which no user can
    change; its owner can keep it unreadable for as long as an upload into it trickles in."""
    errors = _errors(client)
    try:
        summaries = client.api.containers(all=True, filters=filters) if filters else client.api.containers(all=True)
    except Exception as exc:
        if not isinstance(exc, errors):
            raise
        raise DockerStateError(f"cannot list the containers ({exc})") from exc
    out = []
    for summary in summaries:
        cid = summary["Id"]
        full = bool(detail(summary)) if callable(detail) else bool(detail)
        facts = None if (full or cache is None) else cache.get(cid)
        inspect = None
        if facts is None:
            try:
                inspect = client.api.inspect_container(cid)
            except Exception as exc:
                if not isinstance(exc, errors):
                    raise
                if _not_found(exc):
                    continue  # removed between the list and the inspect
                if managed_by_labels and (summary.get("Labels") or {}).get("ds01.managed") == "true":
                    log.warning(
                        "read container %s from its labels: the daemon did not let it be inspected (%s)",
                        summary.get("Names"),
                        exc,
                    )
                    out.append(container_info(summary, None, inventory, facts={}))
                    continue
                failure = DockerStateError(f"cannot inspect container {summary.get('Names')} ({exc})")
                if on_error is None:
                    raise failure from exc
                on_error(summary, failure)
                continue
            facts = create_facts(inspect)
            if cache is not None:
                cache.put(cid, facts)
        out.append(container_info(summary, inspect if full else None, inventory, facts=facts))
    if cache is not None and not filters:
        cache.keep_only(s["Id"] for s in summaries)
        cache.flush()
    return out
