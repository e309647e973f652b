"""The docker package: the one GPU-reach answer (every spelling), the one time parser, the facts
cache kept across processes, and the standard-library engine reader on a real Unix socket."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import detector, docker, gpu
from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import policy

DEMO = gpu.read_inventory(
    os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "fixtures", "topology", "demo.yaml")
)
GPU_UUID = "GPU-00000000-0000-4000-8000-000000000000"
MIG_UUID = "MIG-22222222-0002-4000-8000-000000000000"


def req(**fields):
    return {"Driver": "", "Count": 0, "DeviceIDs": None, "Capabilities": None, "Options": {}, **fields}


# ---------------------------------------------------------------------------------------------
# Does it reach a GPU? Every spelling, as `docker run`, compose, devcontainers and the API write it.
# (host config, env, expected: reaches, devices, all, count, first source)
REACH = [
    (
        "--gpus 1",
        {"DeviceRequests": [req(Count=1, Capabilities=[["gpu"]])]},
        [],
        (True, [], False, 1, "device_request"),
    ),
    (
        "--gpus all",
        {"DeviceRequests": [req(Count=-1, Capabilities=[["gpu"]])]},
        [],
        (True, [], True, 0, "device_request"),
    ),
    (
        "--gpus device=UUID",
        {"DeviceRequests": [req(DeviceIDs=[GPU_UUID], Capabilities=[["gpu"]])]},
        [],
        (True, [GPU_UUID], False, 0, "device_request"),
    ),
    (
        "--gpus '\"device=0,1\"'",
        {"DeviceRequests": [req(DeviceIDs=["0", "1"], Capabilities=[["gpu"]])]},
        [],
        (True, ["0", "1"], False, 0, "device_request"),
    ),
    (
        "a MIG instance by UUID",
        {"DeviceRequests": [req(DeviceIDs=[MIG_UUID], Capabilities=[["gpu"]])]},
        [],
        (True, [MIG_UUID], False, 0, "device_request"),
    ),
    (
        "compose deploy.resources.reservations.devices (driver nvidia, count 1)",
        {"DeviceRequests": [req(Driver="nvidia", Count=1, Capabilities=[["gpu"]])]},
        [],
        (True, [], False, 1, "device_request"),
    ),
    (
        "driver nvidia without capabilities",
        {"DeviceRequests": [req(Driver="nvidia", DeviceIDs=["2"])]},
        [],
        (True, ["2"], False, 0, "device_request"),
    ),
    (
        "capabilities the NVIDIA driver serves, without 'gpu'",
        {"DeviceRequests": [req(Count=1, Capabilities=[["compute", "utility"]])]},
        [],
        (True, [], False, 1, "device_request"),
    ),
    (
        "no count, no ids: the hook exposes one",
        {"DeviceRequests": [req(Capabilities=[["gpu"]])]},
        [],
        (True, [], False, 1, "device_request"),
    ),
    ("another vendor's capability", {"DeviceRequests": [req(Count=1, Capabilities=[["fpga"]])]}, [], None),
    (
        "a capability group nvidia does not serve whole",
        {"DeviceRequests": [req(Count=1, Capabilities=[["gpu", "fpga"]])]},
        [],
        None,
    ),
    ("another driver", {"DeviceRequests": [req(Driver="amd", Count=1, Capabilities=[["gpu"]])]}, [], None),
    (
        "CDI request nvidia.com/gpu=0",
        {"DeviceRequests": [req(Driver="cdi", DeviceIDs=["nvidia.com/gpu=0", "vendor.com/x=1"])]},
        [],
        (True, ["0"], False, 0, "cdi"),
    ),
    (
        "CDI request nvidia.com/gpu=all",
        {"DeviceRequests": [req(Driver="cdi", DeviceIDs=["nvidia.com/gpu=all"])]},
        [],
        (True, [], True, 0, "cdi"),
    ),
    (
        "CDI request of another NVIDIA class (mig)",
        {"DeviceRequests": [req(Driver="cdi", DeviceIDs=["nvidia.com/mig=0:1"])]},
        [],
        (True, ["0:1"], False, 0, "cdi"),
    ),
    (
        "CDI request of another vendor",
        {"DeviceRequests": [req(Driver="cdi", DeviceIDs=["vendor.com/fpga=0"])]},
        [],
        None,
    ),
    (
        "--device nvidia.com/gpu=all",
        {"Devices": [{"PathOnHost": "nvidia.com/gpu=all"}]},
        [],
        (True, [], True, 0, "cdi"),
    ),
    (
        "--device nvidia.com/gpu=1",
        {"Devices": [{"PathOnHost": "nvidia.com/gpu=1"}]},
        [],
        (True, ["1"], False, 0, "cdi"),
    ),
    (
        "--device management.nvidia.com/gpu=all",
        {"Devices": [{"PathOnHost": "management.nvidia.com/gpu=all"}]},
        [],
        (True, [], True, 0, "cdi"),
    ),
    ("--device vendor.com/x=1", {"Devices": [{"PathOnHost": "vendor.com/x=1"}]}, [], None),
    (
        "--device /dev/nvidia0",
        {"Devices": [{"PathOnHost": "/dev/nvidia0"}]},
        [],
        (True, ["0"], False, 0, "device_node"),
    ),
    (
        "--device /dev/char/195:1",
        {"Devices": [{"PathOnHost": "/dev/char/195:1"}]},
        [],
        (True, ["1"], False, 0, "device_node"),
    ),
    ("--device /dev/nvidiactl alone", {"Devices": [{"PathOnHost": "/dev/nvidiactl"}]}, [], None),
    ("--device /dev/char/195:255 (nvidiactl)", {"Devices": [{"PathOnHost": "/dev/char/195:255"}]}, [], None),
    (
        "-v /dev/nvidia2:/dev/nvidia2",
        {"Binds": ["/dev/nvidia2:/dev/nvidia2:rw"]},
        [],
        (True, ["2"], False, 0, "device_bind"),
    ),
    (
        "--mount type=bind,source=/dev/nvidia3",
        {"Mounts": [{"Type": "bind", "Source": "/dev/nvidia3", "Target": "/dev/nvidia3"}]},
        [],
        (True, ["3"], False, 0, "device_bind"),
    ),
    (
        "a volume onto the toolkit's devices-as-mounts directory",
        {"Binds": ["/tmp/x:/var/run/nvidia-container-devices/all"]},
        [],
        (True, [], True, 0, "volume_mount"),
    ),
    (
        "--runtime nvidia -e NVIDIA_VISIBLE_DEVICES=all",
        {"Runtime": "nvidia"},
        ["NVIDIA_VISIBLE_DEVICES=all"],
        (True, [], True, 0, "runtime_env"),
    ),
    (
        "--runtime nvidia -e NVIDIA_VISIBLE_DEVICES=0,GPU-…",
        {"Runtime": "nvidia"},
        [f"NVIDIA_VISIBLE_DEVICES=0,{GPU_UUID}"],
        (True, ["0", GPU_UUID], False, 0, "runtime_env"),
    ),
    ("--runtime nvidia, NVIDIA_VISIBLE_DEVICES=void", {"Runtime": "nvidia"}, ["NVIDIA_VISIBLE_DEVICES=void"], None),
    ("--runtime nvidia without NVIDIA_VISIBLE_DEVICES", {"Runtime": "nvidia"}, ["PATH=/bin"], None),
    ("a CUDA image's env under runc", {}, ["NVIDIA_VISIBLE_DEVICES=all"], None),
    ("--privileged", {"Privileged": True}, [], (True, [], True, 0, "privileged")),
    ("nothing", {}, [], None),
]


@pytest.mark.parametrize(("what", "host", "env", "expected"), REACH, ids=[row[0] for row in REACH])
def test_gpu_reach_of_every_spelling(what, host, env, expected):
    reach = docker.gpu_reach({"Env": env}, host)
    got = (reach.reaches_gpu, reach.devices, reach.all, reach.count, reach.sources[0] if reach.sources else None)
    if expected is None:
        assert not reach.reaches_gpu, what
    else:
        assert got == expected, what


@pytest.mark.parametrize(("what", "host", "env", "expected"), REACH, ids=[row[0] for row in REACH])
def test_the_gateway_and_the_detector_give_the_same_answer(what, host, env, expected):
    """The gateway asks of a create body, the detector of a stored container: one answer."""
    ask = policy.gpu_ask({"Env": env, "HostConfig": host}, None, default_runtime="runc")
    access = detector.gpu_access({"Config": {"Env": env}, "HostConfig": host})
    assert (ask is not None) == access.has_gpu == (expected is not None), what


@pytest.mark.parametrize(
    ("name", "device"),
    [
        ("nvidia.com/gpu=0", "0"),
        ("nvidia.com/gpu=all", "all"),
        ("nvidia.com/mig=1:2", "1:2"),
        ("k8s.device-plugin.nvidia.com/gpu=GPU-1", "GPU-1"),
        ("vendor.com/gpu=0", None),
        ("nvidia.com.evil/gpu=0", None),
        ("/dev/nvidia0", None),
        ("nvidia.com/gpu", None),
    ],
)
def test_cdi_names_of_nvidia(name, device):
    assert docker.cdi_gpu(name) == device


def test_allocator_holdings_use_the_same_device_request_predicate():
    """A CDI request names GPUs the allocator then counts as held, by their ids."""
    inspect = {
        "Id": "c" * 64,
        "Name": "/x",
        "HostConfig": {"DeviceRequests": [req(Driver="cdi", DeviceIDs=["nvidia.com/gpu=1"])]},
    }
    info = docker.container_info(inspect=inspect, inventory=DEMO)
    assert info.slots == ("1",) and info.gpu.source == "device_requests"
    fpga = {"Id": "d" * 64, "Name": "/y", "HostConfig": {"DeviceRequests": [req(Count=1, Capabilities=[["fpga"]])]}}
    assert docker.container_info(inspect=fpga, inventory=DEMO).slots == ()


# ---------------------------------------------------------------------------------------------
# The one time parser

UTC = dt.timezone.utc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-22T08:00:00.123456789Z", dt.datetime(2026, 11, 22, 8, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-22T09:00:00+01:00", dt.datetime(2026, 11, 22, 8, 0, tzinfo=UTC)),
        ("2026-11-22T09:00:00+0100", dt.datetime(2026, 11, 22, 8, 0, tzinfo=UTC)),
        ("2026-11-22 08:00:00", dt.datetime(2026, 11, 22, 8, 0, tzinfo=UTC)),
        (1700000000, dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 1, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
        (0, None),
        (True, None),
        ("", None),
        ("yesterday", None),
        (None, None),
    ],
)
def test_parse_time(value, expected):
    parsed = docker.parse_time(value)
    assert parsed == expected
    assert parsed is None or parsed.tzinfo is not None


# ---------------------------------------------------------------------------------------------
# The create-facts cache, across processes


class Api:
    def __init__(self, docs):
        self.docs = docs
        self.inspected = []

    def containers(self, all=False):
        assert all
        return [
            {"Id": d["Id"], "Names": [d["Name"]], "State": "created", "Labels": d["Config"]["Labels"], "Created": 0}
            for d in self.docs
        ]

    def inspect_container(self, cid):
        self.inspected.append(cid)
        return next(d for d in self.docs if d["Id"] == cid)


class Client:
    def __init__(self, docs):
        self.api = Api(docs)


def doc(letter, uuid, env=()):
    return {
        "Id": letter * 64,
        "Name": f"/{letter}",
        "Config": {"Labels": {"ds01.user": "alice"}, "Env": ["SECRET=x", *env]},
        "HostConfig": {"DeviceRequests": [req(DeviceIDs=[uuid], Capabilities=[["gpu"]])], "CgroupParent": "ds01.slice"},
        "Mounts": [{"Type": "volume", "Destination": "/workspace"}],
        "State": {"Status": "created"},
    }


def test_a_second_process_inspects_only_containers_it_has_never_seen(tmp_path):
    path = str(tmp_path / "run" / "docker-facts.json")
    client = Client([doc("a", GPU_UUID), doc("b", MIG_UUID)])
    first = docker.list_containers(client, DEMO, docker.InspectCache(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "SECRET" not in Path(path).read_text()  # only the NVIDIA_* part of the Env is kept
    client.api.docs.append(doc("c", "GPU-11111111-1111-4111-8111-111111111111"))
    client.api.inspected.clear()
    second = docker.list_containers(client, DEMO, docker.InspectCache(path))  # a new process: a new cache object
    assert client.api.inspected == ["c" * 64]
    assert [c.slots for c in second] == [c.slots for c in first] + [("1",)]
    assert [c.cgroup_parent for c in second] == ["ds01.slice"] * 3
    client.api.docs.pop(0)
    docker.list_containers(client, DEMO, docker.InspectCache(path))
    assert sorted(json.loads(Path(path).read_text())["containers"]) == ["b" * 64, "c" * 64]  # the removed one is pruned


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        '{"schema": 1, "containers": {"x": 5}}',
        '{"schema": 99, "containers": {}}',
        "[]",
    ],
)
def test_a_bad_cache_is_ignored_and_rewritten(tmp_path, content):
    path = tmp_path / "docker-facts.json"
    path.write_text(content)
    os.chmod(path, 0o600)
    client = Client([doc("a", GPU_UUID)])
    infos = docker.list_containers(client, DEMO, docker.InspectCache(str(path)))
    assert client.api.inspected == ["a" * 64] and infos[0].slots == ("0",)
    assert list(json.loads(path.read_text())["containers"]) == ["a" * 64]


def test_a_cache_others_may_write_is_not_trusted(tmp_path):
    path = tmp_path / "docker-facts.json"
    lie = {"HostConfig": {}, "Config": {}, "Mounts": []}  # "holds no GPU"
    path.write_text(json.dumps({"schema": 1, "containers": {"a" * 64: lie}}))
    os.chmod(path, 0o666)
    client = Client([doc("a", GPU_UUID)])
    infos = docker.list_containers(client, DEMO, docker.InspectCache(str(path)))
    assert client.api.inspected == ["a" * 64] and infos[0].slots == ("0",)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


class RunningApi(Api):
    """``a`` has run (exited 3 after one restart); ``b`` is only created; ``c``'s inspect fails."""

    def containers(self, all=False):
        states = {"a": "exited", "b": "created", "c": "running"}
        return [
            {"Id": d["Id"], "Names": [d["Name"]], "State": states[d["Name"][1]], "Labels": d["Config"]["Labels"]}
            for d in self.docs
        ]

    def inspect_container(self, cid):
        if cid.startswith("c"):
            raise docker.EngineError(500, "the daemon said no")
        return super().inspect_container(cid)


def test_detail_reads_times_of_chosen_containers_and_a_failed_inspect_goes_to_on_error():
    ran = doc("a", GPU_UUID)
    ran["State"] = {"Status": "exited", "StartedAt": "2026-11-22T08:00:00.5Z", "FinishedAt": "2026-11-22T09:00:00Z"}
    ran["State"]["ExitCode"], ran["RestartCount"] = 3, 1
    client = Client([])
    client.api = RunningApi([ran, doc("b", MIG_UUID), doc("c", GPU_UUID)])
    failed = []
    infos = docker.list_containers(
        client,
        DEMO,
        docker.InspectCache(),
        detail=lambda summary: summary["State"] != "created",
        on_error=lambda summary, exc: failed.append((summary["Id"], str(exc))),
    )
    assert [i.name for i in infos] == ["a", "b"]
    assert failed == [("c" * 64, "cannot inspect container ['/c'] (500 the daemon said no)")]
    a, b = infos
    assert a.started_at == dt.datetime(2026, 11, 22, 8, 0, 0, 500000, tzinfo=dt.timezone.utc)
    assert a.finished_at == dt.datetime(2026, 11, 22, 9, tzinfo=dt.timezone.utc)
    assert (a.exit_code, a.restart_count, a.attrs is not None) == (3, 1, True)
    assert (b.started_at, b.exit_code, b.attrs, b.state) == (None, None, None, "created")
    assert b.slots == docker.container_info(inspect=doc("b", MIG_UUID), inventory=DEMO).slots != ()  # facts still read
    with pytest.raises(docker.DockerStateError, match="cannot inspect container"):
        docker.list_containers(client, DEMO, docker.InspectCache())


def test_a_gateway_made_container_that_cannot_be_inspected_is_read_from_its_labels():
    """The allocator's read: a container the gateway made keeps its GPUs in its ds01.gpu.* labels (what the
    gateway wrote into its DeviceRequests); one its owner keeps unreadable still counts as holding them."""
    locked = doc("c", GPU_UUID)
    locked["Config"]["Labels"] = {"ds01.user": "bob", "ds01.managed": "true", docker.UUIDS_LABEL: GPU_UUID}
    client = Client([])
    client.api = RunningApi([doc("a", GPU_UUID), locked])
    with pytest.raises(docker.DockerStateError):
        docker.list_containers(client, DEMO, docker.InspectCache())
    infos = docker.list_containers(client, DEMO, docker.InspectCache(), managed_by_labels=True)
    assert [(i.name, i.owner, i.gpu.ids) for i in infos] == [("a", "alice", (GPU_UUID,)), ("c", "bob", (GPU_UUID,))]
    locked["Config"]["Labels"] = {"ds01.user": "bob", docker.UUIDS_LABEL: GPU_UUID}  # not the gateway's
    with pytest.raises(docker.DockerStateError):
        docker.list_containers(client, DEMO, docker.InspectCache(), managed_by_labels=True)


def test_skip_unreadable_leaves_the_container_out_with_a_warning(caplog):
    client = Client([])
    client.api = RunningApi([doc("a", GPU_UUID), doc("c", GPU_UUID)])
    with caplog.at_level("WARNING"):
        infos = docker.list_containers(client, DEMO, docker.InspectCache(), on_error=docker.skip_unreadable)
    assert [i.name for i in infos] == ["a"]
    assert "left out container ['/c']" in caplog.text and "the daemon said no" in caplog.text


def test_the_label_views_and_the_create_facts_views():
    labels = {
        "ds01.user": "alice",
        "ds01.container_type": "devcontainer",
        "ds01.gpu.slots": "0,1.2",
        "ds01.gpu.uuid": GPU_UUID,
        "ds01.gpu.gpueq": "1.5",
    }
    info = docker.container_info({"Id": "d" * 64, "Names": ["/d"], "State": "running", "Labels": labels})
    assert (info.labelled_owner, info.type_label) == ("alice", "devcontainer")
    assert (info.labelled_slots, info.labelled_uuids, info.labelled_gpueq) == (("0", "1.2"), (GPU_UUID,), 1.5)
    assert (info.requests_gpu, info.workspace_mounted) == (False, False)  # no create facts were read
    bad = docker.container_info({"Id": "e" * 64, "Labels": {"ds01.gpu.gpueq": "lots"}})
    assert (bad.labelled_owner, bad.type_label, bad.labelled_gpueq, bad.labelled_slots) == (None, "", 0.0, ())
    read = docker.container_info(inspect=doc("a", GPU_UUID))
    assert (read.requests_gpu, read.workspace_mounted, read.mount_destinations) == (True, True, ("/workspace",))
    fpga = doc("f", GPU_UUID)
    fpga["HostConfig"]["DeviceRequests"] = [req(Driver="fpga", DeviceIDs=["0"], Capabilities=[["fpga"]])]
    assert docker.container_info(inspect=fpga).requests_gpu is False
    stopped = doc("s", GPU_UUID)
    stopped["State"] = {"Status": "exited"}
    listed = {"Id": "s" * 64, "Names": ["/s"], "State": "running", "Labels": {}}
    assert docker.container_info(listed, stopped).state == "exited"  # the inspect is the later reading


# ---------------------------------------------------------------------------------------------
# The engine reader on a real Unix socket


def serve(path, answers):
    """Answer each request on one connection with the next canned bytes; record request lines."""
    seen = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def run():
        conn, _addr = server.accept()
        with conn:
            buf = b""
            for answer in answers:
                while b"\r\n\r\n" not in buf:
                    buf += conn.recv(4096)
                head, _sep, buf = buf.partition(b"\r\n\r\n")
                seen.append(head.split(b"\r\n")[0].decode())
                conn.sendall(answer)
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return seen, thread


def test_engine_reads_lengths_chunks_and_errors(tmp_path):
    path = str(tmp_path / "engine.sock")
    listing = json.dumps([{"Id": "a" * 64, "Names": ["/a"], "State": "created"}]).encode()
    half = len(listing) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, listing[:half], len(listing) - half, listing[half:])
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
        b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"Id": "a"}',
        b'HTTP/1.1 404 Not Found\r\nContent-Length: 38\r\n\r\n{"message": "No such container: gone"}',
    ]
    seen, thread = serve(path, answers)
    engine = docker.Engine(path, timeout=5)
    assert engine.api.containers(all=True) == json.loads(listing)
    assert engine.api.inspect_container("a") == {"Id": "a"}
    with pytest.raises(docker.EngineNotFound) as caught:
        engine.api.inspect_container("gone")
    assert caught.value.status_code == 404 and "No such container" in str(caught.value)
    engine.close()
    thread.join(5)
    assert seen == [
        "GET /containers/json?all=1 HTTP/1.1",
        "GET /containers/a/json HTTP/1.1",
        "GET /containers/gone/json HTTP/1.1",
    ]


@pytest.mark.parametrize(
    ("host", "path"),
    [
        (None, "/var/run/docker.sock"),
        ("unix:///run/ds01/dockerd.sock", "/run/ds01/dockerd.sock"),
        ("tcp://127.0.0.1:2375", None),
        ("ssh://user@host", None),
    ],
)
def test_engine_socket_from_docker_host(host, path):
    env = {} if host is None else {"DOCKER_HOST": host}
    assert docker.engine.socket_from_env(env) == path


@pytest.mark.parametrize("value", ["abc", "a b/c?d=e&f", '{"label": ["ds01.user=al ice"]}', "é€☃", "~._-+%#", "\x00\n"])
def test_engine_quote_matches_urllib(value):
    import urllib.parse

    assert docker.engine.quote(value) == urllib.parse.quote(value, safe="")
    assert urllib.parse.unquote(docker.engine.quote(value)) == value


def test_engine_sends_filters_percent_encoded(tmp_path):
    import urllib.parse

    path = str(tmp_path / "engine.sock")
    seen, thread = serve(path, [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"])
    engine = docker.Engine(path, timeout=5)
    assert engine.api.containers(all=False, filters={"label": "ds01.user=a b&c"}) == []
    engine.close()
    thread.join(5)
    target = seen[0].split(" ")[1]
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(target).query) == {
        "all": ["0"],
        "filters": ['{"label": ["ds01.user=a b&c"]}'],
    }
