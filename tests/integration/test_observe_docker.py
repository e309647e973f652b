"""The exporter, ``ds01 limits``/``why`` and the quota alerts over a known state on the real Docker engine.

GPUs come from a fake topology (a whole GPU 0 and a MIG GPU 1 with a 3g and a 2g instance); the
containers "holding" them are real ``created`` containers from ``local/empty`` with real
DeviceRequests naming the fake UUIDs and ``ds01.*`` labels. The exporter runs ``exporter.serve`` in
a thread on a free loopback port and is scraped over HTTP; slices come from a temporary cgroup v2
tree so an OOM kill can be staged.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import cli, config, exporter, quota_alerts, refusals
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import observe as ob
from ansible_collections.ds01.infra.plugins.module_utils.ds01.usage import SliceReader

docker = pytest.importorskip("docker")
pytestmark = [pytest.mark.docker]

GPU0 = "GPU-00000000-0000-0000-0000-000000000000"
GPU1 = "GPU-11111111-1111-1111-1111-111111111111"
MIG_A = "MIG-aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
MIG_B = "MIG-bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"
TOPOLOGY = f"""
gpus:
  - {{index: 0, uuid: {GPU0}, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}}
  - index: 1
    uuid: {GPU1}
    name: NVIDIA A100-SXM4-40GB
    memory_mib: 40960
    mig: true
    instances:
      - {{profile: 3g.20gb, uuid: {MIG_A}}}
      - {{profile: 2g.10gb, uuid: {MIG_B}}}
"""
LIMITS = """
defaults:
  max_gpu_equivalents: 1
  max_containers_per_user: 2
  max_runtime_h: 24
  idle_timeout_h: 0.5
default_group: student
groups:
  student:
    members: [alice, bob, erin]
  researcher:
    members: [carol]
    max_gpu_equivalents: 2
policies:
  quota_alert_cooldown_h: 4
gpu_allocation: {backend: fake, topology: topo.yaml}
bare_metal_access: {state_dir: grants}
paths: {state_dir: state, log_dir: log, run_dir: run}
"""
EXEMPTIONS = """
exemptions:
  - {username: erin, exempt_from: [max_runtime_h], reason: thesis, expires_on: 2099-01-01T00:00:00Z}
"""


@pytest.fixture
def sandbox(tmp_path):
    for sub in ("state", "log", "run", "grants"):
        (tmp_path / sub).mkdir()
    (tmp_path / "topo.yaml").write_text(TOPOLOGY)
    (tmp_path / "resource-limits.yaml").write_text(LIMITS)
    (tmp_path / "lifecycle-exemptions.yaml").write_text(EXEMPTIONS)
    return tmp_path


@pytest.fixture
def cfg(sandbox):
    return config.load_config(str(sandbox / "resource-limits.yaml"))


@pytest.fixture
def state(docker_client, empty_image, test_label):
    """alice holds GPU 0 (at quota), bob MIG 1.1 (2/7), carol an unmanaged MIG 1.0 and a plain container."""
    made = []

    def create(name, user, uuids=(), slots=None, gpueq=None, managed=True):
        labels = {**test_label.labels, "ds01.user": user, "ds01.container_type": "docker"}
        if managed:
            labels["ds01.managed"] = "true"
        if slots is not None:
            labels.update({"ds01.gpu.slots": slots, "ds01.gpu.uuids": ",".join(uuids), "ds01.gpu.gpueq": str(gpueq)})
        requests = [docker.types.DeviceRequest(device_ids=list(uuids), capabilities=[["gpu"]])] if uuids else None
        c = docker_client.containers.create(
            empty_image,
            command=["none"],
            name=f"{name}-{test_label.value[:8]}",
            labels=labels,
            network_mode="none",
            device_requests=requests,
        )
        made.append(c)
        return c

    names = {
        "alice": create("obs-alice-train", "alice", [GPU0], "0", 1.0),
        "bob": create("obs-bob-nb", "bob", [MIG_B], "1.1", 2 / 7),
        "rogue": create("obs-rogue", "carol", [MIG_A], managed=False),
        "plain": create("obs-carol-plain", "carol"),
    }
    yield {k: v.name for k, v in names.items()}
    for c in made:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _v2_tree(root, users):
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    for login, group in users.items():
        d = root / "ds01.slice" / f"ds01-{group}.slice" / f"ds01-{group}-{login}.slice"
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.current").write_text(str(1024**3))
        (d / "memory.max").write_text("max")
        (d / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    return root


def _set_oom(root, group, login, n):
    d = root / "ds01.slice" / f"ds01-{group}.slice" / f"ds01-{group}-{login}.slice"
    (d / "memory.events").write_text(f"low 0\nhigh 0\nmax 0\noom {n}\noom_kill {n}\n")


@pytest.fixture
def served(cfg, state, docker_client, tmp_path):
    sysfs = _v2_tree(
        tmp_path / "cgroup", {"alice": "student", "bob": "student", "erin": "student", "carol": "researcher"}
    )
    reader = SliceReader(sysfs=str(sysfs), control_group=lambda unit: None)
    from ansible_collections.ds01.infra.plugins.module_utils.ds01.cli import observe as cli_observe

    observer = cli_observe.make_observer(cfg, docker_client=docker_client)
    observer.slice_reader = reader
    cache = exporter.SnapshotCache(observer.build, cache_s=0.2)
    port = _free_port()
    thread = threading.Thread(target=exporter.serve, args=(cache, "127.0.0.1", port), daemon=True)
    thread.start()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            _scrape(port)
            break
        except OSError:
            time.sleep(0.1)
    return {"port": port, "sysfs": sysfs, "cache": cache, "observer": observer}


def test_scrape_reports_the_known_state(served, state, cfg):
    s = _scrape(served["port"])
    assert s[("ds01_gpu_capacity_gpueq", ())] == pytest.approx(1 + 3 / 7 + 2 / 7)
    assert s[("ds01_gpu_slot_allocated", (("container", state["alice"]), ("slot", "0"), ("user", "alice")))] == 1
    assert s[("ds01_gpu_slot_allocated", (("container", state["bob"]), ("slot", "1.1"), ("user", "bob")))] == 1
    assert s[("ds01_user_gpu_equivalents", (("group", "student"), ("user", "alice")))] == 1.0
    assert s[("ds01_user_gpu_equivalents", (("group", "student"), ("user", "bob")))] == pytest.approx(2 / 7)
    assert s[("ds01_user_gpu_quota_gpueq", (("group", "researcher"), ("user", "carol")))] == 2.0
    assert s[("ds01_user_containers", (("group", "researcher"), ("user", "carol")))] >= 2
    # erin is known but holds nothing: present with zero usage
    assert s[("ds01_user_containers", (("group", "student"), ("user", "erin")))] == 0
    assert s[("ds01_unmanaged_gpu_container", (("container", state["rogue"]), ("user", "carol")))] == 1
    assert s[("ds01_containers", (("state", "created"), ("type", "docker")))] >= 4
    assert s[("ds01_user_memory_bytes", (("group", "student"), ("user", "alice")))] == 1024**3


def test_events_refusals_alerts_and_ooms(served, state, cfg, sandbox):
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import events

    log = events.EventLog(events.default_log_path(cfg))
    assert log.write("gpu.reject", user="bob", source="test", code="NO_GPU_AVAILABLE", sentence="none free")
    assert log.write("gateway.refused", user="bob", source="test", code="POLICY_DENIED", sentence="privileged")
    time.sleep(0.3)
    s = _scrape(served["port"])
    assert s[("ds01_refusals_24h", (("code", "NO_GPU_AVAILABLE"),))] == 1
    assert s[("ds01_events_24h", (("event_type", "gateway.refused"),))] == 1
    # alice is at 100 % of her GPU quota: one alert, recorded, shown by --brief
    alert = quota_alerts.load_state(str(sandbox / "state"), "alice")
    assert alert["gpu"]["level"] == 100
    types = [e["event_type"] for e in log.read()]
    assert types.count("quota.alert") >= 1
    # an OOM kill in bob's slice: one resource.oom_kill event, not repeated by a restart
    _set_oom(served["sysfs"], "student", "bob", 2)
    time.sleep(0.3)
    _scrape(served["port"])
    time.sleep(0.3)
    s = _scrape(served["port"])
    assert s[("ds01_user_oom_kills_total", (("group", "student"), ("user", "bob")))] == 2
    ooms = [e for e in log.read() if e["event_type"] == "resource.oom_kill"]
    assert len(ooms) == 1 and ooms[0]["user"] == "bob" and ooms[0]["details"]["oom_kills"] == 2
    persisted = json.loads((sandbox / "state" / "exporter" / "oom-counts.json").read_text())
    assert persisted["counts"]["bob"] == 2
    fresh = ob.build_snapshot(
        cfg,
        None,
        docker_client=None,
        slice_reader=served["observer"].slice_reader,
        emit=lambda *a, **k: pytest.fail("a restart re-alerted an old OOM kill"),
    )
    assert fresh["oom_counts"]["bob"] == 2
    # alert cooldown: the next passes deliver nothing new
    n_alerts = types.count("quota.alert")
    time.sleep(0.5)
    _scrape(served["port"])
    assert [e["event_type"] for e in log.read()].count("quota.alert") == n_alerts


def test_job_mapping_follows_grants_and_releases(served, state, cfg, docker_client, sandbox):
    mapping = sandbox / "state" / "dcgm-job-mapping"
    _scrape(served["port"])
    assert (mapping / "0").read_text().split() == [f"alice/{state['alice']}"]
    assert f"bob/{state['bob']}" in (mapping / "1").read_text().split()
    docker_client.containers.get(state["alice"]).remove(force=True)
    time.sleep(0.3)
    _scrape(served["port"])
    time.sleep(0.3)
    _scrape(served["port"])
    assert not (mapping / "0").exists()


def _ds01(ds01_bin, sandbox, *args, user=None):
    argv = [str(ds01_bin), "--config", str(sandbox / "resource-limits.yaml"), *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_limits_for_users_under_at_quota_exempt_and_unknown(state, sandbox, ds01_bin):
    under = json.loads(_ds01(ds01_bin, sandbox, "limits", "bob", "--json").stdout)
    assert under["gpu"]["used_gpueq"] == pytest.approx(2 / 7) and under["gpu"]["quota_gpueq"] == 1.0
    assert [h["slots"] for h in under["gpu"]["holders"]] == [["1.1"]]
    at = json.loads(_ds01(ds01_bin, sandbox, "limits", "alice", "--json").stdout)
    assert at["gpu"]["used_gpueq"] == 1.0 and at["containers"]["count"] == 1 and at["containers"]["max"] == 2
    exempt = json.loads(_ds01(ds01_bin, sandbox, "limits", "erin", "--json").stdout)
    assert exempt["exemptions"][0]["exempt_from"] == ["max_runtime_h"]
    assert "Exemption: max_runtime_h" in _ds01(ds01_bin, sandbox, "limits", "erin").stdout
    unknown = json.loads(_ds01(ds01_bin, sandbox, "limits", "zed", "--json").stdout)
    assert unknown["listed"] is False and "default group" in unknown["note"] and unknown["group"] == "student"
    brief = _ds01(ds01_bin, sandbox, "limits", "alice", "--brief")
    assert brief.returncode == 0 and brief.stdout.count("\n") == 1
    assert "GPU 1/1 gpueq [##########] 100%" in brief.stdout


def test_why_explains_refusals(state, sandbox, ds01_bin, cfg):
    none = _ds01(ds01_bin, sandbox, "why", "--user", "bob")
    assert none.returncode == 0 and "No refusal" in none.stdout
    refusals.record(str(sandbox / "state"), "bob", "NO_GPU_AVAILABLE", "No GPU is free.", details={"full_gpu": True})
    out = json.loads(_ds01(ds01_bin, sandbox, "why", "--user", "bob", "--json").stdout)
    est = out["estimate"]
    # only GPU 0 is a whole GPU: alice's container (created, never started) goes at the created timeout
    assert [h["slots"] for h in est["holders"]] == [["0"]]
    assert est["expected_free_at"] is not None and est["free_now"] == []
    refusals.record(
        str(sandbox / "state"), "alice", "USER_AT_LIMIT", "You hold 1 of 1.", details={"requested_gpueq": 1}
    )
    out = json.loads(_ds01(ds01_bin, sandbox, "why", "--user", "alice", "--json").stdout)
    assert [c["name"] for c in out["remove"]] == [state["alice"]]
    assert "docker rm" in _ds01(ds01_bin, sandbox, "why", "--user", "alice").stdout


@pytest.fixture
def unix_user(sandbox):
    name = "ds01tobs"
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=False, capture_output=True)
    os.chmod(sandbox, 0o755)
    for p in sandbox.parents:
        if str(p).startswith("/tmp/"):
            os.chmod(p, 0o755)
    yield name
    subprocess.run(["userdel", name], check=False, capture_output=True)


def _as_user(user, argv):
    """Run ``ds01 ARGV`` in a child that really is ``user`` to the kernel (setuid after fork).

    Everything the command imports is imported before the child drops root, so the test does not
    depend on the interpreter's files being readable by other users (here they live under /root).
    """
    import importlib
    import pwd
    import tempfile

    for name in ("cli.observe", "observe", "lifecycle", "docker", "docker.sdk", "gpu", "events", "usage", "identity"):
        importlib.import_module(f"ansible_collections.ds01.infra.plugins.module_utils.ds01.{name}")
    importlib.import_module("docker")
    account = pwd.getpwnam(user)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: become the user, run the command, never return into pytest
            code = 99
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - pytest replaced sys.stdout
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                os.setgroups([])
                os.setgid(account.pw_gid)
                os.setuid(account.pw_uid)
                os.environ.update(HOME=account.pw_dir, USER=user, LOGNAME=user)
                code = cli.main(argv)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        _pid, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()


def test_non_admin_asks_only_about_themselves(unix_user, sandbox):
    assert os.geteuid() == 0, "make test runs as root: this test creates a Unix user"
    config_path = str(sandbox / "resource-limits.yaml")
    code, stdout, stderr = _as_user(unix_user, ["--config", config_path, "limits", "--json"])
    assert code == 0, stderr
    assert json.loads(stdout)["user"] == unix_user
    code, _out, stderr = _as_user(unix_user, ["--config", config_path, "limits", "alice"])
    assert code == cli.EXIT_NO and "only admins" in stderr
    code, stdout, _err = _as_user(unix_user, ["--config", config_path, "why"])
    assert code == 0 and "No refusal" in stdout
