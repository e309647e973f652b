"""Requests that write images (build, pull, import, tag, commit) or make the daemon talk to a registry."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import tarfile
import tempfile
from typing import Any, Optional
from urllib.parse import unquote

from .. import config as config_mod
from . import claims, dockerfile, http, objects, policy
from .policy import Refused

# After a refusal, this much more of an upload is read and dropped, so a client still sending reads the answer.
DRAIN_AFTER_REFUSAL = 64 * 1024 * 1024


def sparse_member_refusal(spooled: Any) -> Optional[policy.Refusal]:
    """An import must not hold sparse files: the daemon writes their holes out as real zeros (round-9 attack: a
    10 KB tar became 1.5 GB of shared disk). Not a tar at all is the daemon's to refuse."""
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


class ImageWrites:
    """Image writes and registry checks of a client connection (connection.Connection)."""

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
            async for _piece in http.iter_body(self.reader, framing, stall_timeout_s=self.gw.body_timeout_s):
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

    def upload_limit(self) -> int:
        """The largest build context or import tar: ``gateway.max_upload_bytes``."""
        return int(self.gw.section()["max_upload_bytes"])

    async def spool_import(self, framing: http.Framing) -> Any:
        """A ``docker import`` body, read into a temp file before the daemon sees it: it must be a plain tar.
        The daemon would decompress a gzip, bzip2, xz or zstd one, and a few MB of those unpack to GBs of
        disk that every user shares (round-7 attack: 2 MB became 2.15 GB in 8 s)."""
        spool_dir = os.path.join(self.gw.state_dir(), "gateway", "spool")
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        spooled = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - the caller's `with` closes it
        size, head = 0, b""
        limit = self.upload_limit()
        refusal: Optional[policy.Refusal] = None
        try:
            # a refused body is still read to its end (dropped), so the client reads the answer
            async for piece in http.iter_body(self.reader, framing, stall_timeout_s=self.gw.body_timeout_s):
                size += len(piece)
                if refusal is not None:
                    if size > limit + DRAIN_AFTER_REFUSAL:
                        break  # the answer goes out, then the connection closes on the unread rest
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
                if size > limit:
                    refusal = policy.denied(
                        f"the import is larger than {config_mod.format_size(limit)} (gateway.max_upload_bytes); "
                        "split the image into smaller ones."
                    )
                    continue
                spooled.write(piece)
            if refusal is None:
                refusal = await asyncio.get_running_loop().run_in_executor(None, sparse_member_refusal, spooled)
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
        limit = self.upload_limit()
        refusal: Optional[policy.Refusal] = None
        try:
            # a refused body is still read (dropped) for a while, in this one pass over it, so the client reads
            # the answer; past that the connection closes on the unread rest
            async for piece in http.iter_body(self.reader, framing, stall_timeout_s=self.gw.body_timeout_s):
                size += len(piece)
                if refusal is not None:
                    if size > limit + DRAIN_AFTER_REFUSAL:
                        break
                    continue
                if size > limit:
                    refusal = policy.denied(
                        f"the build context is larger than {config_mod.format_size(limit)} "
                        "(gateway.max_upload_bytes); leave large files out with a .dockerignore."
                    )
                    continue
                spooled.write(reader.feed(piece))
            if refusal is not None:
                raise Refused(refusal)
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
