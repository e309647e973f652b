"""Requests on an existing container or exec instance: ownership, start/update/archive checks, bind pins."""

from __future__ import annotations

import asyncio
import contextlib
import pwd

from .. import logs
from . import execs as execs_mod
from . import http, objects, pins, policy
from .policy import Refused

log = logs.get(__name__)

# Container actions for which dockerd mounts the container's host paths.
MOUNTING_ACTIONS = ("start", "restart", "archive")


class ContainerOps:
    """Container and exec requests of a client connection (connection.Connection)."""

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
        await self.owned_container(
            str(info.get("ContainerID") or ""),
            policy.EXEC_ACTIONS[route.action],
            missing=f"No such exec instance: {route.ref}",
        )
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
