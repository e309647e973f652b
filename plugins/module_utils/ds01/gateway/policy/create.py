"""A create body (and a start body, and the container a start starts): host-escape settings refused with a
sentence naming the setting; what a GPU request is."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any, Optional

from ... import docker, identity
from .base import (
    LOG_DRIVERS,
    LOG_OPTIONS,
    LOG_TAG_MAX,
    NEVER_CAPABILITIES,
    POLICY_DENIED,
    RESTART_NONE,
    SAFE_RUNTIMES,
    CreateContext,
    GpuAsk,
    Refusal,
    combined,
    denied,
)
from .mounts import check_bind_source, check_target, check_volume_driver, check_volume_name, has_host_paths, parse_bind
from .routes import ownership


def env_value(env: Optional[list], name: str) -> Optional[str]:
    """The last ``NAME=value`` in a Docker Env list (later entries win), or None."""
    value = None
    for item in env or []:
        if isinstance(item, str):
            key, sep, rest = item.partition("=")
            if key == name:
                value = rest if sep else ""
    return value


def is_gpu_request_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and docker.device_request_reaches_gpu(entry)


# what a request label's value may look like before the allocator reads it against the inventory
GPU_REQUEST_VALUE = re.compile(r"[a-z0-9][a-z0-9.+_-]{0,31}")


def gpu_request_kind(body: dict) -> str:
    """The value of the create body's request label (``ds01.gpu.request``): ``full``, a MIG profile, or
    empty without one. Only the body's own labels count: an image's labels are not a request."""
    labels = body.get("Labels") if isinstance(body, dict) else None
    value = (labels or {}).get(identity.GPU_REQUEST_LABEL) if isinstance(labels, dict) else None
    return str(value or "").strip().lower()


def check_gpu_request_label(body: dict) -> Optional[Refusal]:
    kind = gpu_request_kind(body)
    if not kind or GPU_REQUEST_VALUE.fullmatch(kind):
        return None
    shown = kind if len(kind) <= 40 else kind[:37] + "..."
    return denied(
        f"the label {identity.GPU_REQUEST_LABEL}={shown} is neither `full` (a whole GPU) nor a MIG profile name "
        "such as 3g.20gb; `ds01 gpu status` lists this server's profiles."
    )


def gpu_ask(body: dict, image_env: Optional[list], default_runtime: str = "nvidia") -> Optional[GpuAsk]:
    """The GPU request of a create body in any of its forms; None when it asks for none.

    The answer comes from ``docker.gpu_reach`` (the detector asks the same function of a
    stored container). ``default_runtime`` is ``nvidia`` unless the daemon is known to use another
    one when ``Runtime`` is empty: an image's ``NVIDIA_VISIBLE_DEVICES`` then counts. The request
    label (``gpu_request_kind``) names the kind; alone, it asks for one slot of that kind.
    """
    kind = gpu_request_kind(body)
    reach = docker.gpu_reach(body, body.get("HostConfig"), image_env, default_runtime)
    if not reach.reaches_gpu:
        return GpuAsk(1, (), "label", kind) if kind else None
    source = reach.sources[0] if reach.sources else "device_requests"
    source = {"device_request": "device_requests", "runtime_env": "runtime"}.get(source, source)
    if str((body.get("HostConfig") or {}).get("Runtime") or "") == "nvidia" and source in ("env", "image_env"):
        source = "runtime"
    if reach.all:
        return GpuAsk(-1, (), source, kind)
    if reach.devices and not reach.count:
        return GpuAsk(len(reach.devices), tuple(reach.devices), source, kind)
    return GpuAsk(len(reach.devices) + reach.count, (), source, kind)


def container_type(labels: dict) -> str:
    if any(k.startswith("devcontainer.") for k in labels):
        return "devcontainer"
    if any(k.startswith("com.docker.compose.") for k in labels):
        return "compose"
    if labels.get("ds01.container_type") == "ds01":
        return "ds01"
    return "docker"


def capability(name: str) -> str:
    name = str(name).upper()
    return name[4:] if name.startswith("CAP_") else name


def _mode_refusal(mode: str, key: str, flag: str, ctx: CreateContext) -> Optional[Refusal]:
    if mode == "host":
        return denied(
            f"{flag}=host ({key}) shares the host's namespace with the container and lets it see or "
            "signal other users' processes; run without it."
        )
    if mode.startswith("container:"):
        ref = mode.split(":", 1)[1]
        return _referenced(ref, ctx, f"share the namespaces of ({flag})")
    return None


def _referenced(ref: str, ctx: CreateContext, verb: str) -> Optional[Refusal]:
    """A container a create body names (``container:REF``, ``--volumes-from``): the caller's own, else NOT_FOUND
    when there is none for them (missing, or another user's named by an id), else NOT_OWNER."""
    labels = ctx.container_owners.get(ref)
    if labels is None:  # 400, not 404: a create answered 404 makes the docker CLI pull the image
        return Refusal("NOT_FOUND", f"No such container: {ref}", status=400)
    return ownership(ctx.login, ref, labels, verb)


SECURITY_OPT_OK = re.compile(r"no-new-privileges([:=]true)?|apparmor[:=]docker-default|seccomp[:=]builtin")


def check_user(value: str, ctx: CreateContext, what: str = "--user") -> Optional[Refusal]:
    """Containers (and execs) of users run as the caller's own uid, with one of the caller's groups.

    Root in a container is root on every file it can reach through a bind mount, and another
    uid is another person on the host; a user name is looked up in the image, not on the host.
    """
    if not value or ctx.uid < 0:
        return None
    user, sep, group = value.partition(":")
    allowed_groups = {ctx.gid, *ctx.groups}
    if user == str(ctx.uid) and (not sep or (group.isdigit() and int(group) in allowed_groups)):
        return None
    return denied(
        f"{what} {value} is not available: your containers run as you (uid {ctx.uid}, "
        f"`--user {ctx.uid}:{ctx.gid}`, the default), so files they write in your directories stay yours and root "
        "in a container is never root on the host. Leave it unset."
    )


def explicit_user(value: str, ctx: CreateContext) -> str:
    """``uid:gid`` always: with a bare uid, runc takes the group and supplementary groups from the
    image's /etc/passwd and /etc/group, which the user can write (``docker cp``)."""
    _user, sep, group = value.partition(":")
    return f"{ctx.uid}:{group if sep and group else ctx.gid}"


def _check_group_add(groups: list, ctx: CreateContext) -> Optional[Refusal]:
    allowed = {ctx.gid, *ctx.groups}
    for item in groups:
        text = str(item)
        if not text.isdigit():
            return denied(
                f"--group-add {text}: a group name is looked up inside the image, where it can be any group; "
                "give the numeric id of one of your own groups (`id -G`)."
            )
        if int(text) not in allowed:
            return denied(
                f"--group-add {text} is not one of your groups; containers may only carry groups you are a member "
                "of (`id -G`)."
            )
    return None


def _check_log_config(log_config: dict) -> Optional[Refusal]:
    driver = str(log_config.get("Type") or "")
    if driver not in LOG_DRIVERS:
        return denied(
            f"--log-driver {driver} sends the container's output to an address the Docker daemon connects to; "
            "use the default (json-file) or local."
        )
    for key, value in (log_config.get("Config") or {}).items():
        if key == "tag":
            text = str(value)
            if "{{" in text or "}}" in text or len(text) > LOG_TAG_MAX:
                return denied(
                    f"--log-opt tag={text[:40]}... is a template (or longer than {LOG_TAG_MAX} characters); the daemon "
                    "expands it in its own memory. Use a plain tag such as --log-opt tag=myjob."
                )
            continue
        if key not in LOG_OPTIONS:
            return denied(f"--log-opt {key} is not available; allowed are {', '.join(LOG_OPTIONS)}, tag.")
    return None


def _check_ports(host: dict) -> Optional[Refusal]:
    """Published ports bind on the host: loopback only, unprivileged ports only (an empty host
    address becomes 127.0.0.1 in ``harden``)."""
    if host.get("PublishAllPorts"):
        return denied(
            "-P (publish all ports) opens the container's ports on every interface of the host; publish the ones "
            "you need on loopback, e.g. -p 127.0.0.1:8888:8888, and reach them through an SSH tunnel."
        )
    for container_port, bindings in (host.get("PortBindings") or {}).items():
        for binding in bindings or []:
            address = str((binding or {}).get("HostIp") or "")
            port = str((binding or {}).get("HostPort") or "")
            if address not in ("", "127.0.0.1", "::1"):
                return denied(
                    f"-p {address}:{port}:{container_port} would open the port on {address}; ports are published "
                    "on the host's loopback only (-p 127.0.0.1:PORT:PORT), reach them through an SSH tunnel."
                )
            low = port.split("-", 1)[0]
            if low and (not low.isdigit() or int(low) < 1024):
                return denied(
                    f"host port {port} is a privileged port (below 1024) or not a number; publish on a port from "
                    "1024 up, or leave it empty for a free one."
                )
    return None


def check_restart(policy: dict, host_paths: bool) -> Optional[Refusal]:
    name = str(policy.get("Name") or "")
    if name in RESTART_NONE or not host_paths:
        return None
    return denied(
        f"--restart {name} with a directory of the host mounted would let the Docker daemon start the container "
        "again without the checks the ds01 gateway makes at each start; use --restart no (the default), or a "
        "named volume instead of the bind mount."
    )


def _check_device_requests(requests: list) -> Optional[Refusal]:
    for entry in requests:
        if isinstance(entry, dict) and not docker.device_request_reaches_gpu(entry):
            driver = str(entry.get("Driver") or "") or "(any)"
            caps = entry.get("Capabilities") or []
            return denied(
                f"the device request for driver {driver} with capabilities {caps} names no device this server hands "
                "out; ask for GPUs with --gpus 1 (or --gpus device=<id>)."
            )
    return None


def check_start(info: dict, ctx: CreateContext) -> Optional[Refusal]:
    """At start, the container's host paths again: a directory swapped for a symlink is caught here."""
    host = info.get("HostConfig") or {}
    for spec in host.get("Binds") or []:
        source, _target, readonly = parse_bind(str(spec))
        if source.startswith("/"):
            refusal = check_bind_source(source, readonly, ctx)
            if refusal:
                return refusal
    for mount in host.get("Mounts") or []:
        if isinstance(mount, dict) and mount.get("Type") == "bind":
            refusal = check_bind_source(str(mount.get("Source") or ""), bool(mount.get("ReadOnly")), ctx)
            if refusal:
                return refusal
    return None


def check_start_body(raw: bytes) -> Optional[Refusal]:
    """``POST /containers/{id}/start`` takes no body: an old API version would replace the HostConfig."""
    if raw.strip() in (b"", b"{}", b"null"):
        return None
    return denied(
        "starting a container with a request body would replace the settings checked when it was created; "
        "start it without one (`docker start NAME`)."
    )


def check_create(body: dict, ctx: CreateContext) -> Optional[Refusal]:
    """Every host-escape setting in a create body, as one refusal (``combined``); None if there is none.

    The checks are independent of each other, so all of them run and the user learns every problem
    of the request at once; a body that is not the right shape is refused alone, before them."""
    if not isinstance(body, dict):
        return Refusal(POLICY_DENIED, "the create request body is not a JSON object", status=400)
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        return Refusal(POLICY_DENIED, "HostConfig is not a JSON object", status=400)
    return combined([r for r in _create_problems(body, host, ctx) if r is not None])


def _create_problems(body: dict, host: dict, ctx: CreateContext) -> Iterator[Optional[Refusal]]:
    """Each refusal of a create body (and None for each check that passed), in the order of the settings."""
    yield check_user(str(body.get("User") or ""), ctx)
    yield _check_group_add(host.get("GroupAdd") or [], ctx)
    yield _check_log_config(host.get("LogConfig") or {})
    yield check_restart(host.get("RestartPolicy") or {}, has_host_paths(host))
    yield _check_device_requests(host.get("DeviceRequests") or [])
    yield check_gpu_request_label(body)
    yield _check_ports(host)
    if str(host.get("CgroupnsMode") or "") == "host":
        yield denied("--cgroupns host shows the container the host's whole cgroup tree; run without it.")
    for item in host.get("Links") or []:
        ref = str(item).split(":", 1)[0].lstrip("/")
        yield ownership(ctx.login, ref, ctx.container_owners.get(ref), "link to (--link)")
    if host.get("Privileged"):
        yield denied(
            "--privileged gives the container every capability and every host device; it is not available. "
            "Ask for GPUs with --gpus and for single capabilities with --cap-add."
        )
    for cap in list(host.get("CapAdd") or []) + list(host.get("Capabilities") or []):
        yield _check_capability(capability(cap), ctx)
    for key, flag in (("PidMode", "--pid"), ("IpcMode", "--ipc"), ("UTSMode", "--uts"), ("UsernsMode", "--userns")):
        yield _mode_refusal(str(host.get(key) or ""), key, flag, ctx)
    network = str(host.get("NetworkMode") or "")
    if network == "host" and not ctx.allow_host_network:
        yield denied(
            "--network host exposes every service on the host's loopback (including other users' notebooks) "
            "to the container; publish ports with -p instead, or use --network none."
        )
    if network.startswith("container:"):
        yield _mode_refusal(network, "NetworkMode", "--network", ctx)
    for item in host.get("VolumesFrom") or []:
        ref = str(item).split(":", 1)[0]
        yield _referenced(ref, ctx, "mount the volumes of (--volumes-from)")
    runtime = str(host.get("Runtime") or "")
    if runtime not in SAFE_RUNTIMES and runtime != "nvidia":
        yield denied(f"the runtime '{runtime}' is not available to users; leave --runtime unset.")
    if host.get("CgroupParent") and host["CgroupParent"] not in own_cgroup_parents(ctx):
        yield denied(
            f"--cgroup-parent {host['CgroupParent']} is not your slice; your containers always run in "
            f"{ctx.slice_name}. Leave --cgroup-parent unset."
        )
    for opt in host.get("SecurityOpt") or []:
        yield _check_security_opt(str(opt))
    if host.get("MaskedPaths") is not None or host.get("ReadonlyPaths") is not None:
        yield denied(
            "changing the masked or read-only kernel paths (--security-opt systempaths=unconfined) "
            "exposes host kernel interfaces; remove it."
        )
    if host.get("DeviceCgroupRules"):
        yield denied("--device-cgroup-rule opens host devices to the container; it is not available to users.")
    for device in host.get("Devices") or []:
        path = str((device or {}).get("PathOnHost") or "") if isinstance(device, dict) else str(device)
        yield _check_device(path, ctx)
    for key in host.get("Sysctls") or {}:
        yield _check_sysctl(str(key), network)
    if host.get("OomKillDisable"):
        yield denied("--oom-kill-disable can leave the host out of memory; remove it.")
    if isinstance(host.get("OomScoreAdj"), int) and host["OomScoreAdj"] < 0:
        yield denied("a negative --oom-score-adj shields the container from the OOM killer; remove it.")
    driver = str(host.get("VolumeDriver") or "")
    if driver not in ("", "local"):
        yield denied(f"--volume-driver {driver} is not available to users; use local named volumes.")

    for target in [*(host.get("Tmpfs") or {}), *(body.get("Volumes") or {})]:
        yield check_target(str(target))
    for spec in host.get("Binds") or []:
        source, target, readonly = parse_bind(str(spec))
        yield check_target(target)
        yield check_bind_source(source, readonly, ctx) if source.startswith("/") else check_volume_name(source, ctx)
    for mount in host.get("Mounts") or []:
        yield from _mount_problems(mount, ctx)


# The kernel settings a container has a namespace of its own for (runc's list, as dockerd's --sysctl takes it):
# the IPC ones, POSIX message queues and its network namespace's net.*. Any other would be the whole server's.
_IPC_SYSCTLS = frozenset(
    (
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    )
)


def _check_sysctl(key: str, network: str) -> Optional[Refusal]:
    """A ``--sysctl`` the container has a namespace for, else the refusal (runc would refuse it only at start,
    in its own words)."""
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return None
    if key.startswith("net.") and network != "host":
        return None
    return denied(
        f"--sysctl {key} is not one the container has its own copy of: it would set the whole server's kernel. "
        "Only net.* (with the container's own network), fs.mqueue.* and kernel.msg*/sem/shm* are per container."
    )


def _check_capability(name: str, ctx: CreateContext) -> Optional[Refusal]:
    if name == "ALL":
        return denied("--cap-add ALL is the same as --privileged; add only the capabilities you need.")
    if name in NEVER_CAPABILITIES:
        return denied(
            f"--cap-add {name} would let the container make setuid files or device nodes that keep their power "
            "on the host through a mounted directory; it is not available."
        )
    if name not in {capability(c) for c in ctx.allowed_capabilities}:
        return denied(
            f"--cap-add {name} reaches into the host kernel and is not allowed; allowed are: "
            + ", ".join(sorted(capability(c) for c in ctx.allowed_capabilities))
            + "."
        )
    return None


def _check_security_opt(text: str) -> Optional[Refusal]:
    if re.fullmatch(r"no-new-privileges[:=]false", text):
        return denied(
            "--security-opt no-new-privileges:false would let setuid programs in the container gain privileges; "
            "every container runs with no-new-privileges. Remove the option."
        )
    if SECURITY_OPT_OK.fullmatch(text):
        return None
    key = re.split(r"[:=]", text, maxsplit=1)[0]
    shown = text if len(text) <= 60 else text[:57] + "..."
    return denied(
        f"--security-opt {shown} weakens the container's confinement ({key}) and is not allowed; "
        "remove it (no-new-privileges is fine)."
    )


def _mount_problems(mount: Any, ctx: CreateContext) -> Iterator[Optional[Refusal]]:
    if not isinstance(mount, dict):
        yield Refusal(POLICY_DENIED, "a Mounts entry is not a JSON object", status=400)
        return
    kind = str(mount.get("Type") or "volume")
    yield check_target(str(mount.get("Target") or ""))
    readonly = bool(mount.get("ReadOnly"))
    if kind == "bind":
        propagation = str((mount.get("BindOptions") or {}).get("Propagation") or "")
        if propagation not in ("", "private", "rprivate"):
            yield denied(
                f"bind propagation '{propagation}' would carry mounts between the container and the host; "
                "leave bind-propagation unset."
            )
        yield check_bind_source(str(mount.get("Source") or ""), readonly, ctx)
    elif kind == "volume":
        options = mount.get("VolumeOptions") or {}
        config = options.get("DriverConfig") or {}
        name = str(mount.get("Source") or "(anonymous)")
        refusal = check_volume_driver(str(config.get("Name") or ""), config.get("Options") or {}, readonly, ctx, name)
        if refusal is None and mount.get("Source"):  # the name is checked once the driver is known to be local
            refusal = check_volume_name(name, ctx)
        yield refusal
    elif kind != "tmpfs":
        yield denied(f"mounts of type '{kind}' are not available to users; use bind, volume or tmpfs.")


def own_cgroup_parents(ctx: CreateContext) -> tuple:
    group_slice = f"ds01-{ctx.group}.slice"
    return (ctx.slice_name, f"/ds01.slice/{group_slice}/{ctx.slice_name}")


def _check_device(path: str, ctx: CreateContext) -> Optional[Refusal]:
    if docker.is_cdi_name(path):
        return denied(
            f"--device {path} names a CDI device, which reaches hardware behind the GPU allocator's back; "
            "ask for GPUs with --gpus 1 (or --gpus device=<id>) instead."
        )
    norm = os.path.normpath(path)
    try:
        real = ctx.realpath(norm)
    except (OSError, ValueError):
        real = norm
    if any(os.path.basename(p).startswith("nvidia") for p in (norm, real)):
        return denied(
            f"--device {path} hands a GPU device to the container behind the GPU allocator's back; "
            "ask for GPUs with --gpus 1 (or --gpus device=<id>) instead."
        )
    allowed = {os.path.normpath(p) for p in ctx.allowed_devices}
    if norm in allowed and real in allowed | {norm}:
        return None
    return denied(
        f"--device {path} is not on the list of devices users may pass to containers"
        + (f" ({', '.join(sorted(allowed))})" if allowed else "")
        + "; ask an admin if you need it."
    )
