"""``docker create``: decided on the canonical model, counted and named under the caller's lock, GPU requests
placed by the allocator (admission.py) while its reservation is held."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from typing import Any, Callable, Optional
from urllib.parse import quote

from .. import config as config_mod
from .. import logs, slice_keeper
from ..record import replace
from . import admission as admission_mod
from . import dockerfile, http, objects, pins, policy
from .policy import Refused
from .upstream import UpstreamError

log = logs.get(__name__)
REMEMBER_TIMEOUT_S = 5.0  # the inspect of a container just made (``Creates.remember_created``)


def told(warnings: list) -> Optional[Callable[[Any], Any]]:
    """The create answer's rewrite that adds ``warnings`` (None when there are none: the answer streams)."""
    if not warnings:
        return None
    return lambda answer: policy.add_warnings(answer, warnings)


class Creates:
    """Container creates of a client connection (connection.Connection), and the volumes they make."""

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
        refusal = policy.id_like_name("container", name)
        if refusal:
            raise Refused(refusal)
        owners: dict = {}
        pinned: dict = {}  # ref -> the full id it named when it was checked
        for ref in policy.referenced_containers(body):
            info = await self.gw.upstream.inspect_container(ref)
            labels = ((info or {}).get("Config") or {}).get("Labels") if info else None
            if info is not None:
                pinned[ref] = str(info.get("Id") or ref)
                shown = str(info.get("Name") or "")
                if shown.lstrip("/") != ref.lstrip("/") and policy.ownership(caller.login, shown, labels, "use"):
                    labels = None  # another user's, named by an id or a prefix: not there for this user (round 13)
            owners[ref] = labels
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
        # the daemon gets the full ids that were checked: a name can be renamed away while the create is in flight,
        # and the daemon would then read it as another container's id prefix (attack round 13)
        body = policy.pin_container_refs(body, pinned)
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
            warnings: list = []  # each capped limit, told in the create answer's Warnings
            body = policy.rewrite_create(body, ctx, warnings)
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
                    keep, status, created = await self.forward(
                        head,
                        framing,
                        route=route,
                        body=body,
                        capture=True,
                        before_answer=self.remember_created,
                        rewrite=told(warnings),
                    )
                    if 200 <= status < 300:
                        await self.gw.record("container.create", caller, gpu=False, id=created, **details)
                    return keep
                return await self.gpu_create(
                    head,
                    framing,
                    route,
                    body,
                    ask,
                    limits,
                    details,
                    image_labels=(image or {}).get("Labels"),
                    warnings=warnings,
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
        warnings: Optional[list] = None,
    ) -> bool:
        """Place the GPU request through the allocator, holding its lock until the daemon answered;
        ``warnings`` (capped limits, what was granted) are added to the daemon's answer."""
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
            notes = [*(warnings or []), *grant.warnings]
            keep, status, created = await self.forward(
                head,
                framing,
                route=route,
                body=body,
                capture=True,
                before_answer=self.remember_created,
                rewrite=told(notes),
            )
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
            keep, status, created = await self.forward(
                head, framing, route=route, body=body, capture=True, before_answer=self.remember_created
            )
            if 200 <= status < 300:
                await self.gw.record("container.create", caller, container=name, id=created, admin=True)
            return keep
        limits = replace(
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

    async def remember_created(self, cid: str) -> None:
        """The new container's create-time facts go to the allocator's cache before its owner has the answer, so
        no GPU decision ever inspects it (an inspect waits while its owner keeps it busy in the daemon)."""
        try:  # bounded: a GPU create holds the allocator's lock here
            info = await asyncio.wait_for(self.gw.upstream.inspect_container(cid), REMEMBER_TIMEOUT_S)
        except (UpstreamError, asyncio.TimeoutError) as exc:
            log.warning("could not read the new container %s: %s", cid[:12], exc or "timed out")
            return
        if info is not None:
            self.gw.admission.remember(info)

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
