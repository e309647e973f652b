"""``ds01 gateway serve``: the Docker API gateway (asyncio).

One task per client connection. The caller is established once per connection from the kernel
(SO_PEERCRED, then /proc/<pid>/cgroup for processes inside containers), here; every request on the
connection (pipelined ones too) is parsed strictly (http.py), decided (policy, connection.py and the
modules it is made of: containers.py, creates.py, builds.py), and forwarded re-framed on the
connection's own upstream connection to the daemon's socket (forward.py).

Admins pass unchanged. Every refusal (and every create) is written to the event log; a refusal
also goes to the caller's ``ds01 why`` record. A fault inside the gateway answers that one request
with a sentence (500/403) and never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import grp
import os
import signal
import socket
from typing import Any, Callable, Optional
from urllib.parse import quote

from .. import config as config_mod
from .. import identity, logs, refusals, slice_keeper
from . import admission as admission_mod
from . import connection, http, listener, peer, pins, policy, schema
from . import execs as execs_mod
from . import stats as stats_mod
from .policy import Refused
from .upstream import Upstream, UpstreamError

log = logs.get(__name__)

MAX_CONNECTIONS_PER_UID = 256  # open connections one non-root uid may hold (the unit's LimitNOFILE is 65536)


class Settings:
    """The gateway's effective settings: CLI options over the ``gateway`` config section."""

    def __init__(
        self,
        section: dict,
        listen: Optional[str] = None,
        upstream: Optional[str] = None,
        socket_group: Optional[str] = None,
        socket_mode: Optional[str] = None,
    ) -> None:
        self.section = dict(section)
        self.listen = listen or section["listen"]
        self.upstream = upstream or section["upstream"]
        self.socket_group = socket_group or section["socket_group"]
        self.socket_mode = int(socket_mode or section["socket_mode"], 8)


class Gateway:
    def __init__(
        self,
        config_path: str,
        listen: Optional[str] = None,
        upstream: Optional[str] = None,
        socket_group: Optional[str] = None,
        admission: Optional[Any] = None,
        event_log: Optional[Callable[..., Any]] = None,
        *,
        head_timeout_s: float = http.HEAD_TIMEOUT_S,
        idle_timeout_s: float = http.IDLE_TIMEOUT_S,
        body_timeout_s: float = http.BODY_TIMEOUT_S,
        max_connections_per_uid: Optional[int] = MAX_CONNECTIONS_PER_UID,
        listen_backlog: int = listener.LISTEN_BACKLOG,
        accept_retry_s: float = listener.ACCEPT_RETRY_S,
        error_log_every_s: float = listener.ERROR_LOG_EVERY_S,
        socket_mode: Optional[str] = None,
    ) -> None:
        self.head_timeout_s = head_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.body_timeout_s = body_timeout_s
        self.listen_backlog = listen_backlog
        self.accept_retry_s = accept_retry_s
        self.error_log_every_s = error_log_every_s
        self.cap = listener.ConnectionCap(max_connections_per_uid)
        self.store = config_mod.ConfigStore(config_path)
        self._cli = (listen, upstream, socket_group, socket_mode)
        self.upstream = Upstream(self.settings().upstream)
        self.admission = admission or admission_mod.Admission(self.store, self.settings().upstream)
        self._event_log = event_log
        self.server: Optional[listener.Listener] = None
        self.connections = 0
        self.requests = 0
        self.refused = 0
        self.stats = stats_mod.RequestStats()
        self.slices = slice_keeper.SliceKeeper()
        self.execs = execs_mod.ExecLedger()
        self._tasks: set = set()

    # -- settings -------------------------------------------------------------------------------
    def config(self) -> Optional[config_mod.Config]:
        return self.store.get()

    def section(self) -> dict:
        config = self.config()
        if config is not None and schema.SECTION in config.sections:
            return dict(config.sections[schema.SECTION])
        return schema.defaults()

    def settings(self) -> Settings:
        return Settings(self.section(), *self._cli)

    def state_dir(self) -> str:
        config = self.config()
        return config.sections["paths"]["state_dir"] if config else "/var/lib/ds01"

    # -- server ---------------------------------------------------------------------------------
    async def start(self) -> listener.Listener:
        stale = pins.unmount_all(self.run_dir())
        if stale:
            log.warning("unmounted %d bind pin(s) left by an earlier gateway", stale)
        settings = self.settings()
        path = settings.listen
        if os.path.exists(path) or os.path.islink(path):
            try:
                probe = socket.socket(socket.AF_UNIX)
                probe.connect(path)
                probe.close()
                raise OSError(f"{path} is in use by a running server; stop it first")
            except ConnectionRefusedError:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        old = os.umask(0o177)
        try:
            sock = listener.listen(path, self.listen_backlog)
        finally:
            os.umask(old)
        self.server = listener.Listener(
            sock, self._serve, self.cap, retry_s=self.accept_retry_s, log_every_s=self.error_log_every_s
        )
        self.server.start()
        gid = -1
        try:
            gid = grp.getgrnam(settings.socket_group).gr_gid
        except KeyError:
            log.error("group %s does not exist: only root can use %s", settings.socket_group, path)
        if gid >= 0 and os.geteuid() == 0:
            os.chown(path, 0, gid)
        os.chmod(path, settings.socket_mode)
        log.info(
            "listening on %s (mode %04o, group %s), forwarding to %s",
            path,
            settings.socket_mode,
            settings.socket_group,
            settings.upstream,
        )
        return self.server

    async def serve_forever(self) -> None:
        server = await self.start()
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
            except (NotImplementedError, RuntimeError):
                pass
        publisher = asyncio.ensure_future(self._publish_stats())
        try:
            async with server:
                await stop
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            self.publish_stats()
        try:
            os.unlink(self.settings().listen)
        except OSError:
            pass

    def publish_stats(self) -> bool:
        config = self.config()
        return self.stats.publish(config.paths.run_dir if config else "/run/ds01")

    async def _publish_stats(self) -> None:
        while True:
            self.publish_stats()
            await asyncio.sleep(stats_mod.PUBLISH_EVERY_S)

    def run_dir(self) -> str:
        config = self.config()
        return config.paths.run_dir if config else "/run/ds01"

    def create_lock(self, key: str) -> Any:
        """The asyncio lock for ``key`` (a login, or ``name:<container name>``); a no-op for ``""``.

        A user's container count and a name's freedom are checked under it together with the
        create itself, so parallel creates cannot all pass the same check.
        """
        if not key:
            return contextlib.nullcontext()
        locks = self.__dict__.setdefault("_create_locks", {})
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = asyncio.Lock()
        return lock

    # -- identity -------------------------------------------------------------------------------
    def own_container(self) -> Optional[str]:
        """The container the gateway itself runs in (None on a plain host), read once."""
        if "_own_container" not in self.__dict__:
            self._own_container = peer.container_id_from_cgroup(peer.read_cgroup(os.getpid()) or "")
        return self._own_container

    async def identify(self, cred: peer.PeerCred) -> peer.Caller:
        """The caller of a connection, or Refused when it cannot be established."""
        config = self.config()
        admin_group = config.admin_group if config else "ds01-admin"
        admin_users = config.admin_users if config else ()
        text = peer.read_cgroup(cred.pid)
        if text is None:
            raise Refused(policy.identity_refusal(f"process {cred.pid} vanished before it could be identified"))
        container_id = peer.container_id_from_cgroup(text)
        # The gateway itself may run in a container (a host that is one, as in molecule): a process in that
        # container that shares our PID namespace is a process of this host like any other.
        if (
            container_id is not None
            and container_id == self.own_container()
            and peer.pid_namespace(cred.pid) == peer.pid_namespace(os.getpid())
        ):
            container_id = None
        if container_id is not None:
            return await self._identify_in_container(cred, container_id, admin_group, admin_users)
        account = peer.account_of_uid(cred.uid)
        if account is None:
            raise Refused(policy.identity_refusal(f"uid {cred.uid} has no account on this host"))
        if identity.system_account(cred.uid):
            raise Refused(
                policy.identity_refusal(
                    f"uid {cred.uid} ({account.login}) is a system account; the Docker socket serves people's logins "
                    f"(uid {identity.UID_MIN} and up) and root. Run the job as a login user"
                )
            )
        admin = peer.is_admin(account, admin_group, admin_users, cred.gid)
        return peer.Caller(account.login, account.uid, account.home, admin, cred.pid)

    async def _identify_in_container(self, cred, container_id, admin_group, admin_users) -> peer.Caller:
        try:
            info = await self.upstream.inspect_container(container_id)
        except UpstreamError as exc:
            raise Refused(
                policy.identity_refusal(f"the Docker daemon could not be asked about its container ({exc})")
            ) from None
        if info is None:
            raise Refused(
                policy.identity_refusal(f"its cgroup names container {container_id[:12]}, which does not exist")
            )
        state_pid = (info.get("State") or {}).get("Pid") or 0
        caller_ns = peer.pid_namespace(cred.pid)
        if not state_pid or caller_ns is None or caller_ns != peer.pid_namespace(state_pid):
            raise Refused(policy.identity_refusal(f"it is not inside container {container_id[:12]}'s PID namespace"))
        if caller_ns == peer.pid_namespace(os.getpid()):
            raise Refused(policy.identity_refusal("its container shares the host's PID namespace"))
        labels = (info.get("Config") or {}).get("Labels") or {}
        owner = labels.get("ds01.user")
        if not owner:
            if str(labels.get("ds01.protected", "")).lower() == "true":
                return peer.Caller("root", 0, "/root", True, cred.pid, container_id)
            raise Refused(policy.identity_refusal(f"container {container_id[:12]} has no owner label"))
        account = peer.account_of_login(owner)
        if account is None:
            raise Refused(
                policy.identity_refusal(f"the owner {owner!r} of container {container_id[:12]} has no account")
            )
        admin = peer.is_admin(account, admin_group, admin_users)
        return peer.Caller(account.login, account.uid, account.home, admin, cred.pid, container_id)

    # -- connection -----------------------------------------------------------------------------
    async def _serve(self, sock: socket.socket, cred: Optional[peer.PeerCred]) -> None:
        """One admitted connection (the listener has counted it against its uid's cap)."""
        self.connections += 1
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=http.MAX_HEAD_BYTES)
        except OSError as exc:
            sock.close()
            log.debug("connection ended before it was set up: %s", exc)
            return
        conn = connection.Connection(self, reader, writer, cred)
        try:
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("connection ended early: %s", exc)
        except Exception:  # the connection edge: log it, never crash the server
            log.exception("connection failed")
        finally:
            await conn.close()

    # -- recording ------------------------------------------------------------------------------
    async def record(self, event_type: str, caller: Optional[peer.Caller], **details: Any) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._write_event, event_type, caller, details)

    def _write_event(self, event_type: str, caller: Optional[peer.Caller], details: dict) -> None:
        user = caller.login if caller else None
        try:
            if self._event_log is not None:
                self._event_log(event_type, user=user, source="gateway", **details)
            else:
                admission_mod.write_event(self.config(), event_type, user, details)
            if caller is not None and details.get("code") and not caller.admin:
                refusals.record(
                    self.state_dir(), caller.login, details["code"], details.get("sentence", ""), caller.uid
                )
        except Exception:  # recording must never fail a request
            log.exception("could not record %s for %s", event_type, user)


def run(
    config_path: str,
    listen: Optional[str] = None,
    upstream: Optional[str] = None,
    socket_group: Optional[str] = None,
    socket_mode: Optional[str] = None,
) -> None:
    gateway = Gateway(config_path, listen, upstream, socket_group, socket_mode=socket_mode)
    asyncio.run(gateway.serve_forever())


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


__all__ = ["Gateway", "quote", "run"]
