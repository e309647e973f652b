"""Who made which image tag: the gateway's claim store, and the steps around a tag-writing request.

``<state_dir>/gateway/image-tags.json`` maps a tag in dockerd's normal form
(``docker.io/library/x:latest``) to the login whose request created it. The gateway is its one
writer: every change is read-modify-write under an ``flock`` on a lock file beside it, and the
file is replaced atomically (``fsutil.atomic_write``, root, 0644). Requests that are creating a
tag right now are held in memory (``pending``): a claim on a tag that does not exist and that no
request is creating is stale (a failed build, a gateway restart) and does not block anyone.

The decisions are objects.py's; this module only gathers the facts (tag present? which tags has
an image?) through ``Upstream`` and the store, and records claims around the forward.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import threading
from typing import Any, Optional

from .. import fsutil, identity, logs
from . import objects

log = logs.get(__name__)

FILE = "image-tags.json"


class TagClaims:
    def __init__(self, path: str) -> None:
        self.path = path
        self.pending: dict = {}  # ref -> login, requests creating the tag right now
        self._lock = threading.Lock()

    def load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): treating every tag as unclaimed", self.path, exc)
            return {}
        tags = data.get("tags") if isinstance(data, dict) else None
        return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}

    def _update(self, change) -> Any:
        with self._lock, fsutil.FileLock(self.path + ".lock", mode=0o644):
            claims = self.load()
            result, changed = change(claims)
            if changed:
                fsutil.atomic_write(self.path, json.dumps({"tags": claims}, sort_keys=True, indent=1) + "\n")
            return result

    def claim(self, login: str, present: dict, pull: bool = False) -> Optional[tuple]:
        """Check every target (ref -> present now?) and claim them all for ``login``, or none: a verdict.

        A pull claims nothing (what it writes is what the registry serves; anyone may refresh it)."""

        def change(claims: dict) -> tuple:
            for ref, is_present in present.items():
                verdict = objects.tag_verdict(login, ref, is_present, claims, self.pending, pull, _is_login)
                if verdict:
                    return verdict, False
            if pull:
                return None, False
            changed = False
            for ref in present:
                self.pending[ref] = login
                if claims.get(ref) != login:
                    claims[ref] = login
                    changed = True
            return None, changed

        return self._update(change)

    def release(self, refs: list) -> None:
        with self._lock:
            for ref in refs:
                self.pending.pop(ref, None)

    def drop(self, refs: list) -> None:
        def change(claims: dict) -> tuple:
            found = [r for r in refs if r in claims]
            for ref in found:
                del claims[ref]
            return None, bool(found)

        self._update(change)


_STORES: dict = {}


def store(state_dir: str) -> TagClaims:
    """The one store per state directory in this process (its pending set must be shared)."""
    path = os.path.join(state_dir, "gateway", FILE)
    if path not in _STORES:
        _STORES[path] = TagClaims(path)
    return _STORES[path]


async def present_map(upstream: Any, refs: list) -> dict:
    """ref -> whether that tag exists now (asked by its familiar name, confirmed by RepoTags)."""
    out = {}
    for ref in refs:
        found = await upstream.image_tags(objects.familiar(ref))
        out[ref] = found is not None and ref in objects.normal_tags(found[1])
    return out


async def claim(gw: Any, login: str, refs: list, pull: bool = False) -> Optional[tuple]:
    """Claim ``refs`` for ``login`` (all or none), or the verdict that refuses the request."""
    if not refs:
        return None
    present = await present_map(gw.upstream, refs)
    claims = store(gw.state_dir())
    return await asyncio.get_running_loop().run_in_executor(None, claims.claim, login, present, pull)


def _is_login(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def release(gw: Any, refs: list) -> None:
    """The request that claimed ``refs`` is over (its claims stay; they are no longer pending)."""
    if refs:
        store(gw.state_dir()).release(refs)


async def delete_check(gw: Any, login: str, name: str) -> tuple:
    """(verdict, claims a successful ``DELETE /images/{name}`` drops)."""
    found = await gw.upstream.image_tags(name)
    if found is None:
        return None, []  # the daemon answers "No such image"
    image_id, repo_tags, labels = found
    claims = await asyncio.get_running_loop().run_in_executor(None, store(gw.state_dir()).load)
    # the maker: ds01.image.maker, or ds01.user on images built before the label moved (round-6 attack)
    maker = str(labels.get(identity.IMAGE_MAKER_LABEL) or labels.get(identity.OWNER_LABEL) or "")
    return objects.delete_verdict(login, name, image_id, repo_tags, claims, maker)


async def drop(gw: Any, refs: list) -> None:
    if refs:
        await asyncio.get_running_loop().run_in_executor(None, store(gw.state_dir()).drop, refs)
