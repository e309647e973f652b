"""``ds01 doctor [--json]``: check the whole system at once and say what to do about each failure.

Checks, in order (each reads through the reader that owns its fact; nothing here talks to Docker except
through the ``docker`` package):

- ``config``: the configuration validates (``config.load_config``, what ``ds01 config check`` runs);
- ``gateway``: the gateway answers ``GET /_ping`` on ``gateway.listen``;
- ``gateway_socket``: that socket's mode (and group, for 0660) is what ``gateway.socket_mode`` says;
- ``daemon_socket``: the daemon's own socket (``gateway.upstream``) is hidden: root's, no access for other
  users, in a directory only root may change, and ``gateway.listen`` is not served by the daemon itself;
- ``detector``: the detector's inventory is fresh (``observe.readers.read_detector_inventory``);
- ``lifecycle``: the lifecycle timer ran within the last 15 minutes (``<state_dir>/lifecycle/last-run.json``);
- ``exporter``: ``GET /metrics`` on ``monitoring.exporter_bind:exporter_port`` answers with ds01's metrics;
- ``gpu``: NVML (or the fake topology) answers with the GPU inventory (``gpu.inventory_from_config``);
- ``slices``: every member has its slice unit, in ``/etc/systemd/system`` (the role's) or
  ``/run/systemd/system`` (``slice_keeper``'s); not applicable where systemd is not running;
- ``gpu_holders``: no container holds a GPU the inventory no longer has (``ContainerInfo.unknown_ids``);
- ``event_log``: the event log's directory and file can be appended to;
- ``event_chain``: the log's hash chain verifies (``cli.events.verify_report``).

JSON (stable, schema "1")::

    {"schema_version": "1", "ok": bool, "checks": [{"name", "ok", "message"}, ...]}

Exit 0 when every check passed, 1 when any failed, 3 when the system could not be checked (no config could be
read, not even the last good one). Run it as root: the daemon's socket and the event log are root's.
"""

from __future__ import annotations

import datetime as dt
import grp
import http.client
import os
import socket
import stat
import struct
import sys
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from .. import cli, events, gpu, logs, slice_keeper, slices
from .. import config as config_mod
from .. import docker as docker_mod
from .. import lifecycle as lc
from ..observe import readers
from ..record import asdict, record
from . import events as events_cli
from . import table

SCHEMA_VERSION = "1"
log = logs.get(__name__)
LIFECYCLE_STALE_S = 15 * 60.0  # the timer runs every 5 minutes: three missed runs
SOCKET_TIMEOUT_S = 5.0


@record(frozen=True)
class Check:
    name: str
    ok: bool
    message: str


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the whole system (config, gateway, daemon socket, detector, lifecycle, exporter, GPUs, "
        "slices, event log) and say what to do for each failure",
        description="Check the whole system and say what to do for each failure. Exit 0: all checks passed; "
        "1: a check failed; 3: the system could not be checked. Run it as root.",
    )
    cli.add_json_flag(parser)
    parser.set_defaults(func=cmd_doctor)


# -- decisions (pure: prepared inputs in, a Check out) ----------------------------------------------------


def decide_config(path: str, error: Optional[config_mod.ConfigError]) -> Check:
    if error is None:
        return Check("config", True, f"{path} is valid")
    first = error.problems[0].as_dict() if error.problems else {}
    where = f"{first.get('file')}" + (f" line {first['line']}" if first.get("line") else "")
    return Check(
        "config",
        False,
        f"{path} is invalid ({len(error.problems)} problem(s), first in {where}: {first.get('message')}); "
        "run `ds01 config check` to see them all, fix the files, and deploy again",
    )


def decide_gateway(listen: str, pinged: Optional[str]) -> Check:
    """``pinged``: None when the gateway answered 200, else what went wrong."""
    if pinged is None:
        return Check("gateway", True, f"the gateway answers on {listen}")
    return Check(
        "gateway",
        False,
        f"the gateway does not answer on {listen} ({pinged}); start it with `systemctl start ds01-gateway` "
        "and read `journalctl -u ds01-gateway` if it stops again",
    )


def decide_gateway_socket(listen: str, st: Optional[os.stat_result], want_mode: str, want_gid: Optional[int]) -> Check:
    if st is None:
        return Check(
            "gateway_socket", False, f"{listen} does not exist; start the gateway (`systemctl start ds01-gateway`)"
        )
    mode = stat.S_IMODE(st.st_mode)
    want = int(want_mode, 8)
    problems = []
    if not stat.S_ISSOCK(st.st_mode):
        problems.append("it is not a socket")
    if mode != want:
        problems.append(f"its mode is {mode:04o}, not {want_mode} (gateway.socket_mode)")
    if want != 0o666 and want_gid is not None and st.st_gid != want_gid:
        problems.append(f"its group is gid {st.st_gid}, not gateway.socket_group's gid {want_gid}")
    if problems:
        return Check(
            "gateway_socket",
            False,
            f"{listen}: {'; '.join(problems)}; restart the gateway (`systemctl restart ds01-gateway`), which sets "
            "them, and find what changed the socket",
        )
    return Check("gateway_socket", True, f"{listen} has mode {want_mode} as gateway.socket_mode says")


def decide_daemon_socket(
    upstream: str,
    st: Optional[os.stat_result],
    dir_st: Optional[os.stat_result],
    listen: str,
    same_as_listen: bool,
) -> Check:
    """``same_as_listen``: ``gateway.listen`` is the daemon's own socket (same inode, or the same process answers)."""
    fix = "; the daemon's socket must be root's alone (daemon.json `hosts`, re-run the ds01_gateway role)"
    if same_as_listen:
        return Check(
            "daemon_socket",
            False,
            f"{listen} is served by the Docker daemon itself, so users bypass the gateway; move the daemon to "
            f"{upstream} and run the gateway on {listen} (re-run the ds01_gateway role)",
        )
    if st is None:
        return Check(
            "daemon_socket",
            False,
            f"nothing at {upstream} (gateway.upstream): the daemon does not listen where the gateway forwards; "
            "check daemon.json `hosts` and `systemctl status docker`",
        )
    problems = []
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISSOCK(st.st_mode):
        problems.append("it is not a socket")
    if st.st_uid != 0:
        problems.append(f"it is owned by uid {st.st_uid}, not root")
    if mode & 0o007:
        problems.append(f"its mode {mode:04o} lets every user connect")
    elif mode & 0o070 and st.st_gid != 0:
        problems.append(f"its mode {mode:04o} lets group gid {st.st_gid} connect")
    if dir_st is not None:
        dir_mode = stat.S_IMODE(dir_st.st_mode)
        if dir_st.st_uid != 0 or dir_mode & 0o022:
            problems.append(
                f"its directory {os.path.dirname(upstream)} (uid {dir_st.st_uid}, mode {dir_mode:04o}) may be "
                "changed by users other than root"
            )
    if problems:
        return Check("daemon_socket", False, f"{upstream}: {'; '.join(problems)}{fix}")
    return Check("daemon_socket", True, f"{upstream} is root's only ({mode:04o}); users reach Docker via {listen}")


def decide_detector(path: str, doc: Any, stamp: Optional[float], now: float) -> Check:
    if doc is not None:
        return Check("detector", True, f"the detector's inventory is {max(0, int(now - float(stamp or now)))} s old")
    if stamp is None:
        what = f"{path} is missing or unreadable"
    else:
        what = f"{path} is {int(now - float(stamp))} s old (stale after {int(readers.FRESH_S)} s) or Docker failed it"
    return Check(
        "detector",
        False,
        f"{what}; check `systemctl status ds01-detector` and `journalctl -u ds01-detector`",
    )


def decide_lifecycle(path: str, last_run: Optional[float], now: float, max_age_s: float = LIFECYCLE_STALE_S) -> Check:
    fix = "check `systemctl list-timers ds01-lifecycle.timer` and `journalctl -u ds01-lifecycle`"
    if last_run is None:
        return Check("lifecycle", False, f"the lifecycle sweep never recorded a run ({path} missing); {fix}")
    age = now - last_run
    if age > max_age_s:
        return Check("lifecycle", False, f"the lifecycle sweep last ran {int(age // 60)} min ago; {fix}")
    return Check("lifecycle", True, f"the lifecycle sweep ran {max(0, int(age))} s ago")


def decide_exporter(url: str, status: Optional[int], body: str, error: Optional[str]) -> Check:
    fix = "check `systemctl status ds01-exporter` and `journalctl -u ds01-exporter`"
    if error is not None:
        return Check("exporter", False, f"the exporter does not answer on {url} ({error}); {fix}")
    if status != 200:
        return Check("exporter", False, f"the exporter answered {url} with HTTP {status}; {fix}")
    if "ds01_" not in body:
        return Check(
            "exporter", False, f"{url} answers, but without ds01 metrics (another program on the port?); {fix}"
        )
    return Check("exporter", True, f"the exporter answers on {url}")


def decide_gpu(inventory: Any, error: Optional[str]) -> Check:
    if error is not None:
        return Check(
            "gpu",
            False,
            f"the GPU inventory cannot be read ({error}); check `nvidia-smi` and the driver, or "
            "gpu_allocation.topology for the fake backend",
        )
    gpus = list(getattr(inventory, "gpus", ()) or ())
    source = str(getattr(inventory, "source", "") or "")
    backend = "NVML" if source == "nvml" else f"the GPU backend ({source or 'unknown'})"
    return Check("gpu", True, f"{backend} answers: {len(gpus)} GPU(s)")


def decide_slices(units: Mapping[str, str], present: Iterable[str], booted: bool) -> Check:
    """``units``: login → slice unit; ``present``: unit files found in the unit directories."""
    if not booted:
        return Check("slices", True, "systemd is not running on this host: no slices to check")
    have = set(present)
    missing = sorted(f"{login} ({unit})" for login, unit in units.items() if unit not in have)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return Check(
            "slices",
            False,
            f"{len(missing)} member(s) without a slice: {shown}; re-run the ds01_slices role (site.yml) "
            "so every member gets one",
        )
    return Check("slices", True, f"all {len(units)} member(s) have a slice")


def decide_gpu_holders(containers: Sequence[Any], error: Optional[str]) -> Check:
    if error is not None:
        return Check("gpu_holders", False, f"cannot list the containers ({error}); check `systemctl status docker`")
    lost = [c for c in containers if getattr(c, "unknown_ids", ())]
    if lost:
        shown = "; ".join(f"{c.name} ({c.owner or 'unknown owner'}) holds {', '.join(c.unknown_ids)}" for c in lost)
        return Check(
            "gpu_holders",
            False,
            f"{len(lost)} container(s) hold a GPU the inventory no longer has: {shown}; tell the owner, then "
            "remove the container (`docker rm`) or restore the GPU",
        )
    held = sum(1 for c in containers if getattr(c, "slots", ()))
    return Check(
        "gpu_holders", True, f"every GPU held by a container exists ({held} holding, {len(containers)} in all)"
    )


def decide_event_log(path: str, error: Optional[str]) -> Check:
    if error is not None:
        return Check(
            "event_log",
            False,
            f"{path} cannot be appended to ({error}); free space or fix the owner/mode (0640 root:<admin group>)",
        )
    return Check("event_log", True, f"{path} is writable")


def decide_event_chain(report: Optional[Mapping[str, Any]], error: Optional[str]) -> Check:
    if error is not None:
        return Check("event_chain", False, f"the event log cannot be read ({error}); run `ds01 doctor` as root")
    if report is not None and report.get("ok"):
        return Check("event_chain", True, str(report.get("message")))
    return Check(
        "event_chain",
        False,
        f"{(report or {}).get('message')}; keep a copy of the log as evidence, find out who changed it "
        "(`ds01 events verify` names the line), then start a new chain by rotating the log",
    )


# -- reading (I/O at the edge) ------------------------------------------------------------------------


def _stat(path: str) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None


def ping(path: str, timeout: float = SOCKET_TIMEOUT_S) -> tuple:
    """(None when ``GET /_ping`` on the Unix socket answered 200 else what went wrong, the answering pid or None)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            piece = sock.recv(4096)
            if not piece:
                break
            data += piece
    except OSError as exc:
        return exc.strerror or str(exc), None
    finally:
        sock.close()
    line = data.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    if line.startswith(("HTTP/1.1 200", "HTTP/1.0 200")):
        return None, pid
    return f"answered {line or 'nothing'!r}", pid


def _fetch_metrics(host: str, port: int) -> tuple:
    conn = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT_S)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        return response.status, response.read(1 << 22).decode("utf-8", "replace"), None
    except (OSError, http.client.HTTPException) as exc:
        return None, "", str(exc)
    finally:
        conn.close()


def _append_error(path: str) -> Optional[str]:
    """None when ``path`` can be opened for appending (nothing is written), else why not."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        vfs = os.fstatvfs(fd)
    finally:
        os.close(fd)
    if vfs.f_bavail == 0:
        return "the file system is full"
    return None


def _unit_files(directories: Iterable[str]) -> set:
    out: set = set()
    for directory in directories:
        try:
            out.update(name for name in os.listdir(directory) if name.endswith(".slice"))
        except OSError:
            continue
    return out


def _guard(name: str, func: Callable[[], Check]) -> Check:
    try:
        return func()
    except Exception as exc:
        log.debug("check %s failed", name, exc_info=True)
        return Check(name, False, f"the check itself failed ({type(exc).__name__}: {exc}); run with DS01_DEBUG=1")


def run_checks(
    config: config_mod.Config,
    config_error: Optional[config_mod.ConfigError],
    config_path: str,
    *,
    now: Optional[float] = None,
    unit_dirs: Sequence[str] = (slice_keeper.ETC_UNIT_DIR, slice_keeper.RUN_UNIT_DIR),
    booted: Optional[bool] = None,
) -> list:
    """Every check against ``config`` (the live one, or the last good one while ``config_error`` says why not)."""
    now = time.time() if now is None else now
    gw = config.section("gateway")
    listen, upstream = str(gw["listen"]), str(gw["upstream"])
    out = [decide_config(config_path, config_error)]

    pinged, listen_pid = ping(listen)
    out.append(decide_gateway(listen, pinged))

    def gateway_socket() -> Check:
        try:
            gid: Optional[int] = grp.getgrnam(str(gw["socket_group"])).gr_gid
        except KeyError:
            gid = None
        return decide_gateway_socket(listen, _stat(listen), str(gw["socket_mode"]), gid)

    out.append(_guard("gateway_socket", gateway_socket))

    def daemon_socket() -> Check:
        st, listen_st = _stat(upstream), _stat(listen)
        same = (
            st is not None and listen_st is not None and (st.st_dev, st.st_ino) == (listen_st.st_dev, listen_st.st_ino)
        )
        if not same and st is not None and listen_pid is not None:
            _answer, upstream_pid = ping(upstream)
            same = upstream_pid is not None and upstream_pid == listen_pid
        return decide_daemon_socket(upstream, st, _stat(os.path.dirname(upstream) or "/"), listen, same)

    out.append(_guard("daemon_socket", daemon_socket))

    def detector() -> Check:
        doc, stamp = readers.read_detector_inventory(config, now)
        return decide_detector(os.path.join(config.paths.state_dir, "workloads.json"), doc, stamp, now)

    out.append(_guard("detector", detector))

    def lifecycle() -> Check:
        path = os.path.join(config.paths.state_dir, lc.SUBDIR, lc.LAST_RUN_FILE)
        try:
            data = readers.read_json(path)
        except (OSError, ValueError):
            data = None
        value = data.get("last_run") if isinstance(data, dict) else None
        return decide_lifecycle(path, float(value) if isinstance(value, (int, float)) else None, now)

    out.append(_guard("lifecycle", lifecycle))

    def exporter() -> Check:
        section = config.section("monitoring")
        host = str(section.get("exporter_bind") or "127.0.0.1")
        wildcard = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - reached on loopback
        host = wildcard.get(host, host)
        port = int(section.get("exporter_port") or 9101)
        status, body, error = _fetch_metrics(host, port)
        return decide_exporter(f"http://{host}:{port}/metrics", status, body, error)

    out.append(_guard("exporter", exporter))

    inventory_box: list = [None]

    def gpu_check() -> Check:
        try:
            inventory_box[0] = gpu.inventory_from_config(config)
        except gpu.GpuInventoryError as exc:
            return decide_gpu(None, str(exc))
        return decide_gpu(inventory_box[0], None)

    out.append(_guard("gpu", gpu_check))

    def slice_check() -> Check:
        is_booted = os.path.isdir(slice_keeper.RUN_UNIT_DIR) if booted is None else booted
        units = {u.login: u.unit for u in slices.user_slices(config)}
        return decide_slices(units, _unit_files(unit_dirs) if is_booted else (), is_booted)

    out.append(_guard("slices", slice_check))

    def holders() -> Check:
        if inventory_box[0] is None:
            return Check("gpu_holders", False, "not checked: the GPU inventory cannot be read (see the gpu check)")
        client = docker_mod.Engine(upstream) if _stat(upstream) is not None else docker_mod.reader_from_env()
        try:
            containers = docker_mod.list_containers(client, inventory_box[0])
        except docker_mod.DockerStateError as exc:
            return decide_gpu_holders((), str(exc))
        return decide_gpu_holders(containers, None)

    out.append(_guard("gpu_holders", holders))

    log_path = events.default_log_path(config)
    out.append(_guard("event_log", lambda: decide_event_log(log_path, _append_error(log_path))))

    def chain() -> Check:
        try:
            report = events_cli.verify_report(config)
        except (OSError, EOFError, zlib.error) as exc:
            return decide_event_chain(None, str(exc))
        return decide_event_chain(report, None)

    out.append(_guard("event_chain", chain))
    return out


def render(data: Mapping[str, Any]) -> str:
    lines = table.lines(None, [("ok" if c["ok"] else "FAIL", c["name"], c["message"]) for c in data["checks"]])
    failed = sum(1 for c in data["checks"] if not c["ok"])
    lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)


def cmd_doctor(ctx: cli.Context) -> int:
    path = os.path.abspath(ctx.config_path)
    error: Optional[config_mod.ConfigError] = None
    try:
        config = config_mod.load_config(path)
    except config_mod.ConfigError as exc:
        error = exc
        config = config_mod.load_last_good(path)
        if config is None:
            check = decide_config(path, exc)
            data = {"schema_version": SCHEMA_VERSION, "ok": False, "checks": [asdict(check)]}
            ctx.emit(data, render)
            sys.stderr.write(
                "ds01: no configuration could be read (not even the last good one): nothing else was checked\n"
            )
            return cli.EXIT_FAULT
    checks = run_checks(config, error, path, now=dt.datetime.now(dt.timezone.utc).timestamp())
    data = {
        "schema_version": SCHEMA_VERSION,
        "ok": all(c.ok for c in checks),
        "checks": [asdict(c) for c in checks],
    }
    ctx.emit(data, render)
    return cli.EXIT_OK if data["ok"] else cli.EXIT_NO
