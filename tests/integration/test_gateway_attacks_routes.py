"""The gateway's adversarial corpus, second half: routes, paths, queries, owners of networks and tags,
update clamps, counts, names, legacy owners, admin GPUs and connections (docs: /work/notes/policy.md
C4, C6, C7, C8, C9).

Every vector is a row of a table and is judged by its EFFECT, never by the HTTP status alone: root
reads what the daemon stored on the real socket (the victim's container, network, volume and image
tag are still there and unchanged), a loopback TCP canary on 127.0.0.1 counted no connection, the
victim's own listener (inside the victim's network namespace) counted none, nothing was written where
it must not be, and the bytes the attacker got back hold none of the victim's secrets or ids.

Users (tests/integration/gwharness.py): ``atk1`` attacks, ``atk2`` is the victim, ``atkadm`` is an admin.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import select
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import gwharness
import pytest
from gwharness import ADMIN, API, ATTACKER, EMPTY_IMAGE, IMAGE, VICTIM, Harness, as_user, message_of

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

VICTIM_PORT = 7777  # the victim's listener, inside the victim container's own network namespace
LIMIT_PIDS = 300  # the student group's limits in gwharness.LIMITS
LIMIT_MEMORY = 2 << 30
LIMIT_SWAP = 3 << 30
LIMIT_CPUS = 1.5
ATTACKER_MAX_CONTAINERS = 3

# The victim's container: prints and stores its secret, then counts connections to 127.0.0.1:7777.
LISTENER = (
    "import socket,sys\n"
    "s=sys.argv[2]\n"
    "print(s,flush=True)\n"
    "open('/tmp/secret','w').write(s)\n"
    "l=socket.socket()\n"
    "l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    f"l.bind(('127.0.0.1',{VICTIM_PORT}))\n"
    "l.listen(50)\n"
    "while True:\n"
    "    c,_=l.accept()\n"
    "    open('/tmp/hits','a').write('x')\n"
    "    c.close()\n"
)


# ---------------------------------------------------------------------------------------------
# evidence that is not in the shared harness


class TcpCanary:
    """A listener on 127.0.0.1:<port> that counts every connection it accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.hits += 1
            conn.close()

    def count(self) -> int:
        time.sleep(0.3)  # a connection the daemon made while answering is accepted by now
        return self.hits

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def snapshot(h: Harness, ref: str) -> Optional[dict]:
    """What must not change about a container: id, name, labels, HostConfig, run state, networks."""
    info = h.stored(ref)
    if info is None:
        return None
    state = info["State"]
    return {
        "Id": info["Id"],
        "Name": info["Name"],
        "Labels": info["Config"].get("Labels") or {},
        "HostConfig": info["HostConfig"],
        "Running": state["Running"],
        "Paused": state["Paused"],
        "StartedAt": state["StartedAt"],
        "FinishedAt": state["FinishedAt"],
        "ExitCode": state["ExitCode"],
        "Networks": sorted((info.get("NetworkSettings") or {}).get("Networks") or {}),
    }


def image_id(h: Harness, ref: str) -> Optional[str]:
    import docker

    try:
        return h.client.api.inspect_image(ref)["Id"]
    except docker.errors.NotFound:
        return None


def root_exec(h: Harness, container: str, cmd: str) -> str:
    exec_id = h.client.api.exec_create(container, ["sh", "-c", cmd])["Id"]
    return h.client.api.exec_start(exec_id).decode(errors="replace")


def context_tar(dockerfile: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def file_tar(name: str, content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def exchange(user: str, path: str, data: bytes, timeout: float = 10, half_close: bool = False) -> tuple[bytes, bool]:
    """Send ``data`` as ``user`` to the Unix socket ``path``; (everything read, whether the peer closed)."""

    def go() -> bytes:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = bytearray()
        eof = False
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                break
            except ConnectionResetError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            out += chunk
        sock.close()
        return json.dumps({"eof": eof, "data": out.hex()}).encode()

    doc = json.loads(as_user(user, go, timeout=timeout + 20))
    return bytes.fromhex(doc["data"]), doc["eof"]


def id_pieces(text: str, full_id: str) -> list[str]:
    """Every 12+ hex-digit run in ``text`` that holds 12 consecutive digits of ``full_id``."""
    found = []
    for run in re.findall(r"[0-9a-fA-F]{12,}", text):
        low = run.lower()
        if any(low[i : i + 12] in full_id for i in range(len(low) - 11)):
            found.append(run)
    return found


# ---------------------------------------------------------------------------------------------
# the world: the victim's things, the attacker's own things, an admin-made tag


@dataclass
class World:
    h: Harness
    tag: str  # value of the ds01.routes label on everything made here (prune filters stay on it)
    secret: str
    marker: str
    names: dict = field(default_factory=dict)
    ids: dict = field(default_factory=dict)
    snaps: dict = field(default_factory=dict)
    slice: str = ""

    # -- making -------------------------------------------------------------------------------
    def ok(self, user: str, *args: str, input: Optional[str] = None, **kw: Any) -> str:
        for _unused in range(60):  # another session on this engine may hold the attacker's quota for a moment
            proc = self.h.cli(user, *args, input=input, **kw)
            if "CONTAINER_LIMIT" not in proc.stderr:
                break
            time.sleep(1)
        assert proc.returncode == 0, f"setup: {user}: docker {' '.join(args)} failed:\n{proc.stderr}"
        return proc.stdout

    def label_args(self) -> list:
        return ["--label", f"ds01.routes={self.tag}"]

    def make_vic(self) -> None:
        self.ok(
            VICTIM,
            "run",
            "-d",
            "--name",
            self.names["vic"],
            "--network",
            "none",
            IMAGE,
            "python3",
            "-c",
            LISTENER,
            self.marker,
            self.secret,
        )
        for _unused in range(50):  # the listener is bound once /tmp/secret exists
            if "ok" in root_exec(self.h, self.names["vic"], "test -e /tmp/secret && echo ok"):
                break
            time.sleep(0.1)

    def make_vstop(self) -> None:
        proc = self.h.cli(
            VICTIM,
            "run",
            "--name",
            self.names["vstop"],
            *self.label_args(),
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            f"echo {self.secret}; exit 42",
        )
        assert proc.returncode == 42, f"setup: the victim's exiting container did not exit 42: {proc.stderr}"

    def make_vnet(self) -> None:
        self.ok(VICTIM, "network", "create", "--internal", "--label", f"ds01.routes={self.tag}", self.names["vnet"])

    def make_vnetc(self) -> None:
        self.ok(
            VICTIM, "create", "--name", self.names["vnetc"], *self.label_args(), "--network", self.names["vnet"], IMAGE
        )

    def make_vvol(self) -> None:
        self.ok(VICTIM, "volume", "create", "--label", f"ds01.routes={self.tag}", self.names["vvol"])

    def make_taken(self) -> None:
        self.ok(VICTIM, "create", "--name", self.names["taken"], *self.label_args(), "--network", "none", IMAGE)

    def make_vimg(self) -> None:
        dockerfile = f"FROM {EMPTY_IMAGE}\nLABEL ds01.routes={self.tag} ds01.routes.who=victim-{uuid.uuid4().hex}\n"
        self.ok(
            VICTIM,
            "build",
            "--network",
            "none",
            "-t",
            self.names["vimg"],
            "-",
            input=dockerfile,
            timeout=120,
            env={"DOCKER_BUILDKIT": "0"},
        )

    def make(self) -> None:
        h = self.h
        self.make_vic()
        self.make_vstop()
        self.make_vnet()
        self.make_vnetc()
        self.make_vvol()
        self.make_taken()
        self.make_vimg()
        self.new_exec()
        # the attacker's own things
        self.ok(ATTACKER, "network", "create", "--internal", self.names["anet"])
        self.ok(ATTACKER, "create", "--name", self.names["an"], "--network", self.names["anet"], IMAGE)
        dockerfile = f"FROM {EMPTY_IMAGE}\nLABEL ds01.routes.who=attacker-{uuid.uuid4().hex}\n"
        self.ok(
            ATTACKER,
            "build",
            "--network",
            "none",
            "-t",
            self.names["aimg"],
            "-",
            input=dockerfile,
            timeout=120,
            env={"DOCKER_BUILDKIT": "0"},
        )
        # a tag that existed before anyone's request (made by root): read-only to users
        repo, _unused, version = self.names["pre"].partition(":")
        h.client.api.tag(EMPTY_IMAGE, repo, version)
        self.refresh()
        self.slice = self.snaps["an"]["HostConfig"]["CgroupParent"]

    def new_exec(self) -> None:
        """The victim's pending exec: writes a file if anyone starts it."""
        self.ids["vexec"] = self.h.client.api.exec_create(
            self.names["vic"], ["sh", "-c", f"echo ran > /tmp/exec-ran-{self.tag}"]
        )["Id"]

    def refresh(self) -> None:
        h = self.h
        for key in ("vic", "vstop", "vnetc", "taken", "an"):
            self.snaps[key] = snapshot(h, self.names[key])
            self.ids[key] = self.snaps[key]["Id"]
        for key in ("vnet", "anet"):
            self.ids[key] = h.network(self.names[key])["Id"]
        for key in ("vimg", "aimg", "pre"):
            self.ids[key] = image_id(h, self.names[key])
        self.snaps["vnet"] = self.net_snap()
        self.snaps["vvol"] = h.volume(self.names["vvol"])

    def net_snap(self) -> Optional[dict]:
        net = self.h.network(self.names["vnet"])
        if net is None:
            return None
        return {"Id": net["Id"], "Labels": net.get("Labels") or {}, "Containers": sorted(net.get("Containers") or {})}

    # -- repairing between vectors (a vector that broke something fails alone) -----------------
    def ensure(self) -> None:
        import docker

        h, client = self.h, self.h.client
        changed = False
        for key, maker in (
            ("vic", self.make_vic),
            ("vstop", self.make_vstop),
            ("vnetc", None),
            ("taken", self.make_taken),
        ):
            info = h.stored(self.ids[key])
            if info is None:
                if key == "vnetc":
                    if h.network(self.names["vnet"]) is None:
                        self.make_vnet()
                    self.make_vnetc()
                else:
                    maker()
                changed = True
                continue
            if info["Name"] != "/" + self.names[key]:
                client.api.rename(info["Id"], self.names[key])
                changed = True
            if info["State"]["Paused"]:
                client.api.unpause(info["Id"])
                changed = True
            if key == "vic" and not info["State"]["Running"]:
                client.api.start(info["Id"])
                time.sleep(0.5)
                changed = True
        if h.network(self.names["vnet"]) is None:
            self.make_vnet()
            h.remove(self.ids["vnetc"])
            self.make_vnetc()
            changed = True
        vnet = self.names["vnet"]
        nets = (h.stored(self.names["vnetc"]) or {}).get("NetworkSettings", {}).get("Networks") or {}
        if vnet not in nets:
            client.api.connect_container_to_network(self.names["vnetc"], vnet)
            changed = True
        an = h.stored(self.ids["an"])
        if an is not None and vnet in ((an.get("NetworkSettings") or {}).get("Networks") or {}):
            client.api.disconnect_container_from_network(an["Id"], vnet, force=True)
        try:
            pending = client.api.exec_inspect(self.ids["vexec"])["ExitCode"] is None
        except docker.errors.NotFound:
            pending = False
        if (
            not pending
            or client.api.exec_inspect(self.ids["vexec"])["ContainerID"] != h.stored(self.names["vic"])["Id"]
        ):
            self.new_exec()
        if h.volume(self.names["vvol"]) is None:
            self.make_vvol()
            changed = True
        for key in ("vimg", "pre"):
            if image_id(h, self.names[key]) != self.ids[key]:
                repo, _unused, version = self.names[key].partition(":")
                if image_id(h, self.ids[key]) is not None:
                    client.api.tag(self.ids[key], repo, version, force=True)
                else:
                    self.make_vimg()
                changed = True
        if h.stored(self.ids["an"]) is None:
            self.ok(ATTACKER, "create", "--name", self.names["an"], "--network", self.names["anet"], IMAGE)
            changed = True
        current = {k: snapshot(h, self.ids[k]) for k in ("vic", "vstop", "vnetc", "taken")}
        if changed or any(current[k] != self.snaps[k] for k in current) or self.net_snap() != self.snaps["vnet"]:
            self.refresh()

    # -- judging ------------------------------------------------------------------------------
    def victim_hits(self) -> int:
        return len(root_exec(self.h, self.ids["vic"], "cat /tmp/hits 2>/dev/null").strip())

    def assert_intact(
        self, answer: bytes = b"", headers: Optional[dict] = None, files: bool = False, sent: str = ""
    ) -> None:
        """The victim's things exist unchanged, and ``answer`` carries none of the victim's secrets, nor an
        id of the victim's that the attacker did not send (``sent``: the request, echoed ids are no leak)."""
        h = self.h
        text = answer.decode(errors="replace")
        leaked = [
            what
            for what, value in (
                ("the victim container's secret", self.secret),
                ("the victim container's command line", self.marker),
                ("the victim container's id", self.ids["vic"]),
                ("the victim's stopped container's id", self.ids["vstop"]),
                ("the victim's exit code", '"StatusCode":42'),
                ("the victim container's resource usage", '"cpu_stats"'),
                ("the victim container's file changes", '"Path":"/tmp/secret"'),
            )
            if value in text.replace(" ", "") and value not in sent
        ]
        assert not leaked, f"the attacker received {', '.join(leaked)}: {text[:400]!r}"
        if headers:
            assert "x-docker-container-path-stat" not in headers, (
                "the attacker received the stat of a path in the victim's container: "
                + base64.b64decode(headers["x-docker-container-path-stat"]).decode(errors="replace")
            )
        for key in ("vic", "vstop", "vnetc", "taken"):
            now = snapshot(h, self.ids[key])
            assert now is not None, f"the victim's container {self.names[key]} was removed"
            before = self.snaps[key]
            changed = sorted(k for k in before if before[k] != now[k])
            assert not changed, f"the victim's container {self.names[key]} changed: " + "; ".join(
                f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed
            )
        assert self.net_snap() == self.snaps["vnet"], (
            f"the victim's network changed: {self.snaps['vnet']} -> {self.net_snap()}"
        )
        assert h.volume(self.names["vvol"]) is not None, "the victim's volume was removed"
        assert image_id(h, self.names["vimg"]) == self.ids["vimg"], (
            f"the victim's tag {self.names['vimg']} now names {image_id(h, self.names['vimg'])}, "
            f"not the victim's image {self.ids['vimg']}"
        )
        assert image_id(h, self.names["pre"]) == self.ids["pre"], (
            f"the pre-existing tag {self.names['pre']} now names {image_id(h, self.names['pre'])}"
        )
        if files:
            planted = f"/tmp/pwned-{self.tag} /tmp/exec-ran-{self.tag} /tmp/atk-{self.tag}"
            found = root_exec(h, self.ids["vic"], f"ls {planted} 2>/dev/null").strip()
            if found:
                root_exec(h, self.ids["vic"], f"rm -f {planted}")
            assert not found, f"the attacker wrote into the victim's container: {found}"

    def refs(self, port: int = 0) -> dict:
        n, i = self.names, self.ids
        return {
            "api": API,
            "vid": i["vic"],
            "vid12": i["vic"][:12],
            "vname": n["vic"],
            "sid": i["vstop"],
            "sname": n["vstop"],
            "eid": i["vexec"],
            "aid": i["an"],
            "aname": n["an"],
            "vnet": n["vnet"],
            "vnetid": i["vnet"],
            "vvol": n["vvol"],
            "anet": n["anet"],
            "vimg": n["vimg"],
            "vimgrepo": n["vimg"].partition(":")[0],
            "vimgid": i["vimg"],
            "aimg": n["aimg"],
            "aimgrepo": n["aimg"].partition(":")[0],
            "pre": n["pre"],
            "prerepo": n["pre"].partition(":")[0],
            "prefix": self.h.prefix,
            "tag": self.tag,
            "port": port,
            "vlabel": quote(json.dumps({"label": [f"ds01.routes={self.tag}"]})),
            "vimglabel": quote(json.dumps({"dangling": ["false"], "label": [f"ds01.routes={self.tag}"]})),
        }


@pytest.fixture(scope="module")
def world(attack_gw: Harness) -> Iterator[World]:
    h = attack_gw
    tag = uuid.uuid4().hex[:10]
    w = World(h, tag, secret=f"victim-secret-{uuid.uuid4().hex}", marker=f"secret-marker-{uuid.uuid4().hex[:12]}")
    w.names = {
        "vic": h.name("vic"),
        "vstop": h.name("vstop"),
        "vnet": h.name("vnet"),
        "vnetc": h.name("vnetc"),
        "vvol": h.name("vvol"),
        "taken": h.name("taken"),
        "vimg": h.tag(VICTIM, "vimg"),
        "anet": h.name("anet"),
        "an": h.name("an"),
        "aimg": h.tag(ATTACKER, "aimg"),
        "pre": h.name("pre") + ":1",
    }
    w.make()
    yield w
    # the attacker's and the victim's containers count against their limits in the modules after this one
    h.remove(*(w.names[key] for key in ("vic", "vstop", "vnetc", "taken", "an")))
    for key in ("vnet", "anet"):
        with contextlib.suppress(Exception):
            h.client.api.remove_network(w.names[key])


@pytest.fixture
def canary():
    c = TcpCanary()
    yield c
    c.close()


@pytest.fixture
def fresh(world: World) -> World:
    world.ensure()
    return world


def own_container(h: Harness, body_extra: Optional[dict] = None, start: bool = False) -> str:
    """A container of the attacker's, created through the gateway (the attacker keeps at most 3).

    Other sessions on this engine may hold the attacker's quota for a moment: wait for it (bounded).
    """
    body = {"Image": IMAGE, "Cmd": ["sleep", "infinity"], "HostConfig": {"NetworkMode": "none"}}
    body.update(body_extra or {})
    for _unused in range(60):
        name, status, answer = h.create(ATTACKER, body)
        if b"CONTAINER_LIMIT" not in answer:
            break
        time.sleep(1)
    assert 200 <= status < 300, f"setup: the attacker's own plain create failed: {status} {answer[:300]!r}"
    if start:
        proc = h.cli(ATTACKER, "start", name)
        assert proc.returncode == 0, f"setup: the attacker could not start their own container: {proc.stderr}"
    return name


# ---------------------------------------------------------------------------------------------
# C4: API versions. The daemon applies a start body's HostConfig for versions below 1.24.

HOST_BIND = ["/:/h"]

APIVERSION = [
    # (id, target version prefix, body, extra headers)
    ("v1.23-start-privileged-binds", "/v1.23", {"Privileged": True, "Binds": HOST_BIND}, None),
    ("v1.12-start-binds", "/v1.12", {"Binds": HOST_BIND}, None),
    ("v1.023-start-binds", "/v1.023", {"Binds": HOST_BIND}, None),
    ("v1.23-start-binds-chunked", "/v1.23", {"Binds": HOST_BIND}, {"Transfer-Encoding": "chunked"}),
    ("v1.23-start-binds-no-content-type", "/v1.23", {"Binds": HOST_BIND}, {"Content-Type": None}),
    ("V1.23-uppercase-start-binds", "/V1.23", {"Binds": HOST_BIND}, None),
    ("V1.41-uppercase-start-binds", "/V1.41", {"Binds": HOST_BIND}, None),
    ("v1.24-start-with-body", "/v1.24", {"Binds": HOST_BIND}, None),
    ("no-version-start-with-body", "", {"Binds": HOST_BIND}, None),
]


def _chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize(("vid", "prefix", "body", "headers"), APIVERSION, ids=[r[0] for r in APIVERSION])
def test_c4_start_body_never_changes_the_container(attack_gw, vid, prefix, body, headers):
    h = attack_gw
    name = own_container(h)
    try:
        before = h.stored(name)["HostConfig"]
        payload = json.dumps(body).encode()
        hdrs = dict(headers or {})
        if hdrs.get("Transfer-Encoding") == "chunked":
            hdrs["Content-Length"] = None
            payload = _chunked(payload)
        h.raw(ATTACKER, "POST", f"{prefix}/containers/{name}/start", payload, headers=hdrs)
        info = h.stored(name)
        host = info["HostConfig"]
        assert not host.get("Privileged"), f"{vid}: the start body made the container privileged"
        assert "/:/h" not in (host.get("Binds") or []), f"{vid}: the start body bound / into the container"
        assert host.get("Binds") == before.get("Binds"), f"{vid}: Binds changed at start: {host.get('Binds')}"
        if info["State"]["Running"]:
            seen = root_exec(h, info["Id"], "ls /h/etc/shadow /h/root 2>/dev/null")
            assert not seen.strip(), f"{vid}: the container sees the host's root: {seen}"
    finally:
        h.remove(name)


def test_c4_v1_24_is_allowed_and_starts_the_container(attack_gw):
    """The 1.24 boundary: a plain start (no body) through /v1.24 runs the caller's own container."""
    h = attack_gw
    name = own_container(h)
    try:
        h.raw(ATTACKER, "POST", f"/v1.24/containers/{name}/start")
        assert h.stored(name)["State"]["Running"], "a /v1.24 start of the caller's own container did not run it"
    finally:
        h.remove(name)


@pytest.mark.parametrize("prefix", ["/v1.23", "/v1.12", "/v1.023"])
def test_c4_versions_below_1_24_create_nothing(attack_gw, prefix):
    h = attack_gw
    name = h.name("oldapi")
    body = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}
    try:
        h.raw(ATTACKER, "POST", f"{prefix}/containers/create?name={name}", body)
        assert h.stored(name) is None, f"API version {prefix} below 1.24 created a container"
    finally:
        h.remove(name)


# ---------------------------------------------------------------------------------------------
# C4: /grpc (BuildKit's control API: solves with network.host) refused; what reached the daemon?

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

GRPC = [
    ("grpc", "POST /grpc", {"Upgrade": "h2c", "Connection": "Upgrade"}),
    ("v1.41-grpc", f"POST {API}/grpc", {"Upgrade": "h2c", "Connection": "Upgrade"}),
    ("v1.24-grpc", "POST /v1.24/grpc", {"Upgrade": "h2c", "Connection": "Upgrade"}),
    ("grpc-query", "POST /grpc?x=1", {"Upgrade": "h2c", "Connection": "Upgrade"}),
    ("grpc-percent-encoded", "POST /%67rpc", {"Upgrade": "h2c", "Connection": "Upgrade"}),
    ("grpc-dotdot", f"POST {API}/../grpc", {"Upgrade": "h2c", "Connection": "Upgrade"}),
    ("grpc-http2-settings", "POST /grpc", {"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings"}),
]


def _daemon_spoke_h2(data: bytes) -> bool:
    """A 101 followed by an HTTP/2 frame: BuildKit's gRPC server answered the caller."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 101"):
        return False
    return len(rest) >= 9 and rest[3] in (0x04, 0x07, 0x08)  # SETTINGS, GOAWAY, WINDOW_UPDATE


@pytest.mark.parametrize(("vid", "line", "headers"), GRPC, ids=[r[0] for r in GRPC])
def test_c4_grpc_is_refused_for_users(attack_gw, vid, line, headers):
    h = attack_gw
    head = f"{line} HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if "HTTP2-Settings" in headers["Connection"]:
        head += "HTTP2-Settings: AAMAAABkAAQAAP__\r\n"
    data = h.raw_bytes(ATTACKER, head.encode() + b"\r\n" + H2_PREFACE, timeout=3, half_close=False)
    assert not _daemon_spoke_h2(data), f"{vid}: the daemon's BuildKit gRPC server answered the user: {data[:200]!r}"
    if vid in ("grpc", "v1.41-grpc"):
        text = data.decode(errors="replace")
        assert "DOCKER_BUILDKIT=0" in text and "classic builder" in text, (
            f"{vid}: the refusal does not say how to build instead: {text[:400]!r}"
        )


# ---------------------------------------------------------------------------------------------
# C4: build parameters

BUILD_EFFECT_DOCKERFILE = (
    "FROM {image}\n"
    "RUN echo {nonce}; "
    "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\"; "
    "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {vport}), 2)\"; "
    "cat /proc/self/cgroup > /cg; true\n"
)

BUILD = [
    # (id, query (raw, appended), how: "tar" | "none" | "form:<body>", must_not_build)
    ("networkmode-host", "networkmode=host", "tar", False),
    ("networkmode-container-victim-id", "networkmode=container:{vid}", "tar", False),
    ("networkmode-container-victim-name", "networkmode=container:{vname}", "tar", False),
    ("networkmode-dup-none-then-host", "networkmode=none&networkmode=host", "tar", False),
    ("networkmode-dup-host-then-none", "networkmode=host&networkmode=none", "tar", False),
    ("networkmode-percent-encoded-name", "network%6Dode=host", "tar", False),
    ("networkmode-percent-encoded-value", "networkmode=%68ost", "tar", False),
    ("networkmode-semicolon", "networkmode=none;networkmode=host", "tar", False),
    ("remote-loopback", "remote=http://127.0.0.1:{port}/", "none", True),
    ("remote-percent-encoded-name", "re%6Dote=http://127.0.0.1:{port}/", "none", True),
    ("remote-in-form-body", "networkmode=none", "form:remote=http://127.0.0.1:{port}/", True),
    ("remote-git-loopback", "remote=git://127.0.0.1:{port}/x.git", "none", True),
    ("cgroupparent-root", "networkmode=none&cgroupparent=/", "tar", False),
    ("cgroupparent-victim-slice", "networkmode=none&cgroupparent={vslice}", "tar", False),
    ("cgroupparent-percent-encoded-name", "networkmode=none&cgroup%70arent=/", "tar", False),
    ("outputs-local-host-path", "networkmode=none&outputs={outputs}", "tar", False),
    ("outputs-buildkit-host-path", "networkmode=none&version=2&outputs={outputs}", "tar", False),
    ("unknown-parameter", "networkmode=none&foo=bar", "tar", True),
    ("unknown-parameter-case", "NetworkMode=host", "tar", True),
    ("buildkit-without-session-host", "version=2&networkmode=host", "tar", False),
]


def _build_request(w: World, vid: str, query: str, how: str, port: int, tag: str, outputs_dir: str):
    refs = w.refs(port)
    vslice = w.slice.replace(ATTACKER, VICTIM)
    outputs = quote(json.dumps([{"Type": "local", "Attrs": {"dest": outputs_dir}}]))
    query = query.format(**refs, vslice=vslice, outputs=outputs)
    target = f"{API}/build?t={tag}&q=1&rm=1&forcerm=1" + (f"&{query}" if query else "")
    dockerfile = BUILD_EFFECT_DOCKERFILE.format(image=IMAGE, nonce=uuid.uuid4().hex, port=port, vport=VICTIM_PORT)
    if how == "tar":
        return target, context_tar(dockerfile), {"Content-Type": "application/x-tar"}
    if how == "none":
        return target, b"", {"Content-Type": None, "Content-Length": "0"}
    # "form:<body>": dockerd peeks the first 4 KiB of a build body before it parses the form, so
    # padding puts the smuggled parameter where Go's ParseForm reads it.
    rest = how.partition(":")[2].format(**refs)
    return target, f"pad={'a' * 8192}&{rest}".encode(), {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(("vid", "query", "how", "must_not_build"), BUILD, ids=[r[0] for r in BUILD])
def test_c4_build_parameters(fresh, canary, vid, query, how, must_not_build):
    w, h = fresh, fresh.h
    tag = h.tag(ATTACKER, "b")
    outputs_dir = f"/tmp/{h.prefix}out-{uuid.uuid4().hex[:6]}"
    hits_before = w.victim_hits()
    target, body, headers = _build_request(w, vid, query, how, canary.port, tag, outputs_dir)
    try:
        _status, _h, answer = h.raw(ATTACKER, "POST", target, body, headers=headers, timeout=90)
        assert canary.count() == 0, f"{vid}: the build reached the loopback canary 127.0.0.1:{canary.port}"
        assert w.victim_hits() == hits_before, f"{vid}: the build joined the victim container's network namespace"
        assert not os.path.exists(outputs_dir), f"{vid}: the build wrote {outputs_dir} on the host"
        built = image_id(h, tag)
        if must_not_build:
            assert built is None, f"{vid}: the build ran and tagged {tag}: {answer[-300:]!r}"
        if built is not None:
            cg = h.client.containers.run(tag, ["cat", "/cg"], remove=True, network_mode="none").decode()
            assert w.slice in cg, f"{vid}: the build's RUN step was not in the caller's slice {w.slice}: {cg}"
        w.assert_intact()
    finally:
        shutil.rmtree(outputs_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            h.client.api.remove_image(tag, force=True)


def test_c4_classic_build_still_works(attack_gw):
    h = attack_gw
    tag = h.tag(ATTACKER, "classic")
    ctx = h.scratch(ATTACKER)
    (ctx / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN echo {uuid.uuid4().hex} > /built\n")
    proc = h.cli(ATTACKER, "build", "--network", "none", "-t", tag, str(ctx), env={"DOCKER_BUILDKIT": "0"})
    assert proc.returncode == 0, proc.stderr
    assert image_id(h, tag) is not None, "a classic build through the gateway tagged nothing"


def test_c4_buildkit_is_refused_saying_how_to_build(attack_gw):
    """BuildKit (/session + version=2) is refused for users: its Dockerfile travels inside the session,
    where the gateway cannot check what it makes the daemon fetch (round-2 attack: ADD <url>), and its
    steps run outside the user's slice. Nothing is built, and the sentence names the classic builder."""
    h = attack_gw
    tag = h.tag(ATTACKER, "bk")
    ctx = h.scratch(ATTACKER)
    (ctx / "Dockerfile").write_text(f"FROM {IMAGE}\nCOPY payload /payload\nRUN test -s /payload\n")
    (ctx / "payload").write_text(uuid.uuid4().hex)
    os.chown(ctx / "Dockerfile", h.uid(ATTACKER), h.gid(ATTACKER))
    os.chown(ctx / "payload", h.uid(ATTACKER), h.gid(ATTACKER))
    proc = h.cli(ATTACKER, "build", "--network", "none", "-t", tag, str(ctx), env={"DOCKER_BUILDKIT": "1"}, debian=True)
    assert proc.returncode != 0
    assert image_id(h, tag) is None, "a BuildKit build through the gateway tagged an image"
    assert "DOCKER_BUILDKIT=0" in proc.stderr, proc.stderr


DOCKERFILE_FETCHES = [
    # (id, Dockerfile with {image} {port})
    ("add-url", "FROM {image}\nADD http://127.0.0.1:{port}/token /token\n"),
    ("add-url-json", 'FROM {image}\nADD ["http://127.0.0.1:{port}/t", "/t"]\n'),
    ("add-url-arg", "FROM {image}\nARG U=http://127.0.0.1:{port}/t\nADD $U /t\n"),
    ("add-url-continued", "FROM {image}\nADD \\\n  http://127.0.0.1:{port}/t \\\n  /t\n"),
    ("add-url-escape-directive", "# escape=`\nFROM {image}\nADD `\n  http://127.0.0.1:{port}/t /t\n"),
    ("add-url-lowercase", "from {image}\nadd http://127.0.0.1:{port}/t /t\n"),
    ("from-loopback-registry", "FROM 127.0.0.1:{port}/x:1\n"),
    ("from-localhost-registry", "FROM localhost:{port}/x:1\n"),
    ("copy-from-loopback-registry", "FROM {image}\nCOPY --from=127.0.0.1:{port}/x:1 /a /a\n"),
    ("onbuild-add-url", "FROM {image}\nONBUILD ADD http://127.0.0.1:{port}/t /t\n"),
]


@pytest.mark.parametrize(("vid", "text"), DOCKERFILE_FETCHES, ids=[r[0] for r in DOCKERFILE_FETCHES])
def test_c4_a_dockerfile_never_makes_the_daemon_fetch_from_the_host(attack_gw, canary, vid, text):
    h = attack_gw
    tag = h.tag(ATTACKER, "df")
    body = context_tar(text.format(image=IMAGE, port=canary.port))
    status, _h, answer = h.raw(
        ATTACKER, "POST", f"{API}/build?t={tag}&networkmode=none", body, headers={"Content-Type": "application/x-tar"}
    )
    assert canary.count() == 0, f"{vid}: the daemon connected to the loopback canary 127.0.0.1:{canary.port}"
    assert image_id(h, tag) is None, f"{vid}: the build ran: {answer[-300:]!r}"
    assert status == 403 and b"line" in answer, (status, answer[:300])


def test_c4_commit_changes_cannot_plant_an_onbuild_fetch(attack_gw, canary):
    h = attack_gw
    box = own_container(h)
    tag = h.tag(ATTACKER, "cm")
    repo, _sep, ver = tag.partition(":")
    change = quote(f"ONBUILD ADD http://127.0.0.1:{canary.port}/t /t")
    status, _h, answer = h.api(ATTACKER, "POST", f"/commit?container={box}&repo={repo}&tag={ver}&changes={change}", b"")
    assert image_id(h, tag) is None, (status, answer[:300])
    assert canary.count() == 0


# ---------------------------------------------------------------------------------------------
# C4: images/create fromSrc=<URL> (the daemon downloads it as root)

IMAGES_CREATE = [
    # (id, query, form body or None)
    ("fromSrc-http-loopback", "fromSrc=http://127.0.0.1:{port}/x", None),
    ("fromSrc-localhost", "fromSrc=http://localhost:{port}/x", None),
    ("fromSrc-uppercase-scheme", "fromSrc=HTTP://127.0.0.1:{port}/x", None),
    ("fromSrc-no-scheme", "fromSrc=127.0.0.1:{port}/x", None),
    ("fromSrc-percent-encoded-name", "from%53rc=http://127.0.0.1:{port}/x", None),
    ("fromSrc-dup-url-then-dash", "fromSrc=http://127.0.0.1:{port}/x&fromSrc=-", None),
    ("fromSrc-empty-fromImage", "fromImage=&fromSrc=http://127.0.0.1:{port}/x", None),
    ("fromSrc-in-form-body", "", "fromSrc=http://127.0.0.1:{port}/x"),
    ("fromImage-loopback-registry", "fromImage=127.0.0.1:{port}/x&tag=1", None),
]


@pytest.mark.parametrize(("vid", "query", "form"), IMAGES_CREATE, ids=[r[0] for r in IMAGES_CREATE])
def test_c4_images_create_from_url(attack_gw, canary, vid, query, form):
    h = attack_gw
    repo = f"{ATTACKER}/{h.name('imp')}"
    target = f"{API}/images/create?repo={repo}&tag=1" + ("&" + query.format(port=canary.port) if query else "")
    if form is None:
        h.raw(ATTACKER, "POST", target, b"", headers={"Content-Type": None, "Content-Length": "0"}, timeout=40)
    else:
        h.raw(
            ATTACKER,
            "POST",
            target,
            form.format(port=canary.port),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=40,
        )
    assert canary.count() == 0, f"{vid}: the daemon connected to the loopback canary 127.0.0.1:{canary.port}"
    assert image_id(h, f"{repo}:1") is None, f"{vid}: an image was imported from a URL"


# The same loopback reach through the daemon's registry client (the daemon connects as root).
REGISTRY_REACH = [
    ("auth-loopback", "POST", "/auth", {"username": "u", "password": "p", "serveraddress": "http://127.0.0.1:{port}"}),
    ("distribution-loopback", "GET", "/distribution/127.0.0.1:{port}/x:1/json", None),
    ("search-loopback", "GET", "/images/search?term=127.0.0.1:{port}/x", None),
    ("push-loopback", "PUSH", "/images/127.0.0.1:{port}/{repo}/push?tag=1", None),
]


@pytest.mark.parametrize(("vid", "method", "target", "body"), REGISTRY_REACH, ids=[r[0] for r in REGISTRY_REACH])
def test_c4_registry_calls_do_not_reach_loopback(attack_gw, world, canary, vid, method, target, body):
    h = attack_gw
    repo = f"{ATTACKER}/{h.name('push')}"
    if method == "PUSH":  # the attacker's own image under a loopback registry's name: made by root
        h.client.api.tag(world.names["aimg"], f"127.0.0.1:{canary.port}/{repo}", "1")
        method = "POST"
    try:
        h.raw(
            ATTACKER,
            method,
            API + target.format(port=canary.port, repo=repo),
            _fmt(body, {"port": canary.port}),
            headers={"X-Registry-Auth": base64.urlsafe_b64encode(b"{}").decode()},
        )
        assert canary.count() == 0, f"{vid}: the daemon connected to the loopback canary 127.0.0.1:{canary.port}"
    finally:
        with contextlib.suppress(Exception):
            h.client.api.remove_image(f"127.0.0.1:{canary.port}/{repo}:1")


def test_c4_import_from_upload_still_works(attack_gw):
    h = attack_gw
    repo = f"{ATTACKER}/{h.name('upl')}"
    tar = file_tar("hello", b"hello\n")
    h.raw(
        ATTACKER, "POST", f"{API}/images/create?fromSrc=-&repo={repo}&tag=1", tar, {"Content-Type": "application/tar"}
    )
    assert image_id(h, f"{repo}:1") is not None, "docker import from an upload (fromSrc=-) made no image"


# ---------------------------------------------------------------------------------------------
# C4: networks have owners


def _an_networks(h: Harness, ref: str) -> list:
    info = h.stored(ref)
    return sorted(((info or {}).get("NetworkSettings") or {}).get("Networks") or {})


NET_CREATE_ON = [
    ("create-networkmode-victim-name", {"NetworkMode": "{vnet}"}, None),
    ("create-networkmode-victim-id", {"NetworkMode": "{vnetid}"}, None),
    ("create-networkmode-victim-id-prefix", {"NetworkMode": "{vnetid12}"}, None),
    ("create-endpointsconfig-victim", {"NetworkMode": "{vnet}"}, {"{vnet}": {}}),
    ("create-endpointsconfig-victim-own-mode", {"NetworkMode": "{anet}"}, {"{vnet}": {}}),
    ("create-endpointsconfig-victim-id", {"NetworkMode": "{anet}"}, {"{vnetid}": {}}),
]


def _fmt(value: Any, refs: dict) -> Any:
    if isinstance(value, str):
        return value.format(**refs)
    if isinstance(value, dict):
        return {_fmt(k, refs): _fmt(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_fmt(v, refs) for v in value]
    return value


@pytest.mark.parametrize(("vid", "host", "endpoints"), NET_CREATE_ON, ids=[r[0] for r in NET_CREATE_ON])
def test_c4_container_on_the_victims_network(fresh, vid, host, endpoints):
    w, h = fresh, fresh.h
    refs = {**w.refs(), "vnetid12": w.ids["vnet"][:12]}
    body: dict = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": _fmt(host, refs)}
    if endpoints:
        body["NetworkingConfig"] = {"EndpointsConfig": _fmt(endpoints, refs)}
    name, _status, answer = h.create(ATTACKER, body)
    try:
        nets = _an_networks(h, name)
        assert w.names["vnet"] not in nets, f"{vid}: the attacker's container is on the victim's network"
        assert w.ids["vnet"] not in (h.network(w.names["vnet"]) or {}).get("Containers", {}), vid
        w.assert_intact(answer)
    finally:
        h.remove(name)


NET_OPS = [
    # (id, method, target, body)
    ("connect-own-to-victim-net-name", "POST", "{api}/networks/{vnet}/connect", {"Container": "{aid}"}),
    ("connect-own-to-victim-net-id", "POST", "{api}/networks/{vnetid}/connect", {"Container": "{aname}"}),
    ("connect-own-to-victim-net-prefix", "POST", "{api}/networks/{vnetid12}/connect", {"Container": "{aid}"}),
    ("connect-victim-netc-to-own-net", "POST", "{api}/networks/{anet}/connect", {"Container": "{vnetcname}"}),
    ("disconnect-victim-container", "POST", "{api}/networks/{vnet}/disconnect", {"Container": "{vnetcid}"}),
    (
        "disconnect-victim-container-force",
        "POST",
        "{api}/networks/{vnet}/disconnect",
        {"Container": "{vnetcname}", "Force": True},
    ),
    ("remove-victim-network-name", "DELETE", "{api}/networks/{vnet}", None),
    ("remove-victim-network-id", "DELETE", "{api}/networks/{vnetid}", None),
    ("remove-victim-network-prefix", "DELETE", "{api}/networks/{vnetid12}", None),
]


@pytest.mark.parametrize(("vid", "method", "target", "body"), NET_OPS, ids=[r[0] for r in NET_OPS])
def test_c4_network_ops_on_the_victims_network(fresh, vid, method, target, body):
    w, h = fresh, fresh.h
    refs = {
        **w.refs(),
        "vnetid12": w.ids["vnet"][:12],
        "vnetcid": w.ids["vnetc"],
        "vnetcname": w.names["vnetc"],
    }
    _status, _hd, answer = h.raw(ATTACKER, method, _fmt(target, refs), _fmt(body, refs))
    assert w.names["vnet"] not in _an_networks(h, w.ids["an"]), f"{vid}: the attacker's container joined it"
    w.assert_intact(answer, sent=json.dumps([target, _fmt(body, refs)]))


# host and macvlan are refused by this machine's daemon/kernel as well (one host network; macvlan
# unsupported here): on a production host macvlan reaches the host's interfaces.
NET_CREATE = [
    ("driver-host", {"Driver": "host"}),
    ("driver-macvlan", {"Driver": "macvlan"}),
    ("bridge-interface-name-option", {"Driver": "bridge", "Options": {"com.docker.network.bridge.name": "{br}"}}),
    ("bridge-options-lowercase-key", {"Driver": "bridge", "options": {"com.docker.network.bridge.name": "{br}"}}),
]


@pytest.mark.parametrize(("vid", "body"), NET_CREATE, ids=[r[0] for r in NET_CREATE])
def test_c4_network_create_with_host_reaching_drivers(attack_gw, vid, body):
    h = attack_gw
    name = h.name("net")
    try:
        bridge = "atkbr" + uuid.uuid4().hex[:8]
        body = _fmt(body, {"br": bridge})
        h.raw(ATTACKER, "POST", f"{API}/networks/create", {"Name": name, "CheckDuplicate": True, **body})
        assert h.network(name) is None, f"{vid}: the network was created: {h.network(name)}"
    finally:
        with contextlib.suppress(Exception):
            h.client.api.remove_network(name)


def test_c4_network_create_owner_label_cannot_be_spoofed(attack_gw):
    h = attack_gw
    name = h.name("net")
    try:
        h.raw(ATTACKER, "POST", f"{API}/networks/create", {"Name": name, "Labels": {"ds01.user": VICTIM}})
        net = h.network(name)
        assert net is None or (net.get("Labels") or {}).get("ds01.user") == ATTACKER, net
    finally:
        with contextlib.suppress(Exception):
            h.client.api.remove_network(name)


VOLUMES = [
    ("remove-victim-volume", "DELETE", "/volumes/{vvol}", None),
    ("remove-victim-volume-force", "DELETE", "/volumes/{vvol}?force=1", None),
    ("create-binds-victim-volume", "CREATE", "", {"Binds": ["{vvol}:/v"]}),
    ("create-mounts-victim-volume", "CREATE", "", {"Mounts": [{"Type": "volume", "Source": "{vvol}", "Target": "/v"}]}),
]


@pytest.mark.parametrize(("vid", "method", "target", "host"), VOLUMES, ids=[r[0] for r in VOLUMES])
def test_c4_the_victims_volume_is_out_of_reach(fresh, vid, method, target, host):
    w, h = fresh, fresh.h
    refs = w.refs()
    name = ""
    try:
        if method == "CREATE":
            body = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none", **_fmt(host, refs)}}
            name, _status, answer = h.create(ATTACKER, body)
            mounts = [m.get("Name") for m in (h.stored(name) or {}).get("Mounts") or []]
            assert w.names["vvol"] not in mounts, f"{vid}: the attacker's container mounts the victim's volume"
        else:
            _status, _hd, answer = h.raw(ATTACKER, method, API + target.format(**refs))
        w.assert_intact(answer)
    finally:
        if name:
            h.remove(name)


# ---------------------------------------------------------------------------------------------
# C4: images and tags belong to whoever created them


def _load_tar(h: Harness, source: str, repo_tags: list) -> bytes:
    """``docker save source`` rewritten so that ``docker load`` tags it ``repo_tags``."""
    raw = b"".join(h.client.api.get_image(source))
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "manifest.json":
                doc = json.loads(data)
                for entry in doc:
                    entry["RepoTags"] = list(repo_tags)
                data = json.dumps(doc).encode()
            elif member.name == "repositories":
                layer = next(iter(next(iter(json.loads(data).values())).values()))
                repos: dict = {}
                for repo_tag in repo_tags:
                    repo, _unused, ver = repo_tag.partition(":")
                    repos.setdefault(repo, {})[ver] = layer
                data = json.dumps(repos).encode()
            if data is not None:
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member)
    return out.getvalue()


TAGS = [
    # (id, how, args): how = raw (method, target, body, headers) | cli (args) | special
    ("tag-cli-onto-victim-tag", "cli", ["tag", "{aimg}", "{vimg}"]),
    ("tag-raw-onto-victim-tag", "raw", ("POST", "{api}/images/{aimg}/tag?repo={vimgrepo}&tag=1", None, None)),
    (
        "tag-docker-io-spelling",
        "raw",
        ("POST", "{api}/images/{aimg}/tag?repo=docker.io/library/{vimgrepo}&tag=1", None, None),
    ),
    ("tag-percent-encoded-repo", "raw", ("POST", "{api}/images/{aimg}/tag?re%70o={vimgrepo}&tag=1", None, None)),
    (
        "tag-in-form-body",
        "raw",
        (
            "POST",
            "{api}/images/{aimg}/tag",
            "repo={vimgrepo}&tag=1",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
    ),
    ("tag-onto-admin-made-tag", "raw", ("POST", "{api}/images/{aimg}/tag?repo={prerepo}&tag=1", None, None)),
    ("build-t-onto-victim-tag", "build", "t={vimg}"),
    ("build-t-onto-admin-made-tag", "build", "t={pre}"),
    ("build-own-t-then-victim-t", "build", "t={aimgrepo}-b:1&t={vimg}"),
    ("build-t-percent-encoded-key", "build", "%74={vimg}"),
    ("build-t-docker-io-spelling", "build", "t=docker.io/library/{vimg}"),
    ("commit-percent-encoded-repo", "raw", ("POST", "{api}/commit?container={aid}&re%70o={vimgrepo}&tag=1", {}, None)),
    (
        "commit-dup-repo-victim-first",
        "raw",
        ("POST", "{api}/commit?container={aid}&repo={vimgrepo}&repo={aimgrepo}-c&tag=1", {}, None),
    ),
    (
        "tag-dup-repo-victim-first",
        "raw",
        ("POST", "{api}/images/{aimg}/tag?repo={vimgrepo}&repo={aimgrepo}-d&tag=1", None, None),
    ),
    ("load-own-and-victim-tags", "load", "{aimgrepo}-l:1,{vimg}"),
    ("commit-onto-victim-tag", "raw", ("POST", "{api}/commit?container={aid}&repo={vimgrepo}&tag=1", {}, None)),
    ("import-onto-victim-tag", "import", "{vimgrepo}"),
    ("load-onto-victim-tag", "load", "{vimg}"),
    ("pull-onto-victim-tag", "raw", ("POST", "{api}/images/create?fromImage={vimgrepo}&tag=1", b"", None)),
    ("rmi-victim-tag", "raw", ("DELETE", "{api}/images/{vimg}", None, None)),
    ("rmi-victim-tag-force", "raw", ("DELETE", "{api}/images/{vimg}?force=1&noprune=1", None, None)),
    ("rmi-victim-image-id", "raw", ("DELETE", "{api}/images/{vimgid}", None, None)),
    ("rmi-victim-image-id-force", "raw", ("DELETE", "{api}/images/{vimgid}?force=1", None, None)),
    ("rmi-victim-docker-io-spelling", "raw", ("DELETE", "{api}/images/docker.io/library/{vimg}?force=1", None, None)),
    ("rmi-cli-victim-tag", "cli", ["rmi", "-f", "{vimg}"]),
    ("rmi-admin-made-tag", "raw", ("DELETE", "{api}/images/{pre}?force=1", None, None)),
]


@pytest.mark.parametrize(("vid", "how", "args"), TAGS, ids=[r[0] for r in TAGS])
def test_c4_tags_of_others_are_read_only(fresh, vid, how, args):
    w, h = fresh, fresh.h
    refs = w.refs()
    answer = b""
    if how == "cli":
        proc = h.cli(ATTACKER, *_fmt(args, refs))
        answer = (proc.stdout + proc.stderr).encode()
    elif how == "raw":
        method, target, body, headers = args
        body = _fmt(body, refs)
        if method == "POST" and body == b"":
            headers = {"Content-Type": None, "Content-Length": "0"}
        _s, _hd, answer = h.raw(ATTACKER, method, _fmt(target, refs), body, headers=headers, timeout=60)
    elif how == "build":
        ctx = context_tar(f"FROM {EMPTY_IMAGE}\nLABEL ds01.routes.who=attacker-{uuid.uuid4().hex}\n")
        target = f"{API}/build?{_fmt(args, refs)}&networkmode=none&q=1"
        _s, _hd, answer = h.raw(ATTACKER, "POST", target, ctx, headers={"Content-Type": "application/x-tar"})
    elif how == "import":
        target = f"{API}/images/create?fromSrc=-&repo={_fmt(args, refs)}&tag=1"
        tar = file_tar("attacker", uuid.uuid4().hex.encode())
        _s, _hd, answer = h.raw(ATTACKER, "POST", target, tar, headers={"Content-Type": "application/tar"})
    elif how == "load":
        tar = _load_tar(h, w.names["aimg"], _fmt(args, refs).split(","))
        _s, _hd, answer = h.raw(
            ATTACKER, "POST", f"{API}/images/load?quiet=1", tar, headers={"Content-Type": "application/x-tar"}
        )
    w.assert_intact(answer)


def test_c4_own_tags_work(attack_gw, world):
    h = attack_gw
    second = h.tag(ATTACKER, "aimg2", "2")
    proc = h.cli(ATTACKER, "tag", world.names["aimg"], second)
    assert proc.returncode == 0, proc.stderr
    assert image_id(h, second) == world.ids["aimg"], "the attacker could not tag their own image"
    proc = h.cli(ATTACKER, "rmi", second)
    assert proc.returncode == 0, proc.stderr
    assert image_id(h, second) is None, "the attacker could not remove their own tag"


# ---------------------------------------------------------------------------------------------
# C4: update is clamped like create (0 and -1 mean "unlimited" to the daemon)

UPDATE = [
    ("pidslimit-0", '{"PidsLimit": 0}'),
    ("pidslimit-minus-1", '{"PidsLimit": -1}'),
    ("pidslimit-huge", '{"PidsLimit": 99999999}'),
    ("pidslimit-lowercase-0", '{"pidslimit": 0}'),
    ("pidslimit-mixedcase-minus-1", '{"pidsLimit": -1}'),
    ("memory-minus-1", '{"Memory": -1}'),
    ("memory-huge", '{"Memory": 68719476736, "MemorySwap": 68719476736}'),
    ("memoryswap-minus-1", '{"MemorySwap": -1}'),
    ("memory-uppercase-huge", '{"MEMORY": 68719476736, "MEMORYSWAP": -1}'),
    ("nanocpus-0", '{"NanoCpus": 0}'),
    ("nanocpus-huge", '{"NanoCpus": 2000000000}'),
    ("cpuquota-minus-1", '{"CpuQuota": -1}'),
    ("cpuquota-huge-period", '{"CpuQuota": 1000000, "CpuPeriod": 100000}'),
    ("cpuquota-lowercase", '{"cpuquota": -1}'),
    (
        "devices",
        '{"Devices": [{"PathOnHost": "/dev/loop0", "PathInContainer": "/dev/loop0", "CgroupPermissions": "rwm"}]}',
    ),
    ("devicerequests", '{"DeviceRequests": [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}]}'),
    ("devicecgrouprules", '{"DeviceCgroupRules": ["b *:* rwm"]}'),
    ("cgroupparent-root", '{"CgroupParent": "/"}'),
    ("cgroupparent-victim-slice", '{"CgroupParent": "%VSLICE%"}'),
    ("cgroupparent-lowercase", '{"cgroupparent": "/"}'),
]


def _cpus(host: dict) -> float:
    if (host.get("NanoCpus") or 0) > 0:
        return host["NanoCpus"] / 1e9
    quota = host.get("CpuQuota") or 0
    period = host.get("CpuPeriod") or 100000
    if quota > 0:
        return quota / period
    return float("inf")


def assert_within_limits(host: dict, before: dict, vid: str) -> None:
    problems = []
    if not 0 < (host.get("PidsLimit") or 0) <= LIMIT_PIDS:
        problems.append(f"PidsLimit={host.get('PidsLimit')!r} (limit {LIMIT_PIDS})")
    if not 0 < (host.get("Memory") or 0) <= LIMIT_MEMORY:
        problems.append(f"Memory={host.get('Memory')!r} (limit {LIMIT_MEMORY})")
    if not 0 < (host.get("MemorySwap") or 0) <= LIMIT_SWAP:
        problems.append(f"MemorySwap={host.get('MemorySwap')!r} (limit {LIMIT_SWAP})")
    if _cpus(host) > LIMIT_CPUS:
        problems.append(f"CPUs={_cpus(host)} (NanoCpus={host.get('NanoCpus')}, CpuQuota={host.get('CpuQuota')})")
    if host.get("Devices"):
        problems.append(f"Devices={host['Devices']}")
    if host.get("DeviceRequests"):
        problems.append(f"DeviceRequests={host['DeviceRequests']}")
    if host.get("DeviceCgroupRules"):
        problems.append(f"DeviceCgroupRules={host['DeviceCgroupRules']}")
    if host.get("CgroupParent") != before.get("CgroupParent"):
        problems.append(f"CgroupParent {before.get('CgroupParent')!r} -> {host.get('CgroupParent')!r}")
    assert not problems, f"{vid}: after docker update the daemon stored " + "; ".join(problems)


@pytest.mark.parametrize(("vid", "body"), UPDATE, ids=[r[0] for r in UPDATE])
def test_c4_update_is_clamped(attack_gw, world, vid, body):
    h = attack_gw
    name = own_container(h, start=True)
    try:
        before = h.stored(name)["HostConfig"]
        payload = body.replace("%VSLICE%", world.slice.replace(ATTACKER, VICTIM))
        h.raw(ATTACKER, "POST", f"{API}/containers/{name}/update", payload)
        assert_within_limits(h.stored(name)["HostConfig"], before, vid)
    finally:
        h.remove(name)


def test_c4_update_within_limits_still_works(attack_gw):
    h = attack_gw
    name = own_container(h)
    try:
        status, _hd, answer = h.raw(
            ATTACKER, "POST", f"{API}/containers/{name}/update", {"Memory": 1 << 30, "MemorySwap": 2 << 30}
        )
        host = h.stored(name)["HostConfig"]
        assert host["Memory"] == 1 << 30, f"a lower memory limit was not applied: {status} {answer[:200]!r}"
    finally:
        h.remove(name)


# ---------------------------------------------------------------------------------------------
# C6: counts and names under the lock


def test_c6_parallel_creates_respect_the_container_limit(attack_gw, world):
    h = attack_gw
    names = [h.name("par") for _unused in range(6)]
    before = h.containers_of(ATTACKER)
    procs = [
        subprocess.Popen(
            [
                "runuser",
                "-u",
                ATTACKER,
                "--",
                "env",
                f"DOCKER_HOST={h.host}",
                f"HOME={h.home(ATTACKER)}",
                gwharness.DOCKER_BIN,
                "create",
                "--name",
                name,
                "--network",
                "none",
                IMAGE,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    try:
        for proc in procs:
            proc.communicate(timeout=120)
        made = [n for n in names if h.stored(n) is not None]
        assert len(before) + len(made) <= ATTACKER_MAX_CONTAINERS, (
            f"the attacker held {len(before)} containers and 6 parallel creates made {len(made)} more; "
            f"the limit is {ATTACKER_MAX_CONTAINERS}: {made}"
        )
        assert made, "none of the parallel creates succeeded although the attacker was under the limit"
    finally:
        h.remove(*names)


TAKEN = [
    ("create", "POST", "/containers/create?name={taken}", {"Image": IMAGE, "HostConfig": {"NetworkMode": "none"}}),
    (
        "create-slash-name",
        "POST",
        "/containers/create?name=%2F{taken}",
        {"Image": IMAGE, "HostConfig": {"NetworkMode": "none"}},
    ),
    ("rename-own-to-taken", "POST", "/containers/{aid}/rename?name={taken}", None),
]


@pytest.mark.parametrize(("vid", "method", "target", "body"), TAKEN, ids=[r[0] for r in TAKEN])
def test_c6_a_taken_name_is_answered_without_the_owners_id(fresh, vid, method, target, body):
    w, h = fresh, fresh.h
    taken_id = w.ids["taken"]
    path = API + target.format(**w.refs(), taken=w.names["taken"])
    _status, _hd, answer = h.raw(ATTACKER, method, path, body)
    text = message_of(answer)
    leaked = id_pieces(text, taken_id)
    assert not leaked, f"{vid}: the answer shows the other user's container id ({leaked}): {text!r}"
    assert "is taken" in text.lower() and "choose another" in text.lower(), f"{vid}: {text!r}"
    assert "remove" not in text.lower() and "rename" not in text.lower(), f"{vid}: the answer advises removal: {text!r}"
    assert (h.stored(w.ids["an"]) or {}).get("Name") == "/" + w.names["an"], (
        f"{vid}: the attacker's container was renamed"
    )
    w.assert_intact(answer)


def test_c6_a_taken_name_through_the_cli(fresh):
    w, h = fresh, fresh.h
    proc = h.cli(ATTACKER, "create", "--name", w.names["taken"], "--network", "none", IMAGE)
    assert proc.returncode != 0, "the attacker created a container under a name another user holds"
    leaked = id_pieces(proc.stderr, w.ids["taken"])
    assert not leaked, f"the CLI shows the other user's container id ({leaked}): {proc.stderr!r}"
    w.assert_intact(proc.stderr.encode())


# ---------------------------------------------------------------------------------------------
# C7: admin GPU creates go through the allocator


def _devices_of(info: dict) -> list:
    return [d for r in info["HostConfig"].get("DeviceRequests") or [] for d in (r.get("DeviceIDs") or [])]


@pytest.fixture(scope="module")
def victim_gpu(attack_gw):
    """A GPU the victim holds: granted now through the gateway, or (when another session on this
    engine already holds the victim's whole quota) one of the victim's current holdings."""
    h = attack_gw
    name = h.name("vgpu")
    proc = h.cli(VICTIM, "create", "--name", name, "--network", "none", "--gpus", "1", IMAGE)
    info = h.stored(name)
    if info is None:
        assert "USER_AT_LIMIT" in proc.stderr, f"setup: the victim could not get a GPU: {proc.stderr}"
        holdings = [h.stored(c["Id"]) for c in h.containers_of(VICTIM)]
        info = next((i for i in holdings if i is not None and _devices_of(i)), None)
        assert info is not None, f"setup: the victim is at their GPU limit but holds no device: {proc.stderr}"
    held = _devices_of(info)
    assert held, f"setup: the victim's GPU container holds no device: {info['HostConfig'].get('DeviceRequests')}"
    yield held[0]
    h.remove(name)


ADMIN_GPU = [
    ("cli-gpus-device", None),
    (
        "devicerequest-nvidia-ids",
        {
            "HostConfig": {
                "NetworkMode": "none",
                "DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["{held}"], "Capabilities": [["gpu"]]}],
            }
        },
    ),
    (
        "devicerequest-compute-capability",
        {
            "HostConfig": {
                "NetworkMode": "none",
                "DeviceRequests": [{"Driver": "", "DeviceIDs": ["{held}"], "Capabilities": [["nvidia", "compute"]]}],
            }
        },
    ),
    ("env-visible-devices", {"Env": ["NVIDIA_VISIBLE_DEVICES={held}"], "HostConfig": {"NetworkMode": "none"}}),
]


@pytest.mark.parametrize(("vid", "body"), ADMIN_GPU, ids=[r[0] for r in ADMIN_GPU])
def test_c7_admin_cannot_take_a_slot_another_user_holds(attack_gw, victim_gpu, vid, body):
    h = attack_gw
    name = h.name("agpu")
    try:
        if body is None:
            h.cli(ADMIN, "create", "--name", name, "--network", "none", "--gpus", f"device={victim_gpu}", IMAGE)
        else:
            h.create(ADMIN, {"Image": IMAGE, **_fmt(body, {"held": victim_gpu})}, name=name)
        info = h.stored(name)
        if info is not None:
            assert victim_gpu not in _devices_of(info), (
                f"{vid}: the admin's container was given {victim_gpu}, which the victim holds"
            )
            env = info["Config"].get("Env") or []
            assert f"NVIDIA_VISIBLE_DEVICES={victim_gpu}" not in env, f"{vid}: the admin's container sees {env}"
    finally:
        h.remove(name)


def test_c7_admin_gpu_create_is_placed_and_labelled(attack_gw, victim_gpu):
    h = attack_gw
    name = h.name("agpu")
    try:
        proc = h.cli(ADMIN, "create", "--name", name, "--network", "none", "--gpus", "1", IMAGE)
        info = h.stored(name)
        assert info is not None, f"an admin's GPU create failed: {proc.stderr}"
        labels = info["Config"].get("Labels") or {}
        assert labels.get("ds01.user") == ADMIN, f"the admin's GPU container is labelled {labels}"
        devices = _devices_of(info)
        assert devices and victim_gpu not in devices, f"the admin's container holds {devices}"
        assert labels.get("ds01.gpu.uuids"), f"the allocator did not record the admin's placement: {labels}"
    finally:
        h.remove(name)


# ---------------------------------------------------------------------------------------------
# C8: legacy owners (aime.mlc.USER label, "<name>._.<uid>")


@pytest.fixture(scope="module")
def legacy(attack_gw):
    h = attack_gw
    made = {}
    by_label = h.name("legacy")
    h.client.api.create_container(
        IMAGE,
        ["sleep", "infinity"],
        name=by_label,
        labels={**h.labels, "aime.mlc.USER": VICTIM},
        host_config=h.client.api.create_host_config(network_mode="none"),
    )
    made["label"] = by_label
    by_name = f"{h.name('lx')}._.{h.uid(VICTIM)}"
    h.client.api.create_container(
        IMAGE,
        ["sleep", "infinity"],
        name=by_name,
        labels=h.labels,
        host_config=h.client.api.create_host_config(network_mode="none"),
    )
    made["name"] = by_name
    yield made
    h.remove(*made.values())


LEGACY_OPS = [
    "other-psfilter",
    "other-inspect",
    "other-ps",
    "other-start",
    "other-rm",
    "owner-inspect",
    "owner-ps",
    "owner-start",
    "owner-rm",
]
LEGACY = [(form, op) for op in LEGACY_OPS for form in ("label", "name")]


@pytest.mark.parametrize(("form", "op"), LEGACY, ids=[f"{op}-{form}" for form, op in LEGACY])
def test_c8_legacy_containers_belong_to_their_login(attack_gw, legacy, form, op):
    h = attack_gw
    name = legacy[form]
    info = h.stored(name)
    assert info is not None, f"the legacy container {name} is gone before {op}"
    cid = info["Id"]
    who, what = op.split("-")
    user = VICTIM if who == "owner" else ATTACKER
    if what == "inspect":
        proc = h.cli(user, "inspect", name)
        if who == "owner":
            assert proc.returncode == 0 and cid in proc.stdout, f"the owner cannot inspect it: {proc.stderr}"
        else:
            assert cid not in proc.stdout + proc.stderr, "another user read the legacy container"
    elif what == "psfilter":
        proc = h.cli(user, "ps", "-a", "--no-trunc", "--filter", f"label=aime.mlc.USER={VICTIM}", "--format", "{{.ID}}")
        assert cid not in proc.stdout, f"{user} listed {name} by filtering on its legacy owner label"
    elif what == "ps":
        proc = h.cli(user, "ps", "-a", "--no-trunc", "--format", "{{.ID}}")
        listed = cid in proc.stdout.split()
        assert listed == (who == "owner"), (
            f"{user} {'does not see' if who == 'owner' else 'sees'} {name}: {proc.stderr}"
        )
    elif what == "start":
        h.cli(user, "start", name)
        running = h.stored(name)["State"]["Running"]
        if who == "owner":
            assert running, "the owner could not start their legacy container"
        else:
            assert not running, "another user started the legacy container"
    elif what == "rm":
        h.cli(user, "rm", "-f", name)
        gone = h.stored(name) is None
        assert gone == (who == "owner"), (
            f"{'the owner could not remove' if who == 'owner' else 'another user removed'} {name}"
        )


# ---------------------------------------------------------------------------------------------
# C4/C6: ownership and visibility of the victim's container (by id, prefix, name, /name)

REFS = {"id": "{vid}", "prefix": "{vid12}", "name": "{vname}", "slashname": "%2F{vname}"}

OWN_OPS = [
    ("inspect", "GET", "/containers/{ref}/json", None),
    ("logs", "GET", "/containers/{ref}/logs?stdout=1&stderr=1", None),
    ("exec-create", "POST", "/containers/{ref}/exec", {"Cmd": ["sh", "-c", "echo x > /tmp/atk-{tag}"]}),
    ("attach-logs", "POST", "/containers/{ref}/attach?logs=1&stream=0&stdout=1&stderr=1", None),
    ("kill", "POST", "/containers/{ref}/kill?signal=KILL", None),
    ("rename", "POST", "/containers/{ref}/rename?name={prefix}stolen", None),
    ("rm-force", "DELETE", "/containers/{ref}?force=1&v=1", None),
    ("top", "GET", "/containers/{ref}/top?ps_args=-ef", None),
    ("export", "GET", "/containers/{ref}/export", None),
    ("archive-get", "GET", "/containers/{ref}/archive?path=/tmp/secret", None),
    ("archive-head", "HEAD", "/containers/{ref}/archive?path=/tmp/secret", None),
    ("stats", "GET", "/containers/{ref}/stats?stream=0", None),
]
SINGLE_OPS = [
    ("stop", "POST", "/containers/{vid}/stop?t=0", None),
    ("restart", "POST", "/containers/{vname}/restart?t=0", None),
    ("pause", "POST", "/containers/{vid12}/pause", None),
    ("update", "POST", "/containers/{vname}/update", {"Memory": 8 << 30, "MemorySwap": -1}),
    ("changes", "GET", "/containers/{vid}/changes", None),
    ("archive-put", "PUT", "/containers/{vid}/archive?path=/tmp", "TAR"),
    ("wait-stopped", "POST", "/containers/{sid}/wait", None),
    ("wait-stopped-name", "POST", "/containers/{sname}/wait?condition=not-running", None),
    ("logs-stopped", "GET", "/containers/{sname}/logs?stdout=1", None),
    ("rm-stopped", "DELETE", "/containers/{sid}", None),
    ("exec-start-victims-exec", "POST", "/exec/{eid}/start", {"Detach": True, "Tty": False}),
    ("exec-inspect-victims-exec", "GET", "/exec/{eid}/json", None),
    ("commit-victim", "POST", "/commit?container={vid}&repo={prefix}stolen&tag=1", {}),
    ("commit-victim-dup-param", "POST", "/commit?container={vid}&container={aid}&repo={prefix}stolen&tag=2", {}),
    ("commit-victim-encoded-param", "POST", "/commit?contain%65r={vid}&repo={prefix}stolen&tag=3", {}),
    # path tricks
    ("path-double-slash", "GET", "//containers/{vid}/json", None),
    ("path-dotdot", "GET", "/v1.41/../containers/{vid}/json", None),
    ("path-trailing-slash", "GET", "/containers/{vid}/json/", None),
    ("path-encoded-dotdot", "GET", "/containers/%2e%2e/containers/{vid}/json", None),
    ("path-own-then-encoded-dotdot", "GET", "/containers/{aname}%2F..%2F{vname}/json", None),
    ("path-images-dotdot", "GET", "/images/%2e%2e/containers/{vid}/json", None),
    ("path-images-encoded-slash-delete", "DELETE", "/images/..%2Fcontainers%2F{vid}?force=1", None),
    ("path-distribution-dotdot", "GET", "/distribution/..%2Fcontainers%2F{vid}%2Fjson/json", None),
    ("path-volumes-dotdot", "GET", "/volumes/..%2Fcontainers%2F{vid}%2Fjson", None),
    ("path-encoded-slash-in-id", "GET", "/containers/{vid}%2Fjson", None),
    ("path-absolute-form", "GET", "http://docker/v1.41/containers/{vid}/json", None),
    ("path-version-three-parts", "GET", "/v1.41.0/containers/{vid}/json", None),
    ("path-uppercase-containers", "GET", "/CONTAINERS/{vid}/json", None),
]
OWNERSHIP = [(f"{op}-by-{ref}", m, t.replace("{ref}", REFS[ref]), b) for op, m, t, b in OWN_OPS for ref in REFS] + [  # pylint: disable=R1721
    (op, m, t, b) for op, m, t, b in SINGLE_OPS
]


@pytest.mark.parametrize(("vid", "method", "target", "body"), OWNERSHIP, ids=[r[0] for r in OWNERSHIP])
def test_c4_the_victims_container_is_out_of_reach(fresh, vid, method, target, body):
    w, h = fresh, fresh.h
    refs = w.refs()
    path = target.format(**refs)
    if not path.startswith(("http://", "/v1.41/../", "//", "/v1.41.0/")):
        path = API + path
    if body == "TAR":
        payload: Any = file_tar(f"pwned-{w.tag}", b"pwned\n")
        headers: Optional[dict] = {"Content-Type": "application/x-tar"}
    else:
        payload, headers = _fmt(body, refs), None
    _status, hdrs, answer = h.raw(ATTACKER, method, path, payload, headers=headers, timeout=30)
    if method == "POST" and vid.startswith("exec-create"):
        with contextlib.suppress(ValueError, AttributeError):
            exec_id = json.loads(answer).get("Id")
            if exec_id:
                h.raw(ATTACKER, "POST", f"{API}/exec/{exec_id}/start", {"Detach": True})
                time.sleep(0.5)
    if vid.startswith("commit"):
        assert not [t for img in h.client.api.images() for t in img.get("RepoTags") or [] if "stolen" in t], (
            f"{vid}: the victim's container was committed into an image"
        )
    if vid.startswith("exec-start"):
        time.sleep(0.5)
    w.assert_intact(answer, hdrs, files=True, sent=path + json.dumps(payload if isinstance(payload, dict) else ""))


JOIN = [
    ("network-container-id", {"NetworkMode": "container:{vid}"}),
    ("network-container-name", {"NetworkMode": "container:{vname}"}),
    ("network-container-prefix", {"NetworkMode": "container:{vid12}"}),
    ("pid-container-name", {"PidMode": "container:{vname}", "NetworkMode": "none"}),
    ("ipc-container-id", {"IpcMode": "container:{vid}", "NetworkMode": "none"}),
    ("volumes-from-victim", {"VolumesFrom": ["{vname}:ro"], "NetworkMode": "none"}),
]


@pytest.mark.parametrize(("vid", "host"), JOIN, ids=[r[0] for r in JOIN])
def test_c4_the_attacker_cannot_join_the_victims_namespaces(fresh, vid, host):
    w, h = fresh, fresh.h
    body = {"Image": IMAGE, "Cmd": ["sleep", "infinity"], "HostConfig": _fmt(host, w.refs())}
    name, _status, answer = h.create(ATTACKER, body)
    try:
        info = h.stored(name)
        if info is not None:
            stored = json.dumps(info["HostConfig"])
            assert w.ids["vic"] not in stored and w.names["vic"] not in stored, (
                f"{vid}: the attacker's container was created in the victim's namespaces: {host}"
            )
        w.assert_intact(answer, sent=json.dumps(body))
    finally:
        h.remove(name)


def test_c4_the_victims_container_is_out_of_reach_by_websocket_attach(fresh):
    w, h = fresh, fresh.h
    head = (
        f"GET {API}/containers/{w.ids['vstop']}/attach/ws?logs=1&stream=0&stdout=1 HTTP/1.1\r\nHost: docker\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nOrigin: http://docker\r\n\r\n"
    )
    data = h.raw_bytes(ATTACKER, head.encode(), timeout=3, half_close=False)
    assert w.secret.encode() not in data, f"the attacker read the victim's output over a websocket: {data[:300]!r}"
    w.assert_intact(data, sent=head)


# ---------------------------------------------------------------------------------------------
# visibility: ps, events and df filters cannot widen the view

FILTERS = [
    ("ps-label-list", "/containers/json?all=1&filters={f}", {"label": ["ds01.user=" + VICTIM]}),
    ("ps-label-map", "/containers/json?all=1&filters={f}", {"label": {"ds01.user=" + VICTIM: True}}),
    ("ps-label-not", "/containers/json?all=1&filters={f}", {"label!": ["ds01.user=" + ATTACKER]}),
    ("ps-id", "/containers/json?all=1&filters={f}", {"id": ["{vid}"]}),
    ("ps-name", "/containers/json?all=1&filters={f}", {"name": ["{vname}"]}),
    ("ps-dup-filters", "/containers/json?all=1&filters={f}&filters={f}", {"label": ["ds01.user=" + VICTIM]}),
    ("ps-encoded-filters-name", "/containers/json?all=1&%66ilters={f}", {"label": ["ds01.user=" + VICTIM]}),
    ("ps-dup-label-key-in-json", "/containers/json?all=1&filters={raw}", None),
    ("ps-ancestor", "/containers/json?all=1&filters={f}", {"ancestor": [IMAGE]}),
    ("events-label-list", "/events?since={since}&until={until}&filters={f}", {"label": ["ds01.user=" + VICTIM]}),
    ("events-label-map", "/events?since={since}&until={until}&filters={f}", {"label": {"ds01.user=" + VICTIM: True}}),
    ("events-container", "/events?since={since}&until={until}&filters={f}", {"container": ["{vid}"]}),
    ("events-dup-filters", "/events?since={since}&until={until}&filters={f}&filters={f}", {"type": ["container"]}),
    ("events-encoded-filters-name", "/events?since={since}&until={until}&%66ilters={f}", {"type": ["container"]}),
    ("events-no-filters", "/events?since={since}&until={until}", None),
    ("system-df", "/system/df", None),
    ("v1.23-ps", "/containers/json?all=1", None),
]


@pytest.mark.parametrize(("vid", "target", "filters"), FILTERS, ids=[r[0] for r in FILTERS])
def test_c4_filters_cannot_widen_the_view(fresh, vid, target, filters):
    w, h = fresh, fresh.h
    refs = w.refs()
    f = quote(json.dumps(_fmt(filters, refs))) if filters is not None else ""
    raw_dup = quote('{"label":["ds01.user=' + ATTACKER + '"],"label":["ds01.user=' + VICTIM + '"]}')
    path = target.format(f=f, raw=raw_dup, since=int(time.time()) - 900, until=int(time.time()) + 1)
    prefix = "/v1.23" if vid.startswith("v1.23") else API
    _s, _hd, answer = h.raw(ATTACKER, "GET", prefix + path, timeout=30)
    text = answer.decode(errors="replace")
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if isinstance(doc, dict) and set(doc) == {"message"}:
            text = ""  # a refusal sentence may echo the filter the attacker sent; it lists nothing
    for key in ("vic", "vstop", "taken", "vnetc"):
        assert w.ids[key] not in text and w.names[key] not in text, (
            f"{vid}: the attacker saw the victim's container {w.names[key]}"
        )
    w.assert_intact(answer, sent=path)


# ---------------------------------------------------------------------------------------------
# daemon-wide routes: prune (filtered onto this test's things, so a leak harms nothing else),
# plugins, swarm

DAEMON_WIDE = [
    ("containers-prune", "POST", "/containers/prune?filters={vlabel}", None),
    ("containers-prune-encoded", "POST", "/containers/pr%75ne?filters={vlabel}", None),
    ("containers-prune-trailing-slash", "POST", "/containers/prune/?filters={vlabel}", None),
    ("images-prune", "POST", "/images/prune?filters={vimglabel}", None),
    ("volumes-prune", "POST", "/volumes/prune?filters={vlabel}", None),
    ("networks-prune", "POST", "/networks/prune?filters={vlabel}", None),
    ("plugins-pull-loopback", "POST", "/plugins/pull?remote=127.0.0.1:{port}/x&name={prefix}plug", []),
    (
        "swarm-join-loopback",
        "POST",
        "/swarm/join",
        {
            "ListenAddr": "127.0.0.1:0",
            "RemoteAddrs": ["127.0.0.1:{port}"],
            "JoinToken": "SWMTKN-1-" + "0" * 50 + "-" + "0" * 25,
        },
    ),
    ("swarm-init", "POST", "/swarm/init", {"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1"}),
]


@pytest.mark.parametrize(("vid", "method", "target", "body"), DAEMON_WIDE, ids=[r[0] for r in DAEMON_WIDE])
def test_c4_daemon_wide_routes_do_nothing_for_users(fresh, canary, vid, method, target, body):
    w, h = fresh, fresh.h
    # everything of the victim's must be unused by a running container for prune to take it
    refs = w.refs(canary.port)
    swarm_before = h.client.info()["Swarm"]["LocalNodeState"]
    try:
        _s, _hd, answer = h.raw(ATTACKER, method, API + target.format(**refs), _fmt(body, refs), timeout=40)
        assert canary.count() == 0, f"{vid}: the daemon connected to the loopback canary"
        assert h.client.info()["Swarm"]["LocalNodeState"] == swarm_before, f"{vid}: the swarm state changed"
        assert not [p for p in h.client.api.plugins() if h.prefix in p.get("Name", "")], (
            f"{vid}: a plugin was installed"
        )
        w.assert_intact(answer)
    finally:
        if h.client.info()["Swarm"]["LocalNodeState"] != swarm_before:
            with contextlib.suppress(Exception):
                h.client.swarm.leave(force=True)


# ---------------------------------------------------------------------------------------------
# C9: connections


def test_c9_slowloris_is_cut_off_while_others_are_served(attack_gw):
    """A head sent 1 byte per 0.5 s is cut off (closed, or answered 408) before it completes, and
    another user's ``docker ps`` answers meanwhile. The slow head is at most 100 bytes long (50 s)."""
    h = attack_gw
    sock_path = h.socket
    result: dict = {}

    def slow() -> bytes:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(sock_path)
        sock.sendall(b"GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\nX-Slow: ")
        sent = 0
        cut = ""
        for _unused in range(100):
            readable, _w, _x = select.select([sock], [], [], 0.5)
            if readable:
                try:
                    data = sock.recv(4096)
                except OSError as exc:
                    data = b""
                    cut = f"reset ({exc})"
                cut = cut or (f"answered {data[:40]!r}" if data else "closed")
                break
            try:
                sock.send(b"a")
                sent += 1
            except OSError as exc:
                cut = f"send failed ({exc})"
                break
        sock.close()
        return json.dumps({"cut": cut, "sent": sent}).encode()

    def run() -> None:
        result.update(json.loads(as_user(ATTACKER, slow, timeout=80)))

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.5)
    ps = h.cli(VICTIM, "ps", "-a", timeout=60)
    thread.join(100)
    assert ps.returncode == 0, f"another user's docker ps failed during a slowloris: {ps.stderr}"
    assert result.get("cut"), f"the gateway kept a head that took {result.get('sent')} slow bytes open"
    assert "HTTP/1.1 200" not in result["cut"], f"the slow head was answered as a request: {result['cut']}"


def test_c9_many_idle_connections_do_not_starve_others(attack_gw):
    h = attack_gw
    scratch = h.scratch(ATTACKER)
    ready, release = scratch / "ready", scratch / "release"
    sock_path = h.socket
    result: dict = {}

    def hold() -> bytes:
        socks, failed = [], 0
        for _unused in range(500):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            try:
                sock.connect(sock_path)
                socks.append(sock)
            except OSError:
                failed += 1
                sock.close()
        ready.write_text(str(len(socks)))
        deadline = time.monotonic() + 90
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for sock in socks:
            sock.close()
        return json.dumps({"held": len(socks), "failed": failed}).encode()

    def run() -> None:
        result.update(json.loads(as_user(ATTACKER, hold, timeout=150)))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "setup: the attacker's 500 connections were not opened"
        ps = h.cli(VICTIM, "ps", "-a", timeout=60)
    finally:
        release.write_text("go")
        thread.join(120)
    assert ps.returncode == 0, f"atk2's docker ps failed while atk1 held 500 connections: {ps.stderr}"
    assert h.proc.poll() is None, "the gateway died under 500 idle connections"


# -- a daemon that dies mid-stream: a stand-in upstream and a second gateway in front of it


class StandInDaemon:
    """A Unix-socket server that answers like dockerd until a stream starts, then drops the connection."""

    def __init__(self, path: str, owner: str) -> None:
        self.path = path
        self.owner = owner
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(64)
        self.server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _unused = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            target = data.split(b" ", 2)[1].decode()
            path = target.split("?", 1)[0]
            if path.endswith("/_ping"):
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"
                )
            elif path.endswith("/json") and "/containers/" in path:
                ref = path.split("/containers/", 1)[1].split("/", 1)[0]
                doc = json.dumps(
                    {
                        "Id": "f" * 64,
                        "Name": f"/{ref}",
                        "Config": {"Labels": {"ds01.user": self.owner}, "Tty": False},
                        "State": {"Running": True, "Pid": 1},
                        "HostConfig": {},
                    }
                ).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(doc)}\r\n\r\n".encode()
                    + doc
                )
            elif "/export" in path:  # a length-framed stream cut short
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
                    + b"partial-export"
                )
                time.sleep(0.3)
            else:  # /events, /logs: a chunked stream cut short
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"e\r\npartial-stream\r\n"
                )
                time.sleep(0.3)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.server.close()


@pytest.fixture(scope="module")
def dying_upstream(repo_root, attack_gw):
    root = Path(tempfile.mkdtemp(prefix="ds01-atk-routes-", dir="/tmp"))
    os.chmod(root, 0o755)
    for sub in ("log", "run", "state", "data"):
        (root / sub).mkdir()
    (root / "resource-limits.yaml").write_text(
        gwharness.LIMITS.format(attacker=ATTACKER, admin_group=gwharness.ADMIN_GROUP, data=root / "data")
    )
    (root / "topology.yaml").write_text(gwharness.TOPOLOGY)
    standin = StandInDaemon(str(root / "standin.sock"), ATTACKER)
    sock = str(root / "gw.sock")
    log = open(root / "gateway.log", "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [
            str(repo_root / ".venv/bin/ds01"),
            "--config",
            str(root / "resource-limits.yaml"),
            "gateway",
            "serve",
            "--listen",
            sock,
            "--upstream",
            str(root / "standin.sock"),
            "--socket-group",
            "docker",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "DS01_GPU_TOPOLOGY": str(root / "topology.yaml")},
    )
    log.close()
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            standin.close()
            pytest.fail("setup: the second gateway did not start:\n" + (root / "gateway.log").read_text())
        time.sleep(0.1)
    yield sock
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    standin.close()
    shutil.rmtree(root, ignore_errors=True)


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    """(payload, whether a last-chunk ended it) of a chunked body that may be cut short."""
    out, rest = bytearray(), data
    while rest:
        line, sep, after = rest.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(line.split(b";")[0] or b"x", 16)
        except ValueError:
            raise AssertionError(f"the chunked body holds something that is not a chunk: {rest[:200]!r}") from None
        if size == 0:
            return bytes(out), True
        out += after[:size]
        rest = after[size + 2 :]
    return bytes(out), False


STREAMS = [
    ("events-chunked", "GET /v1.41/events", "partial-stream"),
    ("logs-follow-chunked", "GET /v1.41/containers/mine/logs?follow=1&stdout=1", "partial-stream"),
    ("export-length", "GET /v1.41/containers/mine/export", "partial-export"),
]


@pytest.mark.parametrize(("vid", "line", "payload"), STREAMS, ids=[r[0] for r in STREAMS])
def test_c9_a_stream_whose_daemon_dies_ends_with_a_closed_connection(dying_upstream, vid, line, payload):
    data, eof = exchange(ATTACKER, dying_upstream, f"{line} HTTP/1.1\r\nHost: docker\r\n\r\n".encode(), timeout=15)
    head, _sep, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), f"{vid}: the stream did not start: {data[:300]!r}"
    assert eof, f"{vid}: the gateway kept the client's connection open after the daemon went away: {data!r}"
    assert b"HTTP/1." not in body and b"ds01 gateway" not in body and b"message" not in body, (
        f"{vid}: an HTTP error was written into the started response: {body!r}"
    )
    if b"chunked" in head.lower():
        content, ended = _dechunk(body)
        assert not ended, f"{vid}: the cut stream was ended with a last-chunk, as if it were complete: {body!r}"
    else:
        content = body
    assert content == payload.encode(), f"{vid}: the client got {content!r}, the daemon sent {payload!r}"
