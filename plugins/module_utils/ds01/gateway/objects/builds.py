"""Builds and the registries the daemon talks to: the build query parameters dockerd reads, each validated;
BuildKit's ``/grpc`` refused; form bodies that dockerd would read as query; registries on this host or a
private network refused (the daemon connects to them as root, from the host)."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Optional

from ... import identity
from .base import Verdict, denied
from .images import DEFAULT_DOMAIN, tag_target

# Go's Request.FormValue parses a POST/PUT body of these types into the same map as the query
# (body values first): a query the gateway checked could be overridden from the body.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def form_content_type(value: Optional[str]) -> bool:
    """True when dockerd would parse a body with this Content-Type as form values."""
    return (value or "").split(";", 1)[0].strip().lower() in FORM_TYPES


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
    return denied(
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
            return denied(f"the build parameter '{key}' is not one dockerd reads; remove it."), query, []
        if key in seen and key not in _REPEATABLE:
            return denied(f"the build parameter '{key}' is given twice; give it once."), query, []
        seen.add(key)
        if (key == "version" and value == "2") or (key == "session" and value) or (key == "remote" and value):
            return (
                denied(GRPC_SENTENCE) if key != "remote" or value == CLIENT_SESSION else _build_value(key, value),
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
                return denied(f"docker build -t {value}: {exc}."), query, []
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
        return denied("docker build --label must be NAME=VALUE pairs (a JSON object in labels=).")
    reserved = sorted(str(k) for k in labels if identity.reserved_label(str(k)))
    if reserved:
        return denied(
            f"docker build --label {reserved[0]} is a label only the server sets: it says who owns a container or "
            "what it holds, and containers built from the image would inherit it. Use another name."
        )
    return None


def _build_value(key: str, value: str) -> Optional[Verdict]:
    if key == "remote" and value not in ("", CLIENT_SESSION):
        return denied(
            "docker build from a URL (remote=) is not available: the daemon would fetch it from the host, "
            "where other users' services listen on loopback. Download the context yourself and build from "
            "a directory or from stdin (`docker build - < context.tar`)."
        )
    if key == "outputs" and value.strip() not in ("", "null", "[]"):
        return denied(
            "docker build --output is not available through the gateway: exporters can write images under any "
            "name. Build with -t NAME and copy files out with `docker cp` or `docker run`."
        )
    if key == "pull" and _truthy(value):
        return denied(
            "docker build --pull can replace a base image tag that other users rely on; pull the base image "
            "first with `docker pull` (checked against tag owners) and build without --pull."
        )
    if key == "securityopt":
        return denied("docker build --security-opt is not available; remove it.")
    if key == "networkmode" and value not in BUILD_NETWORKS:
        return denied(
            f"docker build --network {value} is not available: build steps run with the default network or "
            "--network none (host networking would expose other users' services on the host's loopback, "
            "and another container's network is not yours)."
        )
    if key == "isolation" and value not in ("", "default"):
        return denied(f"docker build --isolation {value} is not available on Linux; remove it.")
    if key == "version" and value not in ("", "1", "2"):
        return denied(f"the builder version '{value}' is unknown; use 1 (classic) or 2 (BuildKit).")
    if key in _INT_NAMES and value and not _INT.fullmatch(value):
        return denied(f"the build parameter {key}={value!r} is not a whole number.")
    if key in ("cpusetcpus", "cpusetmems") and not _CPUSET.fullmatch(value):
        return denied(f"the build parameter {key}={value!r} is not a CPU/memory-node list such as 0-3,5.")
    if key in _JSON_NAMES and value.strip() not in ("", "null"):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, _JSON_NAMES[key]):
            return denied(f"the build parameter {key} is not a JSON {_JSON_NAMES[key].__name__}.")
    return None
