"""``ds01 gateway serve``: the Docker API gateway (asyncio).

One task per client connection. The caller is established once per connection from the kernel
(SO_PEERCRED, then /proc/<pid>/cgroup for processes inside containers); every request on the
connection (pipelined ones too) is parsed strictly (http.py), decided (policy.py), and forwarded
re-framed on the connection's own upstream connection to the daemon's socket. Responses stream
back unchanged, except the few the gateway must rewrite (``GET /system/df``). Upgrades
(``attach``/``exec`` with a TTY, BuildKit sessions) and Docker's older hijack without 101 are
spliced byte for byte both ways, with half-close passed on.

Admins pass unchanged. Every refusal (and every create) is written to the event log; a refusal
also goes to the caller's ``ds01 why`` record. A fault inside the gateway answers that one request
with a sentence (500/403) and never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import grp
import json
import logging
import os
import pwd
import signal
import socket
import stat
import tempfile
import time
import uuid
from typing import Any, Callable, Optional
from urllib.parse import quote, unquote

from .. import config as config_mod
from .. import identity, refusals, slice_keeper
from . import admission as admission_mod
from . import canonical, claims, dockerfile, http, listener, objects, peer, pins, policy, schema
from . import execs as execs_mod
from . import stats as stats_mod
from .upstream import Upstream, UpstreamError, gather_more

log = logging.getLogger(__name__)

HIJACK_ACTIONS = ("attach", "start")  # container attach, exec start
# Container actions for which dockerd mounts the container's host paths.
MOUNTING_ACTIONS = ("start", "restart", "archive")
# A classic build's context is spooled to disk, and its Dockerfile checked, before the daemon sees it.
MAX_BUILD_CONTEXT = 8 << 30
SPLICE_GRACE_S = 5.0
MAX_CONNECTIONS_PER_UID = 256  # open connections one non-root uid may hold (the unit's LimitNOFILE is 65536)
HIJACK_TYPES = ("application/vnd.docker.raw-stream", "application/vnd.docker.multiplexed-stream")


class Refused(Exception):
    def __init__(self, refusal: policy.Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


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
        max_connections_per_uid: Optional[int] = MAX_CONNECTIONS_PER_UID,
        listen_backlog: int = listener.LISTEN_BACKLOG,
        accept_retry_s: float = listener.ACCEPT_RETRY_S,
        error_log_every_s: float = listener.ERROR_LOG_EVERY_S,
        socket_mode: Optional[str] = None,
    ) -> None:
        self.head_timeout_s = head_timeout_s
        self.idle_timeout_s = idle_timeout_s
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
            raise Refused(_identity_refusal(f"process {cred.pid} vanished before it could be identified"))
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
            raise Refused(_identity_refusal(f"uid {cred.uid} has no account on this host"))
        if identity.system_account(cred.uid):
            raise Refused(
                _identity_refusal(
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
                _identity_refusal(f"the Docker daemon could not be asked about its container ({exc})")
            ) from None
        if info is None:
            raise Refused(_identity_refusal(f"its cgroup names container {container_id[:12]}, which does not exist"))
        state_pid = (info.get("State") or {}).get("Pid") or 0
        caller_ns = peer.pid_namespace(cred.pid)
        if not state_pid or caller_ns is None or caller_ns != peer.pid_namespace(state_pid):
            raise Refused(_identity_refusal(f"it is not inside container {container_id[:12]}'s PID namespace"))
        if caller_ns == peer.pid_namespace(os.getpid()):
            raise Refused(_identity_refusal("its container shares the host's PID namespace"))
        labels = (info.get("Config") or {}).get("Labels") or {}
        owner = labels.get("ds01.user")
        if not owner:
            if str(labels.get("ds01.protected", "")).lower() == "true":
                return peer.Caller("root", 0, "/root", True, cred.pid, container_id)
            raise Refused(_identity_refusal(f"container {container_id[:12]} has no owner label"))
        account = peer.account_of_login(owner)
        if account is None:
            raise Refused(_identity_refusal(f"the owner {owner!r} of container {container_id[:12]} has no account"))
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
        conn = _Connection(self, reader, writer, cred)
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


def _sparse_member_refusal(spooled: Any) -> Optional[policy.Refusal]:
    """An import must not hold sparse files: the daemon writes their holes out as real zeros (round-9 attack: a
    10 KB tar became 1.5 GB of shared disk). Not a tar at all is the daemon's to refuse."""
    import tarfile

    spooled.seek(0)
    try:
        with tarfile.open(fileobj=spooled, mode="r:") as tar:
            for member in tar:
                if member.issparse():
                    return policy.denied(
                        f"the import holds the sparse file {member.name}; the daemon would write its "
                        f"{member.size >> 20} MiB out in full onto the disk all users share. Import it without "
                        "--sparse (`tar cf`, not `tar cSf`), so its real size is what you send."
                    )
    except (tarfile.TarError, OSError):
        return None
    return None


def _identity_refusal(reason: str) -> policy.Refusal:
    return policy.Refusal(
        policy.POLICY_DENIED,
        f"the ds01 gateway could not establish who is calling ({reason}); nothing was forwarded.",
        event_type="auth.denied",
    )


class _Connection:
    """One client connection and its upstream connection."""

    def __init__(
        self,
        gateway: Gateway,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cred: Optional[peer.PeerCred] = None,
    ) -> None:
        self.gw = gateway
        self.reader = reader
        self.writer = writer
        self.cred = cred  # SO_PEERCRED as the listener read it at accept(); None: read it again
        self.up_reader: Optional[asyncio.StreamReader] = None
        self.up_writer: Optional[asyncio.StreamWriter] = None
        self.caller: Optional[peer.Caller] = None
        self.started = time.monotonic()  # when the current request's head was read
        # Set once the current response's head has been handed to the client: from then on a
        # fault can only end the connection (an error answer would land inside the body).
        self.response_started = False

    async def close(self) -> None:
        for w in (self.up_writer, self.writer):
            if w is not None:
                try:
                    w.close()
                except (OSError, RuntimeError):
                    pass

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def run(self) -> None:
        identity_refusal: Optional[policy.Refusal] = None
        try:
            cred = self.cred or peer.peercred(self.writer.get_extra_info("socket"))
            self.caller = await self.gw.identify(cred)
        except Refused as exc:
            identity_refusal = exc.refusal
        except OSError as exc:
            identity_refusal = _identity_refusal(f"SO_PEERCRED failed: {exc}")
        while True:
            self.response_started = False
            try:
                raw = await http.read_head(self.reader, self.gw.idle_timeout_s, self.gw.head_timeout_s)
                if raw is None:
                    return
                head = http.parse_request_head(raw)
                framing = http.request_framing(head)
            except http.HttpError as exc:
                if exc.status == 408:  # a trickled head: answered, not recorded as a refusal
                    self.writer.write(http.json_response(408, {"message": f"ds01 gateway: {exc.message}"}, close=True))
                    self.gw.stats.count("bad_request")
                    return
                await self.send(http.json_response(exc.status, {"message": f"ds01 gateway: {exc.message}"}, close=True))
                self.gw.stats.count("bad_request")
                await self.gw.record("gateway.refused", self.caller, code="BAD_REQUEST", sentence=exc.message)
                return
            self.gw.requests += 1
            self.started = time.monotonic()
            if identity_refusal is not None:
                await self.refuse(identity_refusal, head)
                return
            try:
                keep = await self.handle(head, framing)
            except (Refused, http.HttpError, UpstreamError) as exc:
                if self.response_started:  # an answer now would land inside the body: just close
                    self.gw.stats.count("upstream_error")
                    log.info(
                        "%s %s ended mid-response; closing the client connection: %s", head.method, head.target, exc
                    )
                    return
                if isinstance(exc, Refused):
                    await self.refuse(exc.refusal, head)
                    return
                if isinstance(exc, http.HttpError):
                    await self.send(
                        http.json_response(exc.status, {"message": f"ds01 gateway: {exc.message}"}, close=True)
                    )
                    self.gw.stats.count("bad_request", time.monotonic() - self.started)
                    return
                self.gw.stats.count("upstream_error", time.monotonic() - self.started)
                log.warning("upstream fault for %s %s: %s", head.method, head.target, exc)
                await self.send(
                    http.json_response(
                        503, {"message": f"ds01 gateway: {exc}. Nothing was changed; try again."}, close=True
                    )
                )
                return
            if not keep:
                return

    async def refuse(self, refusal: policy.Refusal, head: http.Head) -> None:
        self.gw.refused += 1
        await self.send(http.json_response(refusal.status, {"message": refusal.message}, close=True))
        self.gw.stats.count("refused", time.monotonic() - self.started)
        await self.gw.record(
            refusal.event_type,
            self.caller,
            code=refusal.code,
            sentence=refusal.sentence,
            method=head.method,
            path=policy.split_target(head.target)[0][:200],
        )

    # -- decisions ------------------------------------------------------------------------------
    async def handle(self, head: http.Head, framing: http.Framing) -> bool:
        expect = head.get("Expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise http.HttpError(417, f"unsupported Expect {expect!r}")
            head.remove("Expect")
            if framing.kind != "none":
                await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        caller = self.caller
        if caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        route = policy.classify(head.method, head.target)
        if caller.admin:
            if route.kind != "containers.create":
                return await self.forward(head, framing, route=route)
            return await self.create(head, framing, route)
        refusal = policy.api_version_refusal(route)
        if refusal:
            raise Refused(refusal)
        kind = route.kind
        if kind == "admin":
            raise Refused(policy.admin_only(route, head.method))
        if kind == "unknown":
            raise Refused(policy.unknown_route(route, head.method))
        if kind == "open" or route.path.startswith("/images/"):
            await self.check_registry(head, route)
        if kind == "open":
            if route.path == "/auth" and head.method == "POST":
                body = await self.read_model(framing, "auth")
                await self.check_registry_domain(str((body or {}).get("serveraddress") or ""), "docker login")
                return await self.forward(head, framing, route=route, body=body)
            return await self.forward(head, framing, route=route)
        if kind == "containers.list":
            # Filtered by the one owner resolver, so containers of the old system (aime.mlc.USER,
            # <name>._.<uid>) show to their owners too; ``limit`` applies after the filter.
            limit = route.query_value("limit")
            query = tuple((k, v) for k, v in route.query if k != "limit")
            head.target = policy.rebuild_target(route, query=query)
            return await self.forward(
                head, framing, route=route, rewrite=lambda body: policy.filter_owned(body, caller.login, limit)
            )
        if kind in ("containers.list", "events"):
            try:
                query = policy.owner_filter_query(route, caller.login)
            except ValueError as exc:
                raise http.HttpError(400, str(exc)) from None
            head.target = policy.rebuild_target(route, query=query)
            return await self.forward(head, framing, route=route)
        if kind == "system.df":
            return await self.forward(
                head, framing, route=route, rewrite=lambda body: policy.filter_system_df(body, caller.login)
            )
        if kind == "container":
            return await self.container_op(head, framing, route)
        if kind == "exec":
            return await self.exec_op(head, framing, route)
        if kind in ("build", "images.create", "images.tag", "commit"):
            return await self.image_write(head, framing, route)
        if kind == "grpc":
            raise Refused(policy.denied(objects.GRPC_SENTENCE))
        if kind == "images.load":
            raise Refused(policy.denied(objects.LOAD_SENTENCE))
        if kind == "images.save":
            # dockerd writes a full copy of the image to its own disk first and keeps it while the client reads:
            # one `docker save` at a time per user (round-9 attack: 9 idle saves held 2 GB)
            lock = self.gw.create_lock("save:" + caller.login)
            if lock.locked():
                raise Refused(
                    policy.denied(
                        "a docker save of yours is still running; saves run one at a time per user (the daemon "
                        "copies the image to disk for each). Wait for it to finish, then try again."
                    )
                )
            async with lock:
                return await self.forward(head, framing, route=route)
        if kind == "images.delete":
            verdict, refs = await claims.delete_check(self.gw, caller.login, route.ref or "")
            if verdict:
                raise Refused(policy.Refusal(*verdict))
            keep, status, _unused = await self.forward(head, framing, route=route, capture=True)
            if 200 <= status < 300:
                await claims.drop(self.gw, refs)
            return keep
        if kind == "containers.create":
            return await self.create(head, framing, route)
        if kind in ("volumes.create", "networks.create"):
            body = await self.read_model(framing, kind)
            ctx = self.context()
            check = policy.check_volume_create if kind == "volumes.create" else policy.check_network_create
            refusal, body = check(body, ctx)
            if refusal:
                raise Refused(refusal)
            if kind == "volumes.create":
                body["Name"] = body.get("Name") or f"{caller.login}-{uuid.uuid4().hex[:16]}"
                existing = await self.gw.upstream.labels_of("volume", body["Name"])
                if existing is None:
                    await self.check_volume_quota(caller.login)
                if existing is not None and existing.get("ds01.user") != caller.login:
                    # the daemon would hand back the existing volume, with its data, as if just made
                    raise Refused(
                        policy.Refusal(
                            policy.NOT_OWNER,
                            f"volume '{body['Name']}' already exists and is not yours; choose another name.",
                            status=409,
                        )
                    )
            else:
                status, mine = await self.gw.upstream.request(
                    "GET", "/networks?filters=" + quote(json.dumps({"label": [f"ds01.user={caller.login}"]}))
                )
                if status == 200 and isinstance(mine, list) and len(mine) >= policy.MAX_NETWORKS_PER_USER:
                    raise Refused(
                        policy.denied(
                            f"you have {len(mine)} networks, the most one user may have (each takes a subnet from "
                            "the address pool all users share); remove one (`docker network ls`, `docker network rm "
                            "NAME`) and try again."
                        )
                    )
            keep, status, _unused = await self.forward(head, framing, route=route, body=body, capture=True)
            if kind == "volumes.create" and 200 <= status < 300:
                await self.give_volume(body["Name"], ctx)
            return keep
        if kind == "volume":
            labels = await self.gw.upstream.labels_of(kind, route.ref or "")
            refusal = policy.volume_write_refusal(caller.login, route.ref or "", labels, route.action)
            if refusal:
                raise Refused(refusal)
            return await self.forward(head, framing, route=route)
        if kind in ("networks.connect", "network"):
            # Networks have owners (ds01.user): connect, disconnect and remove need the caller's own.
            network = await self.gw.upstream.inspect_network(route.ref or "")
            if kind == "network":
                verdict = objects.network_delete_verdict(caller.login, route.ref or "", network)
            else:
                verdict = objects.network_connect_verdict(caller.login, route.action, route.ref or "", network)
            if verdict or network is None:
                raise Refused(policy.Refusal(*verdict))
            suffix = f"/{route.action}" if kind == "networks.connect" else ""
            head.target = policy.rebuild_target(route, path=f"/networks/{quote(network['Id'], safe='')}{suffix}")
            body = None
            if kind == "networks.connect":
                body = await self.read_model(framing, f"networks.{route.action}") or {}
                info = await self.owned_container(str(body.get("Container") or ""), f"{route.action} a network")
                body["Container"] = info["Id"]
                endpoint = body.get("EndpointConfig") or {}
                if endpoint.get("NetworkID") and endpoint["NetworkID"] != network["Id"]:
                    # dockerd joins the network the endpoint names, not the one in the path
                    raise Refused(
                        policy.denied(
                            "EndpointConfig.NetworkID names a different network than the one in the request; "
                            "leave it out (the network is the one you connect to)."
                        )
                    )
            return await self.forward(head, framing, route=route, body=body)
        raise Refused(policy.unknown_route(route, head.method))

    async def image_write(self, head: http.Head, framing: http.Framing, route: policy.Route) -> bool:
        """build -t, pull, import, tag, commit: the target tags must be free or the caller's (objects.py);
        they are claimed for the caller before the request is forwarded."""
        caller = self.caller
        if caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        query, body = route.query, None
        if route.kind == "build":
            verdict, query, refs = objects.check_build(route.query, self.limits().slice_name)
            query = policy.build_limits(query, self.limits(), caller.login)
        elif route.kind == "images.create":
            verdict, refs = objects.check_images_create(route.query)
        else:
            what = "docker commit" if route.kind == "commit" else "docker tag"
            verdict, refs = objects.check_retag(route.query, what)
        if verdict is None and route.kind == "commit":
            info = await self.owned_container(route.ref or "", "commit")
            query = (*((k, v) for k, v in query if k != "container"), ("container", info["Id"]))
            body = await self.read_model(framing, "commit")
            framing = http.NO_BODY
            on_build = list((body or {}).get("OnBuild") or []) + list((info.get("Config") or {}).get("OnBuild") or [])
            try:
                dockerfile.check_changes(on_build, "the commit's OnBuild")
            except dockerfile.DockerfileRefused as exc:
                raise Refused(policy.denied(exc.sentence)) from None
            body = policy.commit_labels(body or {}, (info.get("Config") or {}).get("Labels"), caller.login)
        if verdict is None:
            pull = route.kind == "images.create" and bool(route.query_value("fromImage"))
            verdict = await claims.claim(self.gw, caller.login, refs, pull=pull)
        if verdict:
            # read the (build context, import) body first: a client still sending cannot read the answer
            async for _piece in http.iter_body(self.reader, framing):
                pass
            raise Refused(policy.Refusal(*verdict))
        if route.kind == "build" and not caller.admin:
            try:
                await self.ensure_slice()  # the build's RUN steps run in the caller's slice
            except Refused:
                await self.drain(framing)
                raise
        head.target = policy.rebuild_target(route, query=query)  # re-encoded: what was checked is what is sent
        if objects.form_content_type(head.get("Content-Type")):
            head.set("Content-Type", "application/octet-stream")  # dockerd would read a form body as query
        try:
            changes = [v for k, v in query if k == "changes"]
            if changes:
                try:
                    dockerfile.check_changes(changes, "--change")
                except dockerfile.DockerfileRefused as exc:
                    await self.drain(framing)
                    raise Refused(policy.denied(exc.sentence)) from None
            if route.kind == "build":
                lock = self.gw.create_lock("build:" + caller.login)
                if lock.locked():
                    await self.drain(framing)
                    raise Refused(
                        policy.denied(
                            "a build of yours is already running; builds run one at a time per user (each is a "
                            "container in your slice). Wait for it to finish, then build again."
                        )
                    )
                async with lock:
                    with await self.spool_context(framing, dict(query)) as spooled:
                        return await self.forward(head, framing, route=route, upload=spooled)
            if route.kind == "images.create" and route.query_value("fromSrc") == "-":
                with await self.spool_import(framing) as spooled:
                    return await self.forward(head, framing, route=route, upload=spooled)
            return await self.forward(head, framing, route=route, body=body)
        finally:
            claims.release(self.gw, refs)

    async def check_base_images(self, images: list) -> None:
        """The images a build starts from must be on this server already (a pull inside the build
        would go unchecked), and their ONBUILD triggers, which run in this build, are checked too."""
        for image in dict.fromkeys(images):
            config = await self.gw.upstream.image_config(image)
            if config is None:
                raise Refused(
                    policy.denied(
                        f"the image {image} this build starts from is not on this server; pull it first "
                        f"(`docker pull {image}`), so what it brings along can be checked, then build again."
                    )
                )
            try:
                dockerfile.check_changes(list(config.get("OnBuild") or []), f"ONBUILD of {image}")
            except dockerfile.DockerfileRefused as exc:
                raise Refused(policy.denied(exc.sentence)) from None
            refusal = policy.image_label_refusal(image, config.get("Labels"))
            if refusal:
                raise Refused(refusal)

    async def spool_import(self, framing: http.Framing) -> Any:
        """A ``docker import`` body, read into a temp file before the daemon sees it: it must be a plain tar.
        The daemon would decompress a gzip, bzip2, xz or zstd one, and a few MB of those unpack to GBs of
        disk that every user shares (round-7 attack: 2 MB became 2.15 GB in 8 s)."""
        spool_dir = os.path.join(self.gw.state_dir(), "gateway", "spool")
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        spooled = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - the caller's `with` closes it
        size, head = 0, b""
        refusal: Optional[policy.Refusal] = None
        try:
            # a refused body is still read to its end (dropped), so the client reads the answer
            async for piece in http.iter_body(self.reader, framing):
                size += len(piece)
                if refusal is not None:
                    continue
                if len(head) < 8:
                    head += piece[: 8 - len(head)]
                    kind = objects.compression_of(head)
                    if kind:
                        refusal = policy.denied(
                            f"the import is {kind}-compressed; the daemon would unpack it onto the disk all users "
                            "share. Decompress it first and import the plain tar (`gunzip -c x.tar.gz | docker "
                            "import - NAME`)."
                        )
                        continue
                if size > MAX_BUILD_CONTEXT:
                    refusal = policy.denied(
                        f"the import is larger than {MAX_BUILD_CONTEXT >> 30} GiB; split the image into smaller ones."
                    )
                    continue
                spooled.write(piece)
            if refusal is None:
                refusal = await asyncio.get_running_loop().run_in_executor(None, _sparse_member_refusal, spooled)
            if refusal is not None:
                raise Refused(refusal)
            spooled.seek(0)
            return spooled
        except BaseException:
            spooled.close()
            raise

    async def spool_context(self, framing: http.Framing, query: dict) -> Any:
        """A classic build's context, read whole into a temp file (rewritten like a docker cp archive)
        and its Dockerfile checked (dockerfile.py), before anything reaches the daemon."""
        caller = self.caller
        if caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        reader = objects.BuildContextReader(caller.uid, pwd.getpwuid(caller.uid).pw_gid, query.get("dockerfile", ""))
        spool_dir = os.path.join(self.gw.state_dir(), "gateway", "spool")
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        spooled = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - the caller's `with` closes it
        size = 0
        try:
            async for piece in http.iter_body(self.reader, framing):
                size += len(piece)
                if size > MAX_BUILD_CONTEXT:
                    await self.drain(framing)
                    raise Refused(
                        policy.denied(
                            f"the build context is larger than {MAX_BUILD_CONTEXT >> 30} GiB; leave large files out "
                            "with a .dockerignore."
                        )
                    )
                spooled.write(reader.feed(piece))
            try:
                spooled.write(reader.end())
            except objects.BodyRefused as exc:
                raise Refused(policy.Refusal(*exc.verdict)) from None
            build_args = {}
            try:
                parsed = json.loads(query.get("buildargs") or "{}")
                build_args = (
                    {str(k): str(v) for k, v in parsed.items() if v is not None} if isinstance(parsed, dict) else {}
                )
            except ValueError:
                pass
            for name, text in reader.dockerfiles.items():
                try:
                    images = dockerfile.check(text, build_args, name)
                except dockerfile.DockerfileRefused as exc:
                    raise Refused(policy.denied(exc.sentence)) from None
                await self.check_base_images(images)
            spooled.seek(0)
            return spooled
        except BaseException:
            spooled.close()
            raise

    def limits(self) -> config_mod.Limits:
        if self.caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        return self.gw.store.resolve(self.caller.login)

    def context(self, **extra: Any) -> policy.CreateContext:
        caller = self.caller
        if caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        limits = self.limits()
        section = self.gw.section()
        settings = self.gw.settings()
        try:
            gid = pwd.getpwnam(caller.login).pw_gid
            groups = tuple(os.getgrouplist(caller.login, gid))
        except KeyError:  # the account vanished since the connection was identified
            gid, groups = -1, ()
        return policy.CreateContext(
            login=caller.login,
            home=caller.home,
            uid=caller.uid if gid >= 0 else -1,
            gid=gid,
            groups=groups,
            slice_name=limits.slice_name,
            group=limits.group,
            max_cpus=limits.max_cpus,
            memory=limits.memory,
            memory_swap=limits.memory_swap,
            shm_size=limits.shm_size,
            pids_limit=limits.pids_limit,
            allowed_capabilities=tuple(section["allowed_capabilities"]),
            allowed_devices=tuple(section["allowed_devices"] or ()),
            bind_prefixes=tuple(section["bind_prefixes"] or ()),
            readonly_bind_prefixes=tuple(section["readonly_bind_prefixes"] or ()),
            allow_host_network=bool(section["allow_host_network"]),
            socket_paths=(settings.listen, settings.upstream),
            **extra,
        )

    async def read_json(self, framing: http.Framing) -> Any:
        limit = int(self.gw.section()["max_body_bytes"])
        raw = await http.read_body(self.reader, framing, limit)
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise http.HttpError(400, "the request body is not valid JSON") from None

    async def read_model(self, framing: http.Framing, shape: str) -> Optional[dict]:
        """The body as the daemon's Go decoder will read it (canonical.decode), or a refusal naming the key.

        Settings bodies (create, exec, commit, update ...) are kept by dockerd in memory and in image configs
        that every listing reads: at most ``policy.MAX_SETTINGS_BYTES`` (round-7 attack)."""
        limit = min(int(self.gw.section()["max_body_bytes"]), policy.MAX_SETTINGS_BYTES)
        raw = await http.read_body(self.reader, framing, limit)
        try:
            return canonical.decode(raw, shape)
        except canonical.BodyError as exc:
            raise Refused(policy.Refusal(policy.POLICY_DENIED, exc.sentence, status=400)) from None

    async def owned_container(self, ref: str, verb: str) -> dict:
        if self.caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        info = await self.gw.upstream.inspect_container(ref) if ref else None
        if info is None:
            raise Refused(
                policy.Refusal("NOT_FOUND", f"No such container: {ref}", status=404, event_type="gateway.refused")
            )
        labels = (info.get("Config") or {}).get("Labels") or {}
        refusal = policy.ownership(self.caller.login, info.get("Name") or ref, labels, verb)
        if refusal:
            raise Refused(refusal)
        return info

    async def container_op(self, head: http.Head, framing: http.Framing, route: policy.Route) -> bool:
        verb = policy.CONTAINER_ACTIONS.get(route.action, route.action)
        info = await self.owned_container(route.ref or "", verb)
        head.target = policy.rebuild_target(route, path=policy.container_path(route, info["Id"]))
        body = None
        if route.action == "top":
            refusal, query = policy.check_top(route.query)
            if refusal:
                raise Refused(refusal)
            head.target = policy.rebuild_target(route, path=policy.container_path(route, info["Id"]), query=query)
        if route.action == "exec" and head.method == "POST":
            body = await self.read_model(framing, "exec.create")
            refusal = policy.check_exec_create(body, self.context())
            if refusal:
                raise Refused(refusal)
            login = self.caller.login if self.caller else ""
            waiting = await self.gw.execs.full(login, self.gw.upstream.inspect_exec)
            if waiting is not None:
                raise Refused(policy.denied(execs_mod.sentence(waiting)))
            keep, status, created = await self.forward(head, framing, route=route, body=body, capture=True)
            if 200 <= status < 300 and created:
                self.gw.execs.add(login, created, info["Id"])
            return keep
        if route.action == "update":
            body = await self.read_model(framing, "containers.update")
            host_paths = policy.has_host_paths(info.get("HostConfig") or {})
            refusal, body = policy.check_update(body, self.context(), host_paths)
            if refusal:
                raise Refused(refusal)
        elif route.action == "rename":
            new_name = route.query_value("name") or ""
            async with self.gw.create_lock("name:" + new_name.lstrip("/") if new_name else ""):
                await self.check_name_free(new_name)
                return await self.forward(head, framing, route=route)
        elif route.action == "start":
            raw = await http.read_body(self.reader, framing, int(self.gw.section()["max_body_bytes"]))
            refusal = policy.check_start_body(raw)
            if refusal:
                raise Refused(refusal)
            framing = http.NO_BODY
            await self.check_devices_present(info)
        if route.action == "archive" and (
            policy.has_host_paths(info.get("HostConfig") or {}) or (info.get("HostConfig") or {}).get("VolumesFrom")
        ):
            await self.drain(framing)
            raise Refused(policy.archive_with_host_paths(str(info.get("Name") or route.ref or "")))
        if route.action in MOUNTING_ACTIONS:
            # the daemon mounts the container's host paths for these: pinned to what is checked now
            ctx = self.context()
            sources = [info]
            for item in (info.get("HostConfig") or {}).get("VolumesFrom") or []:
                # the daemon mounts the other container's host paths too: pinned like its own
                other = await self.gw.upstream.inspect_container(str(item).split(":", 1)[0])
                if other is not None:
                    sources.append(other)
            with contextlib.ExitStack() as stack:
                for source in sources:
                    plan = pins.plan_of((source.get("Config") or {}).get("Labels") or {})
                    if plan is None:
                        refusal = policy.check_start(source, ctx)
                        if refusal:
                            raise Refused(refusal)
                    stack.enter_context(self.pinned(plan, ctx))
                if route.action == "archive" and head.method == "PUT":
                    return await self.archive_put(head, framing, route, info["Id"])
                return await self.forward(head, framing, route=route, body=body)
        keep = await self.forward(head, framing, route=route, body=body)
        if route.action == "" and head.method == "DELETE":
            pins.remove(self.gw.run_dir(), (info.get("Config") or {}).get("Labels"))
        return keep

    async def check_registry(self, head: http.Head, route: policy.Route) -> None:
        """Requests that make the daemon talk to a registry name it; a registry on this host or a
        private network is refused (objects.registry_verdict)."""
        path = unquote(route.path)
        reference, what = "", ""
        if path.startswith("/distribution/") and path.endswith("/json"):
            reference, what = path[len("/distribution/") : -len("/json")], "docker manifest inspect"
        elif path == "/images/search":
            reference, what = route.query_value("term") or "", "docker search"
        elif path.startswith("/images/") and path.endswith("/push") and head.method == "POST":
            reference, what = path[len("/images/") : -len("/push")], "docker push"
        elif path == "/images/create" and route.query_value("fromImage"):
            reference, what = route.query_value("fromImage") or "", "docker pull"
        if reference:
            await self.check_registry_domain(objects.registry_of(reference), what)

    async def check_registry_domain(self, domain: str, what: str) -> None:
        if not domain:
            return
        if "://" in domain:
            domain = domain.split("://", 1)[1]
        domain = domain.split("/", 1)[0]
        host = domain[1:].split("]", 1)[0] if domain.startswith("[") else domain.rsplit(":", 1)[0]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, None), 5.0)
            addresses = [str(info[4][0]) for info in infos]
        except (OSError, asyncio.TimeoutError):
            addresses = [host]  # unresolvable here is unresolvable for the daemon; an IP literal is itself
        verdict = objects.registry_verdict(domain, addresses, what)
        if verdict:
            raise Refused(policy.Refusal(*verdict))

    async def drain(self, framing: http.Framing, limit: int = 64 * 1024 * 1024) -> None:
        """Read (and drop) a refused request's body, so a client still sending it reads our answer
        instead of a broken pipe; past ``limit`` bytes the connection is simply closed."""
        seen = 0
        try:
            async for piece in http.iter_body(self.reader, framing):
                seen += len(piece)
                if seen > limit:
                    break
        except http.HttpError:
            pass

    def pinned(self, plan: Optional[dict], ctx: policy.CreateContext) -> pins.Pinned:
        """The container's bind sources opened and checked now, and pinned for the daemon (pins.py)."""

        def check(source: str, readonly: bool, opened: str) -> Optional[str]:
            refusal = policy.check_bind_source(opened, readonly, ctx)
            if refusal is None:
                return None
            return refusal.sentence if opened == source else f"{source}: {refusal.sentence}"

        try:
            return pins.Pinned(plan, self.gw.run_dir(), check, ctx.uid, ctx.gid).__enter__()
        except pins.PinError as exc:
            raise Refused(policy.denied(exc.sentence)) from None

    async def archive_put(self, head: http.Head, framing: http.Framing, route: policy.Route, container: str) -> bool:
        """docker cp into a container: the tar is re-owned to the caller and checked as it streams."""
        caller = self.caller
        if caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        rewriter = objects.ArchiveRewriter(caller.uid, pwd.getpwuid(caller.uid).pw_gid)
        # copyUIDGID would chown to the container's user instead of the rewritten owner
        query = tuple((k, v) for k, v in route.query if k != "copyUIDGID")
        head.target = policy.rebuild_target(route, path=policy.container_path(route, container), query=query)
        head.set("Content-Type", "application/x-tar")
        try:
            return await self.forward(head, framing, route=route, body_filter=rewriter.filter)
        except objects.BodyRefused as exc:
            raise Refused(policy.Refusal(*exc.verdict)) from None

    async def exec_op(self, head: http.Head, framing: http.Framing, route: policy.Route) -> bool:
        info = await self.gw.upstream.inspect_exec(route.ref or "")
        if info is None:
            raise Refused(policy.Refusal("NOT_FOUND", f"No such exec instance: {route.ref}", status=404))
        await self.owned_container(str(info.get("ContainerID") or ""), policy.EXEC_ACTIONS[route.action])
        body = await self.read_model(framing, "exec.start") if route.action == "start" else None
        if route.action == "start":
            self.gw.execs.started(str(info.get("ID") or route.ref or ""))
        return await self.forward(head, framing, route=route, body=body)

    async def check_devices_present(self, info: dict) -> None:
        labels = (info.get("Config") or {}).get("Labels") or {}
        granted = [u for u in str(labels.get("ds01.gpu.uuids") or "").split(",") if u]
        if not granted:
            return
        loop = asyncio.get_running_loop()
        present = await loop.run_in_executor(None, self.gw.admission.inventory_uuids)
        if present is None:
            log.warning("GPU inventory unavailable; starting %s without checking its devices", info.get("Name"))
            return
        missing = [u for u in granted if u not in present]
        if missing:
            name = str(info.get("Name") or "").lstrip("/")
            raise Refused(
                policy.denied(
                    f"container '{name}' was granted {', '.join(missing)}, which no longer exists on this host "
                    "(the GPU or MIG layout changed). Your files in mounted directories and volumes are safe: "
                    f"remove the container (`docker rm {name}`) and create it again to get a current GPU."
                )
            )

    async def create(self, head: http.Head, framing: http.Framing, route: policy.Route) -> bool:
        """A create: decided on the canonical model, counted and named under the caller's lock."""
        caller = self.caller
        if caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        body = await self.read_model(framing, "containers.create")
        if body is None:
            raise Refused(
                policy.Refusal(
                    policy.POLICY_DENIED, "the create request body is null; send the container's settings", status=400
                )
            )
        name = route.query_value("name") or ""
        if caller.admin:
            return await self.admin_create(head, framing, route, body, name)
        owners = {}
        for ref in policy.referenced_containers(body):
            info = await self.gw.upstream.inspect_container(ref)
            owners[ref] = ((info or {}).get("Config") or {}).get("Labels") if info else None
        volumes: dict = {}
        missing = []
        for volume in policy.referenced_volumes(body):
            labels = await self.gw.upstream.labels_of("volume", volume)
            if labels is None:
                missing.append(volume)
            elif not labels.get("ds01.user"):
                users = await self.gw.upstream.container_owners_of_volume(volume)
                refusal = policy.volume_refusal_by_users(caller.login, volume, users)
                if refusal:
                    raise Refused(refusal)
                labels = {**labels, "ds01.user": caller.login}
            volumes[volume] = labels
        image = await self.gw.upstream.image_config(str(body.get("Image") or "")) if body.get("Image") else None
        image_env = None if image is None else list(image.get("Env") or [])
        ctx = self.context(container_owners=owners, volume_owners=volumes, image_env=image_env)
        refusal = policy.check_create(body, ctx) or policy.healthcheck_refusal(body, image)
        if refusal:
            raise Refused(refusal)
        try:
            dockerfile.check_changes(list(body.get("OnBuild") or []), "OnBuild")
        except dockerfile.DockerfileRefused as exc:
            raise Refused(policy.denied(exc.sentence)) from None
        names = objects.network_names(body)
        networks = {
            name: await self.gw.upstream.inspect_network(name)
            for name in names
            if name not in objects.CREATE_NETWORK_MODES
        }
        verdict = objects.network_refusal(names, networks, caller.login)
        if verdict:
            raise Refused(policy.Refusal(*verdict))
        for volume in missing:  # made here, as the caller's (the daemon would make it unowned, root's)
            await self.make_volume(volume, ctx)
        limits = self.limits()
        async with self.gw.create_lock(caller.login), self.gw.create_lock("name:" + name.lstrip("/") if name else ""):
            await self.ensure_slice()
            await self.check_name_free(name)
            if limits.max_containers_per_user is not None:
                mine = await self.gw.upstream.containers_of(caller.login)
                if len(mine) >= limits.max_containers_per_user:
                    raise Refused(
                        policy.Refusal(
                            policy.CONTAINER_LIMIT,
                            f"you have {len(mine)} containers (running or stopped) and your limit is "
                            f"{limits.max_containers_per_user}; remove one you no longer need (`docker ps -a`, "
                            "`docker rm NAME`) and try again.",
                        )
                    )
            ask = policy.gpu_ask(body, image_env)
            body = policy.rewrite_create(body, ctx)
            body = policy.no_copy_anonymous_volumes(body, (image or {}).get("Volumes"))
            plan = pins.plan_create(body)
            pins.finish_create(body, self.gw.run_dir(), plan)
            details = {
                "container": name,
                "image": str(body.get("Image") or ""),
                "container_type": body["Labels"]["ds01.container_type"],
            }
            with self.pinned(plan, ctx):
                if ask is None:
                    body = policy.neutralise_image_labels(policy.strip_gpu(body), (image or {}).get("Labels"))
                    keep, status, created = await self.forward(head, framing, route=route, body=body, capture=True)
                    if 200 <= status < 300:
                        await self.gw.record("container.create", caller, gpu=False, id=created, **details)
                    return keep
                return await self.gpu_create(
                    head, framing, route, body, ask, limits, details, image_labels=(image or {}).get("Labels")
                )

    async def gpu_create(
        self,
        head: http.Head,
        framing: http.Framing,
        route: policy.Route,
        body: dict,
        ask: policy.GpuAsk,
        limits: config_mod.Limits,
        details: dict,
        admin: bool = False,
        image_labels: Optional[dict] = None,
    ) -> bool:
        """Place the GPU request through the allocator, holding its lock until the daemon answered."""
        caller = self.caller
        if caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        loop = asyncio.get_running_loop()
        reservation = self.gw.admission.reservation(caller.login, ask, limits, details, admin=admin)
        try:
            grant = await loop.run_in_executor(None, reservation.enter)
        except admission_mod.AdmissionRefused as exc:
            raise Refused(policy.Refusal(exc.code, exc.sentence)) from None
        answered = False  # the daemon's answer came back: only then is the grant's intent settled
        try:
            body = policy.apply_gpu_grant(body, grant.uuids, grant.labels)
            if not admin:
                body = policy.neutralise_image_labels(body, image_labels)
            keep, status, created = await self.forward(head, framing, route=route, body=body, capture=True)
            answered = True
        finally:
            await loop.run_in_executor(None, reservation.exit, answered)
        if 200 <= status < 300:
            await self.gw.record(
                "container.create", caller, gpu=True, gpu_uuids=list(grant.uuids), id=created, admin=admin, **details
            )
        return keep

    async def admin_create(
        self, head: http.Head, framing: http.Framing, route: policy.Route, body: dict, name: str
    ) -> bool:
        """Admins pass unchecked, except that a GPU request is placed by the allocator like anyone's:
        an admin may exceed quotas, never take a slot someone else holds."""
        caller = self.caller
        if caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        image_env = await self.gw.upstream.image_env(str(body.get("Image") or "")) if body.get("Image") else None
        ask = policy.gpu_ask(body, image_env)
        if ask is None or str((body.get("Labels") or {}).get("ds01.protected", "")).lower() == "true":
            keep, status, created = await self.forward(head, framing, route=route, body=body, capture=True)
            if 200 <= status < 300:
                await self.gw.record("container.create", caller, container=name, id=created, admin=True)
            return keep
        limits = dataclasses.replace(
            self.limits(),
            max_gpu_equivalents=None,
            max_gpu_slots_per_container=None,
            max_containers_per_user=None,
            allow_full_gpu=True,
            aggregate=None,
        )
        labels = {str(k): str(v) for k, v in (body.get("Labels") or {}).items() if not policy.gateway_label(str(k))}
        labels.update({"ds01.user": caller.login, "ds01.managed": "true"})
        body["Labels"] = labels
        details = {"container": name, "image": str(body.get("Image") or ""), "container_type": "admin"}
        return await self.gpu_create(head, framing, route, body, ask, limits, details, admin=True)

    async def ensure_slice(self) -> None:
        """The caller's capped slice is loaded before anything runs in it (``slice_keeper``)."""
        caller = self.caller
        if caller is None:  # identity is established before any request is handled
            raise AssertionError("request handled before the caller was identified")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.gw.slices.ensure, self.gw.config(), caller.login)
        except slice_keeper.SliceError as exc:
            raise Refused(policy.Refusal(policy.POLICY_DENIED, exc.sentence, status=500)) from None

    async def check_volume_quota(self, login: str, adding: int = 1) -> None:
        """A user may own ``policy.MAX_VOLUMES_PER_USER`` volumes: each can hold a copy of an image's files."""
        status, data = await self.gw.upstream.request(
            "GET", "/volumes?filters=" + quote(json.dumps({"label": [f"ds01.user={login}"]}))
        )
        mine = (data or {}).get("Volumes") or [] if status == 200 and isinstance(data, dict) else []
        if len(mine) + adding > policy.MAX_VOLUMES_PER_USER:
            raise Refused(
                policy.denied(
                    f"you have {len(mine)} volumes and may have {policy.MAX_VOLUMES_PER_USER}; remove the ones you no "
                    "longer need (`docker volume ls`, `docker volume rm NAME`) and try again."
                )
            )

    async def make_volume(self, name: str, ctx: policy.CreateContext) -> None:
        """Create a named volume as the caller's: labelled ``ds01.user`` and its directory theirs."""
        await self.check_volume_quota(ctx.login)
        status, _data = await self.gw.upstream.request(
            "POST", "/volumes/create", {"Name": name, "Labels": {"ds01.user": ctx.login}}
        )
        if not 200 <= status < 300:
            raise UpstreamError(f"creating volume {name!r} failed with HTTP {status}")
        await self.give_volume(name, ctx)

    async def give_volume(self, name: str, ctx: policy.CreateContext) -> None:
        """A new local volume's directory belongs to its creator (containers run as the caller's uid).

        Only an empty directory owned by root is changed: the daemon made it a moment ago."""
        status, data = await self.gw.upstream.request("GET", f"/volumes/{quote(name, safe='')}")
        mountpoint = str((data or {}).get("Mountpoint") or "") if status == 200 and isinstance(data, dict) else ""
        if ctx.uid < 0 or not mountpoint.startswith("/"):
            return
        try:
            info = os.lstat(mountpoint)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and not os.listdir(mountpoint):
                os.chown(mountpoint, ctx.uid, ctx.gid)
        except OSError as exc:
            log.warning("could not give volume %s to %s: %s", name, ctx.login, exc)

    async def check_name_free(self, name: str) -> None:
        """A name another user's container has is refused in our words (the daemon's names its id)."""
        caller = self.caller
        if not name or caller is None:
            return
        name = name.lstrip("/")
        if not name:
            return
        info = await self.gw.upstream.inspect_container(name)
        if info is None or str(info.get("Name") or "").lstrip("/") != name:
            return
        labels = (info.get("Config") or {}).get("Labels") or {}
        if policy.ownership(caller.login, str(info.get("Name") or name), labels, "use") is None:
            return  # the caller's own container: the daemon's answer names their own container
        raise Refused(
            policy.Refusal(
                "NAME_IN_USE",
                f"the container name '{name.lstrip('/')}' is taken on this server; choose another name.",
                status=409,
            )
        )

    # -- forwarding -----------------------------------------------------------------------------
    async def upstream_connection(self) -> tuple:
        if self.up_writer is None or self.up_writer.is_closing() or (self.up_reader and self.up_reader.at_eof()):
            if self.up_writer is not None:
                self.up_writer.close()
            self.up_reader, self.up_writer = await self.gw.upstream.open()
        return self.up_reader, self.up_writer

    async def forward(
        self,
        head: http.Head,
        framing: http.Framing,
        route: policy.Route,
        body: Any = None,
        rewrite: Optional[Callable[[Any], Any]] = None,
        capture: bool = False,
        body_filter: Optional[Callable[[Optional[bytes]], bytes]] = None,
        upload: Optional[Any] = None,
    ) -> Any:
        """Send the request upstream and the answer back. Returns keep-alive (and status, id if capture).

        ``upload``: a spooled body (a file object at its start) sent instead of the client's."""
        up_reader, up_writer = await self.upstream_connection()
        head.remove("Content-Length", "Transfer-Encoding", "Expect")
        payload: Optional[bytes] = None
        if upload is not None:
            size = os.fstat(upload.fileno()).st_size
            head.headers.append(("Content-Length", str(size)))
            up_writer.write(head.serialize_request())
            while True:
                piece = upload.read(http.PIECE)
                if not piece:
                    break
                up_writer.write(piece)
                await up_writer.drain()
            head = _Sent(head)  # the head went out with the body; below only the answer is read
            framing = http.NO_BODY
        elif body is not None:
            payload = canonical.encode(body)
            head.set("Content-Type", "application/json")
            head.headers.append(("Content-Length", str(len(payload))))
        elif framing.kind == "length":
            head.headers.append(("Content-Length", str(framing.length)))
        elif framing.kind == "chunked":
            head.headers.append(("Transfer-Encoding", "chunked"))
        client_close = "close" in head.connection_tokens() or head.start[2] == "HTTP/1.0"
        if not isinstance(head, _Sent):
            up_writer.write(head.serialize_request())
        else:
            head = head.head
        sender: Optional[asyncio.Task] = None
        if payload is not None:
            up_writer.write(payload)
            await up_writer.drain()
        elif framing.kind != "none":
            sender = asyncio.ensure_future(self._send_body(framing, up_writer, body_filter))
        else:
            await up_writer.drain()
        try:
            try:
                while True:
                    raw = await http.read_head(up_reader)
                    if raw is None:
                        raise UpstreamError("the Docker daemon closed the connection without answering")
                    response = http.parse_response_head(raw)
                    if response.status == 100:
                        continue
                    self.gw.stats.count("forwarded", time.monotonic() - self.started)
                    break
            except http.HttpError as exc:
                raise UpstreamError(exc.message) from None
            if sender is not None:
                if response.status >= 300 and not sender.done():
                    client_close = True
                else:
                    await sender
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                client_close = True
        rframing = http.response_framing(response, head.method)
        hijack = (
            response.status == 101
            or (
                route.kind in ("container", "exec")
                and route.action in HIJACK_ACTIONS
                and rframing.kind == "close"
                and (response.get("Content-Type") or "").split(";")[0].strip() in HIJACK_TYPES
            )
            or (route.path in ("/session", "/grpc") and rframing.kind == "close")
        )
        if hijack:
            self.response_started = True
            await self.send(response.serialize_response())
            await self.splice(up_reader, up_writer)
            return (False, response.status, None) if capture else False
        upstream_close = "close" in response.connection_tokens() or rframing.kind == "close"
        captured: Optional[str] = None
        if rewrite is not None or capture:
            data = b"".join([piece async for piece in http.iter_body(up_reader, rframing, error_status=502)])
            if rewrite is not None and 200 <= response.status < 300:
                try:
                    data = json.dumps(rewrite(json.loads(data))).encode()
                except ValueError:
                    pass
            if capture:
                try:
                    captured = (json.loads(data) or {}).get("Id")
                except (ValueError, AttributeError):
                    captured = None
            response.remove("Content-Length", "Transfer-Encoding")
            response.headers.append(("Content-Length", str(len(data))))
            self.response_started = True
            await self.send(response.serialize_response() + data)
        else:
            # Streamed as it arrives, bytes unchanged: a chunked body keeps the daemon's framing,
            # validated on the way (http.ChunkedCopy), so `logs -f` lines pass at once and a 100 MB
            # log is copied once rather than de-chunked and re-chunked.
            self.response_started = True
            self.writer.write(response.serialize_response())
            if rframing.kind == "chunked":
                copier = http.ChunkedCopy(error_status=502)
                while not copier.done:
                    data = await up_reader.read(http.PIECE)
                    if not data:
                        raise UpstreamError("the Docker daemon closed the connection inside a chunked body")
                    out = copier.feed(data)
                    if out:
                        self.writer.write(out)
                        await self.writer.drain()
                    await gather_more(up_writer.transport, len(data))
                if copier.excess:
                    log.warning("the Docker daemon sent bytes after a response; dropping that connection")
                    upstream_close = True
            else:
                async for piece in http.iter_body(up_reader, rframing, error_status=502):
                    self.writer.write(piece)
                    await self.writer.drain()
                    await gather_more(up_writer.transport, len(piece))
            await self.writer.drain()
        if upstream_close:
            up_writer.close()
            self.up_writer = None
        keep = not (client_close or rframing.kind == "close")
        return (keep, response.status, captured) if capture else keep

    async def _send_body(
        self,
        framing: http.Framing,
        up_writer: asyncio.StreamWriter,
        body_filter: Optional[Callable[[Optional[bytes]], bytes]] = None,
    ) -> None:
        """Stream a body we do not need to read: exactly Content-Length bytes, or re-chunked.

        ``body_filter`` (objects.ArchiveRewriter.filter) rewrites each piece and is called with None
        at the end; when that raises BodyRefused, the (rewritten) body is still finished and then
        the refusal is raised, so forward() answers the client with it instead of the daemon."""
        chunked = framing.kind == "chunked"
        refused: Optional[Exception] = None
        async for piece in http.iter_body(self.reader, framing):
            if body_filter is not None:
                piece = body_filter(piece)
            up_writer.write(http.chunk(piece) if chunked else piece)
            await up_writer.drain()
        if body_filter is not None:
            try:
                up_writer.write(http.chunk(body_filter(None)) if chunked else body_filter(None))
            except objects.BodyRefused as exc:
                refused = exc
        if chunked:
            up_writer.write(http.LAST_CHUNK)
            await up_writer.drain()
        if refused is not None:
            raise refused

    async def splice(self, up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        """Copy bytes both ways until the daemon's side ends; pass half-closes on."""

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await src.read(http.PIECE)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                pass

        to_daemon = asyncio.ensure_future(pump(self.reader, up_writer))
        to_client = asyncio.ensure_future(pump(up_reader, self.writer))
        await to_client
        try:
            await asyncio.wait_for(to_daemon, SPLICE_GRACE_S)
        except asyncio.TimeoutError:
            pass
        self.up_writer = None
        up_writer.close()


class _Sent:
    """A request head already written upstream (with a spooled body)."""

    def __init__(self, head: http.Head) -> None:
        self.head = head

    def connection_tokens(self) -> set:
        return self.head.connection_tokens()

    @property
    def start(self) -> Any:
        return self.head.start


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
