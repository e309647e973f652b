"""``ds01 doctor --json`` on real parts, healthy and then broken.

A private dockerd (``private_dockerd.PrivateDockerd``, its socket made root's only, 0600) stands in for the
daemon's own socket; a real gateway (``ds01 gateway serve``) listens in front of it on the config's
``gateway.listen``; a real exporter serves ``/metrics`` on a free port; ``ds01 detect once`` writes the detector's
inventory and ``ds01 lifecycle run`` the lifecycle's last run; the event log is written by ``ds01 events log``.
The GPU is the fake topology (one GPU). Healthy, every check passes (exit 0). Then the test breaks five things
the way they break on a host: the gateway stops, the daemon's socket is opened to everyone (0666), the detector's
inventory goes stale, one event line is edited, and a container is created holding a GPU UUID the topology does
not have; doctor must exit 1 and name exactly those checks, with root-side evidence that each break is real.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import pytest
from private_dockerd import PrivateDockerd

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

DOCKER_BIN = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"
EMPTY_IMAGE = os.environ.get("DS01_IMAGE_EMPTY", "local/empty:latest")
GPU_UUID = "GPU-d0c70000-0000-4000-8000-000000000001"
VANISHED_UUID = "GPU-d0c70000-0000-4000-8000-00000000dead"

LIMITS = """
default_group: student
groups:
  student:
    max_containers_per_user: 4
    max_gpu_equivalents: 1.0
gpu_allocation:
  backend: fake
  topology: topology.yaml
gateway:
  listen: {listen}
  upstream: {upstream}
  socket_mode: "0666"
monitoring:
  exporter_port: {port}
paths:
  state_dir: state
  log_dir: log
  run_dir: run
"""
GPU_ARGS = ("--gpus", f"device={VANISHED_UUID}", EMPTY_IMAGE, "/x")
TOPOLOGY = f"""
gpus:
  - {{index: 0, uuid: {GPU_UUID}, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class World:
    def __init__(self, root: Path, bin_path: Path, daemon: PrivateDockerd) -> None:
        self.root = root
        self.bin = bin_path
        self.daemon = daemon
        self.config = root / "resource-limits.yaml"

    def ds01(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_HOST": self.daemon.host}
        env.pop("DS01_GPU_TOPOLOGY", None)
        return subprocess.run(
            [str(self.bin), "--config", str(self.config), *args], capture_output=True, text=True, check=False, env=env
        )

    def doctor(self) -> tuple:
        done = self.ds01("doctor", "--json")
        assert done.stdout, done.stderr
        checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        return done.returncode, checks


def _wait(predicate, what: str, proc=None, log=None) -> None:
    for _attempt in range(600):
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited:\n" + (log.read_text() if log else ""))
        time.sleep(0.1)
    pytest.fail(f"{what} did not come up")


@pytest.fixture(scope="module")
def world(repo_root, docker_client):
    assert os.geteuid() == 0, "make test runs as root: the daemon's socket is root's"
    try:
        docker_client.images.get(EMPTY_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {EMPTY_IMAGE} does not exist: run `make images`")
    root = Path(tempfile.mkdtemp(prefix="ds01-doctor-", dir="/tmp"))
    os.chmod(root, 0o755)
    for sub in ("log", "run", "state", "daemon"):
        (root / sub).mkdir()
    daemon = PrivateDockerd(str(root / "daemon"))
    port = _free_port()
    listen = root / "gw.sock"
    (root / "resource-limits.yaml").write_text(LIMITS.format(listen=listen, upstream=daemon.path, port=port))
    (root / "topology.yaml").write_text(TOPOLOGY)
    bin_path = repo_root / ".venv/bin/ds01"
    procs = []
    logs = []
    try:
        daemon.start()
        os.chmod(daemon.path, 0o600)  # root's only, as the ds01_gateway role leaves it
        saved = subprocess.Popen([DOCKER_BIN, "save", EMPTY_IMAGE], stdout=subprocess.PIPE)
        subprocess.run(
            [DOCKER_BIN, "-H", daemon.host, "load", "-q"], stdin=saved.stdout, check=True, capture_output=True
        )
        saved.stdout.close()
        assert saved.wait() == 0
        world = World(root, bin_path, daemon)
        for name, args in (("gateway", ("gateway", "serve")), ("exporter", ("exporter", "serve", "--cache-s", "1"))):
            log_path = root / f"{name}.log"
            log = open(log_path, "w")  # noqa: SIM115 - closed at teardown
            logs.append(log)
            proc = subprocess.Popen(
                [str(bin_path), "--config", str(world.config), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "DOCKER_HOST": daemon.host},
            )
            procs.append(proc)
            world.__dict__[name] = proc
        _wait(listen.exists, "the gateway", procs[0], root / "gateway.log")
        _wait(
            lambda: "listening on" in (root / "exporter.log").read_text(),
            "the exporter",
            procs[1],
            root / "exporter.log",
        )
        for args in (("detect", "once"), ("lifecycle", "run"), ("events", "log", "doctor.test", "n=1")):
            done = world.ds01(*args)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        for n in (2, 3):
            assert world.ds01("events", "log", "doctor.test", f"n={n}").returncode == 0
        yield world
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        for log in logs:
            log.close()
        for name in ("gateway", "exporter"):
            if (root / f"{name}.log").exists():
                print(name, (root / f"{name}.log").read_text()[-2000:])
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_doctor_passes_when_healthy_and_names_each_broken_part(world):
    rc, checks = world.doctor()
    assert rc == 0, json.dumps(checks, indent=1)
    assert set(checks) == {
        "config",
        "gateway",
        "gateway_socket",
        "daemon_socket",
        "detector",
        "lifecycle",
        "exporter",
        "gpu",
        "slices",
        "gpu_holders",
        "event_log",
        "event_chain",
    }
    assert all(c["ok"] for c in checks.values())

    # 1. the gateway stops
    world.gateway.terminate()
    world.gateway.wait(10)
    # 2. the daemon's own socket is opened to every user
    os.chmod(world.daemon.path, 0o666)
    assert os.stat(world.daemon.path).st_mode & 0o777 == 0o666
    # 3. the detector's inventory goes stale (written an hour ago)
    inventory = world.root / "state" / "workloads.json"
    doc = json.loads(inventory.read_text())
    doc["updated_at_epoch"] = time.time() - 3600
    inventory.write_text(json.dumps(doc))
    # 4. an event line is edited
    log_path = world.root / "log" / "events.jsonl"
    lines = log_path.read_text().splitlines(keepends=True)
    assert '"n":2' in lines[1]
    lines[1] = lines[1].replace('"n":2', '"n":7')
    log_path.write_text("".join(lines))
    # 5. a container holds a GPU UUID the topology does not have (root's view on the daemon's socket)
    made = subprocess.run(
        [DOCKER_BIN, "-H", world.daemon.host, "create", "--name", "doctor-lost", "--network", "none", *GPU_ARGS],
        capture_output=True,
        text=True,
        check=True,
    )
    stored = docker.APIClient(base_url=world.daemon.host).inspect_container(made.stdout.strip())
    assert stored["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == [VANISHED_UUID]

    rc, checks = world.doctor()
    assert rc == 1, json.dumps(checks, indent=1)
    failed = {name for name, c in checks.items() if not c["ok"]}
    assert failed == {"gateway", "gateway_socket", "daemon_socket", "detector", "gpu_holders", "event_chain"}
    assert "systemctl start ds01-gateway" in checks["gateway"]["message"]
    assert "lets every user connect" in checks["daemon_socket"]["message"]
    assert "stale" in checks["detector"]["message"]
    assert f"doctor-lost (unknown owner) holds {VANISHED_UUID}" in checks["gpu_holders"]["message"]
    assert "line 2" in checks["event_chain"]["message"] or "edited" in checks["event_chain"]["message"]

    human = world.ds01("doctor")
    assert human.returncode == 1
    assert "FAIL  daemon_socket" in human.stdout and "ok    exporter" in human.stdout
