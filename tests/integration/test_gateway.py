"""The gateway on the real Docker engine, driven by the real docker CLI as ordinary Unix users.

A gateway (``ds01 gateway serve``) is started on a temp socket in front of the real daemon
socket; test users ``gwalice``, ``gwbob``, ``gwcarol`` (members of ``docker``) and ``gwadmin``
(member of the configured admin group) run ``docker -H unix://<temp socket> …`` through
``runuser``; root is the other admin. Containers use ``--network none``.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

USERS = ("gwalice", "gwbob", "gwcarol", "gwadmin")
ADMIN_GROUP = "gwadmins"
DOCKER_BIN = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"
REAL_SOCKET = "/var/run/docker.sock"
IMAGE = os.environ.get("DS01_IMAGE_MIN", "local/debian-min:bookworm")
GPU_IMAGE = "local/gw-nvidia-env:test"
GPU_UUIDS = ("GPU-00000000-0000-0000-0000-000000000000", "GPU-11111111-1111-1111-1111-111111111111")
MIG_UUIDS = ("MIG-aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa", "MIG-bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb")

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
  gwcarol:
    max_containers_per_user: 2
access_control:
  admin_group: {admin_group}
gpu_allocation:
  backend: fake
  topology: topology.yaml
gateway:
  readonly_bind_prefixes: ["{data}"]
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


def _ensure_users() -> None:
    if subprocess.run(["getent", "group", ADMIN_GROUP], capture_output=True, check=False).returncode:
        subprocess.run(["groupadd", ADMIN_GROUP], check=True)
    for user in USERS:
        if subprocess.run(["id", user], capture_output=True, check=False).returncode:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-G", "docker", user], check=True)
    subprocess.run(["usermod", "-aG", ADMIN_GROUP, "gwadmin"], check=True)


class Gateway:
    def __init__(self, root: Path, socket_path: str, proc: subprocess.Popen) -> None:
        self.root = root
        self.socket = socket_path
        self.proc = proc
        self.host = f"unix://{socket_path}"

    def docker(self, user: str, *args: str, input: str | None = None, timeout: float = 60, env: dict | None = None):
        home = pwd.getpwnam(user).pw_dir if user != "root" else "/root"
        base = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": home,
            "DOCKER_HOST": self.host,
            "DOCKER_CLI_HINTS": "false",
        }
        base.update(env or {})
        cmd = [DOCKER_BIN, *args]
        if user != "root":
            cmd = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in base.items()], *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout, env=base, check=False)

    def ok(self, user: str, *args: str, **kw) -> str:
        proc = self.docker(user, *args, **kw)
        assert proc.returncode == 0, f"{user}: docker {' '.join(args)} failed:\n{proc.stderr}"
        return proc.stdout

    def refused(self, user: str, *args: str, phrase: str = "", **kw) -> str:
        proc = self.docker(user, *args, **kw)
        assert proc.returncode != 0, f"{user}: docker {' '.join(args)} was not refused:\n{proc.stdout}"
        assert phrase in proc.stderr, proc.stderr
        return proc.stderr

    def events(self) -> list:
        path = self.root / "log" / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


@pytest.fixture(scope="module")
def gw(repo_root, docker_client):
    if os.geteuid() != 0:
        pytest.fail("the gateway tests create Unix users and run as them: run them as root (make integration)")
    try:
        docker_client.images.get(IMAGE)
    except Exception:
        pytest.fail(f"image {IMAGE} does not exist: run `make images`")
    _ensure_users()
    root = Path(tempfile.mkdtemp(prefix="ds01-gw-", dir="/tmp"))
    os.chmod(root, 0o755)
    data = root / "data"
    data.mkdir()
    for sub in ("log", "run", "state"):  # the ds01_common role creates these on a host
        (root / sub).mkdir()
    (data / "shared.txt").write_text("shared\n")
    (root / "resource-limits.yaml").write_text(LIMITS.format(admin_group=ADMIN_GROUP, data=data))
    (root / "topology.yaml").write_text(TOPOLOGY)
    sock = str(root / "gw.sock")
    log = open(root / "gateway.log", "w")  # noqa: SIM115 - closed at teardown
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
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            pytest.fail("the gateway did not start:\n" + (root / "gateway.log").read_text())
        time.sleep(0.1)
    gateway = Gateway(root, sock, proc)
    yield gateway
    for user in USERS:
        for cid in docker_client.containers.list(all=True, filters={"label": f"ds01.user={user}"}):
            with contextlib.suppress(Exception):
                cid.remove(force=True, v=True)
    with contextlib.suppress(Exception):
        docker_client.images.remove(GPU_IMAGE, force=True)
    with contextlib.suppress(Exception):
        docker_client.images.remove("gwalice/gw-build:1", force=True)
    proc.terminate()
    proc.wait(10)
    log.close()
    print((root / "gateway.log").read_text()[-4000:])
    shutil.rmtree(root, ignore_errors=True)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def pair(gw):
    """A running container of gwalice and one of gwbob."""
    a, b = _name("gw-a"), _name("gw-b")
    gw.ok("gwalice", "run", "-d", "--name", a, "--network", "none", IMAGE, "sleep", "infinity")
    gw.ok("gwbob", "run", "-d", "--name", b, "--network", "none", IMAGE, "sleep", "infinity")
    return a, b


# ---------------------------------------------------------------------------------------------
# visibility and ownership


def test_socket_is_open_to_every_login_and_identifies_each_caller(gw, docker_client):
    """Mode 0666 (the default): a login in no group at all reaches the gateway and is held to its own view;
    a system account (uid < 1000) reaches the socket but is refused, and nothing is made for it."""
    st = os.stat(gw.socket)
    assert oct(st.st_mode & 0o777) == "0o666"
    assert grp.getgrgid(st.st_gid).gr_name == "docker"
    if subprocess.run(["id", "gwloner"], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", "gwloner"], check=True)
    assert "docker" not in subprocess.run(["id", "-nG", "gwloner"], capture_output=True, text=True, check=True).stdout
    assert gw.ok("gwloner", "ps", "-a", "--format", "{{.Names}}").split() == []
    name = _name("sysacct")
    stderr = gw.refused("daemon", "run", "--name", name, "--network", "none", IMAGE, "true", phrase="system account")
    assert "uid 1 (daemon)" in stderr
    assert docker_client.containers.list(all=True, filters={"name": name}) == []


def test_each_user_sees_only_their_containers_and_admins_see_all(gw, pair):
    a, b = pair
    alice = gw.ok("gwalice", "ps", "-a", "--format", "{{.Names}}").split()
    bob = gw.ok("gwbob", "ps", "-a", "--format", "{{.Names}}").split()
    assert a in alice and b not in alice
    assert b in bob and a not in bob
    # a user's own filter cannot widen the view
    assert b not in gw.ok("gwalice", "ps", "-a", "--filter", "label=ds01.user=gwbob", "--format", "{{.Names}}").split()
    for admin in ("root", "gwadmin"):
        names = gw.ok(admin, "ps", "-a", "--format", "{{.Names}}").split()
        assert a in names and b in names


def test_created_containers_carry_owner_slice_and_limits(gw, pair, docker_client):
    a, _b = pair
    attrs = docker_client.api.inspect_container(a)
    labels = attrs["Config"]["Labels"]
    assert labels["ds01.user"] == "gwalice"
    assert labels["ds01.managed"] == "true"
    assert labels["ds01.container_type"] == "docker"
    assert labels["ds01.created_at"].endswith("Z")
    host = attrs["HostConfig"]
    assert host["CgroupParent"] == "ds01-student-gwalice.slice"
    assert (host["NanoCpus"], host["Memory"], host["MemorySwap"], host["ShmSize"], host["PidsLimit"]) == (
        1_500_000_000,
        2 << 30,
        3 << 30,
        256 << 20,
        300,
    )
    assert "NVIDIA_VISIBLE_DEVICES=void" in attrs["Config"]["Env"]


OTHERS_OPS = [
    ("inspect", ["inspect", "{c}"]),
    ("logs", ["logs", "{c}"]),
    ("exec", ["exec", "{c}", "id"]),
    ("stop", ["stop", "-t", "1", "{c}"]),
    ("kill", ["kill", "{c}"]),
    ("restart", ["restart", "{c}"]),
    ("pause", ["pause", "{c}"]),
    ("unpause", ["unpause", "{c}"]),
    ("rm", ["rm", "-f", "{c}"]),
    ("rename", ["rename", "{c}", "stolen"]),
    ("update", ["update", "--memory", "8g", "{c}"]),
    ("cp from", ["cp", "{c}:/etc/hostname", "/tmp/gw-stolen"]),
    ("cp to", ["cp", "/etc/hostname", "{c}:/tmp/x"]),
    ("export", ["export", "-o", "/tmp/gw-stolen.tar", "{c}"]),
    ("top", ["top", "{c}"]),
    ("stats", ["stats", "--no-stream", "{c}"]),
    ("diff", ["diff", "{c}"]),
    ("port", ["port", "{c}"]),
    ("attach", ["attach", "--no-stdin", "{c}"]),
    ("commit", ["commit", "{c}", "stolen:image"]),
    ("wait", ["wait", "{c}"]),
]


@pytest.mark.parametrize(("what", "args"), OTHERS_OPS, ids=[o[0] for o in OTHERS_OPS])
def test_operations_on_another_users_container_are_refused(gw, pair, what, args):
    _a, b = pair
    gw.refused("gwalice", *[x.format(c=b) for x in args], phrase="NOT_OWNER", timeout=30)


def test_an_id_prefix_of_another_users_container_finds_nothing(gw, pair, docker_client):
    """Attack round 12 (F3): a lookup of another user's container by an id prefix answered NOT_OWNER with its
    name and owner, so anyone could list every container on the server and whose it is, a prefix at a time. It is
    NOT_FOUND now, naming only what was asked, on the versioned path too; by its exact name the container is
    still NOT_OWNER (docs/users/refusals.md). The daemon still has it (root's side)."""
    _a, b = pair
    full = docker_client.api.inspect_container(b)["Id"]
    said = gw.refused("gwalice", "container", "inspect", full[:8], phrase="No such container")
    assert b not in said and "gwbob" not in said, said
    status, body = raw_request(
        gw.socket, "gwalice", f"GET /v1.41/containers/{full[:12]}/json HTTP/1.1\r\nHost: d\r\n\r\n"
    )
    assert status == 404 and "NOT_FOUND" in body and b not in body and "gwbob" not in body, body
    said = gw.refused("gwalice", "container", "inspect", full, phrase="No such container")
    assert b not in said and "gwbob" not in said, said
    gw.refused("gwalice", "inspect", b, phrase="belongs to gwbob")


def test_admins_may_do_everything(gw, pair):
    a, b = pair
    assert gw.ok("root", "exec", b, "cat", "/etc/hostname").strip()
    assert gw.ok("gwadmin", "inspect", "-f", "{{.Name}}", a).strip() == f"/{a}"
    gw.ok("gwadmin", "logs", b)


def test_exec_instances_are_checked_through_their_container(gw, pair, docker_client):
    _a, b = pair
    exec_id = docker_client.api.exec_create(b, ["true"])["Id"]
    for request in (
        f"GET /exec/{exec_id}/json HTTP/1.1\r\nHost: d\r\n\r\n",
        f"POST /exec/{exec_id}/start HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        "Content-Length: 16\r\n\r\n"
        '{"Detach": true}',
    ):
        status, body = raw_request(gw.socket, "gwalice", request)
        # another user's exec instance is not there for this user (round 12: no name or owner is told)
        assert status == 404 and "NOT_FOUND" in body and b not in body and "gwbob" not in body, body
    assert docker_client.api.exec_inspect(exec_id)["Running"] is False  # never started (root's side)


def test_protected_containers_are_admin_only(gw, docker_client, test_label):
    name = _name("gw-protected")
    docker_client.containers.create(
        IMAGE,
        name=name,
        network_mode="none",
        labels={**test_label.labels, "ds01.user": "gwalice", "ds01.protected": "true"},
    )
    gw.refused("gwalice", "rm", name, phrase="protected infrastructure")
    gw.ok("gwadmin", "rm", name)


def test_events_show_only_own_containers(gw):
    since = str(int(time.time()) - 1)
    mine, theirs = _name("gw-ev-a"), _name("gw-ev-b")
    gw.ok("gwalice", "create", "--name", mine, "--network", "none", IMAGE)
    gw.ok("gwbob", "create", "--name", theirs, "--network", "none", IMAGE)
    until = str(int(time.time()) + 1)
    out = gw.ok(
        "gwalice",
        "events",
        "--since",
        since,
        "--until",
        until,
        "--filter",
        "type=container",
        "--format",
        "{{.Actor.Attributes.name}}",
    )
    assert mine in out.split() and theirs not in out.split()
    gw.ok("gwalice", "rm", mine)
    gw.ok("gwbob", "rm", theirs)


# ---------------------------------------------------------------------------------------------
# escapes


@pytest.fixture(scope="module")
def nvidia_env_image(gw):
    subprocess.run(
        f"tar -c --files-from /dev/null | {DOCKER_BIN} -H unix://{REAL_SOCKET} "
        f"import -c 'ENV NVIDIA_VISIBLE_DEVICES=all' - {GPU_IMAGE}",
        shell=True,
        check=True,
        capture_output=True,
    )
    return GPU_IMAGE


ESCAPES = [
    ("privileged", ["--privileged"], "--privileged"),
    ("root bind", ["-v", "/:/host"], "outside the directories"),
    ("etc bind ro", ["-v", "/etc:/etc2:ro"], "outside the directories"),
    ("mount bind", ["--mount", "type=bind,src=/,dst=/host"], "outside the directories"),
    ("other home", ["-v", "/home/gwbob:/b"], "outside the directories"),
    ("dotdot", ["-v", "/home/gwalice/../gwbob:/b"], "/home/gwbob"),
    # a symlink the user made could point elsewhere by the start: refused whatever it points at now
    ("symlink", ["-v", "/home/gwalice/gw-etc-link:/e"], "goes through the symbolic link"),
    ("shared data rw", ["-v", "{data}:/data"], "read-only"),
    ("docker socket", ["-v", "/var/run/docker.sock:/var/run/docker.sock"], "Docker socket"),
    ("gateway socket", ["-v", "{sock}:/gw.sock"], "Docker socket"),
    ("pid host", ["--pid=host"], "--pid=host"),
    ("ipc host", ["--ipc=host"], "--ipc=host"),
    ("uts host", ["--uts=host"], "--uts=host"),
    ("userns host", ["--userns=host"], "--userns=host"),
    ("network host", ["--network", "host"], "--network host"),
    ("cap sys_admin", ["--cap-add", "SYS_ADMIN"], "SYS_ADMIN"),
    ("cap all", ["--cap-add", "ALL"], "ALL"),
    ("seccomp", ["--security-opt", "seccomp=unconfined"], "seccomp"),
    ("apparmor", ["--security-opt", "apparmor=unconfined"], "apparmor"),
    ("systempaths", ["--security-opt", "systempaths=unconfined"], "systempaths"),
    ("nvidia device", ["--device", "/dev/nvidia0"], "--gpus"),
    ("host disk", ["--device", "/dev/sda"], "/dev/sda"),
    ("device cgroup rule", ["--device-cgroup-rule", "c 195:* rwm"], "--device-cgroup-rule"),
    ("cgroup parent of bob", ["--cgroup-parent", "ds01-student-gwbob.slice"], "not your slice"),
    ("volumes-from bob", ["--volumes-from", "{b}"], "belongs to gwbob"),
    ("pid of bob", ["--pid", "container:{b}"], "belongs to gwbob"),
    ("network of bob", ["--network", "container:{b}"], "belongs to gwbob"),
    ("oom kill disable", ["--oom-kill-disable"], "--oom-kill-disable"),
    ("nvidia env all", ["-e", "NVIDIA_VISIBLE_DEVICES=all"], ""),
    ("nvidia runtime", ["--runtime", "nvidia", "-e", "NVIDIA_VISIBLE_DEVICES=all"], ""),
]


@pytest.mark.parametrize(("what", "flags", "phrase"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escape_attempts_are_refused_with_their_message(gw, pair, what, flags, phrase):
    _a, b = pair
    link = "/home/gwalice/gw-etc-link"
    if not os.path.islink(link):
        os.symlink("/etc", link)
    args = [f.format(b=b, sock=gw.socket, data=gw.root / "data") for f in flags]
    stderr = (
        gw.refused("gwalice", "create", "--network", "none", *args, IMAGE, "true", phrase=phrase)
        if "--network" not in args
        else gw.refused("gwalice", "create", *args, IMAGE, "true", phrase=phrase)
    )
    assert "Error response from daemon: " in stderr
    code = stderr.split("Error response from daemon: ", 1)[1].split(":", 1)[0]
    assert code in (
        "POLICY_DENIED",
        "NOT_OWNER",
        "NO_GPU_AVAILABLE",
        "FULL_GPU_NOT_ALLOWED",
        "EXCEEDS_CONTAINER_LIMIT",
        "AGGREGATE_GPU_QUOTA_EXCEEDED",
        "USER_AT_LIMIT",
    )


def test_image_default_gpu_env_is_a_gpu_request(gw, nvidia_env_image):
    stderr = gw.refused("gwalice", "create", "--network", "none", nvidia_env_image, "true")
    assert "NVIDIA" in stderr or "GPU" in stderr
    # asking for no GPU explicitly is fine, whatever the image says
    name = _name("gw-void")
    gw.ok(
        "gwalice",
        "create",
        "--name",
        name,
        "--network",
        "none",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=void",
        nvidia_env_image,
        "true",
    )
    gw.ok("gwalice", "rm", name)


def test_spoofed_owner_label_is_overwritten(gw, docker_client):
    name = _name("gw-spoof")
    gw.ok(
        "gwalice",
        "create",
        "--name",
        name,
        "--network",
        "none",
        "--label",
        "ds01.user=gwbob",
        "--label",
        "ds01.protected=true",
        IMAGE,
    )
    labels = docker_client.api.inspect_container(name)["Config"]["Labels"]
    assert labels["ds01.user"] == "gwalice" and "ds01.protected" not in labels
    assert name not in gw.ok("gwbob", "ps", "-a", "--format", "{{.Names}}").split()
    gw.ok("gwalice", "rm", name)


def test_exec_privileged_is_refused(gw, pair):
    a, _b = pair
    gw.refused("gwalice", "exec", "--privileged", a, "id", phrase="POLICY_DENIED")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["system", "prune", "-f"], "admins only"),
        (["container", "prune", "-f"], "admins only"),
        (["volume", "prune", "-f"], "admins only"),
        (["plugin", "ls"], "admins only"),
        (["swarm", "init"], "admins only"),
        (["secret", "ls"], "admins only"),
    ],
)
def test_daemon_wide_endpoints_are_admin_only(gw, args, phrase):
    gw.refused("gwalice", *args, phrase=phrase)


def test_bind_volume_of_host_path_is_refused(gw):
    gw.refused(
        "gwalice",
        "volume",
        "create",
        "--opt",
        "type=none",
        "--opt",
        "o=bind",
        "--opt",
        "device=/etc",
        _name("gw-vol"),
        phrase="has driver options",
    )


def raw_request(path: str, user: str, data: str | bytes) -> tuple:
    """Send raw bytes as ``user`` (via a child that drops privileges) and return (status, body)."""
    payload = data if isinstance(data, bytes) else data.encode()
    script = textwrap.dedent(
        """
        import socket, sys
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read())
        s.shutdown(socket.SHUT_WR); out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk: break
            out += chunk
        sys.stdout.buffer.write(out)
        """
    )
    proc = subprocess.run(
        ["runuser", "-u", user, "--", "python3", "-c", script, path],
        input=payload,
        capture_output=True,
        timeout=30,
        check=True,
    )
    head, _sep, body = proc.stdout.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode(errors="replace")


def test_conflicting_framing_is_refused_before_the_daemon(gw, docker_client):
    name = _name("gw-smuggle")
    body = json.dumps({"Image": IMAGE, "HostConfig": {"Privileged": True, "NetworkMode": "none"}})
    request = (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        f"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n{body}\r\n0\r\n\r\n"
    )
    status, text = raw_request(gw.socket, "gwalice", request)
    assert status == 400 and "Transfer-Encoding and Content-Length" in text
    doubled = (
        f"POST /containers/create?name={name} HTTP/1.1\r\nHost: d\r\nContent-Length: {len(body)}\r\n"
        f"Content-Length: 2\r\n\r\n{body}"
    )
    assert raw_request(gw.socket, "gwalice", doubled)[0] == 400
    folded = (
        f"POST /containers/create?name={name} HTTP/1.1\r\nHost: d\r\nContent-Length: {len(body)}\r\n X: y\r\n\r\n{body}"
    )
    assert raw_request(gw.socket, "gwalice", folded)[0] == 400
    assert not docker_client.containers.list(all=True, filters={"name": name})


def test_pipelined_requests_are_each_checked(gw, docker_client):
    name = _name("gw-pipe")
    evil = json.dumps({"Image": IMAGE, "HostConfig": {"Privileged": True, "NetworkMode": "none"}})
    request = (
        "GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"
        f"POST /containers/create?name={name} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(evil)}\r\n\r\n{evil}"
    )
    proc_status, text = raw_request(gw.socket, "gwalice", request)
    assert proc_status == 200
    assert "POLICY_DENIED" in text and "--privileged" in text
    assert not docker_client.containers.list(all=True, filters={"name": name})


def test_root_inside_a_container_is_its_owner(gw, pair, docker_client, test_label):
    """An admin-made container of gwalice's with the gateway socket: root in it acts as gwalice."""
    a, b = pair
    script = (
        f"docker -H unix:///gw.sock ps -a --format '{{{{.Names}}}}'; echo ---; "
        f"docker -H unix:///gw.sock inspect {b} 2>&1; echo ---; "
        "docker -H unix:///gw.sock run --rm --privileged --network none " + IMAGE + " true 2>&1; echo done"
    )
    out = docker_client.containers.run(
        IMAGE,
        ["sh", "-c", script],
        remove=True,
        network_mode="none",
        labels={**test_label.labels, "ds01.user": "gwalice"},
        volumes={gw.socket: {"bind": "/gw.sock", "mode": "rw"}, DOCKER_BIN: {"bind": "/usr/bin/docker", "mode": "ro"}},
    ).decode()
    names, inspect, run = out.split("---")
    assert a in names.split() and b not in names.split()
    assert "NOT_OWNER" in inspect and "belongs to gwbob" in inspect
    assert "POLICY_DENIED" in run


def test_container_limit(gw):
    names = [_name("gw-carol") for _i in range(2)]
    for name in names:
        gw.ok("gwcarol", "create", "--name", name, "--network", "none", IMAGE)
    gw.refused("gwcarol", "create", "--network", "none", IMAGE, phrase="CONTAINER_LIMIT")
    for name in names:
        gw.ok("gwcarol", "rm", name)


# ---------------------------------------------------------------------------------------------
# legitimate work streams through


def test_run_it_with_a_tty(gw):
    cmd = (
        f"DOCKER_HOST={gw.host} {DOCKER_BIN} run -it --rm --network none {IMAGE} sh -c 'tty; read line; echo got:$line'"
    )
    proc = subprocess.run(
        ["runuser", "-u", "gwalice", "--", "script", "-qec", cmd, "/dev/null"],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "/dev/pts/" in proc.stdout and "got:hello" in proc.stdout


def test_exec_it_and_exec_stdin(gw, pair):
    a, _b = pair
    cmd = f"DOCKER_HOST={gw.host} {DOCKER_BIN} exec -it {a} sh -c 'tty; read x; echo exec:$x'"
    proc = subprocess.run(
        ["runuser", "-u", "gwalice", "--", "script", "-qec", cmd, "/dev/null"],
        input="abc\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "/dev/pts/" in proc.stdout and "exec:abc" in proc.stdout
    # stdin without a TTY, closed by the client (half-close must reach the process)
    data = "x" * 300000
    out = gw.ok("gwalice", "exec", "-i", a, "wc", "-c", input=data)
    assert out.strip() == str(len(data))


def test_logs_follow_and_cp(gw, tmp_path):
    name = _name("gw-logs")
    gw.ok(
        "gwalice",
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 0.3; done",
    )
    out = gw.ok("gwalice", "logs", "-f", name, timeout=30)
    assert out.split() == ["line1", "line2", "line3"]
    src = Path("/home/gwalice/gw-cp-in.txt")
    src.write_text("copied in\n")
    os.chown(src, pwd.getpwnam("gwalice").pw_uid, -1)
    gw.ok("gwalice", "cp", str(src), f"{name}:/tmp/in.txt")
    gw.ok("gwalice", "cp", f"{name}:/tmp/in.txt", "/home/gwalice/gw-cp-out.txt")
    assert Path("/home/gwalice/gw-cp-out.txt").read_text() == "copied in\n"
    gw.ok("gwalice", "rm", name)


def test_bind_mounts_of_home_and_shared_data(gw):
    out = gw.ok(
        "gwalice",
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "/home/gwalice:/w",
        "-v",
        f"{gw.root / 'data'}:/data:ro",
        IMAGE,
        "sh",
        "-c",
        "cat /data/shared.txt; ls -d /w",
    )
    assert out.split() == ["shared", "/w"]


def test_build(gw, tmp_path):
    context = Path(tempfile.mkdtemp(dir="/home/gwalice"))
    (context / "Dockerfile").write_text(f"FROM {IMAGE}\nCOPY payload /payload\nRUN test -s /payload\n")
    with open(context / "payload", "wb") as handle:
        handle.write(os.urandom(8 * 1024 * 1024))
    subprocess.run(["chown", "-R", "gwalice:gwalice", str(context)], check=True)
    gw.ok(
        "gwalice",
        "build",
        "--network",
        "none",
        "-t",
        "gwalice/gw-build:1",
        str(context),
        env={"DOCKER_BUILDKIT": "0"},
        timeout=180,
    )
    gw.refused(
        "gwalice",
        "build",
        "--network",
        "host",
        "-t",
        "gw-build:host",
        str(context),
        env={"DOCKER_BUILDKIT": "0"},
        phrase="POLICY_DENIED",
    )
    shutil.rmtree(context)


def test_compose_up_and_down(gw, docker_client):
    project = Path(tempfile.mkdtemp(dir="/home/gwalice"))
    (project / "docker-compose.yml").write_text(
        textwrap.dedent(
            f"""
            version: "2.4"
            services:
              app:
                image: {IMAGE}
                command: sleep infinity
                network_mode: none
            """
        )
    )
    subprocess.run(["chown", "-R", "gwalice:gwalice", str(project)], check=True)
    env = f"DOCKER_HOST={gw.host}"
    name = f"gwc{uuid.uuid4().hex[:6]}"
    up = subprocess.run(
        ["runuser", "-u", "gwalice", "--", "env", env, "docker-compose", "-p", name, "up", "-d"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    containers = docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"})
    assert len(containers) == 1
    assert containers[0].labels["ds01.user"] == "gwalice"
    assert containers[0].labels["ds01.container_type"] == "compose"
    down = subprocess.run(
        ["runuser", "-u", "gwalice", "--", "env", env, "docker-compose", "-p", name, "down"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    shutil.rmtree(project)


# ---------------------------------------------------------------------------------------------
# GPUs (fake topology; created, never started: there is no NVIDIA runtime)


def test_gpus_1_is_rewritten_to_a_granted_uuid(gw, docker_client):
    name = _name("gw-gpu")
    gw.ok("gwbob", "create", "--name", name, "--network", "none", "--gpus", "1", IMAGE)
    attrs = docker_client.api.inspect_container(name)
    requests = attrs["HostConfig"]["DeviceRequests"]
    assert len(requests) == 1 and len(requests[0]["DeviceIDs"]) == 1
    granted = requests[0]["DeviceIDs"][0]
    assert granted in GPU_UUIDS + MIG_UUIDS
    labels = attrs["Config"]["Labels"]
    assert labels["ds01.gpu.uuids"] == granted
    assert "ds01.gpu.slots" in labels
    assert f"NVIDIA_VISIBLE_DEVICES={granted}" in attrs["Config"]["Env"]
    # beyond the quota (1.0 gpueq, already held): the allocator's sentence, through the docker CLI
    stderr = gw.refused("gwbob", "create", "--network", "none", "--gpus", "1", IMAGE)
    assert "Error response from daemon: USER_AT_LIMIT: " in stderr
    # the granted device disappears (MIG layout changed): start is refused with what to do
    topology = gw.root / "topology.yaml"
    saved = topology.read_text()
    try:
        topology.write_text(saved.replace(granted, granted[:-4] + "9999"))
        stderr = gw.refused("gwbob", "start", name, phrase="no longer exists")
        assert granted in stderr and "docker rm" in stderr
    finally:
        topology.write_text(saved)
    gw.ok("gwbob", "rm", name)


def test_gpu_request_the_allocator_cannot_decide_is_refused_but_plain_containers_run(gw):
    """NVML down (here: an unreadable fake topology): GPU requests refused with a sentence, others proceed."""
    topology = gw.root / "topology.yaml"
    saved = topology.read_text()
    try:
        topology.write_text("gpus: [this is not a topology\n")
        stderr = gw.refused("gwalice", "create", "--network", "none", "--gpus", "1", IMAGE)
        assert "Error response from daemon: " in stderr and len(stderr.split(":", 2)[-1].strip()) > 20
        name = _name("gw-plain")
        gw.ok("gwalice", "create", "--name", name, "--network", "none", IMAGE)
        gw.ok("gwalice", "rm", name)
    finally:
        topology.write_text(saved)


# ---------------------------------------------------------------------------------------------
# audit


def test_refusals_and_creates_are_in_the_event_log(gw, pair):
    events = gw.events()
    types = {e["event_type"] for e in events}
    assert {"container.create", "gateway.refused", "auth.denied"} <= types
    denied = [e for e in events if e["event_type"] == "auth.denied" and e.get("user") == "gwalice"]
    assert any(e["details"]["code"] == "NOT_OWNER" for e in denied)
    assert any(e["event_type"] == "container.create" and e.get("user") == "gwalice" for e in events)
    why = gw.root / "state" / "refusals" / "gwalice.json"
    assert why.exists() and why.stat().st_uid == pwd.getpwnam("gwalice").pw_uid


def test_gateway_survived_everything(gw):
    assert gw.proc.poll() is None
    assert gw.ok("gwalice", "version", "--format", "{{.Server.Version}}").strip()


def test_gateway_publishes_counters_for_the_exporter(gw):
    """After the tests above: forwarded and refused requests, with a latency histogram, in the file
    the exporter reads (``<run_dir>/gateway/metrics.json``, republished every 10 s)."""
    path = gw.root / "run" / "gateway" / "metrics.json"
    deadline = time.monotonic() + 15
    while True:
        data = json.loads(path.read_text()) if path.exists() else {}
        requests = data.get("requests", {})
        if requests.get("forwarded") and requests.get("refused"):
            break
        assert time.monotonic() < deadline, f"no counters published yet: {data}"
        time.sleep(0.5)
    buckets = data["latency"]["buckets"]
    assert buckets[-1][0] == "+Inf"
    counts = [count for _le, count in buckets]
    assert counts == sorted(counts)  # cumulative, as Prometheus expects
    assert counts[-1] >= requests["forwarded"] + requests["refused"] > 0
    assert data["latency"]["sum"] > 0
