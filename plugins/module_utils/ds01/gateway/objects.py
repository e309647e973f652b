"""Builds, images, tags, networks and ``docker cp`` uploads: the gateway's decisions, as pure functions.

Nothing here does I/O: the server (server.py, claims.py) asks the daemon and the claim store and
passes what they said in. A decision is None (allowed) or a verdict ``(code, sentence)``, which the
server turns into a refusal. This module imports no sibling, so policy.py may call it (for
``network_refusal``) without an import circle.

Rules for non-admin callers (admins pass unchanged and claim nothing):

- **BuildKit**: ``/grpc`` (BuildKit's full control API, what buildx speaks) is refused;
  ``/session`` stays open (file sync of a ``DOCKER_BUILDKIT=1 docker build`` goes through it).
  ``POST /build`` takes only the query parameters dockerd 20.10 reads (``newImageBuildOptions`` in
  moby's ``api/server/router/build/build_routes.go``), each validated: ``remote`` (the daemon would
  fetch a URL from the host's loopback, where other users' notebooks listen), ``outputs`` (an
  exporter can write images under any name), ``securityopt`` and ``pull`` are refused, the network
  mode is ``default``/``none``/``bridge`` only, the cgroup parent is always the caller's slice, and
  a parameter given twice (dockerd reads the first, a check might read another) is refused.
  Defence in depth on the daemon: daemon.json's builder entitlements must stay off
  (``"builder": {"Entitlements": {"NetworkHost": false, "SecurityInsecure": false}}``, merged by the
  ds01_slices role), because dockerd 20.10 grants ``network.host`` to BuildKit solves by default.
- **URL sources**: ``images/create?fromSrc=<URL>`` is refused (fromSrc=- uploads are fine);
  ``images/load`` is refused: its tarball sets any tags it names, and they are only known after
  reading the whole archive (``docker save`` writes ``manifest.json`` last).
- **Tags have owners**: a tag belongs to the user whose request created it (build -t, tag, commit,
  import, pull). A target tag must be absent (it is then claimed) or already the caller's; a tag
  that exists without a claim (made before the gateway, or by an admin) is read-only to users.
  Deleting by tag needs the tag's claim; deleting by id, id prefix or digest needs every tag of
  the image to be the caller's.
- **Networks have owners** (``ds01.user`` stamped at create): connect, disconnect and remove need
  the caller's own network; of the built-in networks only ``none`` can be connected to.
- **docker cp into a container**: the tar stream is rewritten as it passes (``ArchiveRewriter``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Callable, Optional

from .. import identity

POLICY_DENIED = "POLICY_DENIED"
NOT_OWNER = "NOT_OWNER"
NOT_FOUND = "NOT_FOUND"

Verdict = tuple  # (code, sentence[, HTTP status]): the arguments of policy.Refusal


def _denied(sentence: str) -> Verdict:
    return (POLICY_DENIED, sentence)


# --------------------------------------------------------------------------------------------
# Request bodies that dockerd would read as a form
# --------------------------------------------------------------------------------------------

# Go's Request.FormValue parses a POST/PUT body of these types into the same map as the query
# (body values first): a query the gateway checked could be overridden from the body.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def form_content_type(value: Optional[str]) -> bool:
    """True when dockerd would parse a body with this Content-Type as form values."""
    return (value or "").split(";", 1)[0].strip().lower() in FORM_TYPES


# --------------------------------------------------------------------------------------------
# BuildKit and build parameters
# --------------------------------------------------------------------------------------------

GRPC_SENTENCE = (
    "BuildKit (/grpc, /session, builds with version=2) is not available to users: its Dockerfile travels inside "
    "the BuildKit session, where the ds01 gateway cannot check what it makes the daemon fetch, and its steps run "
    "outside your resource slice. Build with the classic builder: `DOCKER_BUILDKIT=0 docker build --network none "
    "-t NAME .` (with the Debian docker CLI, or `docker builder build` on a CLI without buildx)."
)

# Every parameter dockerd 20.10 reads in newImageBuildOptions, and what its value may be.
_INT = re.compile(r"-?[0-9]{1,19}")
_CPUSET = re.compile(r"[0-9,\-]*")
_BOOL_NAMES = ("q", "nocache", "rm", "forcerm", "squash")
_STRING_NAMES = ("dockerfile", "target", "session", "buildid", "platform")
_INT_NAMES = ("memory", "memswap", "cpushares", "cpuperiod", "cpuquota", "shmsize")
_JSON_NAMES = {"buildargs": dict, "labels": dict, "cachefrom": list, "ulimits": list}
BUILD_PARAMETERS = frozenset(
    (
        *_BOOL_NAMES,
        *_STRING_NAMES,
        *_INT_NAMES,
        *_JSON_NAMES,
        "pull",
        "cpusetcpus",
        "cpusetmems",
        "cgroupparent",
        "networkmode",
        "t",
        "extrahosts",
        "securityopt",
        "remote",
        "outputs",
        "isolation",
        "version",
    )
)
_REPEATABLE = ("t", "extrahosts")
BUILD_NETWORKS = ("", "default", "none", "bridge")
CLIENT_SESSION = "client-session"  # remote= of a BuildKit build: the context comes through /session
_FALSE = ("", "0", "no", "false", "none")  # httputils.BoolValue's false values


def _truthy(value: str) -> bool:
    return value.strip().lower() not in _FALSE


# --------------------------------------------------------------------------------------------
# Registries: the daemon connects to them as root, from the host
# --------------------------------------------------------------------------------------------


def registry_of(reference: str) -> str:
    """The registry host of an image reference (``docker.io`` when it names none)."""
    slash = reference.find("/")
    head = reference[:slash]
    if slash < 0 or (not any(c in head for c in ".:") and head != "localhost"):
        return DEFAULT_DOMAIN
    return head


def _host_part(domain: str) -> str:
    if domain.startswith("["):
        return domain[1:].split("]", 1)[0]
    return domain.rsplit(":", 1)[0] if domain.count(":") == 1 else domain


def registry_verdict(domain: str, addresses: list, what: str) -> Optional[Verdict]:
    """A registry on the host itself or on a private network is refused: the daemon would connect
    to it as root from the host, where other users' services listen. ``addresses``: what the name
    resolves to (the caller resolves it; an IP literal is its own address)."""
    host = _host_part(domain).lower()
    bad = host in ("localhost", "localhost.localdomain") or host.endswith(".localhost")
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            continue
        bad = bad or not ip.is_global
    if not bad:
        return None
    return _denied(
        f"{what} names the registry {domain}, which is on this host or a private network; the Docker daemon "
        "would connect to it as root, where other users' services listen. Use a public registry, or ask an admin."
    )


def check_build(query: tuple, slice_name: str) -> tuple:
    """(verdict, query to forward, normalised tag targets) for a non-admin ``POST /build``."""
    seen: set = set()
    tags: list = []
    out: list = []
    for key, value in query:
        if key not in BUILD_PARAMETERS:
            return _denied(f"the build parameter '{key}' is not one dockerd reads; remove it."), query, []
        if key in seen and key not in _REPEATABLE:
            return _denied(f"the build parameter '{key}' is given twice; give it once."), query, []
        seen.add(key)
        if (key == "version" and value == "2") or (key == "session" and value) or (key == "remote" and value):
            return (
                _denied(GRPC_SENTENCE) if key != "remote" or value == CLIENT_SESSION else _build_value(key, value),
                query,
                [],
            )
        verdict = _build_value(key, value)
        if verdict:
            return verdict, query, []
        if key == "t":
            try:
                tags.append(tag_target(value, ""))
            except ValueError as exc:
                return _denied(f"docker build -t {value}: {exc}."), query, []
        if key == "labels":
            verdict = _build_labels(value)
            if verdict:
                return verdict, query, []
        if key in ("cgroupparent", "outputs", "pull", "rm", "forcerm") or (key == "remote" and not value):
            continue  # forced or dropped below
        out.append((key, value))
    out.append(("cgroupparent", slice_name))
    # the step containers go, even when a step fails: nothing the daemon made on its own is left behind
    out += [("rm", "1"), ("forcerm", "1")]
    return None, tuple(out), tags


def _build_labels(value: str) -> Optional[Verdict]:
    try:
        labels = json.loads(value or "{}")
    except ValueError:
        labels = None
    if labels is None and value.strip() == "null":
        labels = {}
    if not isinstance(labels, dict):
        return _denied("docker build --label must be NAME=VALUE pairs (a JSON object in labels=).")
    reserved = sorted(str(k) for k in labels if identity.reserved_label(str(k)))
    if reserved:
        return _denied(
            f"docker build --label {reserved[0]} is a label only the server sets: it says who owns a container or "
            "what it holds, and containers built from the image would inherit it. Use another name."
        )
    return None


def _build_value(key: str, value: str) -> Optional[Verdict]:
    if key == "remote" and value not in ("", CLIENT_SESSION):
        return _denied(
            "docker build from a URL (remote=) is not available: the daemon would fetch it from the host, "
            "where other users' services listen on loopback. Download the context yourself and build from "
            "a directory or from stdin (`docker build - < context.tar`)."
        )
    if key == "outputs" and value.strip() not in ("", "null", "[]"):
        return _denied(
            "docker build --output is not available through the gateway: exporters can write images under any "
            "name. Build with -t NAME and copy files out with `docker cp` or `docker run`."
        )
    if key == "pull" and _truthy(value):
        return _denied(
            "docker build --pull can replace a base image tag that other users rely on; pull the base image "
            "first with `docker pull` (checked against tag owners) and build without --pull."
        )
    if key == "securityopt":
        return _denied("docker build --security-opt is not available; remove it.")
    if key == "networkmode" and value not in BUILD_NETWORKS:
        return _denied(
            f"docker build --network {value} is not available: build steps run with the default network or "
            "--network none (host networking would expose other users' services on the host's loopback, "
            "and another container's network is not yours)."
        )
    if key == "isolation" and value not in ("", "default"):
        return _denied(f"docker build --isolation {value} is not available on Linux; remove it.")
    if key == "version" and value not in ("", "1", "2"):
        return _denied(f"the builder version '{value}' is unknown; use 1 (classic) or 2 (BuildKit).")
    if key in _INT_NAMES and value and not _INT.fullmatch(value):
        return _denied(f"the build parameter {key}={value!r} is not a whole number.")
    if key in ("cpusetcpus", "cpusetmems") and not _CPUSET.fullmatch(value):
        return _denied(f"the build parameter {key}={value!r} is not a CPU/memory-node list such as 0-3,5.")
    if key in _JSON_NAMES and value.strip() not in ("", "null"):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, _JSON_NAMES[key]):
            return _denied(f"the build parameter {key} is not a JSON {_JSON_NAMES[key].__name__}.")
    return None


# --------------------------------------------------------------------------------------------
# Image references (distribution/reference, as dockerd normalises them)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Image routes
# --------------------------------------------------------------------------------------------

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
            return _denied(f"the parameter '{key}' is not one dockerd reads for pull or import; remove it."), []
        if key in seen and key != "changes":
            return _denied(f"the parameter '{key}' is given twice; give it once."), []
        seen.add(key)
    values = dict(query)
    image = values.get("fromImage", "")
    tag = values.get("tag", "")
    if image:
        if "fromSrc" in values:
            return _denied("a request cannot both pull (fromImage) and import (fromSrc); send one."), []
        image = image[:-1] if image.endswith(":") else image
        try:
            name, own_tag, digest = parse_reference(image)
        except ValueError as exc:
            return _denied(f"docker pull {image}: {exc}."), []
        if (tag and _DIGEST.fullmatch(tag)) or (not tag and digest):
            return None, []  # by digest: no tag is written
        if tag and not _TAG.fullmatch(tag):
            return _denied(f"docker pull: '{tag}' is not a valid tag."), []
        if not tag and not own_tag:
            return _denied(
                "docker pull --all-tags (a pull without a tag) is not available: it would write tags nobody "
                "has checked. Pull one tag at a time (`docker pull NAME:TAG`)."
            ), []
        return None, [f"{name}:{tag or own_tag}"]
    source = values.get("fromSrc")
    if source != "-":
        return _denied(
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
        return _denied(f"docker import ... {repo}: {exc}."), []


def check_retag(query: tuple, what: str) -> tuple:
    """(verdict, tag targets) for ``POST /images/{name}/tag`` and ``POST /commit`` (``repo``, ``tag``)."""
    repos = [v for k, v in query if k == "repo"]
    tags = [v for k, v in query if k == "tag"]
    if len(repos) > 1 or len(tags) > 1:
        return _denied(f"{what}: repo or tag is given twice; give each once."), []
    repo = repos[0] if repos else ""
    tag = tags[0] if tags else ""
    if not repo:
        if what == "docker commit":
            return None, []  # an untagged image
        return _denied("docker tag needs a target name (repo=)."), []
    try:
        return None, [tag_target(repo, tag)]
    except ValueError as exc:
        return _denied(f"{what} {repo}{':' + tag if tag else ''}: {exc}."), []


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
        return _denied(f"docker rmi {name}: {exc}."), []
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


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------

BUILTIN_NETWORKS = ("bridge", "host", "none")
CREATE_NETWORK_MODES = ("", "default", "none", "bridge")


def network_connect_verdict(login: str, action: str, ref: str, info: Optional[dict]) -> Optional[Verdict]:
    """``docker network connect|disconnect``: the network must be the caller's (built-in: only ``none``;
    leaving a built-in network is allowed)."""
    if info is None:
        return (NOT_FOUND, f"No such network: {ref}", 404)
    name = str(info.get("Name") or ref)
    if name in BUILTIN_NETWORKS:
        if name == "none" or action == "disconnect":
            return None
        return _denied(
            f"connecting a container to the built-in '{name}' network is not available to users; create a "
            "network of your own (`docker network create NAME`) and connect to that."
        )
    return _network_owner(login, name, info, f"{action} containers to or from")


def network_delete_verdict(login: str, ref: str, info: Optional[dict]) -> Optional[Verdict]:
    if info is None:
        return (NOT_FOUND, f"No such network: {ref}", 404)
    return _network_owner(login, str(info.get("Name") or ref), info, "remove")


def _network_owner(login: str, name: str, info: dict, verb: str) -> Optional[Verdict]:
    owner = (info.get("Labels") or {}).get("ds01.user")
    if owner == login:
        return None
    if owner:
        return (NOT_OWNER, f"network '{name}' belongs to {owner}; you can only {verb} your own networks.")
    return (
        NOT_OWNER,
        f"network '{name}' has no owner (it was made by an admin or before ds01); only admins can {verb} it. "
        "Create a network of your own with `docker network create NAME`.",
    )


def network_names(body: dict) -> list:
    """The networks a create body names: HostConfig.NetworkMode and NetworkingConfig.EndpointsConfig keys.

    ``host`` and ``container:<id>`` as the NetworkMode (and the endpoint of the same name, which newer
    CLIs send along) are left out: check_create decides those modes."""
    host = body.get("HostConfig") if isinstance(body.get("HostConfig"), dict) else {}
    mode = str(host.get("NetworkMode") or "")
    governed = mode == "host" or mode.startswith("container:")
    names = [] if governed else [mode]
    networking = body.get("NetworkingConfig")
    endpoints = networking.get("EndpointsConfig") if isinstance(networking, dict) else None
    for key, settings in (endpoints if isinstance(endpoints, dict) else {}).items():
        if not (governed and key == mode):
            names.append(str(key))
        # dockerd prefers an endpoint's NetworkID over its key: the id names a network too
        network_id = (settings or {}).get("NetworkID") if isinstance(settings, dict) else None
        if network_id:
            names.append(str(network_id))
    return list(dict.fromkeys(names))


def network_refusal(names: list, owners: dict, login: str) -> Optional[Verdict]:
    """Container create: every named network must be the caller's, or none/default/bridge.

    ``owners`` maps each name to the daemon's network inspect answer (``Name``, ``Labels``; None when
    there is no such network): ask ``Upstream.inspect_network`` for each of ``network_names(body)``."""
    for name in names:
        if name in CREATE_NETWORK_MODES:
            continue
        info = owners.get(name)
        if info is None:
            return (
                POLICY_DENIED,
                f"network '{name}' does not exist; create it first (`docker network create {name}`).",
            )
        real = str(info.get("Name") or name)
        if real in CREATE_NETWORK_MODES:
            continue
        if real in BUILTIN_NETWORKS:
            return _denied(f"the built-in '{real}' network is not available by name; use --network none or default.")
        verdict = _network_owner(login, real, info, "run containers on")
        if verdict:
            return verdict
    return None


# --------------------------------------------------------------------------------------------
# docker cp into a container: the tar stream, rewritten as it passes
# --------------------------------------------------------------------------------------------

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
MAX_SPECIAL = 1 << 20  # Go's archive/tar reads PAX and GNU long-name data up to 1 MiB
MAX_PENDING = 4 << 20  # meta headers held back until the entry they describe is checked
HEADER_ONLY = b"123456"  # Go's isHeaderOnlyType: these entries have no data, whatever the size says
DEVICE_TYPES = {b"3": "character device", b"4": "block device", b"6": "FIFO"}
ENTRY_TYPES = (b"0", b"\x00", b"1", b"2", b"5")  # what dockerd's untar extracts
META_TYPES = (b"x", b"g", b"L", b"K")
PAX_KEEP = ("path", "linkpath", "size", "mtime", "atime", "ctime", "comment", "charset", "hdrcharset")
PAX_KEEP_PREFIX = ("SCHILY.xattr.user.",)
_GO_INT = re.compile(rb"[+-]?[0-9]+")


class BodyRefused(Exception):
    """A request body the gateway stopped forwarding; ``verdict`` says why."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict[1])
        self.verdict = verdict


class _Bad(Exception):
    pass


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _numeric(field: bytes) -> int:
    """Go archive/tar's parseNumeric: base-256 when the high bit is set, else trimmed octal."""
    if field and field[0] & 0x80:
        inv = 0xFF if field[0] & 0x40 else 0
        value = 0
        for i, byte in enumerate(field):
            byte ^= inv
            if i == 0:
                byte &= 0x7F
            if value >> 56:
                raise _Bad("a numeric field overflows")
            value = value << 8 | byte
        if value >> 63:
            raise _Bad("a numeric field overflows")
        return ~value if inv else value
    text = _cstr(field.strip(b" \x00"))
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        raise _Bad("a numeric field is not octal")
    return int(text, 8)


def _octal(value: int, width: int) -> bytes:
    """A numeric field: octal with a NUL, or base-256 when it does not fit."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _checksums(block: bytes) -> tuple:
    data = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(data)
    signed = sum(b - 256 if b > 127 else b for b in data)
    return unsigned, signed


def _seal(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def _format(block: bytes) -> str:
    magic, version, trailer = block[257:263], block[263:265], block[508:512]
    if magic == b"ustar\x00":
        return "star" if trailer == b"tar\x00" else "ustar"
    if magic == b"ustar " and version == b" \x00":
        return "gnu"
    return "v7"


def _prefix(block: bytes, fmt: str) -> bytes:
    if fmt == "ustar":
        return _cstr(block[345:500])
    if fmt == "star":
        return _cstr(block[345:476])
    if fmt == "gnu":
        # Go reads GNU atime/ctime there; when they do not parse it falls back to a USTAR prefix
        # (archives written by Go before 1.8).
        try:
            for field in (block[345:357], block[357:369]):
                if field[0] != 0:
                    _numeric(field)
        except _Bad:
            text = _cstr(block[345:500])
            if all(c < 0x80 for c in text):
                return text
    return b""


def _pax_records(data: bytes) -> list:
    """Go's parsePAX / parsePAXRecord, strictly: a list of (key, value) bytes, or _Bad."""
    records = []
    rest = data
    while rest:
        space = rest.find(b" ")
        if space < 0 or not _GO_INT.fullmatch(rest[:space]):
            raise _Bad("a PAX record has no length")
        length = int(rest[:space])
        if length < 5 or len(rest) < length or space + 1 >= length - 1:
            raise _Bad("a PAX record has a wrong length")
        record, newline, rest = rest[space + 1 : length - 1], rest[length - 1 : length], rest[length:]
        if newline != b"\n" or b"=" not in record:
            raise _Bad("a PAX record is malformed")
        key, _sep, value = record.partition(b"=")
        if not key or (key in (b"path", b"linkpath", b"uname", b"gname") and b"\x00" in value) or b"\x00" in key:
            raise _Bad("a PAX record has an invalid key or value")
        records.append((key, value))
    return records


def _pax_record(key: bytes, value: bytes) -> bytes:
    size = len(key) + len(value) + 3
    total = size + len(str(size))
    if len(str(total)) != len(str(size)):
        total = size + len(str(total))
    return b"%d %s=%s\n" % (total, key, value)


def _entry_key(name: bytes) -> Optional[str]:
    """Where an entry lands relative to the destination (dockerd: filepath.Join + Clean); None if outside."""
    stack: list = []
    for part in name.decode("utf-8", "surrogateescape").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
        else:
            stack.append(part)
    return "/".join(stack)


class ArchiveRewriter:
    """Rewrites a tar stream block by block, as dockerd's Go archive/tar will read it.

    Every entry is re-owned to ``uid:gid`` (uname/gname cleared; PAX uid/gid/uname/gname records
    and every extended attribute outside ``user.*`` dropped, e.g. ``security.capability``), and
    loses its setuid, setgid and sticky bits. Device nodes, FIFOs, sparse files, hard links to a
    path that is not an earlier entry of the same archive, entries outside the destination and
    malformed headers are refused. A refusal replaces everything from the refused entry's first
    header to the end of the body with zeros: to dockerd that is a clean end of archive, so it
    extracts the complete entries before it and nothing else, and never a partial file (aborting
    the upload instead kills dockerd's untar in the middle of whatever it was still writing).

    The output has exactly the input's length (PAX data shrinks inside its own blocks), so a
    Content-Length stays true. ``feed(bytes) → bytes`` per piece, ``end() → bytes`` at the end
    (raises ``BodyRefused`` when the archive was refused); ``filter`` is both, for ``_send_body``,
    which finishes sending the body and then raises, so the client gets the refusal, not dockerd's
    answer to the shortened archive.
    """

    def __init__(self, uid: int, gid: int) -> None:
        self.uid = uid
        self.gid = gid
        self.verdict: Optional[Verdict] = None
        self._buf = bytearray()
        self._out = bytearray()
        self._data_left = 0  # bytes of entry data (with padding) to pass through
        self._meta: Optional[tuple] = None  # (type, header, size, blocks) of the meta entry being read
        self._pending = bytearray()  # rewritten meta entries waiting for their entry
        self._pax: dict = {}
        self._long_name: Optional[bytes] = None
        self._long_link: Optional[bytes] = None
        self._zero = False  # one zero block seen
        self._ended = False
        self._seen: set = set()
        self._total_in = 0
        self._total_out = 0

    # -- public ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        self._total_in += len(data)
        if self.verdict is not None:
            self._total_out += len(data)
            return bytes(len(data))
        self._buf += data
        try:
            self._run()
        except _Bad as exc:
            self._refuse(
                _denied(f"the archive is not a tar stream dockerd would accept ({exc}); nothing after it was copied.")
            )
        except BodyRefused as exc:
            self._refuse(exc.verdict)
        out, self._out = bytes(self._out), bytearray()
        self._total_out += len(out)
        return out

    def end(self) -> bytes:
        if self.verdict is not None:
            raise BodyRefused(self.verdict)
        out = bytes(self._out) + bytes(self._pending) + bytes(self._buf)
        self._out, self._pending, self._buf = bytearray(), bytearray(), bytearray()
        return out

    def filter(self, piece: Optional[bytes]) -> bytes:
        return self.end() if piece is None else self.feed(piece)

    # -- machinery ---------------------------------------------------------------------------
    def _refuse(self, verdict: Verdict) -> None:
        """From the refused entry's headers on, everything becomes zeros: an end of archive."""
        self.verdict = verdict
        self._buf = bytearray()
        self._pending = bytearray()
        self._out += bytes(self._total_in - self._total_out - len(self._out))

    def _run(self) -> None:
        while True:
            if self._ended:
                self._out += bytes(len(self._buf))  # after the end-of-archive marker: nothing is read
                self._buf = bytearray()
                return
            if self._data_left:
                take = min(self._data_left, len(self._buf))
                if not take:
                    return
                self._on_data(bytes(self._buf[:take]))
                self._out += self._buf[:take]
                del self._buf[:take]
                self._data_left -= take
                continue
            if self._meta is not None:
                kind, header, size, blocks = self._meta
                if len(self._buf) < blocks * BLOCK:
                    return
                data = bytes(self._buf[:size])
                del self._buf[: blocks * BLOCK]
                self._meta = None
                self._finish_meta(kind, header, data, blocks)
                continue
            if len(self._buf) < BLOCK:
                return
            block = bytes(self._buf[:BLOCK])
            del self._buf[:BLOCK]
            self._header(block)

    def _header(self, block: bytes) -> None:
        if block == ZERO_BLOCK:
            self._out += self._pending + block
            self._pending = bytearray()
            self._ended = self._zero
            self._zero = True
            return
        if self._zero:
            raise _Bad("a zero block is followed by data")
        if block[148] & 0x80 or _numeric(block[148:156]) not in _checksums(block):
            raise _Bad("a header checksum is wrong")
        kind = block[156:157]
        fmt = _format(block)
        size = _numeric(block[124:136])
        if kind in META_TYPES:
            if size < 0 or size > MAX_SPECIAL:
                raise _Bad("a PAX or long-name header is larger than 1 MiB")
            self._meta = (kind, block, size, -(-size // BLOCK))
            return
        self._entry(block, kind, fmt, size)

    def _finish_meta(self, kind: bytes, block: bytes, data: bytes, blocks: int) -> None:
        header = bytearray(block)
        if kind in (b"x", b"g"):
            records = _pax_records(data)
            kept = []
            for key, value in records:
                if key.startswith(b"GNU.sparse."):
                    raise BodyRefused(_denied("sparse files cannot be copied through the gateway; copy a normal file."))
                text = key.decode("utf-8", "surrogateescape")
                if text in PAX_KEEP or text.startswith(PAX_KEEP_PREFIX):
                    kept.append((key, value))
            data = b"".join(_pax_record(k, v) for k, v in kept)
            header[124:136] = _octal(len(data), 12)
            if kind == b"x":
                self._pax = dict(kept)  # Go: the last PAX header before an entry is the one that counts
            else:
                # Go returns a global header as an entry of its own (dockerd ignores it) and forgets
                # what came before it.
                self._pax, self._long_name, self._long_link = {}, None, None
        elif kind == b"L":
            self._long_name = _cstr(data)
        else:
            self._long_link = _cstr(data)
        self._own(header)
        entry = _seal(header) + data + bytes(blocks * BLOCK - len(data))
        self._pending += entry
        if len(self._pending) > MAX_PENDING:
            raise _Bad("too many PAX or long-name headers in a row")
        if kind == b"g":
            self._out += self._pending
            self._pending = bytearray()

    def _entry(self, block: bytes, kind: bytes, fmt: str, size: int) -> None:
        name = _cstr(block[0:100])
        prefix = _prefix(block, fmt)
        if prefix:
            name = prefix + b"/" + name
        link = _cstr(block[157:257])
        pax, self._pax = self._pax, {}
        long_name, long_link = self._long_name, self._long_link
        self._long_name = self._long_link = None
        if pax.get(b"path"):
            name = pax[b"path"]
        if pax.get(b"linkpath"):
            link = pax[b"linkpath"]
        if pax.get(b"size"):
            if not _GO_INT.fullmatch(pax[b"size"]):
                raise _Bad("a PAX size is not a number")
            size = int(pax[b"size"])
        if long_name:
            name = long_name
        if long_link:
            link = long_link
        if kind == b"\x00" and name.endswith(b"/"):
            kind = b"5"  # Go: legacy archives mark directories with a trailing slash
        shown = name.decode("utf-8", "replace")
        if kind in DEVICE_TYPES:
            raise BodyRefused(
                _denied(
                    f"the archive holds a {DEVICE_TYPES[kind]} ({shown}); device nodes and FIFOs cannot be copied "
                    "into containers. Nothing from that entry on was copied."
                )
            )
        if kind not in ENTRY_TYPES:
            raise BodyRefused(
                _denied(
                    f"the archive entry {shown} has type {kind.decode('latin-1')!r}, which docker cp does not copy; "
                    "copy regular files, directories and links only."
                )
            )
        key = _entry_key(name)
        if key is None:
            raise BodyRefused(_denied(f"the archive entry {shown} points outside the destination; remove it."))
        if kind == b"1":
            target = _entry_key(link)
            if target is None or target not in self._seen:
                raise BodyRefused(
                    _denied(
                        f"the archive entry {shown} is a hard link to {link.decode('utf-8', 'replace')}, which is not "
                        "an earlier entry of the same archive; hard links may only point to files copied with them."
                    )
                )
        self._seen.add(key)
        if kind in HEADER_ONLY:
            size = 0
        if size < 0:
            raise _Bad("an entry has a negative size")
        header = bytearray(block)
        self._own(header)
        mode = _numeric(block[100:108])
        if mode < 0:
            raise _Bad("an entry has a negative mode")
        header[100:108] = _octal(mode & ~0o7000, 8)
        self._out += self._pending + _seal(header)
        self._pending = bytearray()
        self._data_left = -(-size // BLOCK) * BLOCK
        self._on_entry(key, kind, size)

    # -- hooks (BuildContextReader) ----------------------------------------------------------
    def _on_entry(self, key: str, kind: bytes, size: int) -> None:
        """An entry's header was read; its data (padded) follows."""

    def _on_data(self, data: bytes) -> None:
        """A piece of the current entry's data (with its padding) passed through."""

    def _own(self, header: bytearray) -> None:
        header[108:116] = _octal(self.uid, 8)
        header[116:124] = _octal(self.gid, 8)
        header[265:329] = bytes(64)


# The formats dockerd's archive.DecompressStream recognises by their first bytes.
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def compression_of(data: bytes) -> Optional[str]:
    """The compression a tar stream starting with ``data`` uses, as the daemon would detect it, or None."""
    for magic, name in COMPRESSED.items():
        if data.startswith(magic):
            return name
    return None


class BuildContextReader(ArchiveRewriter):
    """A build context (tar) as it is spooled: rewritten like a ``docker cp`` archive, and the
    Dockerfile the classic builder will read kept aside for ``dockerfile.check``."""

    MAX_DOCKERFILE = 1024 * 1024

    def __init__(self, uid: int, gid: int, dockerfile: str = "") -> None:
        super().__init__(uid, gid)
        names = {"Dockerfile", "dockerfile"}  # dockerd falls back to the lower-case name
        wanted = _entry_key((dockerfile or "Dockerfile").encode())
        if wanted:
            names.add(wanted)
        self.names = names
        self.dockerfiles: dict = {}  # key -> text (the last entry of a name wins, as on extraction)
        self.links: set = set()  # keys of symlinks and hard links in the context
        self._capture: Optional[bytearray] = None
        self._capture_key = ""
        self._capture_size = 0

    COMPRESSED = COMPRESSED

    def feed(self, data: bytes) -> bytes:
        if self._total_in == 0:
            name = compression_of(data)
            if name:
                self._refuse(
                    _denied(
                        f"the build context is {name}-compressed; the ds01 gateway reads the Dockerfile out of "
                        "it, so send it as a plain tar (leave out --compress, or `tar c` instead of `tar cz`)."
                    )
                )
        return super().feed(data)

    def end(self) -> bytes:
        if self.verdict is None and (self._buf or not self._zero) and self._total_in:
            # a partial block (a body shorter than a tar header) or no end-of-archive: not a tar the
            # gateway could read, whatever the daemon would make of it
            self._refuse(_denied("the build context is not a complete tar archive; send a plain tar."))
        if self.verdict is None:
            for key in self.names:
                parts = key.split("/")
                for i in range(1, len(parts) + 1):
                    if "/".join(parts[:i]) in self.links:
                        self._refuse(
                            _denied(
                                f"the Dockerfile path {key} goes through a link in the build context; name the "
                                "Dockerfile itself."
                            )
                        )
        return super().end()

    def _on_entry(self, key: str, kind: bytes, size: int) -> None:
        self._finish_capture()
        if kind in (b"1", b"2"):
            self.links.add(key)
        if key not in self.names:
            return
        if kind not in (b"0", b"\x00", b"7"):
            raise BodyRefused(
                _denied(f"the build context's {key} is not a regular file (a link?); send the Dockerfile itself.")
            )
        if size > self.MAX_DOCKERFILE:
            raise BodyRefused(_denied(f"the build context's {key} is larger than 1 MiB; a Dockerfile is smaller."))
        self._capture, self._capture_key, self._capture_size = bytearray(), key, size
        if size == 0:
            self._finish_capture()

    def _on_data(self, data: bytes) -> None:
        if self._capture is None:
            return
        self._capture += data
        if len(self._capture) >= self._capture_size:
            self._finish_capture()

    def _finish_capture(self) -> None:
        if self._capture is not None:
            text = bytes(self._capture[: self._capture_size]).decode("utf-8", "replace")
            self.dockerfiles[self._capture_key] = text
            self._capture = None
