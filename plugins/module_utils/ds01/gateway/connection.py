"""One client connection: its caller, the request loop, and the decision on each request.

Every request on the connection (pipelined ones too) is parsed strictly (http.py), decided (policy/) and
forwarded re-framed on the connection's own upstream connection (forward.py). The decisions that need the daemon
or the allocator live with their subject: containers.py (existing containers and execs), creates.py (creates),
builds.py (image writes). A fault answers that one request with a sentence and never stops the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import time
import uuid
from typing import Any, Optional
from urllib.parse import quote

from .. import config as config_mod
from .. import logs
from . import canonical, claims, http, objects, peer, pins, policy
from .builds import ImageWrites
from .containers import ContainerOps
from .creates import Creates
from .forward import ClientGone, Forwarding
from .policy import Refused
from .upstream import DaemonRefused, UpstreamError

log = logs.get(__name__)


class Connection(ImageWrites, ContainerOps, Creates, Forwarding):
    """One client connection and its upstream connection (``gateway``: the server.Gateway it belongs to)."""

    def __init__(
        self,
        gateway: Any,
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
            identity_refusal = policy.identity_refusal(f"SO_PEERCRED failed: {exc}")
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
            except (Refused, http.HttpError, UpstreamError, ConnectionError, EOFError) as caught:
                if isinstance(caught, ClientGone):  # nobody to answer: the connections close (server.handle)
                    log.debug("%s %s: %s", head.method, head.target, caught)
                    return
                exc: Any = caught
                if isinstance(caught, (ConnectionError, EOFError)):  # a daemon that died mid-request
                    exc = UpstreamError(f"the Docker daemon dropped the connection ({caught})")
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
                if isinstance(exc, DaemonRefused):  # the request named something the daemon does not take
                    await self.send(http.json_response(exc.status, {"message": f"ds01 gateway: {exc}"}, close=True))
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
        if kind == "volumes.list":
            return await self.forward(
                head, framing, route=route, rewrite=lambda body: policy.filter_volumes(body, caller.login)
            )
        if kind == "networks.list":
            return await self.forward(
                head, framing, route=route, rewrite=lambda body: policy.filter_networks(body, caller.login)
            )
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
            if route.action == "inspect":
                refusal = policy.volume_inspect_refusal(caller.login, route.ref or "", labels)
            else:
                refusal = policy.volume_write_refusal(caller.login, route.ref or "", labels, route.action)
            if refusal:
                raise Refused(refusal)
            return await self.forward(head, framing, route=route)
        if kind == "network" and route.action == "inspect":
            if not route.ref:  # GET /networks/ is no network (the daemon would answer with its list)
                raise Refused(policy.Refusal("NOT_FOUND", "network '' not found: name a network", status=404))
            network = await self.gw.upstream.inspect_network(route.ref or "")
            refusal = policy.object_ownership(
                caller.login, "network", route.ref or "", (network or {}).get("Labels"), "inspect"
            )
            if refusal and str((network or {}).get("Name") or "") != (route.ref or ""):
                # found by an id prefix: another user's network is not there for this user
                refusal = policy.Refusal(
                    "NOT_FOUND", f"network {route.ref or ''} not found", status=404, event_type="auth.denied"
                )
            if refusal:
                raise Refused(refusal)
            return await self.forward(
                head, framing, route=route, rewrite=lambda body: policy.filter_network(body, caller.login)
            )
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

    async def owned_container(self, ref: str, verb: str, missing: str = "") -> dict:
        """The container ``ref`` when the caller may ``verb`` it, else the refusal. ``missing``: the NOT_FOUND
        sentence when ``ref`` is not what the caller asked for (an exec instance's container)."""
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
            if missing or str(info.get("Name") or "").lstrip("/") != ref.lstrip("/"):
                # found by an id or an id prefix: someone else's container is not there for this user (its name
                # and owner would let anyone list every container on the server, a prefix at a time)
                refusal = policy.Refusal(
                    "NOT_FOUND", missing or f"No such container: {ref}", status=404, event_type="auth.denied"
                )
            raise Refused(refusal)
        return info

    async def drain(self, framing: http.Framing, limit: int = 64 * 1024 * 1024) -> None:
        """Read (and drop) a refused request's body, so a client still sending it reads our answer
        instead of a broken pipe; past ``limit`` bytes the connection is simply closed."""
        seen = 0
        try:
            async for piece in http.iter_body(self.reader, framing, stall_timeout_s=self.gw.body_timeout_s):
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
