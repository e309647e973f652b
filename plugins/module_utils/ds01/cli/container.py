"""``ds01 container deploy|list|stop|retire``: a working container for a student, in one command.

The command is an ordinary Docker client: it talks to ``$DOCKER_HOST`` (or the default socket), which on
a ds01 host is the gateway, so everything the gateway enforces applies (the caller's uid, their slice and
limits, GPUs through the allocator, only their own containers) and nothing here is privileged. What it
adds is the lab's conventions:

- ``deploy NAME [--image IMAGE] [--gpus N | --gpus device=ID[,ID] | --mig PROFILE | --full-gpu]
  [--workspace DIR] [--wait DURATION] [-- COMMAND …]``: the workspace (default ``~/workspace/NAME``, made
  if missing) mounted at ``/workspace``, the caller's uid:gid, ``HOME=/workspace``, the configured network
  (``images.deploy_network``, default none), an image from the lab's list (``images`` section,
  ``images.py``), and ``sleep infinity`` under Docker's init when no command is given, so the container
  stays up to be entered. It is labelled ``ds01.container_type=ds01``, the label the gateway reads to
  type it (``gateway/policy.container_type``), so the ``ds01`` rows of the lifecycle tables govern it.
  ``--mig PROFILE`` and ``--full-gpu`` name devices: the slots of that kind in the GPU inventory are
  asked for one by one (the gateway's allocator decides each). ``--wait DURATION`` retries a create the
  gateway refused with ``NO_GPU_AVAILABLE`` every few seconds until the duration has passed.
- ``list [--json]``: the caller's containers (the gateway shows users only their own).
- ``stop NAME``; ``retire NAME``: removes the container and its anonymous volumes, keeps the workspace.

Refusals are the gateway's sentences, passed on as they are. Exit codes as ``cli.py``: 0 done, 1 refused
(by the gateway, or an image not on the list), 2 usage, 3 Docker could not be asked.

JSON shape of ``list --json`` (schema "1"; keys are stable, new keys may be added)::

    {"schema_version": "1", "user": str,
     "containers": [{"name", "id", "state", "image", "type", "gpu_slots": [str], "gpu_uuids": [str],
                     "workspace": str | null,
                     "limits": {"applies": bool,
                                "idle_timeout_h": {"hours": float | null, "from": str, "exempt": str | null},
                                "max_runtime_h": {"hours": float | null, "from": str, "exempt": str | null}}}]}

``applies`` is false for a container holding no GPU: the idle and runtime rules stop only GPU holders.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pwd
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from .. import cli, docker, gpu, images
from .. import config as config_mod
from ..gateway import pins
from ..record import field, record
from . import table

SCHEMA = "1"
CONTAINER_TYPE = "ds01"
TYPE_LABEL = "ds01.container_type"
WORKSPACE = "/workspace"
KEEP_RUNNING = ("sleep", "infinity")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
NO_GPU_AVAILABLE = "NO_GPU_AVAILABLE"
RETRY_EVERY_S = 5.0
LIMIT_KEYS = ("idle_timeout_h", "max_runtime_h")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("container", help="deploy, list, stop and retire your working containers")
    actions = parser.add_subparsers(dest="container_action", metavar="ACTION")

    deploy = actions.add_parser(
        "deploy",
        help="create and start a container with your workspace at /workspace",
        description="Create and start NAME with ~/workspace/NAME (or --workspace) mounted at /workspace. "
        "Put the container's command after `--`; without one it runs `sleep infinity` so you can enter it.",
    )
    deploy.add_argument("name", metavar="NAME", help="the container's name (also the workspace folder's name)")
    _deploy_options(deploy)
    deploy.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the container's command")
    deploy.set_defaults(func=cmd_deploy)

    listing = actions.add_parser("list", help="your containers, their GPUs and the limits that apply")
    cli.add_json_flag(listing)
    listing.set_defaults(func=cmd_list)

    stop = actions.add_parser("stop", help="stop a container (its GPU stays yours until it is removed)")
    stop.add_argument("name", metavar="NAME")
    stop.set_defaults(func=cmd_stop)

    retire = actions.add_parser("retire", help="remove a container and its anonymous volumes; keep the workspace")
    retire.add_argument("name", metavar="NAME")
    retire.set_defaults(func=cmd_retire)

    parser.set_defaults(func=lambda ctx: _usage(parser))


def _deploy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", metavar="IMAGE", help="one of the lab's images (default: images.default)")
    gpus = parser.add_mutually_exclusive_group()
    gpus.add_argument("--gpus", metavar="N|device=ID", help="N GPU slots, or the named GPUs/MIG slots")
    gpus.add_argument("--mig", metavar="PROFILE", help="one MIG slice of this profile, e.g. 3g.20gb")
    gpus.add_argument("--full-gpu", action="store_true", help="one whole GPU (if your group may have one)")
    parser.add_argument(
        "--workspace", metavar="DIR", help="the folder mounted at /workspace (default ~/workspace/NAME)"
    )
    parser.add_argument(
        "--wait", metavar="DURATION", help="when no suitable GPU is free, keep asking this long (10m, 2h)"
    )


def split_command(args: argparse.Namespace) -> Optional[list]:
    """The container's command, after options given between NAME and ``--`` were read into ``args``
    (argparse hands everything after the first positional to ``REMAINDER``, and drops a ``--`` that comes
    right after NAME); None after a usage error (printed)."""
    rest = list(args.command or [])
    head, command = [], rest
    if rest and rest[0].startswith("-"):
        head, command = (rest[: rest.index("--")], rest[rest.index("--") + 1 :]) if "--" in rest else (rest, [])
    if head:
        options = argparse.ArgumentParser(prog="ds01 container deploy NAME", add_help=False)
        _deploy_options(options)
        try:
            options.parse_args(head, namespace=args)
        except SystemExit:
            sys.stderr.write(
                "ds01: options go before `--`, the container's command after it: "
                "ds01 container deploy NAME [OPTIONS] -- COMMAND\n"
            )
            return None
    if sum(bool(v) for v in (args.gpus, args.mig, args.full_gpu)) > 1:
        sys.stderr.write("ds01: --gpus, --mig and --full-gpu exclude each other: give one.\n")
        return None
    return command


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return cli.EXIT_USAGE


# --------------------------------------------------------------------------------------------
# Pure parts: arguments → request body, outcomes, text
# --------------------------------------------------------------------------------------------


@record(frozen=True)
class GpuChoice:
    """What deploy asks the gateway for: ``count`` slots, or each of ``candidates`` (tried in order)."""

    count: int = 0
    device_ids: tuple = ()
    candidates: tuple = ()  # one device per attempt (--mig / --full-gpu)
    what: str = ""  # for sentences: "a 3g.20gb MIG slice", "a whole GPU"


def parse_gpus(value: Optional[str]) -> GpuChoice:
    """``--gpus`` as the docker CLI reads it: ``N``, ``all`` or ``device=ID[,ID…]``; ValueError otherwise."""
    if value is None:
        return GpuChoice()
    text = value.strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    if text == "all":
        return GpuChoice(count=-1)
    if text.isdigit() and int(text) > 0:
        return GpuChoice(count=int(text))
    if text.startswith("device="):
        ids = tuple(i.strip() for i in text[len("device=") :].split(",") if i.strip())
        if ids:
            return GpuChoice(device_ids=ids)
    raise ValueError(f"--gpus {value!r}: give a number (--gpus 1) or devices (--gpus device=GPU-…,2.1)")


def candidate_slots(slots: list, mig_profile: Optional[str] = None, full_gpu: bool = False) -> GpuChoice:
    """The inventory's slots a ``--mig PROFILE`` / ``--full-gpu`` request may get, as one-device attempts
    (by slot id); ValueError with a sentence when the server has none of that kind."""
    if full_gpu:
        found = [s for s in slots if s.kind == "gpu"]
        what = "a whole GPU"
    else:
        found = [s for s in slots if s.kind == "mig" and (s.profile or "").lower() == str(mig_profile).lower()]
        what = f"a {mig_profile} MIG slice"
    if not found:
        kinds = sorted({s.profile for s in slots if s.kind == "mig" and s.profile})
        offer = f" (MIG profiles here: {', '.join(kinds)})" if kinds else ""
        raise ValueError(f"this server has no {what[2:] if what.startswith('a ') else what}{offer}; try --gpus 1.")
    return GpuChoice(candidates=tuple(s.uuid for s in found), what=what)


def default_workspace(home: str, name: str) -> str:
    return os.path.join(home, "workspace", name)


def create_body(
    image: str,
    workspace: str,
    uid: int,
    gid: int,
    command: Optional[list] = None,
    network: str = "none",
    gpus: Optional[GpuChoice] = None,
    device: Optional[str] = None,
) -> dict:
    """The ``POST /containers/create`` body of a deploy (``device``: this attempt's one device)."""
    host: dict = {
        "Binds": [f"{workspace}:{WORKSPACE}"],
        "NetworkMode": network,
        "Init": True,
    }
    request = None
    if device is not None:
        request = {"Count": 0, "DeviceIDs": [device]}
    elif gpus is not None and gpus.device_ids:
        request = {"Count": 0, "DeviceIDs": list(gpus.device_ids)}
    elif gpus is not None and gpus.count:
        request = {"Count": gpus.count, "DeviceIDs": None}
    if request is not None:
        host["DeviceRequests"] = [{"Driver": "", **request, "Capabilities": [["gpu"]], "Options": {}}]
    return {
        "Image": image,
        "Cmd": list(command) if command else list(KEEP_RUNNING),
        "User": f"{uid}:{gid}",
        "WorkingDir": WORKSPACE,
        "Env": [f"HOME={WORKSPACE}"],
        "Labels": {TYPE_LABEL: CONTAINER_TYPE},
        "HostConfig": host,
    }


@record(frozen=True)
class Refused:
    """A create the daemon or the gateway answered with an error: ``code`` is the refusal code, if any."""

    message: str
    status: Optional[int] = None
    code: str = ""

    @classmethod
    def from_message(cls, message: str, status: Optional[int] = None) -> Refused:
        match = re.match(r"^([A-Z][A-Z_]+[A-Z]): ", message)
        return cls(message.strip(), status, match.group(1) if match else "")

    @property
    def no_gpu(self) -> bool:
        return self.code == NO_GPU_AVAILABLE

    @property
    def exit_code(self) -> int:
        """1 for an answer (a refusal, a 4xx), 3 when the daemon or the gateway failed (5xx, no answer)."""
        if self.code or (self.status is not None and 400 <= self.status < 500):
            return cli.EXIT_NO
        return cli.EXIT_FAULT


def create_with_wait(
    attempt: Callable[[], Any],
    wait_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    say: Callable[[str], None] = lambda text: None,
    every_s: float = RETRY_EVERY_S,
) -> Any:
    """Call ``attempt`` until it answers anything but a ``NO_GPU_AVAILABLE`` refusal, or ``wait_s`` has
    passed; ``say`` hears each new refusal sentence (not the same one again). The last answer is returned."""
    deadline = clock() + max(0.0, wait_s)
    last_said = None
    while True:
        outcome = attempt()
        if not (isinstance(outcome, Refused) and outcome.no_gpu):
            return outcome
        left = deadline - clock()
        if left <= 0:
            return outcome
        if outcome.message != last_said:
            say(
                f"{outcome.message}\n"
                f"Waiting for a GPU (asking every {every_s:g} s, {_duration(left)} left; Ctrl-C stops)."
            )
            last_said = outcome.message
        sleep(min(every_s, left))


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:g} h" if seconds % 360 == 0 else f"{seconds / 3600:.1f} h"


def hours_text(hours: Optional[float]) -> str:
    if hours is None:
        return "no limit"
    if hours < 1:
        return f"{hours * 60:g} min"
    return f"{hours:g} h"


def limits_of(limits: config_mod.Limits, container_type: str, name: str, holds_gpu: bool, now: dt.datetime) -> dict:
    """The idle and runtime limits governing a container (``Limits.governing``), and its exemptions."""
    out: dict = {"applies": holds_gpu}
    for key in LIMIT_KEYS:
        hours, source = limits.governing(container_type, key)
        exemption = limits.exemption_for(key, now, container=name)
        out[key] = {"hours": hours, "from": source, "exempt": _exemption_text(exemption) if exemption else None}
    return out


def _exemption_text(exemption: Any) -> str:
    until = f"until {exemption.expires_on:%Y-%m-%d}" if exemption.expires_on else "with no end date"
    return f"exempt {until}" + (f" ({exemption.reason})" if exemption.reason else "")


def limit_lines(limits_doc: Mapping[str, Any], keepalive_file: str = "") -> list:
    """The limits part of deploy's and list's text."""
    if not limits_doc.get("applies"):
        return ["Idle and runtime limits stop only containers holding a GPU; this one holds none."]
    lines = []
    for key, rule in (("idle_timeout_h", "idle"), ("max_runtime_h", "runtime")):
        row = limits_doc[key]
        if row.get("exempt"):
            lines.append(f"{rule}: {row['exempt']}")
        elif row.get("hours") is None:
            lines.append(f"{rule}: no limit ({row['from']})")
        elif key == "idle_timeout_h":
            lines.append(f"idle: stopped after {hours_text(row['hours'])} without activity ({row['from']})")
        else:
            lines.append(f"runtime: stopped {hours_text(row['hours'])} after it first started ({row['from']})")
    if keepalive_file and limits_doc["idle_timeout_h"].get("hours") is not None:
        lines.append(f"`touch {keepalive_file}` inside the container counts as activity.")
    return lines


@record
class Deployed:
    name: str
    image: str
    workspace: str
    state: str
    exit_code: Optional[int] = None
    gpu_slots: list = field(default_factory=list)
    limits: dict = field(default_factory=dict)
    keepalive_file: str = ""


def deploy_text(done: Deployed) -> str:
    gpu = f", GPU {', '.join(done.gpu_slots)}" if done.gpu_slots else ""
    lines = [f"Container {done.name} is {done.state} (image {done.image}{gpu})."]
    if done.state != "running":
        code = f" with exit code {done.exit_code}" if done.exit_code is not None else ""
        lines.append(f"Its command has already ended{code}: see `docker logs {done.name}`.")
    lines += [
        f"Workspace: {done.workspace} is /workspace inside it (kept when the container is retired).",
        "Get in:",
        f"  docker exec -it {done.name} bash",
        f'  VS Code: "Dev Containers: Attach to Running Container…", pick {done.name}, open /workspace.',
        "Limits:",
    ]
    lines += [f"  {line}" for line in limit_lines(done.limits, done.keepalive_file)]
    lines.append(f"When you are done: ds01 container retire {done.name}  (the workspace stays)")
    return "\n".join(lines)


def list_row(info: docker.ContainerInfo, limits: config_mod.Limits, now: dt.datetime) -> dict:
    labels = dict(info.labels)
    slots = [s for s in (labels.get(docker.SLOTS_LABEL) or "").split(",") if s]
    uuids = [u for u in (labels.get(docker.UUIDS_LABEL) or "").split(",") if u]
    kind = labels.get(TYPE_LABEL) or "unknown"
    return {
        "name": info.name,
        "id": info.short_id,
        "state": info.state,
        "image": info.image,
        "type": kind,
        "gpu_slots": slots,
        "gpu_uuids": uuids,
        "workspace": workspace_of(labels),
        "limits": limits_of(limits, kind, info.name, bool(slots or uuids or info.has_gpu), now),
    }


def workspace_of(labels: Mapping[str, str]) -> Optional[str]:
    """The host folder a container mounts at /workspace (the gateway keeps the sources in ``ds01.binds``)."""
    plan = pins.plan_of(dict(labels))
    if plan is None:
        return None
    # deploy makes exactly one bind, at /workspace; a container with more does not say which is which here
    sources = [s for s in plan["sources"] if isinstance(s.get("source"), str)]
    return sources[0]["source"] if len(sources) == 1 else None


def list_text(doc: Mapping[str, Any]) -> str:
    rows = doc["containers"]
    if not rows:
        return "You have no containers. Make one with `ds01 container deploy NAME`."
    body = []
    for row in rows:
        lim = row["limits"]
        cells = []
        for key in LIMIT_KEYS:
            if not lim["applies"]:
                cells.append("-")
            elif lim[key]["exempt"]:
                cells.append("exempt")
            else:
                cells.append(hours_text(lim[key]["hours"]))
        gpu = ",".join(row["gpu_slots"]) or ("yes" if row["gpu_uuids"] else "-")
        body.append((row["name"], row["state"], row["type"], gpu, cells[0], cells[1], row["image"]))
    out = table.lines(("NAME", "STATE", "TYPE", "GPU", "IDLE LIMIT", "RUNTIME LIMIT", "IMAGE"), body)
    out.append("Idle and runtime limits stop only containers holding a GPU (-: holds none).")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Edge: Docker through the gateway
# --------------------------------------------------------------------------------------------


def _whoami() -> tuple:
    entry = pwd.getpwuid(os.getuid())
    return entry.pw_name, entry.pw_dir


def _client() -> Any:
    try:
        return docker.client_from_env()
    except docker.DockerStateError as exc:
        raise cli.CommandError(f"{exc}; nothing was changed.", cli.EXIT_FAULT) from None


def _answer(exc: Exception) -> Refused:
    """A docker SDK error as the sentence the gateway (or the daemon) answered."""
    message = getattr(exc, "explanation", None) or str(exc)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return Refused.from_message(str(message), getattr(exc, "status_code", None))


def _fail(refused: Refused, what: str) -> cli.CommandError:
    if refused.status is None or (refused.status >= 500 and not refused.code):
        return cli.CommandError(f"{what}: {refused.message}", refused.exit_code)
    return cli.CommandError(refused.message, refused.exit_code)


def _create(client: Any, name: str, body: dict) -> Any:
    """The container id, or ``Refused``."""
    try:
        return client.api.create_container_from_config(body, name=name)["Id"]
    except Exception as exc:  # narrowed below to Docker's transport errors
        if not isinstance(exc, docker.DOCKER_ERRORS):
            raise
        return _answer(exc)


def _attempts(client: Any, name: str, bodies: list) -> Any:
    """Try each body in turn (one per candidate device) until one is created or refused for another reason."""
    tried: list = []
    for body in bodies:
        outcome = _create(client, name, body)
        if not (isinstance(outcome, Refused) and outcome.no_gpu and len(bodies) > 1):
            return outcome
        tried.append(outcome)
    return tried[-1]


def cmd_deploy(ctx: cli.Context) -> int:
    args = ctx.args
    command = split_command(args)
    if command is None:
        return cli.EXIT_USAGE
    if not NAME_RE.match(args.name):
        raise cli.CommandError(
            f"{args.name!r} cannot be a container name: use letters, digits, '_', '.' and '-' (not first).",
            cli.EXIT_USAGE,
        )
    try:
        gpus = parse_gpus(args.gpus)
        wait_s = config_mod.parse_duration_text(args.wait) if args.wait else 0.0
    except ValueError as exc:
        text = (
            str(exc) if args.wait is None or "--gpus" in str(exc) else f"--wait {args.wait!r}: use e.g. 90s, 10m or 2h"
        )
        raise cli.CommandError(text, cli.EXIT_USAGE) from None
    config = ctx.config
    login, home = _whoami()
    limits = config.resolve(login)
    image, why = images.choose_image(config.section(images.SECTION), args.image)
    if image is None:
        raise cli.CommandError(why, cli.EXIT_NO)
    if args.mig or args.full_gpu:
        gpus = _device_candidates(config, args.mig, args.full_gpu)
    workspace = (
        os.path.abspath(os.path.expanduser(args.workspace)) if args.workspace else default_workspace(home, args.name)
    )
    try:
        os.makedirs(workspace, exist_ok=True)
    except OSError as exc:
        raise cli.CommandError(
            f"cannot make the workspace {workspace} ({exc.strerror}); nothing was created.", cli.EXIT_NO
        ) from None
    network = config.section(images.SECTION)["deploy_network"]
    devices = list(gpus.candidates) or [None]
    bodies = [
        create_body(image, workspace, os.getuid(), os.getgid(), command, network, gpus, device) for device in devices
    ]
    client = _client()
    try:
        outcome = create_with_wait(
            lambda: _attempts(client, args.name, bodies),
            wait_s,
            say=lambda text: sys.stderr.write(f"ds01: {text}\n"),
        )
        if isinstance(outcome, Refused):
            if gpus.candidates and outcome.no_gpu:
                raise cli.CommandError(
                    f"{NO_GPU_AVAILABLE}: no {gpus.what[2:]} is free right now ({len(devices)} tried). "
                    f"The last answer was: {outcome.message}",
                    cli.EXIT_NO,
                )
            raise _fail(outcome, "the container could not be created")
        started = _start(client, outcome, args.name)
        done = Deployed(
            name=args.name,
            image=image,
            workspace=workspace,
            state=str(started["State"].get("Status") or "unknown"),
            exit_code=started["State"].get("ExitCode") if not started["State"].get("Running") else None,
            keepalive_file=limits.policies.keepalive_file,
        )
        labels = started["Config"].get("Labels") or {}
        done.gpu_slots = [s for s in (labels.get(docker.SLOTS_LABEL) or "").split(",") if s]
        holds_gpu = bool(done.gpu_slots or labels.get(docker.UUIDS_LABEL))
        kind = labels.get(TYPE_LABEL) or CONTAINER_TYPE
        done.limits = limits_of(limits, kind, args.name, holds_gpu, dt.datetime.now(dt.timezone.utc))
    finally:
        client.close()
    sys.stdout.write(deploy_text(done) + "\n")
    return cli.EXIT_OK


def _device_candidates(config: config_mod.Config, mig: Optional[str], full_gpu: bool) -> GpuChoice:
    try:
        inventory = gpu.inventory_from_config(config)
    except gpu.GpuInventoryError as exc:
        raise cli.CommandError(
            f"cannot read this server's GPU list ({exc}), so --mig/--full-gpu cannot pick a device; "
            "use --gpus 1 (the allocator picks), or --gpus device=ID.",
            cli.EXIT_FAULT,
        ) from None
    try:
        return candidate_slots(inventory.slots(), mig_profile=mig, full_gpu=full_gpu)
    except ValueError as exc:
        raise cli.CommandError(str(exc), cli.EXIT_NO) from None


def _start(client: Any, cid: str, name: str) -> dict:
    """Start the created container and inspect it; a container that cannot start is removed again (it
    would hold its GPU while doing nothing) and the daemon's answer is passed on."""
    try:
        client.api.start(cid)
    except Exception as exc:  # narrowed below to Docker's transport errors
        if not isinstance(exc, docker.DOCKER_ERRORS):
            raise
        refused = _answer(exc)
        try:
            client.api.remove_container(cid, force=True, v=True)
            gone = "it was removed again"
        except Exception as exc:  # narrowed below to Docker's transport errors
            if not isinstance(exc, docker.DOCKER_ERRORS):
                raise
            gone = f"remove it with `ds01 container retire {name}`"
        raise cli.CommandError(
            f"container {name} was created but could not start ({refused.message}); {gone}.", refused.exit_code
        ) from None
    try:
        return client.api.inspect_container(cid)
    except Exception as exc:  # narrowed below to Docker's transport errors
        if not isinstance(exc, docker.DOCKER_ERRORS):
            raise
        raise _fail(_answer(exc), f"container {name} was started, but could not be read back") from None


def cmd_list(ctx: cli.Context) -> int:
    login, _home = _whoami()
    limits = ctx.config.resolve(login)
    client = _client()
    try:
        infos = docker.list_containers(client, on_error=docker.skip_unreadable)
    except docker.DockerStateError as exc:
        raise cli.CommandError(f"{exc}.", cli.EXIT_FAULT) from None
    finally:
        client.close()
    now = dt.datetime.now(dt.timezone.utc)
    rows = [list_row(info, limits, now) for info in sorted(infos, key=lambda i: i.name) if info.owner == login]
    ctx.emit({"schema_version": SCHEMA, "user": login, "containers": rows}, list_text)
    return cli.EXIT_OK


def _inspect_own(client: Any, name: str) -> dict:
    try:
        return client.api.inspect_container(name)
    except Exception as exc:  # narrowed below to Docker's transport errors
        if not isinstance(exc, docker.DOCKER_ERRORS):
            raise
        refused = _answer(exc)
        if refused.status == 404:
            raise cli.CommandError(
                f"you have no container named {name} (`ds01 container list`).", cli.EXIT_NO
            ) from None
        raise _fail(refused, f"cannot read container {name}") from None


def cmd_stop(ctx: cli.Context) -> int:
    name = ctx.args.name
    client = _client()
    try:
        attrs = _inspect_own(client, name)
        login, _home = _whoami()
        kind = (attrs["Config"].get("Labels") or {}).get(TYPE_LABEL) or "unknown"
        grace = ctx.config.resolve(login).governing(kind, "sigterm_grace_s")[0]
        try:
            client.api.stop(attrs["Id"], timeout=int(grace))
        except Exception as exc:  # narrowed below to Docker's transport errors
            if not isinstance(exc, docker.DOCKER_ERRORS):
                raise
            raise _fail(_answer(exc), f"container {name} could not be stopped") from None
    finally:
        client.close()
    sys.stdout.write(
        f"Container {name} is stopped. `docker start {name}` starts it again; "
        f"`ds01 container retire {name}` removes it (and frees any GPU it holds).\n"
    )
    return cli.EXIT_OK


def cmd_retire(ctx: cli.Context) -> int:
    name = ctx.args.name
    client = _client()
    try:
        attrs = _inspect_own(client, name)
        labels = attrs["Config"].get("Labels") or {}
        workspace = workspace_of(labels)
        slots = labels.get(docker.SLOTS_LABEL) or ""
        try:
            client.api.remove_container(attrs["Id"], force=True, v=True)
        except Exception as exc:  # narrowed below to Docker's transport errors
            if not isinstance(exc, docker.DOCKER_ERRORS):
                raise
            raise _fail(_answer(exc), f"container {name} could not be removed") from None
    finally:
        client.close()
    freed = f" GPU {slots} is free again." if slots else ""
    kept = f" Your workspace {workspace} is kept." if workspace else " Folders it mounted from your home are kept."
    sys.stdout.write(f"Container {name} and its anonymous volumes are removed.{freed}{kept}\n")
    return cli.EXIT_OK
