"""Workload detection: classification, GPU access, attribution, transitions, the two-sweep rule,
the watcher's reconnect logic and the ``ds01 workloads`` view — all over plain data."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import detector, fsutil, profile
from ansible_collections.ds01.infra.plugins.module_utils.ds01.cli import detect as cli_detect

CID = "a" * 64
CID2 = "b" * 64
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def attrs(
    name="c1",
    labels=None,
    cid=CID,
    status="created",
    device_requests=None,
    runtime="runc",
    env=(),
    devices=None,
    privileged=False,
    pid=0,
):
    return {
        "Id": cid,
        "Name": "/" + name,
        "Created": "2026-03-01T11:00:00.123456789Z",
        "Config": {"Labels": dict(labels or {}), "Env": list(env), "Image": "local/empty"},
        "HostConfig": {
            "DeviceRequests": device_requests,
            "Runtime": runtime,
            "Devices": devices or [],
            "Privileged": privileged,
        },
        "State": {
            "Status": status,
            "Running": status == "running",
            "Pid": pid,
            "ExitCode": 0,
            "StartedAt": "0001-01-01T00:00:00Z",
        },
    }


GPU_REQ = [{"Driver": "", "Count": 0, "DeviceIDs": ["GPU-1111"], "Capabilities": [["gpu"]], "Options": {}}]
GATEWAY_LABELS = {
    "ds01.user": "alice",
    "ds01.managed": "true",
    "ds01.container_type": "docker",
    "ds01.gpu.slots": "1",
    "ds01.gpu.uuids": "GPU-1111",
}


# -- classification ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "labels", "origin"),
    [
        ("job", GATEWAY_LABELS, "ds01-managed"),
        ("vsc-proj-0123abcd", {"devcontainer.local_folder": "/home/bob/proj"}, "devcontainer"),
        ("anything", {"devcontainer.config_file": "/home/bob/p/.devcontainer/devcontainer.json"}, "devcontainer"),
        ("vsc-proj-uid", {}, "devcontainer"),
        ("proj-web-1", {"com.docker.compose.project": "proj", "com.docker.compose.service": "web"}, "compose"),
        ("raw", {}, "raw-docker"),
        ("prom", {"ds01.protected": "true"}, "infrastructure"),
        ("dcgm", {"ds01.monitoring": "true", "ds01.managed": "true"}, "infrastructure"),
        ("exp", {"ds01.container_type": "infrastructure"}, "infrastructure"),
        # the gateway stamps every container it creates: its own type label says how it came
        (
            "vsc-x",
            {**GATEWAY_LABELS, "ds01.container_type": "devcontainer", "devcontainer.local_folder": "/h"},
            "ds01-managed",
        ),
        ("x", {"ds01.managed": "false", "com.docker.compose.project": "p"}, "compose"),
    ],
)
def test_classify(name, labels, origin):
    assert detector.classify(attrs(name=name, labels=labels)) == origin


def test_infrastructure_by_configured_label_and_name():
    assert detector.classify(attrs(labels={"lab.infra": "yes"}), infra_label="lab.infra") == "infrastructure"
    assert detector.classify(attrs(name="dcgm-exporter"), infra_names=["dcgm-"]) == "infrastructure"
    assert detector.classify(attrs(name="mine"), infra_names=["dcgm-"]) == "raw-docker"


# -- GPU access --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "has_gpu", "devices", "all_gpus", "sources"),
    [
        ({}, False, [], False, []),
        ({"device_requests": GPU_REQ}, True, ["GPU-1111"], False, ["device_request"]),
        (
            {"device_requests": [{"Driver": "nvidia", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]]}]},
            True,
            [],
            True,
            ["device_request"],
        ),
        (
            {"device_requests": [{"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu", "utility"]]}]},
            True,
            [],
            True,
            ["device_request"],
        ),
        (
            {"device_requests": [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=0", "vendor.com/x=1"]}]},
            True,
            ["0"],
            False,
            ["cdi"],
        ),
        ({"device_requests": [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]}]}, True, [], True, ["cdi"]),
        # a non-GPU device request (e.g. another vendor's capability) is not GPU access
        ({"device_requests": [{"Driver": "", "Count": 1, "Capabilities": [["fpga"]]}]}, False, [], False, []),
        (
            {"runtime": "nvidia", "env": ["NVIDIA_VISIBLE_DEVICES=0,GPU-2222"]},
            True,
            ["0", "GPU-2222"],
            False,
            ["runtime_env"],
        ),
        ({"runtime": "nvidia", "env": ["NVIDIA_VISIBLE_DEVICES=all"]}, True, [], True, ["runtime_env"]),
        # default-runtime nvidia: without NVIDIA_VISIBLE_DEVICES the runtime exposes nothing
        ({"runtime": "nvidia", "env": ["PATH=/bin"]}, False, [], False, []),
        ({"runtime": "nvidia", "env": ["NVIDIA_VISIBLE_DEVICES=void"]}, False, [], False, []),
        # the env alone under runc (a CUDA image's ENV) reaches no GPU
        ({"env": ["NVIDIA_VISIBLE_DEVICES=all"]}, False, [], False, []),
        (
            {
                "devices": [
                    {"PathOnHost": "/dev/nvidia3", "PathInContainer": "/dev/nvidia3"},
                    {"PathOnHost": "/dev/nvidiactl", "PathInContainer": "/dev/nvidiactl"},
                ]
            },
            True,
            ["3"],
            False,
            ["device_node"],
        ),
        (
            {"devices": [{"PathOnHost": "/dev/nvidia-uvm", "PathInContainer": "/dev/nvidia-uvm"}]},
            False,
            [],
            False,
            ["device_node"],
        ),
        ({"privileged": True}, True, [], True, ["privileged"]),
    ],
)
def test_gpu_access(kwargs, has_gpu, devices, all_gpus, sources):
    access = detector.gpu_access(attrs(**kwargs))
    assert (access.has_gpu, access.devices, access.all, access.sources) == (has_gpu, devices, all_gpus, sources)


@pytest.mark.parametrize(
    ("labels", "kwargs", "unmanaged"),
    [
        (GATEWAY_LABELS, {"device_requests": GPU_REQ}, False),  # allocated through the gateway
        ({}, {"device_requests": GPU_REQ}, True),  # raw --gpus device=…
        ({"ds01.managed": "true", "ds01.user": "a"}, {"device_requests": GPU_REQ}, True),  # managed, no slots
        ({"ds01.protected": "true"}, {"device_requests": GPU_REQ}, False),  # infrastructure (dcgm)
        ({}, {}, False),  # no GPU at all
    ],
)
def test_unmanaged_flag(labels, kwargs, unmanaged):
    record = detector.container_record(attrs(labels=labels, **kwargs), "alice", "label", NOW)
    assert record["unmanaged_gpu"] is unmanaged


def test_container_record_fields():
    a = attrs(name="job", labels=GATEWAY_LABELS, device_requests=GPU_REQ, status="exited")
    record = detector.container_record(a, "alice", "ds01.user", NOW, previous={"detected_at": "earlier"})
    assert record["id"] == CID and record["short_id"] == CID[:12]
    assert record["name"] == "job" and record["origin"] == "ds01-managed" and record["container_type"] == "docker"
    assert record["user"] == "alice" and record["owner_source"] == "ds01.user"
    assert record["gpu_slots"] == ["1"] and record["gpu_devices"] == ["GPU-1111"]
    assert record["status"] == "exited" and not record["running"] and record["exit_code"] == 0
    assert record["detected_at"] == "earlier" and record["started_at"] is None


# -- cgroup places and attribution --------------------------------------------------------------
V1_DOCKER = f"""12:memory:/docker/{CID}
11:cpu,cpuacct:/docker/{CID}
1:name=systemd:/docker/{CID}
0::/
"""
SYSTEMD_SCOPE = f"0::/ds01.slice/ds01-student.slice/ds01-student-alice.slice/docker-{CID}.scope\n"
CGROUPFS_PARENT = f"4:memory:/ds01.slice/ds01-student-bob.slice/{CID}\n0::/\n"
USER_SESSION = "0::/user.slice/user-1001.slice/session-4.scope\n"
USER_SERVICE = "0::/user.slice/user-1001.slice/user@1001.service/app.slice/run-u1.service\n"
DS01_SLICE = "1:name=systemd:/ds01.slice/ds01-student.slice/ds01-student-carol.slice/run-r1.scope\n0::/\n"
SYSTEM_UNIT = "0::/system.slice/nvidia-persistenced.service\n"
CRON = "0::/system.slice/cron.service\n"
BARE = "4:memory:/process_api/86145b3079960e21feb58cd8a19ee0e1\n0::/\n"


@pytest.mark.parametrize(
    ("text", "container", "slice_uid", "ds01_slice", "session", "system_unit"),
    [
        (V1_DOCKER, CID, None, None, False, None),
        (SYSTEMD_SCOPE, CID, None, ("student", "alice"), False, None),
        (CGROUPFS_PARENT, CID, None, ("student", "bob"), False, None),
        (USER_SESSION, None, 1001, None, True, None),
        (USER_SERVICE, None, 1001, None, False, None),
        (DS01_SLICE, None, None, ("student", "carol"), False, None),
        (SYSTEM_UNIT, None, None, None, False, "nvidia-persistenced.service"),
        (BARE, None, None, None, False, None),
        ("", None, None, None, False, None),
    ],
)
def test_parse_cgroup(text, container, slice_uid, ds01_slice, session, system_unit):
    place = detector.parse_cgroup(text)
    assert place.container_id == container
    assert place.slice_uid == slice_uid
    assert place.ds01_slice == ds01_slice
    assert place.session is session
    assert place.system_unit == system_unit


def _login(uid):
    return {0: "root", 1001: "alice", 1002: "bob"}.get(uid, str(uid))


@pytest.mark.parametrize(
    ("cgroup", "uid", "comm", "kind", "login", "scope"),
    [
        (V1_DOCKER, 0, "python3", "container", None, "container"),  # root in a container: the container's
        (SYSTEMD_SCOPE, 1001, "python3", "container", None, "container"),
        (USER_SESSION, 1001, "python3", "user", "alice", "session"),
        (USER_SERVICE, 1001, "python3", "user", "alice", "user-slice"),
        (DS01_SLICE, 1002, "python3", "user", "bob", "ds01-slice"),  # the uid names the login
        (SYSTEM_UNIT, 0, "nvidia-persistenced", "system", None, "system-daemon"),
        (SYSTEM_UNIT, 0, "python3", "user", "root", "system-service"),  # root's job in a unit is a person's
        ("0::/system.slice/dcgm.service\n", 999, "foo", "system", None, "system-service"),
        (CRON, 1001, "python3", "user", "alice", "system-service"),  # cron without pam_systemd
        (USER_SESSION, 1001, "Xorg", "system", None, "system-daemon"),
        (USER_SESSION, 1001, "nv-hostengine", "system", None, "system-daemon"),
        (BARE, 1002, "sleep", "user", "bob", "host"),  # no systemd: the real uid decides
        (BARE, 120, "gnome-thing", "system", None, "host"),
        (BARE, None, "", "gone", None, ""),
    ],
)
def test_decide_attribution(cgroup, uid, comm, kind, login, scope):
    att = detector.decide_attribution(
        42,
        detector.parse_cgroup(cgroup),
        uid=uid,
        comm=comm,
        exe="/usr/bin/" + comm,
        cmdline=comm,
        start_time=7,
        login_for_uid=_login,
    )
    assert (att.kind, att.login, att.scope) == (kind, login, scope)
    if kind == "container":
        assert att.container_id == CID


def test_status_and_stat_parsing():
    status = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1001\t0\t0\t0\nGid:\t100\t100\t100\t100\n"
    assert detector.parse_status_uid(status) == 1001  # the real uid, not the effective one
    stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10"
    assert detector.parse_start_time(stat) == 987654
    assert detector.parse_start_time("garbage") is None


def test_proc_reader_attributes_this_process():
    att = detector.ProcReader().attribute(os.getpid())
    assert att.kind in ("user", "container")
    assert att.start_time and att.uid == os.getuid()
    assert detector.ProcReader().attribute(2**22 + 12345).kind == "gone"


# -- grants -------------------------------------------------------------------------------------
def test_grant_files(tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    (tmp_path / "alice.json").write_text(profile.render_grant("alice", "root", now, now + dt.timedelta(hours=1)))
    (tmp_path / "bob.json").write_text(profile.render_grant("bob", "root", now, now - dt.timedelta(hours=1)))
    (tmp_path / "carol.json").write_text(profile.render_grant("carol", "root", now, None))
    (tmp_path / "dave.json").write_text("{not json")
    assert detector.grant_active(str(tmp_path), "alice", now)
    assert not detector.grant_active(str(tmp_path), "bob", now)  # expired
    assert detector.grant_active(str(tmp_path), "carol", now)  # permanent
    assert not detector.grant_active(str(tmp_path), "dave", now)
    assert not detector.grant_active(str(tmp_path), "erin", now)
    assert not detector.grant_active(str(tmp_path), "../alice", now)


# -- the Detector's transitions -----------------------------------------------------------------
class FakeProc:
    """Attribution by table: pid -> Attribution."""

    def __init__(self):
        self.table = {}

    def attribute(self, pid):
        return self.table.get(pid) or detector.Attribution("gone", pid=pid)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event_type, user=None, **details):
        self.events.append((event_type, user, details))

    def types(self):
        return [e[0] for e in self.events]

    def clear(self):
        self.events.clear()


def owner_by_label(a):
    user = (a.get("Config") or {}).get("Labels", {}).get("ds01.user")
    return (user, "ds01.user") if user else (None, "unknown")


@pytest.fixture
def det(tmp_path):
    rec = Recorder()
    proc = FakeProc()
    d = detector.Detector(
        str(tmp_path / "state" / "workloads.json"),
        owner_of=owner_by_label,
        emit=rec,
        proc=proc,
        exempt_users=["admin1"],
        grant_dir=str(tmp_path / "grants"),
    )
    d.rec, d.fake_proc = rec, proc
    return d


def test_container_lifecycle_events(det):
    a = attrs(name="job", labels=GATEWAY_LABELS, device_requests=GPU_REQ)
    assert det.upsert(a) is True  # a new GPU holding
    assert det.rec.types() == ["detection.container_discovered"]
    assert det.rec.events[0][1] == "alice"
    det.rec.clear()
    assert det.upsert(a) is False  # nothing changed: no event, no holding change
    assert det.rec.types() == []
    a_run = attrs(name="job", labels=GATEWAY_LABELS, device_requests=GPU_REQ, status="running", pid=10)
    det.upsert(a_run)
    assert det.rec.types() == ["detection.container_status_changed"]
    assert det.rec.events[0][2]["old_status"] == "created" and det.rec.events[0][2]["new_status"] == "running"
    det.rec.clear()
    det.upsert(attrs(name="job", labels=GATEWAY_LABELS, device_requests=GPU_REQ, status="exited"))
    assert det.rec.types() == ["detection.container_status_changed", "detection.container_exited"]
    det.rec.clear()
    assert det.remove(CID) is True
    assert det.rec.types() == ["detection.container_removed"]
    assert det.remove(CID) is False


def test_unmanaged_container_announced_once(det):
    det.upsert(attrs(name="rogue", device_requests=GPU_REQ))
    assert det.rec.types() == ["detection.container_discovered", "detection.unmanaged_gpu"]
    assert det.rec.events[1][2]["kind"] == "container"
    det.rec.clear()
    det.upsert(attrs(name="rogue", device_requests=GPU_REQ, status="running"))
    assert "detection.unmanaged_gpu" not in det.rec.types()


def test_full_sync_drops_vanished_and_survives_restart(det, tmp_path):
    det.full_sync([attrs(cid=CID, name="one"), attrs(cid=CID2, name="two")])
    det.save("once")
    det.rec.clear()
    det.full_sync([attrs(cid=CID, name="one")])
    assert det.rec.types() == ["detection.container_removed"]
    det.save("once")
    # a new detector process starts from the file: no re-announcement of what it already knew
    again = detector.Detector(det.inventory_path, owner_of=owner_by_label, emit=Recorder(), proc=FakeProc())
    again.load()
    again.full_sync([attrs(cid=CID, name="one")])
    assert again.emit.types() == []
    assert os.stat(det.inventory_path).st_mode & 0o777 == 0o644
    assert [p for p in os.listdir(os.path.dirname(det.inventory_path)) if p.endswith(".tmp")] == []


def user_att(pid, login="alice", uid=1001, start=100):
    return detector.Attribution(
        "user",
        pid=pid,
        uid=uid,
        login=login,
        comm="python3",
        cmdline="python3 train.py",
        start_time=start,
        scope="session",
    )


def test_two_sweep_rule_and_exit(det):
    det.fake_proc.table[500] = user_att(500)
    gp = [detector.GpuProcess(pid=500, gpu_uuid="GPU-0000", gpu_index=0, slot="0", used_memory_mib=1024.0)]
    det.sweep(gp)
    assert det.host_processes == {} and "500" in det.pending  # first sighting: pending only
    assert det.rec.types() == []
    det.sweep(gp)
    assert det.host_processes["500"]["user"] == "alice"
    assert det.host_processes["500"]["used_memory_mib"] == 1024.0
    assert det.rec.types() == ["detection.host_gpu_process_discovered", "detection.unmanaged_gpu"]
    det.rec.clear()
    det.sweep(gp)
    assert det.rec.types() == []  # steady state: no repeated events
    det.sweep([])
    assert det.rec.types() == ["detection.host_gpu_process_exited"]
    assert det.host_processes == {} and det.pending == {}


def test_transient_process_never_reported(det):
    det.fake_proc.table[501] = user_att(501)
    det.sweep([detector.GpuProcess(pid=501, gpu_uuid="GPU-0000")])
    det.sweep([])
    det.sweep([])
    assert det.rec.types() == [] and det.host_processes == {} and det.pending == {}


def test_reused_pid_is_a_new_process(det):
    det.fake_proc.table[502] = user_att(502, start=100)
    gp = [detector.GpuProcess(pid=502, gpu_uuid="GPU-0000")]
    det.sweep(gp)
    det.sweep(gp)
    det.rec.clear()
    det.fake_proc.table[502] = user_att(502, login="bob", uid=1002, start=999)
    det.sweep(gp)
    assert det.rec.types() == ["detection.host_gpu_process_exited"]
    assert det.pending["502"]["start_time"] == 999


def test_nvml_failure_keeps_host_state(det):
    det.fake_proc.table[503] = user_att(503)
    gp = [detector.GpuProcess(pid=503, gpu_uuid="GPU-0000")]
    det.sweep(gp)
    det.sweep(gp)
    det.rec.clear()
    det.sweep(None, "NVMLError_Unknown")
    assert det.rec.types() == [] and "503" in det.host_processes
    assert det.gpu_status == {"ok": False, "error": "NVMLError_Unknown"}


def test_exempt_and_granted_logins_are_not_unmanaged(det, tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    (tmp_path / "grants").mkdir()
    (tmp_path / "grants" / "bob.json").write_text(profile.render_grant("bob", "root", now, now + dt.timedelta(hours=2)))
    det.fake_proc.table[600] = user_att(600, login="admin1", uid=1500)
    det.fake_proc.table[601] = user_att(601, login="bob", uid=1002)
    det.fake_proc.table[602] = user_att(602, login="carol", uid=1003)
    gp = [detector.GpuProcess(pid=p, gpu_uuid="GPU-0000") for p in (600, 601, 602)]
    det.sweep(gp)
    det.sweep(gp)
    flags = {k: (v["exempt"], v["granted"], v["unmanaged_gpu"]) for k, v in det.host_processes.items()}
    assert flags == {"600": (True, False, False), "601": (False, True, False), "602": (False, False, True)}
    unmanaged = [e for e in det.rec.events if e[0] == "detection.unmanaged_gpu"]
    assert [e[1] for e in unmanaged] == ["carol"]
    # the grant is revoked: the next sweep flags bob's running process
    det.rec.clear()
    (tmp_path / "grants" / "bob.json").unlink()
    det.sweep(gp)
    assert [(e[0], e[1]) for e in det.rec.events] == [("detection.unmanaged_gpu", "bob")]


def test_container_gpu_processes_attach_to_the_container(det):
    # a container with no GPU setting the detector can see, but NVML shows its process on a GPU
    det.upsert(attrs(name="sneaky", status="running", pid=77))
    det.rec.clear()
    det.fake_proc.table[700] = detector.Attribution("container", pid=700, container_id=CID, uid=0)
    changed = det.sweep([detector.GpuProcess(pid=700, gpu_uuid="GPU-0000", used_memory_mib=512.0)])
    record = det.containers[CID]
    assert changed is True
    assert record["has_gpu"] and record["gpu_sources"] == ["nvml"] and record["gpu_devices"] == ["GPU-0000"]
    assert record["gpu_processes"] == [
        {"pid": 700, "gpu_uuid": "GPU-0000", "gpu_index": None, "slot": None, "used_memory_mib": 512.0}
    ]
    assert det.rec.types() == ["detection.unmanaged_gpu"]
    assert det.host_processes == {} and det.pending == {}  # never counted as a host process


def test_system_processes_are_ignored(det):
    det.fake_proc.table[800] = detector.Attribution("system", pid=800, comm="nvidia-persistenced")
    det.sweep([detector.GpuProcess(pid=800)])
    det.sweep([detector.GpuProcess(pid=800)])
    assert det.host_processes == {} and det.pending == {} and det.rec.types() == []


# -- the watcher (fake Docker) -------------------------------------------------------------------
class FakeStream:
    def __init__(self):
        self.items = []
        self.cond = threading.Condition()
        self.closed = False
        self.broken = False

    def push(self, item):
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def break_(self):
        with self.cond:
            self.broken = True
            self.cond.notify_all()

    def __iter__(self):
        while True:
            with self.cond:
                while not self.items and not self.broken and not self.closed:
                    self.cond.wait(0.05)
                if self.items:
                    item = self.items.pop(0)
                elif self.broken:
                    raise detector.RequestException("connection reset")
                else:
                    return
            yield item

    def close(self):
        self.closed = True


class FakeDocker:
    def __init__(self):
        self.containers = {}
        self.up = True
        self.stream = None
        self.streams = 0
        self.lock = threading.Lock()

    def list_all(self):
        if not self.up:
            raise detector.DockerUnavailable("down")
        return [dict(v) for v in self.containers.values()]

    def inspect(self, cid):
        if not self.up:
            raise detector.DockerUnavailable("down")
        return self.containers.get(cid)

    def events(self):
        if not self.up:
            raise detector.DockerUnavailable("connection refused")
        self.stream = FakeStream()
        self.streams += 1
        return None, self.stream

    def create(self, a, emit=True):
        self.containers[a["Id"]] = a
        if emit and self.stream is not None:
            self.stream.push({"Type": "container", "Action": "create", "id": a["Id"]})


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_watcher_follows_events_and_resyncs_after_reconnect(det):
    docker = FakeDocker()
    docker.create(attrs(cid=CID, name="before"), emit=False)
    hook_calls = []
    watcher = detector.Watcher(
        det, docker, lambda: ([], None), sweep_interval_s=3600, hook=lambda: hook_calls.append(1), max_backoff_s=0.1
    )
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: CID in _file_containers(det))  # initial resync on connect
        docker.create(attrs(cid=CID2, name="gpu", device_requests=GPU_REQ))
        assert wait_for(lambda: CID2 in _file_containers(det))
        assert hook_calls  # a GPU holding appeared: the allocator's job mapping is refreshed
        # the daemon goes away; a container is created while the watcher is disconnected
        docker.up = False
        docker.stream.break_()
        assert wait_for(lambda: not _read(det)["docker"]["ok"])
        third = "c" * 64
        docker.create(attrs(cid=third, name="while-down"), emit=False)
        del docker.containers[CID]
        docker.up = True
        assert wait_for(lambda: third in _file_containers(det) and CID not in _file_containers(det))
        assert _read(det)["docker"]["ok"] is True
        assert watcher.reconnects == 1 and docker.streams == 2
        assert "detection.container_removed" in det.rec.types()
    finally:
        watcher.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_watcher_survives_a_failing_step(det, caplog):
    docker = FakeDocker()
    calls = []

    def bad_gpu():
        calls.append(1)
        raise RuntimeError("boom")

    watcher = detector.Watcher(det, docker, bad_gpu, sweep_interval_s=0.05, max_backoff_s=0.1)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: len(calls) >= 3)  # it keeps sweeping after the failure
        docker.create(attrs(cid=CID2, name="after"))
        assert wait_for(lambda: CID2 in _file_containers(det))
    finally:
        watcher.stop()
        thread.join(5)
    assert "detector step failed" in caplog.text


def _read(det):
    try:
        with open(det.inventory_path) as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return {"containers": {}, "docker": {"ok": None}}


def _file_containers(det):
    return _read(det)["containers"]


# -- ds01 workloads ------------------------------------------------------------------------------
def sample_inventory(now_epoch):
    d = detector.Detector("/nonexistent/w.json", owner_of=owner_by_label, emit=Recorder(), proc=FakeProc())
    d.upsert(attrs(cid=CID, name="job", labels=GATEWAY_LABELS, device_requests=GPU_REQ, status="running"))
    d.upsert(attrs(cid=CID2, name="old", labels={"ds01.user": "bob"}, status="exited"))
    d.upsert(attrs(cid="d" * 64, name="rogue", device_requests=GPU_REQ, status="running"))
    d.fake = d.proc
    d.proc.table[900] = user_att(900, login="carol", uid=1003)
    d.sweep([detector.GpuProcess(pid=900, gpu_uuid="GPU-0000", slot="0", used_memory_mib=100.0)])
    d.sweep([detector.GpuProcess(pid=900, gpu_uuid="GPU-0000", slot="0", used_memory_mib=100.0)])
    snap = d.snapshot("watch")
    snap["updated_at_epoch"] = now_epoch - 5
    return snap


def test_workloads_document_filters_and_shape():
    now = time.time()
    inv = sample_inventory(now)
    doc = cli_detect.workloads_document(inv, "/x/workloads.json", now=now)
    assert [(w["type"], w["user"], w["name"]) for w in doc["workloads"]] == [
        ("ds01-managed", "alice", "job"),
        ("host-process", "carol", "python3"),
        ("raw-docker", None, "rogue"),
    ]
    keys = set(doc["workloads"][0])
    assert all(set(w) == keys for w in doc["workloads"])  # one shape for every kind
    assert doc["counts"] == {
        "workloads": 3,
        "gpu": 3,
        "unmanaged_gpu": 2,
        "by_type": {"ds01-managed": 1, "host-process": 1, "raw-docker": 1},
    }
    assert doc["by_user"]["unknown"] == {"workloads": 1, "gpu": 1, "unmanaged_gpu": 1}
    assert doc["age_s"] == pytest.approx(5, abs=1) and doc["stale"] is False
    assert len(cli_detect.workloads_document(inv, "p", include_all=True, now=now)["workloads"]) == 4
    assert [w["name"] for w in cli_detect.workloads_document(inv, "p", user="alice", now=now)["workloads"]] == ["job"]
    only = cli_detect.workloads_document(inv, "p", wtype="host-process", now=now)["workloads"]
    assert [w["id"] for w in only] == ["pid:900"]
    assert only[0]["gpu_slots"] == ["0"] and only[0]["gpu_memory_mib"] == 100.0
    gpu = cli_detect.workloads_document(inv, "p", gpu_only=True, include_all=True, now=now)
    assert "old" not in [w["name"] for w in gpu["workloads"]]
    stale = cli_detect.workloads_document(inv, "p", now=now + 3600)
    assert stale["stale"] is True


def test_workloads_table_marks_unmanaged_and_age():
    now = time.time()
    doc = cli_detect.workloads_document(sample_inventory(now), "/x/workloads.json", now=now)
    text = cli_detect.render_table(doc, by_user=False, wide=False, now=now)
    lines = text.splitlines()
    assert lines[0].split() == ["TYPE", "USER", "NAME", "STATUS", "GPU", "AGE"]
    rogue = next(line for line in lines if "rogue" in line)
    assert "GPU-1111 !" in rogue and "unknown" in rogue
    assert "1 " in next(line for line in lines if " job " in line)  # the allocated slot
    assert "Inventory updated 5s ago" in text
    grouped = cli_detect.render_table(doc, by_user=True, wide=True, now=now)
    headings = [line for line in grouped.splitlines() if line and not line.startswith(" ") and ":" in line]
    assert [h.split(":")[0] for h in headings[:3]] == ["alice", "carol", "unknown"]


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (61, "1m"), (7200, "2h"), (3 * 86400, "3d"), (None, "-")])
def test_format_age(seconds, text):
    assert cli_detect.format_age(seconds) == text


# -- the CLI edge (no Docker call) ---------------------------------------------------------------
def write_config(tmp_path):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (tmp_path / "resource-limits.yaml").write_text(
        "default_group: student\ngroups:\n  student: {}\n"
        f"paths:\n  state_dir: {state}\n  log_dir: {tmp_path / 'log'}\n  run_dir: {tmp_path / 'run'}\n"
    )
    return str(tmp_path / "resource-limits.yaml"), state


def test_workloads_without_inventory_says_start_the_service(tmp_path, capsys):
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import cli

    cfg, _state = write_config(tmp_path)
    rc = cli.main(["--config", cfg, "workloads"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_FAULT
    assert "ds01-detector.service" in err and "ds01 detect once" in err


def test_workloads_json_from_the_file_only(tmp_path, capsys, monkeypatch):
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import cli

    cfg, state = write_config(tmp_path)
    fsutil.atomic_write_json(str(state / "workloads.json"), sample_inventory(time.time()))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")  # proves no Docker call is needed
    t0 = time.monotonic()
    rc = cli.main(["--config", cfg, "workloads", "--json", "--gpu-only"])
    assert time.monotonic() - t0 < 1.0
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["schema_version"] == "1" and out["counts"]["workloads"] == 3


def test_two_containers_holding_one_gpu_are_reported_once(det):
    """The allocator never grants one device twice; when it happens anyway (a grant lost with a killed
    gateway), the detector says so, naming both holders, and does not repeat itself."""
    first = attrs(name="job", labels=GATEWAY_LABELS, device_requests=GPU_REQ, status="running", pid=10)
    det.upsert(first)
    det.rec.clear()
    bob = {**GATEWAY_LABELS, "ds01.user": "bob"}
    second = attrs(name="job2", cid="b" * 64, labels=bob, device_requests=GPU_REQ)
    det.upsert(second)
    assert "detection.gpu_double_booked" in det.rec.types()
    event = next(e for e in det.rec.events if e[0] == "detection.gpu_double_booked")
    assert event[1] == "bob" and event[2]["shared_with"][0]["container_name"] == "job"
    assert det.containers["b" * 64]["gpu_shared_with"] == [CID]
    det.rec.clear()
    det.upsert(second)
    assert "detection.gpu_double_booked" not in det.rec.types()
    det.upsert(attrs(name="job", labels=GATEWAY_LABELS, device_requests=GPU_REQ, status="exited"))
    det.rec.clear()
    det.upsert(
        attrs(name="job3", cid="c" * 64, labels=bob, device_requests=[{**GPU_REQ[0], "DeviceIDs": ["GPU-2222"]}])
    )
    assert "detection.gpu_double_booked" not in det.rec.types()
