"""Image references (distribution/reference, as dockerd normalises them) and the image routes: pull, import,
tag, commit and delete, decided on who made each tag."""

from __future__ import annotations

import re
from typing import Callable, Optional

from .base import NOT_OWNER, POLICY_DENIED, Verdict, denied

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]*)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_TAG_TEXT = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST_TEXT = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"((?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::({_TAG_TEXT}))?(?:@({_DIGEST_TEXT}))?", re.ASCII
)
_TAG = re.compile(_TAG_TEXT, re.ASCII)
_DIGEST = re.compile(_DIGEST_TEXT, re.ASCII)
_HEX64 = re.compile(r"[a-f0-9]{64}")
DEFAULT_DOMAIN = "docker.io"


def parse_reference(text: str) -> tuple:
    """(name, tag, digest) of a reference in dockerd's normal form (``docker.io/library/x``); ValueError."""
    if _HEX64.fullmatch(text):
        raise ValueError("a 64-character hexadecimal string is an image id, not a name")
    slash = text.find("/")
    head = text[:slash]
    if slash < 0 or (not any(c in head for c in ".:") and head != "localhost" and head.lower() == head):
        domain, rest = DEFAULT_DOMAIN, text
    else:
        domain, rest = head, text[slash + 1 :]
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = "library/" + rest
    remote = rest.split(":", 1)[0].split("@", 1)[0]
    if remote.lower() != remote:
        raise ValueError("a repository name must be lowercase")
    match = _REFERENCE.fullmatch(f"{domain}/{rest}")
    if not match:
        raise ValueError("it is not a valid image reference")
    name, tag, digest = match.group(1), match.group(2) or "", match.group(3) or ""
    if len(name) > 255:
        raise ValueError("the repository name is longer than 255 characters")
    return name, tag, digest


def tag_target(repo: str, tag: str) -> str:
    """The tag that ``repo`` (+ ``tag``) names when an image is tagged: ``docker.io/library/x:latest``."""
    name, own_tag, digest = parse_reference(repo)
    if tag:
        if not _TAG.fullmatch(tag):
            raise ValueError(f"'{tag}' is not a valid tag")
        own_tag = tag
    elif digest:
        raise ValueError("a digest reference cannot be a tag target")
    return f"{name}:{own_tag or 'latest'}"


def normal_tags(repo_tags: Optional[list]) -> list:
    """The daemon's RepoTags (familiar form, ``<none>:<none>`` for none) in normal form."""
    out = []
    for item in repo_tags or []:
        try:
            out.append(tag_target(str(item), ""))
        except ValueError:
            continue
    return out


def familiar(ref: str) -> str:
    """``docker.io/library/x:1`` → ``x:1`` (how users write it)."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def is_id_prefix(image_id: str, name: str) -> bool:
    """dockerd's isImageIDPrefix: ``name`` selects the image by (a prefix of) its id."""
    if not name:
        return False
    return image_id.startswith(name) or image_id.partition(":")[2].startswith(name)


LOAD_SENTENCE = (
    "docker load is not available to users: the archive can set any tag, including tags that belong to "
    "others, and its tags are only known once the whole archive is read. Use `docker import` for a "
    "filesystem tarball (the tag is checked), or ask an admin to load the archive."
)
IMAGES_CREATE_PARAMETERS = ("fromImage", "fromSrc", "repo", "tag", "message", "changes", "platform")


def check_images_create(query: tuple) -> tuple:
    """(verdict, tag targets) for ``POST /images/create`` (pull or import)."""
    seen: set = set()
    for key, _value in query:
        if key not in IMAGES_CREATE_PARAMETERS:
            return denied(f"the parameter '{key}' is not one dockerd reads for pull or import; remove it."), []
        if key in seen and key != "changes":
            return denied(f"the parameter '{key}' is given twice; give it once."), []
        seen.add(key)
    values = dict(query)
    image = values.get("fromImage", "")
    tag = values.get("tag", "")
    if image:
        if "fromSrc" in values:
            return denied("a request cannot both pull (fromImage) and import (fromSrc); send one."), []
        image = image[:-1] if image.endswith(":") else image
        try:
            name, own_tag, digest = parse_reference(image)
        except ValueError as exc:
            return denied(f"docker pull {image}: {exc}."), []
        if (tag and _DIGEST.fullmatch(tag)) or (not tag and digest):
            return None, []  # by digest: no tag is written
        if tag and not _TAG.fullmatch(tag):
            return denied(f"docker pull: '{tag}' is not a valid tag."), []
        if not tag and not own_tag:
            return denied(
                "docker pull --all-tags (a pull without a tag) is not available: it would write tags nobody "
                "has checked. Pull one tag at a time (`docker pull NAME:TAG`)."
            ), []
        return None, [f"{name}:{tag or own_tag}"]
    source = values.get("fromSrc")
    if source != "-":
        return denied(
            "importing from a URL (docker import URL) is not available: the daemon would fetch it from the "
            "host, where other users' services listen on loopback. Download the file and import it from "
            "stdin (`docker import file.tar NAME` or `cat file.tar | docker import - NAME`)."
        ), []
    repo = values.get("repo", "")
    if not repo:
        return None, []
    try:
        return None, [tag_target(repo, tag)]
    except ValueError as exc:
        return denied(f"docker import ... {repo}: {exc}."), []


def check_retag(query: tuple, what: str) -> tuple:
    """(verdict, tag targets) for ``POST /images/{name}/tag`` and ``POST /commit`` (``repo``, ``tag``)."""
    repos = [v for k, v in query if k == "repo"]
    tags = [v for k, v in query if k == "tag"]
    if len(repos) > 1 or len(tags) > 1:
        return denied(f"{what}: repo or tag is given twice; give each once."), []
    repo = repos[0] if repos else ""
    tag = tags[0] if tags else ""
    if not repo:
        if what == "docker commit":
            return None, []  # an untagged image
        return denied("docker tag needs a target name (repo=)."), []
    try:
        return None, [tag_target(repo, tag)]
    except ValueError as exc:
        return denied(f"{what} {repo}{':' + tag if tag else ''}: {exc}."), []


def repository_path(ref: str) -> str:
    """``docker.io/alice/app:1`` → ``alice/app``; ``registry.example.org/alice/app:1`` → the same."""
    name = ref.rsplit("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return name.split("/", 1)[1] if "/" in name else name


def tag_verdict(
    login: str,
    ref: str,
    present: bool,
    claims: dict,
    pending: dict,
    pull: bool = False,
    is_login: Callable[[str], bool] = lambda _name: False,
) -> Optional[Verdict]:
    """May ``login`` write tag ``ref``? ``present``: it exists now; ``pending``: ref → login of
    requests creating it right now (claims of absent tags that no request holds are stale).

    Names are namespaced: a user builds, tags, commits and imports only under ``<login>/`` (so no
    one can plant ``victor/app`` or ``ubuntu:22.04`` for others to run). A pull writes what the
    registry serves, so it may refresh a shared name (``ubuntu:22.04``), never another user's
    namespace or a tag someone made."""
    owner = claims.get(ref)
    shown = familiar(ref)
    path = repository_path(ref)
    first = path.split("/", 1)[0]
    if not pull and not path.startswith(f"{login}/"):
        return (
            POLICY_DENIED,
            f"image names you make go under your own name: use {login}/{path.rsplit('/', 1)[-1]} instead of "
            f"{shown} (other names are shared, or belong to other users, and could be run by them).",
        )
    if pull and first != login and "/" in path and is_login(first):
        return (NOT_OWNER, f"the image name {shown} is in {first}'s namespace on this server; pull it as {first}.")
    if pull and present and not owner:
        return None  # a shared name refreshed from its registry
    if present:
        if owner == login:
            return None
        if owner:
            return (
                NOT_OWNER,
                f"the image tag {shown} belongs to {owner}; you cannot overwrite it. Use a name of your own "
                f"(e.g. {login}/{shown.rsplit('/', 1)[-1]}).",
            )
        return (
            NOT_OWNER,
            f"the image tag {shown} existed before ds01 tracked tags or was made by an admin, so it is read-only "
            f"to users; use it as it is, or choose a name of your own (e.g. {login}/{shown.rsplit('/', 1)[-1]}).",
        )
    holder = pending.get(ref)
    if holder and holder != login:
        return (NOT_OWNER, f"the image tag {shown} is being created by {holder} right now; choose another name.")
    return None


def delete_verdict(login: str, name: str, image_id: str, repo_tags: list, claims: dict, maker: str = "") -> tuple:
    """(verdict, tags whose claims go when the delete succeeds) for ``DELETE /images/{name}``.

    ``maker``: the image's ``ds01.image.maker`` label (the gateway stamps it on users' builds). An image
    without tags is removable by id only by its maker."""
    tags = normal_tags(repo_tags)
    if (is_id_prefix(image_id, name) or "@" in name) and not tags and maker != login:
        return (
            NOT_OWNER,
            f"image {name} has no tags and was not built by you"
            + (f" (it is {maker}'s)" if maker else "")
            + "; only its maker or an admin can remove it.",
        ), []
    if is_id_prefix(image_id, name) or "@" in name:
        foreign = [t for t in tags if claims.get(t) != login]
        if foreign:
            shown = ", ".join(familiar(t) for t in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            return (
                NOT_OWNER,
                f"image {name} also carries tags that are not yours ({shown}); you can remove your own tags "
                "by name (`docker rmi NAME:TAG`), not the image.",
            ), []
        return None, tags
    try:
        ref = tag_target(name, "")
    except ValueError as exc:
        return denied(f"docker rmi {name}: {exc}."), []
    owner = claims.get(ref)
    if owner == login:
        return None, [ref]
    if owner:
        return (NOT_OWNER, f"the image tag {familiar(ref)} belongs to {owner}; only they can remove it."), []
    return (
        NOT_OWNER,
        f"the image tag {familiar(ref)} existed before ds01 tracked tags or was made by an admin; only an admin "
        "can remove it.",
    ), []
