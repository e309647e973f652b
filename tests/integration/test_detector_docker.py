"""Workload detection against the real Docker engine, real processes and the real ``/proc``.

- One container of each kind, carrying the labels and DeviceRequests each kind really carries,
  classified through ``ds01 detect once`` and read back through ``ds01 workloads --json``.
- A process inside a real running container and one on the host under a test login are listed
  by pid in the fake NVML topology; they come back attributed to the container and to the login,
  and the host process only after two sweeps.
- The watcher against a second, private dockerd that is stopped and restarted: it reconnects and
  reports a container created while it was disconnected.

GPUs are faked only at the NVML boundary (gpu.py's topology file). Containers holding fake GPUs
are created, not started (there is no NVIDIA runtime here). Everything is labelled ``ds01.test=1``
and removed afterwards; the shared engine is never restarted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest
from private_dockerd import PrivateDockerd

docker = pytest.importorskip("docker")
yaml = pytest.importorskip("yaml")
pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DS01 = os.environ.get("DS01_CMD") or os.path.join(REPO, ".venv", "bin", "ds01")
TEST_USER = "ds01tdet"
UUID0 = "GPU-0d5e7c4a-1111-2222-3333-444444444444"
UUID1 = "GPU-1d5e7c4a-1111-2222-3333-444444444444"
MIG_A = "MIG-aaaa0000-1111-2222-3333-444444444444"


def ds01(cfg, *args, env=None, check=True):
    cmd = [DS01, "--config", cfg, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=120)
    if check:
        assert proc.returncode == 0, f"{args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def workloads(cfg, *extra):
    return json.loads(ds01(cfg, "workloads", "--json", *extra).stdout)


def by_id(doc):
    return {w["id"]: w for w in doc["workloads"]}


def topology(path, processes_gpu0=(), processes_mig=()):
    doc = {
        "gpus": [
            {
                "index": 0,
                "uuid": UUID0,
                "name": "NVIDIA A100-SXM4-40GB",
                "memory_mib": 40960,
                "processes": [{"pid": p, "used_memory_mib": m} for p, m in processes_gpu0],
            },
            {
                "index": 1,
                "uuid": UUID1,
                "name": "NVIDIA A100-SXM4-40GB",
                "memory_mib": 40960,
                "mig": True,
                "instances": [
                    {
                        "profile": "3g.20gb",
                        "uuid": MIG_A,
                        "processes": [{"pid": p, "used_memory_mib": m} for p, m in processes_mig],
                    },
                ],
            },
        ]
    }
    with open(path, "w") as handle:
        yaml.safe_dump(doc, handle)


@pytest.fixture
def sandbox(tmp_path):
    """A config whose state, log and run dirs and fake GPU topology live in tmp_path."""
    for sub in ("state", "log", "run", "grants"):
        (tmp_path / sub).mkdir()
    topo = tmp_path / "topology.yaml"
    topology(str(topo))
    cfg = tmp_path / "resource-limits.yaml"
    cfg.write_text(
        "default_group: student\n"
        "groups:\n  student: {}\n"
        f"paths: {{state_dir: {tmp_path / 'state'}, log_dir: {tmp_path / 'log'}, run_dir: {tmp_path / 'run'}}}\n"
        f"gpu_allocation: {{backend: fake, topology: {topo}}}\n"
        f"bare_metal_access: {{state_dir: {tmp_path / 'grants'}}}\n"
    )
    return {"cfg": str(cfg), "topology": str(topo), "root": tmp_path}


@pytest.fixture
def client(docker_client):
    """The session's engine (tests/conftest.py: fails with the make target to run, never skips)."""
    return docker_client


@pytest.fixture(scope="module")
def test_user():
    """A real login with a home directory (owner of devcontainer/compose folders)."""
    created = False
    if subprocess.run(["id", TEST_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", TEST_USER], check=True)
        created = True
    home = os.path.expanduser(f"~{TEST_USER}")
    for sub in ("proj/.devcontainer", "stack"):
        os.makedirs(os.path.join(home, sub), exist_ok=True)
    subprocess.run(["chown", "-R", f"{TEST_USER}:", home], check=True)
    yield TEST_USER
    if created:  # retried: a just-killed process of the user may not be reaped yet
        for _i in range(50):
            if subprocess.run(["userdel", "-r", TEST_USER], capture_output=True, check=False).returncode in (0, 6, 12):
                break
            time.sleep(0.1)


@pytest.fixture
def made(client):
    """Containers created by a test; all force-removed afterwards."""
    containers = []
    yield containers
    for c in containers:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)


def gpu_request(*uuids):
    return [docker.types.DeviceRequest(device_ids=list(uuids), capabilities=[["gpu"]])]


def test_every_kind_is_classified_with_gpu_devices_and_owner(client, empty_image, test_user, made, sandbox):
    tag = uuid.uuid4().hex[:8]
    home = os.path.expanduser(f"~{test_user}")
    base = {"ds01.test": "1"}

    def create(name, labels, **kw):
        container = client.containers.create(
            empty_image, "/none", name=name, labels={**base, **labels}, network_mode="none", **kw
        )
        made.append(container)
        return container

    managed = create(
        f"t{tag}-job",
        {
            "ds01.user": test_user,
            "ds01.managed": "true",
            "ds01.container_type": "docker",
            "ds01.created_at": "2026-03-01T10:00:00Z",
            "ds01.gpu.slots": "0",
            "ds01.gpu.uuids": UUID0,
            "ds01.gpu.gpueq": "1.0",
        },
        device_requests=gpu_request(UUID0),
    )
    devcontainer = create(
        f"vsc-proj-{tag}",
        {
            "devcontainer.local_folder": f"{home}/proj",
            "devcontainer.config_file": f"{home}/proj/.devcontainer/devcontainer.json",
        },
    )
    compose = create(
        f"stack{tag}-web-1",
        {
            "com.docker.compose.project": f"stack{tag}",
            "com.docker.compose.service": "web",
            "com.docker.compose.container-number": "1",
            "com.docker.compose.oneoff": "False",
            "com.docker.compose.project.working_dir": f"{home}/stack",
            "com.docker.compose.project.config_files": f"{home}/stack/compose.yaml",
            "com.docker.compose.version": "2.29.7",
        },
    )
    raw = create(f"t{tag}-raw", {}, device_requests=gpu_request(UUID1))
    infra = create(
        f"t{tag}-dcgm", {"ds01.protected": "true", "ds01.monitoring": "true"}, device_requests=gpu_request(UUID0)
    )

    ds01(sandbox["cfg"], "detect", "once")
    rows = by_id(workloads(sandbox["cfg"], "--all"))

    m = rows[managed.id]
    assert (m["type"], m["user"], m["container_type"]) == ("ds01-managed", test_user, "docker")
    assert m["has_gpu"] and m["gpu_devices"] == [UUID0] and m["gpu_slots"] == ["0"]
    assert m["unmanaged_gpu"] is False and m["status"] == "created"

    d = rows[devcontainer.id]
    assert (d["type"], d["user"], d["has_gpu"]) == ("devcontainer", test_user, False)

    c = rows[compose.id]
    assert (c["type"], c["user"], c["has_gpu"]) == ("compose", test_user, False)

    r = rows[raw.id]
    assert (r["type"], r["user"]) == ("raw-docker", None)
    assert r["has_gpu"] and r["gpu_devices"] == [UUID1] and r["gpu_sources"] == ["device_request"]
    assert r["unmanaged_gpu"] is True

    i = rows[infra.id]
    assert i["type"] == "infrastructure" and i["has_gpu"] and i["unmanaged_gpu"] is False

    # filters answer from the same file
    assert {w["id"] for w in workloads(sandbox["cfg"], "--all", "--user", test_user)["workloads"]} >= {
        managed.id,
        devcontainer.id,
        compose.id,
    }
    unmanaged = [w for w in workloads(sandbox["cfg"], "--all", "--gpu-only")["workloads"] if w["unmanaged_gpu"]]
    assert raw.id in {w["id"] for w in unmanaged}
    # the human table says the same and how old it is
    table = ds01(sandbox["cfg"], "workloads", "--all", "--wide").stdout
    assert f"vsc-proj-{tag}" in table and "Inventory updated" in table

    # the event log has the transitions; a second pass announces nothing new for them
    log_path = os.path.join(str(sandbox["root"]), "log", "events.jsonl")
    if os.path.exists(log_path):
        with open(log_path) as handle:
            events = [json.loads(line) for line in handle]
        mine = [e for e in events if (e.get("details") or {}).get("container_id") == raw.id[:12]]
        assert {e["event_type"] for e in mine} == {"detection.container_discovered", "detection.unmanaged_gpu"}
        ds01(sandbox["cfg"], "detect", "once")
        with open(log_path) as handle:
            again = [json.loads(line) for line in handle]
        assert len([e for e in again if (e.get("details") or {}).get("container_id") == raw.id[:12]]) == len(mine)

    # removal is seen by the next pass
    raw.remove(force=True)
    ds01(sandbox["cfg"], "detect", "once")
    assert raw.id not in by_id(workloads(sandbox["cfg"], "--all"))


def _leaf_pid(pid, timeout=5.0):
    """The process runuser started (runuser forks a child for the PAM session)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/comm") as handle:
            if handle.read().strip() == "sleep":
                return pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                children = [int(x) for x in handle.read().split()]
        except FileNotFoundError:
            children = []
        for child in children:
            with open(f"/proc/{child}/comm") as handle:
                if handle.read().strip() == "sleep":
                    return child
        time.sleep(0.05)
    raise AssertionError(f"no sleep under pid {pid}")


def test_gpu_processes_are_attributed_through_proc(client, runnable_image, test_user, made, sandbox):
    container = client.containers.run(
        runnable_image,
        ["sleep", "300"],
        detach=True,
        network_mode="none",
        labels={"ds01.test": "1"},
        name=f"t{uuid.uuid4().hex[:8]}-worker",
    )
    made.append(container)
    container.reload()
    container_pid = container.attrs["State"]["Pid"]
    host = subprocess.Popen(["runuser", "-u", test_user, "--", "sleep", "300"])
    try:
        host_pid = _leaf_pid(host.pid)
        topology(sandbox["topology"], processes_gpu0=[(container_pid, 1024)], processes_mig=[(host_pid, 2048)])

        ds01(sandbox["cfg"], "detect", "once")
        doc = workloads(sandbox["cfg"])
        rows = by_id(doc)
        w = rows[container.id]
        assert w["has_gpu"] and w["gpu_devices"] == [UUID0] and w["gpu_sources"] == ["nvml"]
        assert w["gpu_memory_mib"] == 1024
        assert w["unmanaged_gpu"] is True  # GPU use with no ds01 allocation
        # the host process has been seen once: not reported yet (transients are ignored)
        assert f"pid:{host_pid}" not in rows
        assert f"pid:{container_pid}" not in rows  # a container's process is never a host process

        ds01(sandbox["cfg"], "detect", "once")
        rows = by_id(workloads(sandbox["cfg"]))
        h = rows[f"pid:{host_pid}"]
        assert (h["type"], h["user"], h["pid"]) == ("host-process", test_user, host_pid)
        assert h["gpu_devices"] == [MIG_A] and h["gpu_slots"] == ["1.0"] and h["gpu_memory_mib"] == 2048
        assert h["cmdline"] == "sleep 300" and h["unmanaged_gpu"] is True

        # a grant for the login clears the flag at the next sweep
        grant = os.path.join(str(sandbox["root"]), "grants", f"{test_user}.json")
        with open(grant, "w") as handle:
            json.dump({"user": test_user, "type": "permanent", "expires_at": None, "expires_epoch": None}, handle)
        ds01(sandbox["cfg"], "detect", "once")
        assert by_id(workloads(sandbox["cfg"]))[f"pid:{host_pid}"]["unmanaged_gpu"] is False

        # the host process ends (NVML may still list it for a moment: /proc decides): dropped at the next sweep
        with contextlib.suppress(ProcessLookupError):
            os.kill(host_pid, signal.SIGKILL)
        host.wait()
        ds01(sandbox["cfg"], "detect", "once")
        assert f"pid:{host_pid}" not in by_id(workloads(sandbox["cfg"]))
        # and the container's process leaves NVML's list: the container no longer shows GPU use
        topology(sandbox["topology"])
        ds01(sandbox["cfg"], "detect", "once")
        assert by_id(workloads(sandbox["cfg"]))[container.id]["has_gpu"] is False
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


# --------------------------------------------------------------------------------------------
# The watcher against a private dockerd that is stopped and restarted
# --------------------------------------------------------------------------------------------


@pytest.fixture
def private_dockerd(tmp_path_factory):
    assert shutil.which("dockerd"), "dockerd comes from Debian's docker.io (make system-deps)"
    root = str(tmp_path_factory.mktemp("dockerd"))
    daemon = PrivateDockerd(root)
    try:
        daemon.start()
    except RuntimeError:
        daemon.stop()
        daemon.driver = "vfs"  # overlay on overlay fails on some hosts
        daemon.start()
    subprocess.run(
        f"tar -c --files-from /dev/null | docker -H {daemon.host} import - local/empty",
        shell=True,
        check=True,
        capture_output=True,
    )
    yield daemon
    with contextlib.suppress(subprocess.CalledProcessError, RuntimeError):
        if daemon.proc.poll() is not None:
            daemon.start(daemon.side)
        ids = daemon.docker("ps", "-aq").split()
        if ids:
            daemon.docker("rm", "-f", *ids)
    daemon.stop()
    subprocess.run(["rm", "-rf", root], check=False)


def _inventory(sandbox):
    path = os.path.join(str(sandbox["root"]), "state", "workloads.json")
    try:
        with open(path) as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return None


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return None


def _has(sandbox, name):
    inv = _inventory(sandbox)
    return inv and any(c["name"] == name for c in inv["containers"].values())


def test_watcher_survives_a_daemon_restart(private_dockerd, sandbox):
    env = {**os.environ, "DOCKER_HOST": private_dockerd.host}
    log = open(os.path.join(str(sandbox["root"]), "watch.log"), "wb")  # noqa: SIM115
    watch = subprocess.Popen(
        [DS01, "--config", sandbox["cfg"], "detect", "watch", "--sweep-interval", "30"], env=env, stdout=log, stderr=log
    )
    try:
        assert _wait(lambda: (_inventory(sandbox) or {}).get("docker", {}).get("ok"), 30), "watcher never connected"
        t0 = time.monotonic()
        private_dockerd.docker(
            "create", "--network", "none", "--label", "ds01.test=1", "--name", "first", "local/empty", "/none"
        )
        assert _wait(lambda: _has(sandbox, "first"), 10)
        assert time.monotonic() - t0 < 2.0  # known within two seconds of `docker create` returning

        private_dockerd.stop()  # kill -TERM; the watcher loses its stream
        assert _wait(lambda: (_inventory(sandbox) or {}).get("docker", {}).get("ok") is False, 15)
        # The daemon comes back on a side socket only, so the watcher certainly cannot see it while a
        # container is created and another removed; then it is restarted on the watcher's socket.
        private_dockerd.start(private_dockerd.side)
        private_dockerd.docker(
            "create", "--network", "none", "--label", "ds01.test=1", "--name", "while-away", "local/empty", "/none"
        )
        private_dockerd.docker("rm", "first")
        assert not _has(sandbox, "while-away") and _has(sandbox, "first")
        private_dockerd.stop()
        private_dockerd.start()
        assert _wait(lambda: _has(sandbox, "while-away") and not _has(sandbox, "first"), 30), (
            "the resync after reconnecting did not report what changed while disconnected"
        )
        assert (_inventory(sandbox) or {})["docker"]["ok"] is True
        assert watch.poll() is None, "the watcher died"
        # and it follows the new event stream
        t0 = time.monotonic()
        private_dockerd.docker(
            "create", "--network", "none", "--label", "ds01.test=1", "--name", "after", "local/empty", "/none"
        )
        assert _wait(lambda: _has(sandbox, "after"), 10)
        assert time.monotonic() - t0 < 2.0
    finally:
        watch.send_signal(signal.SIGTERM)
        try:
            rc = watch.wait(15)
        except subprocess.TimeoutExpired:
            watch.kill()
            rc = watch.wait()
        log.close()
    with open(os.path.join(str(sandbox["root"]), "watch.log")) as handle:
        text = handle.read()
    assert rc == 0, text
    assert "Traceback" not in text
