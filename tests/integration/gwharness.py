"""The shared attack harness for the gateway's adversarial corpus (tests/integration/test_gateway_attacks_*.py).

A gateway (``ds01 gateway serve``) runs on a temp socket in front of the real daemon socket, with a
fake GPU topology, a student group with limits, ``max_containers_per_user: 3`` for the attacker and a
read-only data prefix. Three real Unix users talk to it:

- ``atk1``: the attacker (member of ``docker``),
- ``atk2``: the victim (member of ``docker``), holding ``/home/atk2/secret`` (0600, random content),
- ``atkadm``: a member of the configured admin group.

Root holds ``/root/ds01-canary`` (0600, random content).

Requests are sent by processes whose kernel credentials ARE the user: :meth:`Harness.raw` forks, drops
to the user (setgroups/setgid/setuid), connects to the gateway socket and sends exactly the bytes given;
:meth:`Harness.cli` runs the real docker CLI through ``runuser``. Evidence is gathered as root on the
real daemon socket (:meth:`Harness.stored`, :meth:`Harness.containers_of`), by running the container
(:meth:`Harness.probe`: started THROUGH the gateway as its owner, then the command is executed in it
with the container's own user) and on the host (:meth:`Harness.host_gained`).

Everything the corpus makes is named with :attr:`Harness.prefix` (containers, volumes, networks,
image tags) and/or carries the session's test label; :meth:`Harness.close` removes it all.

Used through the ``attack_gw`` session fixture (tests/integration/conftest.py)::

    def test_x(attack_gw):
        h = attack_gw
        status, headers, body = h.raw("atk1", "POST", f"/v1.41/containers/create?name={h.name('x')}", {...})
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Union

ATTACKER = "atk1"
VICTIM = "atk2"
ADMIN = "atkadm"
USERS = (ATTACKER, VICTIM, ADMIN)
ADMIN_GROUP = "atkadmins"
REAL_SOCKET = "/var/run/docker.sock"
DOCKER_BIN = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"
DEBIAN_DOCKER_BIN = "/usr/bin/docker"
IMAGE = os.environ.get("DS01_IMAGE_MIN", "local/debian-min:bookworm")
EMPTY_IMAGE = os.environ.get("DS01_IMAGE_EMPTY", "local/empty:latest")
ROOT_CANARY = "/root/ds01-canary"
VICTIM_SECRET = f"/home/{VICTIM}/secret"
GPU_UUIDS = ("GPU-00000000-0000-0000-0000-000000000000", "GPU-11111111-1111-1111-1111-111111111111")
MIG_UUIDS = ("MIG-aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa", "MIG-bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb")
API = "/v1.41"

LIMITS = """
default_group: student
groups:
  student:
    max_containers_per_user: 10
    max_cpus: 1.5
    memory: 2g
    memory_swap: 3g
    shm_size: 256m
    pids_limit: 300
    max_gpu_equivalents: 1.0
    max_gpu_slots_per_container: 1
    allow_full_gpu: true
user_overrides:
  {attacker}:
    max_containers_per_user: 3
access_control:
  admin_group: {admin_group}
gpu_allocation:
  backend: fake
  topology: topology.yaml
gateway:
  readonly_bind_prefixes: ["{data}"]
  max_upload_bytes: 8m
paths:
  state_dir: state
  log_dir: log
  run_dir: run
"""
TOPOLOGY = f"""
gpus:
  - {{index: 0, uuid: {GPU_UUIDS[0]}, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}}
  - {{index: 1, uuid: {GPU_UUIDS[1]}, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}}
  - index: 2
    uuid: GPU-22222222-2222-2222-2222-222222222222
    name: NVIDIA A100-SXM4-40GB
    memory_mib: 40960
    mig: true
    instances:
      - {{profile: 3g.20gb, uuid: {MIG_UUIDS[0]}}}
      - {{profile: 3g.20gb, uuid: {MIG_UUIDS[1]}}}
"""

Body = Union[bytes, str, dict, list, None]


class HarnessError(RuntimeError):
    """The harness itself could not do what was asked (not a finding about the gateway)."""


# ---------------------------------------------------------------------------------------------
# users


def ensure_users() -> None:
    """Create atk1, atk2 (docker) and atkadm (docker + admin group) when missing."""
    if subprocess.run(["getent", "group", ADMIN_GROUP], capture_output=True, check=False).returncode:
        subprocess.run(["groupadd", ADMIN_GROUP], check=True)
    for user in USERS:
        if subprocess.run(["id", user], capture_output=True, check=False).returncode:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", "-G", "docker", user], check=True)
        else:
            subprocess.run(["usermod", "-aG", "docker", user], check=True)
    subprocess.run(["usermod", "-aG", ADMIN_GROUP, ADMIN], check=True)


def ids(user: str) -> tuple[int, int, list[int]]:
    """(uid, primary gid, all gids) of ``user`` as the kernel will see them after login."""
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid, os.getgrouplist(user, pw.pw_gid)


def as_user(user: str, fn: Callable[[], bytes], timeout: float = 60) -> bytes:
    """Run ``fn`` in a forked child whose kernel credentials are ``user``'s; return the bytes it returned.

    The child calls setgroups/setgid/setuid (real and effective), so SO_PEERCRED on any socket it
    connects reports the user. An exception in the child is raised here as :class:`HarnessError`.
    """
    uid, gid, groups = ids(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 0
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            try:
                data = b"O" + fn()
            except BaseException as exc:
                data = b"E" + f"{type(exc).__name__}: {exc}".encode(errors="replace")
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view) :]
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                break
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    data = b"".join(chunks)
    if not data:
        raise HarnessError(f"the child running as {user} returned nothing")
    if data[:1] == b"E":
        raise HarnessError(f"as {user}: {data[1:].decode(errors='replace')}")
    return data[1:]


# ---------------------------------------------------------------------------------------------
# HTTP/1.1 over a Unix socket, read exactly as framed


class _Stream:
    def __init__(self, sock: socket.socket, initial: bytes = b"") -> None:
        self.sock = sock
        self.buf = bytearray(initial)
        self.eof = False
        self.raw = bytearray()

    def _more(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(1 << 16)
        except (socket.timeout, ConnectionResetError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._more():
                data = bytes(self.buf)
                self.buf.clear()
                return data
        idx = self.buf.index(marker) + len(marker)
        data = bytes(self.buf[:idx])
        del self.buf[:idx]
        return data

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n and self._more():
            pass
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def rest(self) -> bytes:
        while self._more():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if lines[0].startswith("HTTP/") and len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return status, headers


def read_response(stream: _Stream, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One response from ``stream``: (status, lower-cased headers, de-chunked body). 1xx answers are skipped."""
    while True:
        head = stream.until(b"\r\n\r\n")
        if not head:
            return 0, {}, b""
        status, headers = parse_head(head)
        if 100 <= status < 200 and status != 101:
            continue
        break
    if method == "HEAD" or status in (101, 204, 304):
        return status, headers, b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = stream.until(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                break
            if size == 0:
                stream.until(b"\r\n")
                break
            body += stream.exactly(size)
            stream.exactly(2)
        return status, headers, bytes(body)
    if "content-length" in headers:
        return status, headers, stream.exactly(int(headers["content-length"]))
    return status, headers, stream.rest()


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response in ``data`` (what :meth:`Harness.raw_bytes` returned), in order."""

    class _Done:
        def recv(self, _n: int) -> bytes:
            return b""

    stream = _Stream(_Done(), data)  # type: ignore[arg-type]
    out = []
    while stream.buf:
        status, headers, body = read_response(stream)
        if not status:
            break
        out.append((status, headers, body))
    return out


def encode_body(body: Body) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def build_request(method: str, target: str, body: Body = None, headers: Optional[dict] = None) -> bytes:
    """An HTTP/1.1 request: Host, then ``headers`` (these win), Content-Type/Length when a body is given."""
    data = encode_body(body)
    merged: dict[str, str] = {"Host": "docker"}
    if body is not None:
        merged["Content-Type"] = "application/json"
        merged["Content-Length"] = str(len(data))
    for key, value in (headers or {}).items():
        for existing in [k for k in merged if k.lower() == key.lower()]:
            del merged[existing]
        if value is not None:
            merged[key] = value
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in merged.items()) + "\r\n"
    return head.encode("latin-1") + data


# ---------------------------------------------------------------------------------------------
# evidence helpers


def message_of(body: bytes) -> str:
    """The gateway's/daemon's ``message`` (or the body as text)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return doc["message"]
    return body.decode(errors="replace")


def assert_sentence(status: int, body: bytes) -> str:
    """A refusal is an HTTP error whose message is a sentence (words, not a traceback). Returns the message."""
    assert 400 <= status < 600, f"expected an error answer, got {status}: {body[:300]!r}"
    text = message_of(body)
    assert "Traceback" not in text and 'File "' not in text, f"a traceback was sent to the user: {text[:600]}"
    words = [w for w in text.replace(":", " ").split() if any(c.isalpha() for c in w)]
    assert len(words) >= 4, f"the answer is not a sentence: {text!r}"
    return text


def assert_cli_sentence(proc: subprocess.CompletedProcess) -> str:
    """The docker CLI failed and printed the daemon's (gateway's) sentence, not a traceback."""
    assert proc.returncode != 0, f"the command was not refused:\n{proc.stdout}"
    text = proc.stderr
    assert "Traceback" not in text, text
    assert len([w for w in text.split() if any(c.isalpha() for c in w)]) >= 4, text
    return text


# ---------------------------------------------------------------------------------------------
# the harness


class Harness:
    def __init__(self, root: Path, socket_path: str, proc: subprocess.Popen, client: Any, label: str) -> None:
        self.root = root
        self.socket = socket_path
        self.host = f"unix://{socket_path}"
        self.proc = proc
        self.client = client  # docker SDK, root, on the real socket
        self.label = label  # "key=value": the session's test label
        self.label_key, _unused, self.label_value = label.partition("=")
        self.prefix = f"atk{uuid.uuid4().hex[:6]}-"
        self.data = root / "data"
        self.canaries: dict[str, str] = {}
        self.images: list[str] = []

    # -- names ------------------------------------------------------------------------------------
    def name(self, what: str = "c") -> str:
        """A unique name that cleanup will find (containers, volumes, networks, image repos)."""
        return f"{self.prefix}{what}-{uuid.uuid4().hex[:6]}".lower()

    def tag(self, user: str, what: str = "img", version: str = "1") -> str:
        """An image tag ``user`` may make (users name images under ``<login>/``), cleanup finds it."""
        return f"{user}/{self.name(what)}:{version}"

    @property
    def labels(self) -> dict[str, str]:
        return {self.label_key: self.label_value}

    def home(self, user: str) -> Path:
        return Path(pwd.getpwnam(user).pw_dir)

    def uid(self, user: str) -> int:
        return pwd.getpwnam(user).pw_uid

    def gid(self, user: str) -> int:
        return pwd.getpwnam(user).pw_gid

    # -- requests as a user ---------------------------------------------------------------------
    def raw(
        self,
        user: str,
        method: str,
        target: str,
        body: Body = None,
        headers: Optional[dict] = None,
        timeout: float = 60,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 request over the gateway socket from a process that IS ``user``.

        ``body`` is sent byte for byte when bytes/str (so duplicate keys and odd spellings survive);
        a dict/list is JSON-encoded. Returns (status, lower-cased headers, de-chunked body).
        """
        data = build_request(method, target, body, headers)
        sock_path = self.socket

        def go() -> bytes:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(sock_path)
            sock.sendall(data)
            stream = _Stream(sock)
            status, headers_, body_ = read_response(stream, method)
            sock.close()
            return json.dumps({"status": status, "headers": headers_, "body": body_.hex()}).encode()

        doc = json.loads(as_user(user, go, timeout=timeout + 5))
        return doc["status"], doc["headers"], bytes.fromhex(doc["body"])

    def raw_bytes(self, user: str, data: bytes, timeout: float = 10, half_close: bool = True) -> bytes:
        """Send hand-made bytes as ``user``; return everything read until EOF (or ``timeout`` of silence)."""
        sock_path = self.socket

        def go() -> bytes:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(sock_path)
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            out = _Stream(sock).rest()
            sock.close()
            return out

        return as_user(user, go, timeout=timeout + 30)

    def api(self, user: str, method: str, path: str, body: Body = None, **kw: Any) -> tuple[int, dict, bytes]:
        """:meth:`raw` with the versioned API prefix (``/v1.41``)."""
        return self.raw(user, method, API + path, body, **kw)

    def create(self, user: str, body: Body, name: Optional[str] = None) -> tuple[str, int, bytes]:
        """POST /containers/create as ``user``; returns (name, status, body)."""
        name = name or self.name()
        status, _h, answer = self.api(user, "POST", f"/containers/create?name={name}", body)
        return name, status, answer

    def cli(
        self,
        user: str,
        *args: str,
        input: Optional[str] = None,
        timeout: float = 120,
        env: Optional[dict] = None,
        debian: bool = False,
        cwd: Optional[str] = None,
    ) -> subprocess.CompletedProcess:
        """The real docker CLI as ``user`` through the gateway (``debian=True``: Debian's 20.10 CLI)."""
        return self.run_as(user, [DEBIAN_DOCKER_BIN if debian else DOCKER_BIN, *args], input, timeout, env, cwd)

    def run_as(
        self,
        user: str,
        argv: list[str],
        input: Optional[str] = None,
        timeout: float = 120,
        env: Optional[dict] = None,
        cwd: Optional[str] = None,
    ) -> subprocess.CompletedProcess:
        """Any program as ``user`` (runuser) with DOCKER_HOST pointing at the gateway."""
        base = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.home(user)),
            "DOCKER_HOST": self.host,
            "DOCKER_CLI_HINTS": "false",
            "LC_ALL": "C",
        }
        base.update(env or {})
        cmd = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in base.items()], *argv]
        return subprocess.run(
            cmd, capture_output=True, text=True, input=input, timeout=timeout, env=base, check=False, cwd=cwd
        )

    # -- root-side evidence ---------------------------------------------------------------------
    def stored(self, name_or_id: str) -> Optional[dict]:
        """What the daemon stored for a container (inspect as root on the real socket), or None."""
        import docker

        try:
            return self.client.api.inspect_container(name_or_id)
        except docker.errors.NotFound:
            return None

    def containers_of(self, user: str) -> list[dict]:
        """Every container (running or not) the daemon has labelled as ``user``'s."""
        return self.client.api.containers(all=True, filters={"label": f"ds01.user={user}"})

    def volume(self, name: str) -> Optional[dict]:
        import docker

        try:
            return self.client.api.inspect_volume(name)
        except docker.errors.NotFound:
            return None

    def network(self, name: str) -> Optional[dict]:
        import docker

        try:
            return self.client.api.inspect_network(name)
        except docker.errors.NotFound:
            return None

    def start(self, container: str, user: Optional[str] = None) -> subprocess.CompletedProcess:
        """``docker start`` THROUGH the gateway as the container's owner (or ``user``)."""
        info = self.stored(container)
        owner = user or ((info or {}).get("Config", {}).get("Labels") or {}).get("ds01.user") or ATTACKER
        return self.cli(owner, "start", container, timeout=60)

    def probe(self, container: str, shell_cmd: str, user: Optional[str] = None) -> Optional[str]:
        """Start ``container`` through the gateway as its owner, then run ``shell_cmd`` in it with the
        container's own user and privileges (root-side exec, no user override); return what it printed.

        None when the container did not run (the start was refused or it exited at once).
        """
        info = self.stored(container)
        if info is None:
            return None
        if not info["State"]["Running"]:
            started = self.start(container, user)
            if started.returncode != 0:
                return None
        info = self.stored(container)
        if info is None or not info["State"]["Running"]:
            return None
        exec_id = self.client.api.exec_create(info["Id"], ["sh", "-c", shell_cmd])["Id"]
        out = self.client.api.exec_start(exec_id)
        return out.decode(errors="replace")

    def leaks(self, text: Optional[str]) -> list[str]:
        """Which canary contents appear in ``text``."""
        if not text:
            return []
        return [path for path, value in self.canaries.items() if value in text]

    def can_read(self, user: str, path: str) -> bool:
        def go() -> bytes:
            try:
                with open(path, "rb") as handle:
                    handle.read(1)
            except OSError:
                return b"0"
            return b"1"

        return as_user(user, go) == b"1"

    def host_gained(self, user: str = ATTACKER, extra_dirs: tuple = ()) -> list[str]:
        """What ``user`` gained on the host: setuid/setgid files owned by someone else (root above all)
        and device nodes under their home (and ``extra_dirs``), and canaries/``/etc/shadow`` they can read.
        Empty when nothing was gained."""
        uid, _gid, groups = ids(user)
        found = []
        for top in (self.home(user), *extra_dirs):
            for dirpath, dirnames, filenames in os.walk(top):
                for entry in dirnames + filenames:
                    path = os.path.join(dirpath, entry)
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
                        found.append(f"device node {path} ({os.major(st.st_rdev)}:{os.minor(st.st_rdev)})")
                    elif stat.S_ISREG(st.st_mode):
                        if st.st_mode & stat.S_ISUID and st.st_uid != uid:
                            found.append(f"setuid file {path} owned by uid {st.st_uid}")
                        if st.st_mode & stat.S_ISGID and st.st_gid not in groups:
                            found.append(f"setgid file {path} of gid {st.st_gid}")
        for path in (*self.canaries, "/etc/shadow"):
            if self.can_read(user, path):
                found.append(f"{user} can read {path}")
        return found

    # -- scratch --------------------------------------------------------------------------------
    def scratch(self, user: str = ATTACKER) -> Path:
        """A fresh directory in ``user``'s home, owned by them (removed at close)."""
        path = self.home(user) / self.name("d")
        path.mkdir()
        os.chown(path, self.uid(user), self.gid(user))
        return path

    def image_with(self, *changes: str) -> str:
        """A local image = IMAGE plus Dockerfile ``changes`` (``ENV X=y``, ``USER root``), tagged with the prefix."""
        tag = f"{self.name('img')}:t"
        holder = self.client.api.create_container(IMAGE, ["true"], labels=self.labels, network_disabled=True)
        try:
            repo, _unused, ver = tag.partition(":")
            self.client.api.commit(holder["Id"], repository=repo, tag=ver, changes=list(changes))
        finally:
            self.client.api.remove_container(holder["Id"], force=True)
        self.images.append(tag)
        return tag

    def remove(self, *names: str) -> None:
        """Force-remove containers (as root) — used by vectors to stay under the attacker's count."""
        for ref in names:
            with contextlib.suppress(Exception):
                self.client.api.remove_container(ref, force=True, v=True)

    # -- teardown -------------------------------------------------------------------------------
    def cleanup(self) -> None:
        api = self.client.api
        for info in api.containers(all=True):
            names = [n.lstrip("/") for n in info.get("Names") or []]
            labels = info.get("Labels") or {}
            mine = labels.get(self.label_key) == self.label_value or any(n.startswith(self.prefix) for n in names)
            if mine:
                with contextlib.suppress(Exception):
                    api.remove_container(info["Id"], force=True, v=True)
        for vol in (api.volumes() or {}).get("Volumes") or []:
            labels = vol.get("Labels") or {}
            if vol["Name"].startswith(self.prefix) or labels.get(self.label_key) == self.label_value:
                with contextlib.suppress(Exception):
                    api.remove_volume(vol["Name"], force=True)
        for net in api.networks():
            labels = net.get("Labels") or {}
            if net["Name"].startswith(self.prefix) or labels.get(self.label_key) == self.label_value:
                with contextlib.suppress(Exception):
                    api.remove_network(net["Id"])
        for image in api.images():
            for tag in image.get("RepoTags") or []:
                if tag.startswith(self.prefix) or tag.partition("/")[2].startswith(self.prefix):
                    with contextlib.suppress(Exception):
                        api.remove_image(tag, force=True)
        for user in USERS:
            for path in self.home(user).glob(f"{self.prefix}*"):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()

    def close(self) -> None:
        try:
            self.cleanup()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            for path in self.canaries:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            log = self.root / "gateway.log"
            if log.exists():
                print(log.read_text(errors="replace")[-3000:])
            shutil.rmtree(self.root, ignore_errors=True)


def _write_canary(path: str, owner: str) -> str:
    value = f"ds01-canary-{secrets.token_hex(16)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.chmod(path, 0o600)
    pw = pwd.getpwnam(owner)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return value


def start_gateway(repo_root: Path, client: Any, label: str) -> Harness:
    """Users, canaries, config and a running ``ds01 gateway serve``; raises HarnessError on failure."""
    if os.geteuid() != 0:
        raise HarnessError("the attack corpus creates Unix users and runs as them: run it as root")
    for image in (IMAGE, EMPTY_IMAGE):
        try:
            client.images.get(image)
        except Exception as exc:
            raise HarnessError(f"image {image} does not exist: run `make images`") from exc
    ensure_users()
    root = Path(tempfile.mkdtemp(prefix="ds01-atk-", dir="/tmp"))
    os.chmod(root, 0o755)
    for sub in ("log", "run", "state", "data"):
        (root / sub).mkdir()
    (root / "data" / "shared.txt").write_text("shared\n")
    (root / "resource-limits.yaml").write_text(
        LIMITS.format(attacker=ATTACKER, admin_group=ADMIN_GROUP, data=root / "data")
    )
    (root / "topology.yaml").write_text(TOPOLOGY)
    sock = str(root / "gw.sock")
    log = open(root / "gateway.log", "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [
            str(repo_root / ".venv/bin/ds01"),
            "--config",
            str(root / "resource-limits.yaml"),
            "-v",
            "gateway",
            "serve",
            "--listen",
            sock,
            "--upstream",
            REAL_SOCKET,
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
            raise HarnessError("the gateway did not start:\n" + (root / "gateway.log").read_text())
        time.sleep(0.1)
    harness = Harness(root, sock, proc, client, label)
    harness.canaries[ROOT_CANARY] = _write_canary(ROOT_CANARY, "root")
    harness.canaries[VICTIM_SECRET] = _write_canary(VICTIM_SECRET, VICTIM)
    return harness


__all__ = [
    "ADMIN",
    "ADMIN_GROUP",
    "API",
    "ATTACKER",
    "DEBIAN_DOCKER_BIN",
    "DOCKER_BIN",
    "EMPTY_IMAGE",
    "GPU_UUIDS",
    "IMAGE",
    "MIG_UUIDS",
    "REAL_SOCKET",
    "ROOT_CANARY",
    "VICTIM",
    "VICTIM_SECRET",
    "Harness",
    "HarnessError",
    "as_user",
    "assert_cli_sentence",
    "assert_sentence",
    "build_request",
    "message_of",
    "parse_responses",
    "start_gateway",
]
