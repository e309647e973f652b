"""Faults of the Docker daemon and of the detector, caused for real, and how soon service comes back.

Real parts only: a second, private dockerd (``private_dockerd.PrivateDockerd``: its own data root and
socket, so the shared engine and the other tests are never disturbed) that is stopped and started again,
a real gateway process (``ds01 gateway serve --upstream <private socket>``), real ``ds01 detect watch``
processes that are SIGKILLed, and a real Unix user (``fltd1``) speaking to the gateway through the docker
CLI and a raw HTTP loop. The only stand-in is the GPU (a topology YAML with UUIDs unique to this run).

1. dockerd restarts under a client loop through the gateway: every answer is either the daemon's or the
   gateway's one-line sentence (HTTP 503, JSON), never a traceback or a broken stream; the same gateway
   process serves again (GPU creates too) once the daemon is back.
2. dockerd restarts under the detector: it resyncs (fresh ``last_sync``) and lists a container created
   just after the daemon came back.
3. the detector is SIGKILLed at random moments under a churn of containers: a reader never sees a partial
   ``workloads.json``, and each restarted detector resyncs.
4. the fake GPU topology vanishes under the gateway: GPU creates are refused with a sentence, other creates
   go on; when it returns, GPU creates work again.

The recovery times are printed (``FAULT-TIMING``) and recorded in benchmarks/faults.md; no test asserts
a time. Every daemon, process and container started here is removed, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from private_dockerd import PrivateDockerd, pings

docker = pytest.importorskip("docker")
pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent.parent
DS01 = os.environ.get("DS01_CMD") or str(REPO / ".venv" / "bin" / "ds01")
DOCKER_BIN = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"
USER = "fltd1"
TAG = uuid.uuid4().hex[:8]
GPU_UUIDS = tuple(f"GPU-{TAG}-{i:04d}-4000-8000-{uuid.uuid4().hex[:12]}" for i in range(2))
HANG_GUARD_S = 60  # how long a wait may take before the test reports that something never happened
TIMINGS: list = []

LIMITS = """
default_group: student
groups:
  student:
    max_containers_per_user: 20
    max_gpu_equivalents: 2.0
    max_gpu_slots_per_container: 1
    allow_full_gpu: true
gpu_allocation:
  backend: fake
  topology: {root}/topology.yaml
paths:
  state_dir: {root}/state
  log_dir: {root}/log
  run_dir: {root}/run
"""

TOPOLOGY = "gpus:\n" + "".join(
    f"  - {{index: {i}, uuid: {u}, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}}\n" for i, u in enumerate(GPU_UUIDS)
)

# The client loop, run as the user with the system interpreter: keep-alive HTTP on the gateway socket,
# one JSON line per request (monotonic times are system-wide, so the test can compare them).
CLIENT = r"""
import http.client, json, os, socket, sys, time
sock_path, stop_file = sys.argv[1], sys.argv[2]

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(sock_path)

targets = ("/v1.41/version", "/v1.41/containers/json?all=1", "/_ping")
conn, n = None, 0
while not os.path.exists(stop_file):
    target = targets[n % len(targets)]
    n += 1
    rec = {"target": target, "t0": time.monotonic()}
    try:
        if conn is None:
            conn = Conn("docker")
        conn.request("GET", target)
        resp = conn.getresponse()
        body = resp.read()
        rec.update(status=resp.status, body=body.decode("utf-8", "replace")[:4000])
        if resp.will_close:
            conn.close()
            conn = None
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        if conn is not None:
            conn.close()
        conn = None
    rec["t1"] = time.monotonic()
    print(json.dumps(rec), flush=True)
    time.sleep(0.02)
"""


def _record(fault: str, recovered: str, seconds: float) -> None:
    TIMINGS.append({"fault": fault, "recovered": recovered, "seconds": round(seconds, 3)})
    print(f"FAULT-TIMING {fault}: {recovered}: {seconds:.3f} s")


def _wait(predicate, what: str, timeout: float = HANG_GUARD_S, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{what} never happened (waited {timeout:g} s)")


class Answering:
    """A thread that polls a daemon's socket with ``GET /_ping`` and notes when it first answers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.at = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if pings(self.path, timeout=0.5):
                self.at = time.monotonic()
                return
            time.sleep(0.005)

    def result(self) -> float:
        self._thread.join(HANG_GUARD_S)
        self._stop.set()
        assert self.at is not None, f"the daemon on {self.path} never answered /_ping"
        return self.at


def _restart(daemon: PrivateDockerd) -> tuple:
    """Stop the daemon (SIGTERM) and start it again; (monotonic time it stopped, time it answered again)."""
    daemon.stop()
    stopped = time.monotonic()
    assert not pings(daemon.path)
    answering = Answering(daemon.path)
    daemon.start()
    return stopped, answering.result()


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def daemon():
    """The private dockerd (local/empty imported into it); every container on it is removed at the end."""
    assert shutil.which("dockerd"), "dockerd comes from Debian's docker.io (make system-deps)"
    root = tempfile.mkdtemp(prefix="ds01-fltd-dockerd-", dir="/tmp")
    private = PrivateDockerd(root)
    try:
        try:
            private.start()
        except RuntimeError:
            private.stop()
            private.driver = "vfs"  # overlay on overlay fails on some hosts
            private.start()
        subprocess.run(
            f"tar -c --files-from /dev/null | {DOCKER_BIN} -H {private.host} import - local/empty",
            shell=True,
            check=True,
            capture_output=True,
        )
        yield private
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, RuntimeError, OSError):
            if private.proc is None or private.proc.poll() is not None:
                private.start()
            ids = private.docker("ps", "-aq").split()
            if ids:
                private.docker("rm", "-f", *ids)
        private.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def user():
    created = False
    if subprocess.run(["id", USER], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
        created = True
    yield USER
    if created:  # retried: the user's last processes may not be reaped yet
        for _i in range(50):
            if subprocess.run(["userdel", "-r", USER], capture_output=True, check=False).returncode in (0, 6, 12):
                break
            time.sleep(0.1)


def _site(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o755)
    for sub in ("log", "run", "state"):
        (root / sub).mkdir()
    (root / "resource-limits.yaml").write_text(LIMITS.format(root=root))
    (root / "topology.yaml").write_text(TOPOLOGY)
    return root


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM; a process still there after 15 s gets SIGABRT (its faulthandler logs every thread's stack)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
        try:
            return proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class Gateway:
    def __init__(self, root: Path, proc: subprocess.Popen, sock: str) -> None:
        self.root = root
        self.proc = proc
        self.socket = sock

    def command(self, *args: str) -> list:
        """The argv of the docker CLI run as the test user, through the gateway."""
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": f"/home/{USER}",
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CLI_HINTS": "false",
            "LC_ALL": "C",
        }
        return ["runuser", "-u", USER, "--", "env", *[f"{k}={v}" for k, v in env.items()], DOCKER_BIN, *args]

    def docker(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)

    def log(self) -> str:
        return (self.root / "gateway.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def gateway(daemon, user):
    """``ds01 gateway serve`` on a temp socket in front of the private daemon, with the fake topology."""
    root = _site("ds01-fltd-gw-")
    sock = str(root / "gw.sock")
    with open(root / "gateway.log", "w") as log:
        proc = subprocess.Popen(
            [
                *(DS01, "--config", str(root / "resource-limits.yaml"), "-v", "gateway", "serve"),
                *("--listen", sock, "--upstream", daemon.path, "--socket-group", "docker"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DS01_GPU_TOPOLOGY": str(root / "topology.yaml"), "PYTHONFAULTHANDLER": "1"},
        )
    try:
        _wait(lambda: os.path.exists(sock) or proc.poll() is not None, "the gateway's socket")
        assert proc.poll() is None, "the gateway did not start:\n" + (root / "gateway.log").read_text()
        yield Gateway(root, proc, sock)
    finally:
        _stop(proc)
        print((root / "gateway.log").read_text(errors="replace")[-3000:])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def timings():
    """Print every measured recovery time once more at the end (and into $DS01_FAULT_TIMINGS when set)."""
    yield TIMINGS
    for row in TIMINGS:
        print(f"FAULT-TIMING {row['fault']}: {row['recovered']}: {row['seconds']:.3f} s")
    out = os.environ.get("DS01_FAULT_TIMINGS")
    if out and TIMINGS:
        with open(out, "a") as handle:
            for row in TIMINGS:
                handle.write(json.dumps(row) + "\n")


def _gpu_uuids_of(daemon: PrivateDockerd, name: str) -> list:
    doc = json.loads(daemon.docker("inspect", name))[0]
    return [d for r in (doc["HostConfig"].get("DeviceRequests") or []) for d in (r.get("DeviceIDs") or [])]


# ---------------------------------------------------------------------------------------------
# 1. the daemon restarts under clients of the gateway


def _classify(rec: dict) -> str:
    """ok (the daemon's answer, whole), sentence (the gateway's 503 sentence), or bad."""
    if "error" in rec:
        return "bad"
    body = rec["body"]
    if rec["status"] == 200:
        if rec["target"] == "/_ping":
            return "ok" if body == "OK" else "bad"
        try:
            doc = json.loads(body)
        except ValueError:
            return "bad"
        if rec["target"].endswith("/version"):
            return "ok" if isinstance(doc, dict) and doc.get("ApiVersion") else "bad"
        return "ok" if isinstance(doc, list) else "bad"
    if rec["status"] == 503 and "Traceback" not in body:
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            return "bad"
        if message.startswith("ds01 gateway: ") and "Docker daemon" in message and "try again" in message:
            return "sentence"
    return "bad"


def test_daemon_restart_under_a_client_loop_through_the_gateway(daemon, gateway, user):
    script = gateway.root / "client.py"
    script.write_text(CLIENT)
    stop_file = gateway.root / "client.stop"
    records: list = []
    client = subprocess.Popen(
        ["runuser", "-u", user, "--", "/usr/bin/python3", str(script), gateway.socket, str(stop_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = threading.Thread(target=lambda: records.extend(json.loads(line) for line in client.stdout), daemon=True)
    reader.start()
    gpu_before, gpu_after = f"fd-{TAG}-gpu-before", f"fd-{TAG}-gpu-after"
    # a stream open through the gateway when the daemon goes: `docker events` as the user
    events = subprocess.Popen(
        gateway.command("events", "--since", str(int(time.time()) - 1), "--format", "{{json .}}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: sum(_classify(r) == "ok" for r in list(records)) >= 6, "six answers through the gateway")
        # a GPU create before the restart: the gateway's allocator has talked to this daemon
        made = gateway.docker(
            "create", "--gpus", "1", "--network", "none", "--name", gpu_before, "local/empty", "/none"
        )
        assert made.returncode == 0, made.stderr
        assert set(_gpu_uuids_of(daemon, gpu_before)) <= set(GPU_UUIDS) and _gpu_uuids_of(daemon, gpu_before)

        daemon.stop()
        stopped = time.monotonic()
        assert not pings(daemon.path)
        # the stream ends with the daemon: every line it gave is a whole event, then the error the CLI
        # gives talking to the daemon directly ("unexpected EOF"), no traceback
        streamed, stream_err = events.communicate(timeout=HANG_GUARD_S)
        lines = streamed.splitlines()
        assert lines and all(json.loads(line)["Type"] for line in lines), streamed
        assert any(json.loads(line)["Actor"]["Attributes"].get("name") == gpu_before for line in lines)
        assert events.returncode != 0 and "Traceback" not in stream_err, stream_err
        print(f"docker events said when the daemon went: {stream_err.strip()!r} (after {len(lines)} events)")
        _wait(
            lambda: sum(_classify(r) == "sentence" and r["t0"] > stopped for r in list(records)) >= 5,
            "five sentences from the gateway while the daemon is down",
        )
        # the docker CLI as the user: a clear sentence on stderr, nothing else
        down = gateway.docker("ps", "-a")
        assert down.returncode != 0
        assert "ds01 gateway: " in down.stderr and "Docker daemon" in down.stderr, down.stderr
        assert "Traceback" not in down.stderr + down.stdout
        refused_gpu = gateway.docker("create", "--gpus", "1", "--network", "none", "--name", gpu_after, "local/empty")
        assert refused_gpu.returncode != 0 and "Traceback" not in refused_gpu.stderr, refused_gpu.stderr

        answering = Answering(daemon.path)
        daemon.start()
        back = answering.result()
        first_ok = _wait(
            lambda: next((r for r in list(records) if r["t0"] > back and _classify(r) == "ok"), None),
            "a successful request through the gateway after the daemon came back",
            step=0.005,
        )
        _record("dockerd restart (gateway)", "first request through the gateway answered", first_ok["t1"] - back)
        _wait(lambda: sum(r["t0"] > first_ok["t1"] for r in list(records)) >= 20, "twenty more requests")
    finally:
        if events.poll() is None:
            events.kill()
            events.communicate()
        stop_file.write_text("")
        try:
            client.wait(30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
        reader.join(10)
        if daemon.proc.poll() is not None:  # a failure while it was down: later tests need it
            daemon.start()

    errors = client.stderr.read()
    assert client.returncode == 0, errors
    kinds = [_classify(r) for r in records]
    bad = [r for r, k in zip(records, kinds) if k == "bad"]
    assert bad == [], f"answers that are neither the daemon's nor the gateway's sentence: {bad[:5]}"
    # once served again, every request is served
    after = [k for r, k in zip(records, kinds) if r["t0"] > first_ok["t1"]]
    assert after and set(after) == {"ok"}
    # the same gateway process, still serving: a GPU create goes through its allocator again
    assert gateway.proc.poll() is None
    made = gateway.docker("create", "--gpus", "1", "--network", "none", "--name", gpu_after, "local/empty", "/none")
    assert made.returncode == 0, made.stderr
    assert set(_gpu_uuids_of(daemon, gpu_after)) == set(GPU_UUIDS) - set(_gpu_uuids_of(daemon, gpu_before))
    assert "Traceback" not in gateway.log()
    gateway.docker("rm", gpu_before, gpu_after)


# ---------------------------------------------------------------------------------------------
# 4. the GPU topology vanishes under the gateway


def test_vanished_gpu_topology_refuses_only_gpu_creates(daemon, gateway):
    topology = gateway.root / "topology.yaml"
    gone = gateway.root / "topology.yaml.gone"
    names = {k: f"fd-{TAG}-topo-{k}" for k in ("gpu1", "gpu2", "plain", "gpu3")}

    def create(name, *flags):
        return gateway.docker("create", *flags, "--network", "none", "--name", name, "local/empty", "/none")

    first = create(names["gpu1"], "--gpus", "1")
    assert first.returncode == 0, first.stderr
    assert gateway.docker("rm", names["gpu1"]).returncode == 0
    os.rename(topology, gone)
    try:
        refused = create(names["gpu2"], "--gpus", "1")
        assert refused.returncode != 0
        assert "NO_GPU_AVAILABLE" in refused.stderr and "nothing was created" in refused.stderr, refused.stderr
        assert "Containers without GPUs are not affected" in refused.stderr
        assert "Traceback" not in refused.stderr + refused.stdout
        assert subprocess.run(
            [DOCKER_BIN, "-H", daemon.host, "inspect", names["gpu2"]], capture_output=True, check=False
        ).returncode, "a refused GPU create reached the daemon"
        plain = create(names["plain"])
        assert plain.returncode == 0, plain.stderr
        assert _gpu_uuids_of(daemon, names["plain"]) == []
    finally:
        os.rename(gone, topology)
    again = create(names["gpu3"], "--gpus", "1")
    assert again.returncode == 0, again.stderr
    held = _gpu_uuids_of(daemon, names["gpu3"])
    assert len(held) == 1 and held[0] in GPU_UUIDS
    assert gateway.proc.poll() is None and "Traceback" not in gateway.log()
    gateway.docker("rm", names["plain"], names["gpu3"])


# ---------------------------------------------------------------------------------------------
# 2 and 3. the detector


class Detector:
    """``ds01 detect watch`` processes on one sandbox config, against the private daemon."""

    def __init__(self, root: Path, daemon: PrivateDockerd) -> None:
        self.root = root
        self.inventory = root / "state" / "workloads.json"
        self.env = {k: v for k, v in os.environ.items() if k != "DS01_GPU_TOPOLOGY"}
        self.env["DOCKER_HOST"] = daemon.host
        self.env["PYTHONFAULTHANDLER"] = "1"  # a hung detector shows where (see _stop)
        self.procs: list = []

    def start(self) -> subprocess.Popen:
        log = open(self.root / "watch.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [DS01, "--config", str(self.root / "resource-limits.yaml"), "detect", "watch", "--sweep-interval", "30"],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def read(self):
        try:
            return json.loads(self.inventory.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def lists(self, name: str) -> bool:
        inv = self.read()
        return bool(inv) and any(c.get("name") == name for c in inv["containers"].values())

    def log(self) -> str:
        path = self.root / "watch.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def detector(daemon):
    root = _site("ds01-fltd-det-")
    det = Detector(root, daemon)
    try:
        yield det
    finally:
        det.close()
        shutil.rmtree(root, ignore_errors=True)


def _create(daemon: PrivateDockerd, name: str) -> None:
    daemon.docker("create", "--network", "none", "--label", "ds01.test=1", "--name", name, "local/empty", "/none")


def test_detector_resyncs_after_a_daemon_restart(daemon, detector):
    watch = detector.start()
    first = _wait(lambda: (detector.read() or {}).get("docker", {}).get("ok") and detector.read(), "a first sync")
    synced = first["last_sync"]
    assert synced

    daemon.stop()
    _wait(lambda: (detector.read() or {}).get("docker", {}).get("ok") is False, "the detector noting the daemon down")
    answering = Answering(daemon.path)
    daemon.start()
    back = answering.result()
    name = f"fd-{TAG}-while-back"
    _create(daemon, name)  # made before the detector may have reconnected: the resync must find it

    def resynced():
        inv = detector.read() or {}
        return inv.get("docker", {}).get("ok") is True and inv.get("last_sync") != synced

    _wait(resynced, "a resync after the daemon came back", step=0.005)
    resynced_at = time.monotonic()
    _wait(lambda: detector.lists(name), "the container created after the restart in the inventory", step=0.005)
    listed_at = time.monotonic()
    _record("dockerd restart (detector)", "inventory resynced (fresh last_sync, docker ok)", resynced_at - back)
    _record("dockerd restart (detector)", "container made after the restart listed", listed_at - back)
    assert watch.poll() is None, detector.log()
    assert _stop(watch) == 0, detector.log()
    assert "Traceback" not in detector.log()


def test_detector_sigkill_never_leaves_a_partial_inventory(daemon, detector):
    client = docker.DockerClient(base_url=daemon.host, timeout=60)
    stop = threading.Event()
    reads = {"whole": 0, "partial": [], "missing": 0, "versions": set()}

    def read_loop():  # a reader of the inventory, as the exporter and `ds01 workloads` are
        while not stop.is_set():
            try:
                data = detector.inventory.read_bytes()
            except FileNotFoundError:
                reads["missing"] += 1
                continue
            try:
                doc = json.loads(data)
                assert isinstance(doc["containers"], dict) and "last_sync" in doc
                reads["whole"] += 1
                reads["versions"].add(hash(data))
            except (ValueError, KeyError, AssertionError, TypeError):
                reads["partial"].append(data[-200:])

    def churn():  # container events keep the detector writing
        n = 0
        while not stop.is_set():
            n += 1
            with contextlib.suppress(docker.errors.APIError):
                made = client.containers.create(
                    "local/empty", "/none", name=f"fd-{TAG}-churn{n}", network_mode="none", labels={"ds01.test": "1"}
                )
                made.remove()

    watch = detector.start()
    _wait(lambda: (detector.read() or {}).get("docker", {}).get("ok"), "a first sync")
    threads = [threading.Thread(target=read_loop, daemon=True), threading.Thread(target=churn, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        for round_no in range(3):
            time.sleep(random.uniform(0.3, 1.2))
            watch.send_signal(signal.SIGKILL)
            assert watch.wait(30) == -signal.SIGKILL
            name = f"fd-{TAG}-while-dead{round_no}"
            _create(daemon, name)
            started = time.monotonic()
            watch = detector.start()

            def resynced(pid=watch.pid, name=name):
                inv = detector.read() or {}
                ok = inv.get("pid") == pid and inv.get("docker", {}).get("ok") is True
                return ok and any(c.get("name") == name for c in inv["containers"].values())

            _wait(resynced, f"restarted detector {round_no} resyncing", step=0.005)
            _record(
                "detector SIGKILL",
                f"restarted detector resynced (round {round_no + 1}, incl. start-up)",
                time.monotonic() - started,
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        client.close()
    assert reads["partial"] == [], f"partial inventories seen: {reads['partial'][:3]}"
    # the reader saw the file while it was being rewritten again and again, and never saw it absent
    assert reads["whole"] > 50 and len(reads["versions"]) > 10 and reads["missing"] == 0, reads
    leftovers = sorted(p.name for p in (detector.root / "state").iterdir() if p.name.endswith(".tmp"))
    assert _stop(watch) == 0, detector.log()
    assert "Traceback" not in detector.log()
    print(f"temp files left by the killed detectors: {leftovers}")
