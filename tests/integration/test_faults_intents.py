"""A GPU grant outlives the process that made it: killed creators never double-book a slot.

Real parts only: the real Docker engine, real gateway processes (``ds01 gateway serve``) and real
allocator processes that are SIGKILLed, real Unix users (``flta``, ``fltb``) speaking through the
docker CLI. The only stand-ins are the GPUs (a topology YAML with UUIDs unique to this run) and a
slow upstream: a Unix-socket proxy in front of the daemon's socket that holds one create (chosen by
its container name) until the test lets it through, so a creator can be killed while its create is
in flight and the daemon then finishes it. Evidence is read as root on the daemon's own socket:
each container's ``HostConfig.DeviceRequests`` and labels, the intent files and the event log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import allocator, config, events, fsutil, gpu, intents

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

USERS = ("flta", "fltb")
REAL_SOCKET = "/var/run/docker.sock"
DOCKER_BIN = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"
EMPTY_IMAGE = os.environ.get("DS01_IMAGE_EMPTY", "local/empty:latest")
SETTLE_IN_TEST_S = 2.0  # the kill-at-each-step test shortens intents.SETTLE_S (a reserve() argument)

LIMITS = """
default_group: student
groups:
  student:
    max_containers_per_user: 10
    max_gpu_equivalents: 8.0
    max_gpu_slots_per_container: 1
    allow_full_gpu: true
gpu_allocation:
  backend: fake
  topology: topology.yaml
paths:
  state_dir: state
  log_dir: log
  run_dir: run
"""


def _topology(count: int) -> tuple:
    """A topology of ``count`` whole GPUs with UUIDs no other test uses (the engine is shared)."""
    tag = uuid.uuid4().hex
    uuids = tuple(f"GPU-{tag[:8]}-{i:04d}-4000-8000-{tag[8:20]}" for i in range(count))
    lines = ["gpus:"] + [
        f"  - {{index: {i}, uuid: {u}, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}}" for i, u in enumerate(uuids)
    ]
    return "\n".join(lines) + "\n", uuids


def _ensure_users() -> None:
    for user in USERS:
        if subprocess.run(["id", user], capture_output=True, check=False).returncode:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-G", "docker", user], check=True)


def _holders(client, uuids: tuple) -> dict:
    """UUID → names of every container on the daemon whose DeviceRequests name it (root's view)."""
    out: dict = {u: [] for u in uuids}
    for summary in client.api.containers(all=True):
        try:
            doc = client.api.inspect_container(summary["Id"])
        except Exception:  # removed meanwhile
            continue
        for request in (doc.get("HostConfig") or {}).get("DeviceRequests") or []:
            for device in request.get("DeviceIDs") or []:
                if device in out:
                    out[device].append(doc["Name"].lstrip("/"))
    return out


def _device_ids(doc: dict) -> list:
    return [d for r in (doc["HostConfig"].get("DeviceRequests") or []) for d in (r.get("DeviceIDs") or [])]


# ---------------------------------------------------------------------------------------------
# the slow upstream


class SlowUpstream:
    """A Unix socket that passes every byte to the daemon's socket, except that the create of a
    container whose name starts with ``hold`` is held until :meth:`release`.

    The held request reaches the daemon even when its client has died meanwhile (the daemon-side
    create is in flight), and the daemon's answer to it is kept in :attr:`orphan_answers`.
    """

    def __init__(self, path: str, hold: str, real: str = REAL_SOCKET) -> None:
        self.path = path
        self.real = real
        self.pattern = re.compile(rb"POST [^ ]*/containers/create\?[^ ]*name=" + re.escape(hold.encode()))
        self.held = threading.Event()
        self._release = threading.Event()
        self.answered = threading.Event()
        self.orphan_answers: list = []
        self.trace: list = []  # what happened to the held request (said when the daemon's answer never comes)
        self._socks: list = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        os.chmod(path, 0o600)
        self._server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        for sock in [self._server, *self._socks]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _addr = self._server.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.real)
            self._socks += [conn, up]
            state = {"held_sent": False, "client_gone": False}
            threading.Thread(target=self._to_daemon, args=(conn, up, state), daemon=True).start()
            threading.Thread(target=self._to_client, args=(conn, up, state), daemon=True).start()

    def _to_daemon(self, conn: socket.socket, up: socket.socket, state: dict) -> None:
        while True:
            try:
                data = conn.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            if self.pattern.search(data):
                self.trace.append(f"held {len(data)} bytes: {data[:80]!r}")
                self.held.set()
                self._release.wait(120)
                state["held_sent"] = True
            try:
                up.sendall(data)
            except OSError as exc:
                self.trace.append(f"sending {len(data)} bytes to the daemon failed: {exc}")
                return
            if state["held_sent"]:
                self.trace.append(f"sent {len(data)} bytes to the daemon after the release")
        state["client_gone"] = True
        if state["held_sent"]:
            self.answered.wait(120)  # the daemon finishes the create nobody waits for
        with contextlib.suppress(OSError):
            up.shutdown(socket.SHUT_RDWR)

    def _to_client(self, conn: socket.socket, up: socket.socket, state: dict) -> None:
        while True:
            try:
                data = up.recv(1 << 16)
            except OSError:
                return
            if not data:
                if state["held_sent"]:
                    self.trace.append("the daemon closed the held connection")
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                return
            if state["held_sent"]:
                self.trace.append(f"the daemon sent {data[:40]!r}")
            delivered = False
            if not state["client_gone"]:
                try:
                    conn.sendall(data)
                    delivered = True
                except OSError:
                    state["client_gone"] = True
            if state["held_sent"] and data.startswith(b"HTTP/"):
                if not delivered:
                    self.orphan_answers.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
                self.answered.set()


# ---------------------------------------------------------------------------------------------
# the gateway case


class Site:
    """A config root with its own run/log/state directories, and the gateways started on it."""

    def __init__(self, root: Path, topology: str, uuids: tuple, prefix: str) -> None:
        self.root = root
        self.uuids = uuids
        self.prefix = prefix
        for sub in ("log", "run", "state"):
            (root / sub).mkdir()
        (root / "resource-limits.yaml").write_text(LIMITS)
        (root / "topology.yaml").write_text(topology)
        self.procs: list = []

    def gateway(self, name: str, upstream: str) -> tuple:
        sock = str(self.root / f"{name}.sock")
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ds01"),
                "--config",
                str(self.root / "resource-limits.yaml"),
                "-v",
                "gateway",
                "serve",
                "--listen",
                sock,
                "--upstream",
                upstream,
                "--socket-group",
                "docker",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DS01_GPU_TOPOLOGY": str(self.root / "topology.yaml")},
        )
        log.close()
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the gateway {name} did not start:\n" + (self.root / f"{name}.log").read_text())
            time.sleep(0.1)
        return proc, f"unix://{sock}"

    def docker(self, user: str, host: str, *args: str, wait: bool = True):
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": f"/home/{user}",
            "DOCKER_HOST": host,
            "DOCKER_CLI_HINTS": "false",
            "LC_ALL": "C",
        }
        cmd = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()], DOCKER_BIN, *args]
        if not wait:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)

    def intents(self) -> list:
        return intents.read_all(str(self.root / "run" / intents.DIR_NAME))

    def events(self) -> list:
        path = self.root / "log" / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


@pytest.fixture
def site(docker_client, test_label):
    if os.geteuid() != 0:
        pytest.fail("these tests create Unix users and run as them: run them as root (make integration)")
    try:
        docker_client.images.get(EMPTY_IMAGE)
    except Exception:
        pytest.fail(f"image {EMPTY_IMAGE} does not exist: run `make images`")
    _ensure_users()
    root = Path(tempfile.mkdtemp(prefix="ds01-flt-", dir="/tmp"))
    os.chmod(root, 0o755)
    text, uuids = _topology(2)
    made = Site(root, text, uuids, f"flt{uuid.uuid4().hex[:6]}-")
    yield made
    made.close()
    for summary in docker_client.api.containers(all=True):
        names = [n.lstrip("/") for n in summary.get("Names") or []]
        if (
            any(n.startswith(made.prefix) for n in names)
            or (summary.get("Labels") or {}).get(test_label.key) == test_label.value
        ):
            with contextlib.suppress(Exception):
                docker_client.api.remove_container(summary["Id"], force=True, v=True)
    for name in sorted(os.listdir(root)):
        if name.endswith(".log"):
            print(f"--- {name}\n" + (root / name).read_text(errors="replace")[-2000:])
    shutil.rmtree(root, ignore_errors=True)


def test_gateway_killed_mid_create_the_slot_is_never_granted_twice(site, docker_client, test_label):
    gpu0, gpu1 = site.uuids
    held_name = f"{site.prefix}held-a"
    proxy = SlowUpstream(str(site.root / "slow.sock"), hold=f"{site.prefix}held")
    try:
        first, first_host = site.gateway("g1", upstream=proxy.path)
        create = ["create", "--network", "none", "--label", str(test_label)]
        cut_off = site.docker(
            "flta",
            first_host,
            *create,
            "--gpus",
            f"device={gpu0}",
            "--name",
            held_name,
            EMPTY_IMAGE,
            "true",
            wait=False,
        )
        assert proxy.held.wait(60), "the create never reached the daemon's side of the gateway"

        # The grant is on disk before the create reached the daemon: flta, this container, GPU 0.
        (pending,) = site.intents()
        assert (pending.user, pending.container, pending.uuids) == ("flta", held_name, (gpu0,))
        assert pending.pid == first.pid

        first.send_signal(signal.SIGKILL)  # the gateway dies; the kernel drops the allocator lock
        first.wait(30)
        out, said = cut_off.communicate(timeout=60)
        assert cut_off.returncode != 0, f"the cut-off create reported success:\n{out}"
        print("the cut-off user saw:", said.strip())
        assert docker_client.api.containers(all=True, filters={"name": held_name}) == []  # still in flight

        # A fresh gateway; fltb asks for the same GPU while flta's create is in flight.
        second, second_host = site.gateway("g2", upstream=REAL_SOCKET)
        same = site.docker(
            "fltb",
            second_host,
            *create,
            "--gpus",
            f"device={gpu0}",
            "--name",
            f"{site.prefix}b-same",
            EMPTY_IMAGE,
            "true",
        )
        assert same.returncode != 0, f"GPU {gpu0} was granted a second time:\n{same.stdout}"
        assert "NO_GPU_AVAILABLE" in same.stderr and "held by another container" in same.stderr, same.stderr
        anyone = site.docker(
            "fltb", second_host, *create, "--gpus", "1", "--name", f"{site.prefix}b-any", EMPTY_IMAGE, "true"
        )
        assert anyone.returncode == 0, anyone.stderr

        # The daemon finishes the create nobody waits for.
        proxy.release()
        assert proxy.answered.wait(60), f"the daemon never answered the held create: {proxy.trace}"
        assert [a.split()[1] for a in proxy.orphan_answers] == ["201"], proxy.orphan_answers
        again = site.docker(
            "fltb",
            second_host,
            *create,
            "--gpus",
            f"device={gpu0}",
            "--name",
            f"{site.prefix}b-again",
            EMPTY_IMAGE,
            "true",
        )
        assert again.returncode != 0 and "NO_GPU_AVAILABLE" in again.stderr, again.stdout + again.stderr
    finally:
        proxy.close()

    # Root-side evidence: one holder per GPU, each the container that was granted it.
    a_doc = docker_client.api.inspect_container(held_name)
    b_doc = docker_client.api.inspect_container(f"{site.prefix}b-any")
    assert _device_ids(a_doc) == [gpu0] and _device_ids(b_doc) == [gpu1]
    a_labels, b_labels = a_doc["Config"]["Labels"], b_doc["Config"]["Labels"]
    assert a_labels["ds01.user"] == "flta" and a_labels["ds01.gpu.uuids"] == gpu0
    assert a_labels[intents.LABEL] == pending.token
    assert b_labels["ds01.user"] == "fltb" and b_labels["ds01.gpu.uuids"] == gpu1
    assert _holders(docker_client, site.uuids) == {gpu0: [held_name], gpu1: [f"{site.prefix}b-any"]}

    # The cut-off user's container was found and reported, and no intent is left behind.
    assert site.intents() == []
    recovered = [e for e in site.events() if e["event_type"] == "gpu.intent_recovered"]
    assert len(recovered) == 1
    assert recovered[0]["user"] == "flta" and recovered[0]["details"]["container"] == held_name
    assert recovered[0]["details"]["recovered"] is True and recovered[0]["details"]["writer_alive"] is False
    shown = subprocess.run(
        [
            str(Path(sys.executable).parent / "ds01"),
            "--config",
            str(site.root / "resource-limits.yaml"),
            "events",
            "--user",
            "flta",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "gpu.intent_recovered" in [e["event_type"] for e in json.loads(shown.stdout)["events"]]
    assert second.poll() is None  # the fresh gateway is still serving


# ---------------------------------------------------------------------------------------------
# SIGKILL of the allocator lock holder at each step of reserve()

# The child: reserve() for one GPU, then create the container on the daemon (through ``upstream``),
# pausing at ``step``: it prints the step and sleeps until it is killed.
CHILD = r"""
import json, sys, time
import docker
from ds01 import allocator, config, gpu
from ds01 import docker as docker_state

args = json.loads(sys.argv[1])
step = args["step"]

def pause(where):
    if where == step:
        print(step, flush=True)
        time.sleep(600)

class Pausing:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0
    def containers(self, **kw):
        self.calls += 1
        pause("locked" if self.calls == 1 else "released")
        return self.inner.containers(**kw)
    def __getattr__(self, name):
        return getattr(self.inner, name)

class Client:
    def __init__(self, inner):
        self.api = Pausing(inner.api)
    def close(self):
        pass

class Log:
    def write(self, event_type, user=None, source=None, **details):
        if event_type == "gpu.allocate":
            pause("granted")
        return True

reader = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
maker = docker.APIClient(base_url="unix://" + args["upstream"], timeout=120)
cfg = config.load_config(args["config"])
request = allocator.Request(device_ids=(args["uuid"],), container=args["name"])
with allocator.reserve(
    args["user"], request, limits=cfg.resolve(args["user"]), inventory=gpu.read_inventory(args["topology"]),
    client=Client(reader), lock_path=args["lock"], event_log=Log(), mapping_dir=args["mapping"],
) as grant:
    if step == "in_flight":
        print(step, flush=True)  # the create goes to the slow upstream, which holds it
    maker.create_container(
        args["image"], ["true"], name=args["name"],
        labels={**args["labels"], "ds01.user": args["user"], **allocator.grant_labels(grant)},
        host_config=maker.create_host_config(
            network_mode="none", device_requests=[allocator.sdk_device_request(grant)]
        ),
    )
    pause("created")
print("done", flush=True)
"""

STEPS = ("locked", "granted", "in_flight", "created", "released")


def _recv_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        pytest.fail(f"the allocator child ended before pausing:\n{proc.stderr.read()}")
    return line.strip()


def test_sigkill_of_the_lock_holder_at_each_step_never_double_books(docker_client, test_label, tmp_path):
    text, uuids = _topology(len(STEPS))
    (tmp_path / "topology.yaml").write_text(text)
    for sub in ("run", "log", "state", "map"):
        (tmp_path / sub).mkdir()
    (tmp_path / "resource-limits.yaml").write_text(LIMITS)
    cfg = config.load_config(str(tmp_path / "resource-limits.yaml"))
    inventory = gpu.read_inventory(str(tmp_path / "topology.yaml"))
    lock_path = str(tmp_path / "run" / allocator.LOCK_NAME)
    intent_dir = str(tmp_path / "run" / intents.DIR_NAME)
    log = events.EventLog(str(tmp_path / "log" / "events.jsonl"))
    prefix = f"flt{uuid.uuid4().hex[:6]}-"
    proxy = SlowUpstream(str(tmp_path / "slow.sock"), hold=f"{prefix}in_flight")
    children: list = []
    outcomes: dict = {}

    def second_try(device: str, name: str, settle: float = intents.SETTLE_S) -> Optional[str]:
        """fltb asks for ``device``; a grant is used to create the container (as the gateway would).
        Returns the refusal code, or None when it was granted."""
        try:
            with allocator.reserve(
                "fltb",
                allocator.Request(device_ids=(device,), container=name),
                limits=cfg.resolve("fltb"),
                inventory=inventory,
                client=docker_client,
                lock_path=lock_path,
                lock_timeout_s=10,
                event_log=log,
                intent_settle_s=settle,
            ) as grant:
                docker_client.api.create_container(
                    EMPTY_IMAGE,
                    ["true"],
                    name=name,
                    labels={**test_label.labels, "ds01.user": "fltb", **allocator.grant_labels(grant)},
                    host_config=docker_client.api.create_host_config(
                        network_mode="none", device_requests=[allocator.sdk_device_request(grant)]
                    ),
                )
        except allocator.AllocationRefused as exc:
            return exc.code
        return None

    try:
        for step, device in zip(STEPS, uuids):
            args = {
                "step": step,
                "user": "flta",
                "uuid": device,
                "name": f"{prefix}{step}",
                "config": str(tmp_path / "resource-limits.yaml"),
                "topology": str(tmp_path / "topology.yaml"),
                "lock": lock_path,
                "mapping": str(tmp_path / "map"),
                "upstream": proxy.path,
                "image": EMPTY_IMAGE,
                "labels": test_label.labels,
            }
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            children.append(child)
            assert _recv_line(child) == step
            if step == "in_flight":
                assert proxy.held.wait(60), "the child's create never reached the slow upstream"
            child.send_signal(signal.SIGKILL)
            child.wait(30)
            killed_at = time.monotonic()

            probe = fsutil.FileLock(lock_path)  # the kernel dropped the dead holder's lock
            assert probe.acquire(0.0), f"the allocator lock is still held after the holder was killed at {step}"
            probe.release()

            left = [i for i in intents.read_all(intent_dir) if i.uuids == (device,)]
            assert len(left) == (1 if step in ("granted", "in_flight", "created") else 0), (step, left)
            first = second_try(device, f"{prefix}{step}-b")
            if step == "locked":
                assert first is None, "nothing was granted before the kill, yet the GPU stayed blocked"
                outcomes[step] = "free at once"
                continue
            assert first == allocator.NO_GPU_AVAILABLE, f"killed at {step}: the GPU was granted again"
            if step == "granted":  # no create ever reached the daemon: the intent dies once it settled
                for _attempt in range(1000):
                    code = second_try(device, f"{prefix}{step}-b", settle=SETTLE_IN_TEST_S)
                    if code is None:
                        break
                    assert code == allocator.NO_GPU_AVAILABLE
                    time.sleep(0.2)
                assert code is None, "the dead intent never stopped counting"
                outcomes[step] = f"free after {time.monotonic() - killed_at:.2f} s (settle {SETTLE_IN_TEST_S:g} s)"
            if step == "in_flight":  # the daemon finishes the dead child's create
                proxy.release()
                assert proxy.answered.wait(60), f"the daemon never answered the held create: {proxy.trace}"
                assert second_try(device, f"{prefix}{step}-c", settle=0.0) == allocator.NO_GPU_AVAILABLE
                outcomes[step] = "held by the recovered container"
            if step in ("created", "released"):
                outcomes[step] = "held by the child's container"
            assert [i for i in intents.read_all(intent_dir) if i.uuids == (device,)] == []
        holders = _holders(docker_client, uuids)
    finally:
        proxy.close()
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(30)
            child.stdout.close()
            child.stderr.close()
        for summary in docker_client.api.containers(all=True):
            if any(n.lstrip("/").startswith(prefix) for n in summary.get("Names") or []):
                with contextlib.suppress(Exception):
                    docker_client.api.remove_container(summary["Id"], force=True)

    print("kill-at-step outcomes:", outcomes)
    assert all(len(names) == 1 for names in holders.values()), holders  # no GPU double-booked
    assert holders[uuids[0]] == [f"{prefix}locked-b"] and holders[uuids[1]] == [f"{prefix}granted-b"]
    assert [holders[u] for u in uuids[2:]] == [[f"{prefix}{s}"] for s in STEPS[2:]]  # the killed children's
    kinds = {(e["event_type"], (e.get("details") or {}).get("container")) for e in log.read()}
    assert ("gpu.release", f"{prefix}granted") in kinds  # the dead intent, with its reason
    assert ("gpu.intent_recovered", f"{prefix}in_flight") in kinds
    assert ("gpu.intent_recovered", f"{prefix}created") in kinds
    probe = fsutil.FileLock(lock_path)
    assert probe.acquire(0.0), "the allocator lock is held after every holder was killed"
    probe.release()
