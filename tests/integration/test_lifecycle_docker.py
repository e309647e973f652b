"""The lifecycle on the real Docker engine: real containers driven through each rule.

Time is injected (``now``) and state lives in a temp dir; activity is real (the kernel's cgroup
and /proc counters of the running containers). There is no GPU here: "GPU containers" are running
containers with ``ds01.gpu.*`` labels and no DeviceRequest (one with a DeviceRequest cannot start
without the NVIDIA runtime), and their utilisation comes from a fake probe reporting 0 % — the
stand-in for gpu.py's fake topology backend. Every container is labelled ``ds01.test=1`` plus a
per-test run label, the sweep lists only those, and all of them are removed afterwards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import cli, config, notify
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import lifecycle as lc

docker = pytest.importorskip("docker")
pytestmark = [pytest.mark.docker, pytest.mark.slow]

GPU_LABELS = {"ds01.gpu.slots": "0", "ds01.gpu.uuids": "GPU-00000000-fake", "ds01.gpu.gpueq": "1.0"}
# PID 1 records every TERM/USR1 it gets in a file, and exits on TERM.
TRAP = "trap 'echo USR1 >> {f}' USR1; trap 'echo TERM >> {f}; exit 0' TERM; while :; do sleep 1000 & wait $!; done"
BUSY = "trap 'exit 0' TERM; while :; do :; done"

LIMITS = """
defaults:
  idle_timeout_h: 0.5
  max_runtime_h: 24
  gpu_hold_after_stop_h: 0.25
  container_hold_after_stop_h: 0.5
groups:
  student:
    members: [alice, erin, sig]
policies:
  grace_period_m: 0
  idle_detection_window: 1
  created_container_timeout_m: 30
  sigterm_grace_s: 5
container_types:
  docker: {sigterm_grace_s: 5}
  api: {idle_timeout_h: null, max_runtime_h: 1, sigterm_grace_s: 5}
paths:
  state_dir: STATE
  log_dir: LOG
  run_dir: RUN
"""
OVERRIDES = """
sig:
  policies: {pre_stop_signal: SIGUSR1, pre_stop_lead_m: 10}
"""
EXEMPTIONS = """
exemptions:
  - {username: erin, exempt_from: [idle_timeout_h], reason: thesis, expires_on: 2099-01-01T00:00:00Z}
"""


class FakeGpu(lc.GpuProbe):
    def utilization(self, uuids):
        return 0.0

    def capacity_gpueq(self):
        return 4.0


@pytest.fixture
def client(docker_client):
    """The session's engine (tests/conftest.py: fails with the make target to run, never skips)."""
    return docker_client


@pytest.fixture
def image(runnable_image):
    return runnable_image


class Env:
    """A sandbox: config, state dir, recorded events and notices, and this test's own containers."""

    def __init__(self, client, image, tmp_path):
        self.client = client
        self.image = image
        self.tmp = tmp_path
        self.run_id = uuid.uuid4().hex[:10]
        for sub in ("state", "log", "run", "etc"):
            (tmp_path / sub).mkdir()
        etc = tmp_path / "etc"
        (etc / "resource-limits.yaml").write_text(
            textwrap.dedent(LIMITS)
            .replace("STATE", str(tmp_path / "state"))
            .replace("LOG", str(tmp_path / "log"))
            .replace("RUN", str(tmp_path / "run"))
        )
        (etc / "user-overrides.yaml").write_text(textwrap.dedent(OVERRIDES))
        (etc / "lifecycle-exemptions.yaml").write_text(textwrap.dedent(EXEMPTIONS))
        self.config_path = str(etc / "resource-limits.yaml")
        self.config = config.load_config(self.config_path)
        self.events: list = []
        self.reports: list = []
        self.ops = lc.DockerOps(client, filters={"label": [f"ds01.test.run={self.run_id}"]})
        self.notifier = notify.Notifier(
            client, spool_dir=notify.spool_dir(str(tmp_path / "state")), sessions=lambda login: []
        )
        self.store = lc.StateStore(str(tmp_path / "state" / "lifecycle"))

    def labels(self, owner="alice", ctype="docker", gpu=True, **extra):
        labels = {"ds01.test": "1", "ds01.test.run": self.run_id, "ds01.user": owner, "ds01.container_type": ctype}
        if gpu:
            labels.update(GPU_LABELS)
        labels.update(extra)
        return labels

    def workspace(self, name):
        path = self.tmp / "ws" / name
        path.mkdir(parents=True)
        os.chmod(path, 0o777)
        return path

    def run(self, name, command, labels, workspace=None):
        volumes = {str(workspace): {"bind": "/workspace", "mode": "rw"}} if workspace else None
        return self.client.containers.run(
            self.image,
            ["bash", "-c", command],
            name=f"{name}-{self.run_id}",
            labels=labels,
            network_mode="none",
            detach=True,
            volumes=volumes,
        )

    def create(self, name, labels, image=None):
        return self.client.containers.create(
            image or self.image, ["true"], name=f"{name}-{self.run_id}", labels=labels, network_mode="none"
        )

    def emit(self, event_type, user=None, **details):
        self.events.append({"event_type": event_type, "user": user, **details})

    def sweep(self, now, dry_run=False):
        report = lc.run_sweep(
            self.config,
            self.ops,
            now,
            dry_run=dry_run,
            gpu=FakeGpu(),
            notifier=self.notifier,
            emit=self.emit,
            store=self.store,
        )
        assert report.errors == [], report.errors
        self.reports.append(report)
        return report

    def sweeps(self, start, minutes, pause=0.3):
        for minute in minutes:
            self.sweep(start + dt.timedelta(minutes=minute))
            time.sleep(pause)

    def notes(self):
        """What each sweep saw, shown when an assertion fails."""
        return [(r.now.isoformat(), d.container.name, d.notes) for r in self.reports for d in r.decisions]

    def events_for(self, container):
        return [e["event_type"] for e in self.events if e.get("container") == container.name]

    def cleanup(self):
        for c in self.client.containers.list(all=True, filters={"label": f"ds01.test.run={self.run_id}"}):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


@pytest.fixture
def env(client, image, tmp_path):
    e = Env(client, image, tmp_path)
    yield e
    e.cleanup()


def started_at(container):
    container.reload()
    return lc.parse_time(container.attrs["State"]["StartedAt"])


def exists(client, container):
    try:
        client.api.inspect_container(container.id)
        return True
    except docker.errors.NotFound:
        return False


def read(path):
    return path.read_text() if path.exists() else ""


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


# ---------------------------------------------------------------------------------------------


def test_idle_gpu_container_is_warned_twice_then_stopped_and_removed(env):
    ws = env.workspace("idle")
    c = env.run("idle", TRAP.format(f="/workspace/signals"), env.labels(), ws)
    t0 = started_at(c)
    # timeout 30 m, warnings at 15 m and 26.25 m, final notice 3.75 m
    env.sweeps(t0, [1, 16, 21])
    assert env.events_for(c) == [lc.EV_IDLE_WARNING]
    env.sweeps(t0, [27, 29])
    assert env.events_for(c) == [lc.EV_IDLE_WARNING, lc.EV_IDLE_WARNING]
    assert exists(env.client, c)
    env.sweep(t0 + dt.timedelta(minutes=31))
    assert env.events_for(c) == [lc.EV_IDLE_WARNING, lc.EV_IDLE_WARNING, lc.EV_IDLE_STOP, lc.EV_REMOVE], env.notes()
    assert not exists(env.client, c)
    assert read(ws / "signals") == "TERM\n"  # stopped with SIGTERM, within its grace
    alerts = read(ws / ".ds01-alerts")
    assert alerts.count("IDLE CONTAINER WARNING") == 1 and alerts.count("FINAL IDLE WARNING") == 1
    assert "CONTAINER AUTO-STOPPED (IDLE)" in alerts and "GPUs: 1/1 gpueq | Containers: 1/3" in alerts
    removed = next(e for e in env.events if e["event_type"] == lc.EV_REMOVE)
    assert removed["code"] == "idle_stop" and removed["gpu_slots"] == ["0"]
    assert env.store.ids() == []  # the container is gone, so is its state


def test_busy_gpu_container_is_untouched(env):
    c = env.run("busy", BUSY, env.labels())
    t0 = started_at(c)
    env.sweeps(t0, [1, 16, 27, 31, 45, 60], pause=0.5)
    assert env.events_for(c) == []
    c.reload()
    assert c.status == "running"
    assert env.store.load(c.id)["idle_warned"] == 0


def test_fresh_keepalive_file_keeps_an_idle_container(env):
    """The keep-alive file is read inside the container (HEAD of the archive API: a stat, no copy)."""
    ws = env.workspace("keepalive")
    (ws / ".keep-alive").write_text("")
    c = env.run("keepalive", TRAP.format(f="/workspace/signals"), env.labels(), ws)
    t0 = started_at(c)
    assert env.ops.keepalive_mtime(c.id, "/workspace/.keep-alive") is not None
    assert env.ops.keepalive_mtime(c.id, "/workspace/.no-such-file") is None
    env.sweeps(t0, [1, 16, 27, 31, 45])
    assert env.events_for(c) == []
    assert any("keep-alive" in n for _first, name, notes in env.notes() if name == c.name for n in notes)


def test_exempt_user_is_notified_once_and_kept(env):
    ws = env.workspace("exempt")
    c = env.run("exempt", TRAP.format(f="/workspace/signals"), env.labels(owner="erin"), ws)
    t0 = started_at(c)
    env.sweeps(t0, [1, 16, 27, 31, 40, 60, 90])
    assert env.events_for(c) == [lc.EV_EXEMPT_NOTICE]
    c.reload()
    assert c.status == "running" and read(ws / "signals") == ""
    assert read(ws / ".ds01-alerts").count("FYI only") == 1


def test_runtime_is_capped_from_the_first_start_across_a_restart(env):
    c = env.run("runtime", TRAP.format(f="/tmp/signals"), env.labels(ctype="api"))  # api: 1 h, no idle rule
    first = started_at(c)
    env.sweep(first + dt.timedelta(minutes=1))
    c.restart(timeout=2)
    assert started_at(c) > first
    env.sweeps(first, [46, 50, 55, 58])  # 75 % at 45 m, 90 % at 54 m; final notice 6 m
    assert env.events_for(c) == [lc.EV_RUNTIME_WARNING, lc.EV_RUNTIME_WARNING]
    env.sweep(first + dt.timedelta(minutes=61))
    assert env.events_for(c)[-1] == lc.EV_RUNTIME_STOP
    c.reload()
    assert c.status == "exited"  # stopped, not removed: the hold rules take it from here
    assert env.store.load(c.id)["first_started_at"] == lc.iso(first)


def test_created_never_started_and_long_stopped_containers_are_removed(env, empty_image):
    created = env.create("created", env.labels(gpu=False), image=empty_image)
    created_gpu = env.create("created-gpu", env.labels(), image=empty_image)
    exited = env.run("exited", "exit 0", env.labels(gpu=False))
    exited_gpu = env.run("exited-gpu", "exit 0", env.labels())
    for c in (exited, exited_gpu):
        c.wait(timeout=30)
        c.reload()
    finished = max(lc.parse_time(c.attrs["State"]["FinishedAt"]) for c in (exited, exited_gpu))
    env.sweep(finished + dt.timedelta(minutes=10))  # nothing is old enough yet
    assert all(exists(env.client, c) for c in (created, created_gpu, exited, exited_gpu))
    env.sweep(finished + dt.timedelta(minutes=16))  # the GPU hold (15 m) is over
    assert not exists(env.client, exited_gpu) and exists(env.client, exited)
    env.sweep(finished + dt.timedelta(minutes=31))  # created timeout (30 m) and stopped hold (30 m)
    assert not any(exists(env.client, c) for c in (created, created_gpu, exited))
    codes = sorted(e["code"] for e in env.events if e["event_type"] == lc.EV_REMOVE)
    assert codes == ["created_never_started", "created_never_started", "gpu_hold_expired", "hold_expired"]


def test_protected_containers_are_untouched(env, empty_image):
    ws = env.workspace("protected")
    running = env.run("prot-run", TRAP.format(f="/workspace/signals"), env.labels(**{"ds01.protected": "true"}), ws)
    monitoring = env.create("prot-mon", env.labels(**{"ds01.monitoring": "true"}), image=empty_image)
    t0 = started_at(running)
    env.sweeps(t0, [1, 16, 27, 31, 600, 6000])
    assert env.events == []
    assert exists(env.client, monitoring) and exists(env.client, running)
    assert read(ws / "signals") == "" and not (ws / ".ds01-alerts").exists()
    assert env.store.ids() == []


def test_acting_on_one_container_signals_nothing_else(env, tmp_path):
    """Container A is pre-stop-signalled (SIGUSR1), stopped (SIGTERM) and removed; container B (same
    user, GPU, idle, exempt by label) and a host process, both trapping TERM and USR1, get nothing."""
    ws_a, ws_b = env.workspace("a"), env.workspace("b")
    a = env.run("sig-a", TRAP.format(f="/workspace/signals"), env.labels(owner="sig"), ws_a)
    b = env.run(
        "sig-b", TRAP.format(f="/workspace/signals"), env.labels(owner="sig", **{lc.EXEMPT_LABEL: "true"}), ws_b
    )
    host_file = tmp_path / "host-signals"
    host = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import signal, time
            def rec(n, f): open({str(host_file)!r}, "a").write(signal.Signals(n).name + "\\n")
            signal.signal(signal.SIGTERM, rec); signal.signal(signal.SIGUSR1, rec)
            while True: time.sleep(1)
        """),
        ]
    )
    try:
        t0 = started_at(a)
        # stop due at 30 m; the USR1 at 20 m+ (lead 10 m) moves it to 31 m; final warning at 27 m
        env.sweeps(t0, [1, 16, 21, 27, 29], pause=0.5)
        assert read(ws_a / "signals") == "USR1\n"
        env.sweep(t0 + dt.timedelta(minutes=32))
        assert not exists(env.client, a)
        assert read(ws_a / "signals") == "USR1\nTERM\n"
        assert env.events_for(a) == [
            lc.EV_IDLE_WARNING,
            lc.EV_PRE_STOP,
            lc.EV_IDLE_WARNING,
            lc.EV_IDLE_STOP,
            lc.EV_REMOVE,
        ]
        time.sleep(1.0)
        b.reload()
        assert b.status == "running" and read(ws_b / "signals") == ""
        assert env.events_for(b) == [lc.EV_EXEMPT_NOTICE]
        assert host.poll() is None and read(host_file) == ""
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()


def test_dry_run_through_the_cli_changes_nothing(env, empty_image, capsys, monkeypatch):
    ws = env.workspace("dry")
    idle = env.run("dry-idle", TRAP.format(f="/workspace/signals"), env.labels(), ws)
    created = env.create("dry-created", env.labels(gpu=False), image=empty_image)
    t0 = started_at(idle)
    env.sweeps(t0, [1, 16, 27])  # real sweeps: two warnings so far, state on disk
    before_state = env.store.load(idle.id)
    before_events = list(env.events)
    last_run = os.path.join(env.tmp, "state", "lifecycle", lc.LAST_RUN_FILE)
    before_last_run = read_bytes(last_run)
    monkeypatch.delenv("DS01_GPU_TOPOLOGY", raising=False)
    now = (t0 + dt.timedelta(minutes=45)).isoformat()
    rc = cli.main(["--config", env.config_path, "lifecycle", "run", "--dry-run", "--json", "--now", now])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["dry_run"] is True
    mine = {c["name"]: c for c in out["containers"] if c["name"].endswith(env.run_id)}
    assert [a["kind"] for a in mine[idle.name]["actions"]] == ["stop", "remove"]
    assert [a["kind"] for a in mine[created.name]["actions"]] == ["remove"]
    idle.reload()
    assert idle.status == "running" and exists(env.client, created)
    assert env.store.load(idle.id) == before_state and env.events == before_events
    alerts = read(ws / ".ds01-alerts")
    assert read(ws / "signals") == "" and alerts.count("[WARNING]") + alerts.count("[ALERT]") == 2
    assert "[STOPPED]" not in alerts
    assert not os.path.exists(os.path.join(env.tmp, "log", "events.jsonl"))
    assert read_bytes(last_run) == before_last_run
