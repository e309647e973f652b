"""Networks have owners (``ds01.user`` stamped at create): connect, disconnect and remove need the caller's own;
of the built-in networks only ``none`` can be connected to."""

from __future__ import annotations

from typing import Optional

from .base import NOT_FOUND, NOT_OWNER, POLICY_DENIED, Verdict, denied

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
        return denied(
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
            return denied(f"the built-in '{real}' network is not available by name; use --network none or default.")
        verdict = _network_owner(login, real, info, "run containers on")
        if verdict:
            return verdict
    return None
