"""The watcher: Docker's event stream plus a periodic sweep, feeding one ``Detector``."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Optional

from .. import logs
from .source import DockerException, DockerSource, DockerUnavailable, RequestException
from .state import Detector

log = logs.get("ds01.detector")

# Docker container events that can change what the inventory says about one container.
WATCHED_ACTIONS = frozenset(
    {"create", "start", "restart", "die", "stop", "kill", "oom", "pause", "unpause", "destroy", "rename", "update"}
)


def call_hook(hook: Callable[[], None]) -> None:
    try:
        hook()
    except Exception as exc:  # noqa: BLE001 - another component's edge: logged, never stops detection
        log.warning("the allocator's job-mapping sync failed: %s", exc)


class Watcher:
    """Docker's event stream plus a periodic sweep, feeding one ``Detector``.

    A reader thread owns the stream: it connects, says ``connected``, forwards every container
    event, and on any failure says ``disconnected`` and reconnects with backoff (0.5 s doubling to
    ``max_backoff_s``). The main thread does all the rest: on ``connected`` a full resync (the
    stream is opened *before* the resync, so nothing that happens during it is missed), on events
    a fresh inspect of the containers they name, every ``sweep_interval_s`` a host sweep and a
    drift resync. Each batch ends with one atomic inventory write.
    """

    def __init__(
        self,
        detector: Detector,
        source: DockerSource,
        read_gpu: Callable[[], tuple],
        *,
        sweep_interval_s: float = 30.0,
        hook: Optional[Callable[[], None]] = None,
        max_backoff_s: float = 15.0,
    ) -> None:
        self.detector = detector
        self.source = source
        self.read_gpu = read_gpu
        self.sweep_interval_s = sweep_interval_s
        self.hook = hook
        self.max_backoff_s = max_backoff_s
        self.stop_event = threading.Event()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe from a signal handler (stop)
        self._stream: Any = None
        self._stream_client: Any = None
        self.connected = False
        self.reconnects = 0

    # -- reader thread ---------------------------------------------------------------------
    def _reader(self) -> None:
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                client, stream = self.source.events()
            except DockerUnavailable as exc:
                self.queue.put(("disconnected", str(exc)))
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self._stream_client, self._stream = client, stream
            self.queue.put(("connected", None))
            backoff = 0.5
            reason = "the event stream ended (daemon stopped?)"
            try:
                for event in stream:
                    self.queue.put(("event", event))
                    if self.stop_event.is_set():
                        break
            except (DockerException, RequestException, OSError) as exc:
                reason = f"event stream lost: {exc}"
            except Exception as exc:  # noqa: BLE001 - the stream edge: anything the SDK raises ends this stream only
                reason = f"event stream failed: {type(exc).__name__}: {exc}"
            finally:
                self._close_stream()
            if not self.stop_event.is_set():
                self.queue.put(("disconnected", reason))
                self.stop_event.wait(backoff)

    def _close_stream(self) -> None:
        stream, client = self._stream, self._stream_client
        self._stream = self._stream_client = None
        for thing in (stream, client):
            if thing is not None:
                try:
                    thing.close()
                except Exception as exc:  # noqa: BLE001 - closing a dead connection: nothing to do about it
                    log.debug("closing the event stream: %s", exc)

    # -- main thread -----------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()
        self.queue.put(("stop", None))
        self._close_stream()

    def run(self) -> None:
        self.detector.load()
        reader = threading.Thread(target=self._reader, name="ds01-docker-events", daemon=True)
        reader.start()
        self._guard(self._sweep, resync=False)  # the host part does not wait for Docker
        self._save()
        next_sweep = time.monotonic() + self.sweep_interval_s
        while not self.stop_event.is_set():
            timeout = max(0.0, next_sweep - time.monotonic())
            try:
                first = self.queue.get(timeout=timeout)
            except queue.Empty:
                self._guard(self._sweep, resync=True)
                self._save()
                next_sweep = time.monotonic() + self.sweep_interval_s
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self._guard(self._handle, batch)
            self._save()
        self._close_stream()

    def _guard(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except DockerUnavailable as exc:
            self._mark_down(str(exc))
        except Exception as exc:  # the service loop's edge: log it, keep watching
            log.error("detector step failed (%s: %s); continuing", type(exc).__name__, exc, exc_info=True)

    def _mark_down(self, reason: str) -> None:
        if self.connected or self.detector.docker_status.get("error") != reason:
            log.warning("Docker unavailable: %s", reason)
        self.connected = False
        self.detector.docker_status = {"ok": False, "error": reason}

    def _handle(self, batch: list) -> None:
        refresh: dict = {}  # id -> "destroy" | "inspect" (ordered)
        resync = False
        for kind, payload in batch:
            if kind == "connected":
                if not self.connected and self.detector.last_sync is not None:
                    self.reconnects += 1
                self.connected = True
                resync = True
                refresh.clear()
            elif kind == "disconnected":
                self._mark_down(payload)
            elif kind == "event" and isinstance(payload, dict):
                action = str(payload.get("Action") or payload.get("status") or "").split(":", 1)[0]
                cid = payload.get("id") or (payload.get("Actor") or {}).get("ID")
                if cid and action in WATCHED_ACTIONS:
                    refresh[cid] = "destroy" if action == "destroy" else "inspect"
        changed = False
        if resync:
            changed = self.detector.full_sync(self.source.list_all())
        for cid, what in refresh.items():
            if what == "destroy":
                changed = self.detector.remove(cid) or changed
                continue
            attrs = self.source.inspect(cid)
            changed = (self.detector.remove(cid) if attrs is None else self.detector.upsert(attrs)) or changed
        if refresh and self.connected:
            self.detector.docker_status = {"ok": True, "error": None}
        if changed and self.hook:
            call_hook(self.hook)

    def _sweep(self, resync: bool) -> None:
        changed = False
        if resync and self.connected:
            try:
                changed = self.detector.full_sync(self.source.list_all())
            except DockerUnavailable as exc:
                self._mark_down(str(exc))
        processes, error = self.read_gpu()
        changed = self.detector.sweep(processes, error) or changed
        if changed and self.hook:
            call_hook(self.hook)

    def _save(self) -> None:
        try:
            self.detector.save("watch")
        except OSError as exc:
            log.error("could not write the inventory %s: %s", self.detector.inventory_path, exc)
