"""Write-ahead GPU intents: the rule (pure, table-driven), the host facts it reads, and reserve() with them.

The engine-level proof (a gateway SIGKILLed while the daemon finishes its create) is
tests/integration/test_faults_intents.py; here Docker is the in-memory client the allocator tests use.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import allocator, config, gpu, intents, record
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import docker as docker_state
from ansible_collections.ds01.infra.plugins.module_utils.ds01.allocator import Request

FIXTURES = Path(__file__).resolve().parents[5] / "fixtures"
DEMO = gpu.read_inventory(str(FIXTURES / "topology" / "demo.yaml"))
LAB = config.load_config(str(FIXTURES / "lab" / "resource-limits.yaml"))
UUID = {s.slot_id: s.uuid for s in DEMO.slots()}
BOOT = "boot-a"


def _intent(**changes):
    base = intents.Intent(
        token="t" * 32,
        user="alice",
        container="alice-train",
        slots=("0",),
        uuids=(UUID["0"],),
        gpueq=1.0,
        labels={"ds01.gpu.slots": "0"},
        created_at="2026-01-01T00:00:00.000Z",
        boot_id=BOOT,
        boot_s=100.0,
        pid=4242,
        pid_start=7,
    )
    return record.replace(base, **changes)


def _container(name, *slot_ids, labels=None, owner="alice"):
    ids = tuple(UUID[s] for s in slot_ids)
    info = docker_state.container_info(
        {"Id": name * 4, "Names": [f"/{name}"], "State": "created", "Labels": {"ds01.user": owner, **(labels or {})}}
    )
    info = record.replace(info, gpu=docker_state.GpuClaim(ids=ids, source="device_requests"))
    return docker_state.attach_slots(info, DEMO)


def _dead_pid():
    """A pid that certainly ran and is gone (a reaped child)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# -- the rule ---------------------------------------------------------------------------------------

SETTLE = intents.SETTLE_S
STALE = intents.STALE_S

# (id, holdings, age, writer alive, expected state, expected container name)
RULE = [
    ("young-writer-gone-no-container", [], 1.0, False, intents.PENDING, None),
    ("young-writer-alive", [], 1.0, True, intents.PENDING, None),
    ("settled-writer-gone", [], SETTLE, False, intents.DEAD, None),
    ("settled-writer-alive-not-stale", [], SETTLE * 2, True, intents.PENDING, None),
    ("stale-writer-alive", [], STALE, True, intents.DEAD, None),
    ("other-boot", [], float("inf"), False, intents.DEAD, None),
    (
        "token-label-fulfils-even-when-old",
        [_container("x-renamed", "0", labels={intents.LABEL: "t" * 32})],
        STALE * 3,
        False,
        intents.FULFILLED,
        "x-renamed",
    ),
    ("name-and-uuids-fulfil", [_container("alice-train", "0")], 1.0, True, intents.FULFILLED, "alice-train"),
    ("name-with-other-gpus-does-not", [_container("alice-train", "1")], 1.0, False, intents.PENDING, None),
    ("same-gpu-other-name-does-not", [_container("bob-job", "0", owner="bob")], SETTLE, False, intents.DEAD, None),
    (
        "other-token-does-not",
        [_container("y", "0", labels={intents.LABEL: "u" * 32})],
        1.0,
        False,
        intents.PENDING,
        None,
    ),
]


@pytest.mark.parametrize(
    ("holdings", "age", "alive", "expected", "name"), [r[1:] for r in RULE], ids=[r[0] for r in RULE]
)
def test_intent_rule(holdings, age, alive, expected, name):
    verdict, container = intents.state(_intent(), holdings, age, alive)
    assert verdict == expected
    assert (container.name if container is not None else None) == name


def test_unnamed_create_is_matched_by_its_token_only():
    unnamed = _intent(container=None)
    assert intents.state(unnamed, [_container("happy_turing", "0")], 1.0, False)[0] == intents.PENDING
    tagged = _container("happy_turing", "0", labels={intents.LABEL: unnamed.token})
    assert intents.state(unnamed, [tagged], 1.0, False)[0] == intents.FULFILLED


@pytest.mark.parametrize(
    ("boot", "now", "expected"),
    [(BOOT, 130.5, 30.5), (BOOT, 90.0, 0.0), ("boot-b", 130.5, float("inf"))],
    ids=["same-boot", "clock-before-write", "after-reboot"],
)
def test_intent_age_is_measured_on_the_boot_clock(boot, now, expected):
    assert intents.age_s(_intent(), boot, now) == expected


def test_a_pending_intent_holds_its_slots_for_its_user_in_decide():
    pending = intents.as_holding(_intent(slots=("2.2",), uuids=(UUID["2.2"],), gpueq=1 / 7), DEMO)
    assert pending.slots == ("2.2",) and pending.owner == "alice" and pending.state == "creating"
    bob = record.replace(LAB.resolve("alice"), user="bob", allow_full_gpu=False)
    refused = allocator.decide(DEMO, [pending], bob, Request(device_ids=(UUID["2.2"],)))
    assert isinstance(refused, allocator.Refusal) and refused.code == allocator.NO_GPU_AVAILABLE
    placed = allocator.decide(DEMO, [pending], bob, Request())
    assert isinstance(placed, allocator.Grant) and placed.slots == ("2.3",)
    alice = record.replace(LAB.resolve("alice"), max_containers_per_user=1)
    capped = allocator.decide(DEMO, [pending], alice, Request())
    assert isinstance(capped, allocator.Refusal) and capped.code == allocator.CONTAINER_LIMIT
    assert "alice-train" in capped.sentence  # the cut-off user is told the container is theirs


# -- host facts -------------------------------------------------------------------------------------


def test_process_start_tells_running_zombie_and_gone_apart():
    assert isinstance(intents.process_start(os.getpid()), int)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        while True:  # the child has exited once /proc shows it as a zombie (it is not reaped yet)
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        assert intents.process_start(pid) is None
    finally:
        os.waitpid(pid, 0)
    assert intents.process_start(pid) is None


def test_writer_alive_needs_the_same_process_not_just_the_pid():
    me = os.getpid()
    start = intents.process_start(me)
    boot = intents.boot_id()
    assert intents.writer_alive(_intent(pid=me, pid_start=start, boot_id=boot), boot)
    assert not intents.writer_alive(_intent(pid=me, pid_start=start + 1, boot_id=boot), boot)  # pid reused
    assert not intents.writer_alive(_intent(pid=me, pid_start=start, boot_id="other"), boot)  # another boot
    assert not intents.writer_alive(_intent(pid=None, boot_id=boot), boot)  # let go of by its writer
    assert not intents.writer_alive(_intent(pid=_dead_pid(), pid_start=None, boot_id=boot), boot)


def test_intent_files_round_trip_and_bad_files_are_not_counted(tmp_path):
    directory = str(tmp_path / "run" / "gpu-intents")
    path = intents.write(directory, _intent())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    (tmp_path / "run" / "gpu-intents" / "broken.json").write_text("{not json")
    (tmp_path / "run" / "gpu-intents" / "missing.json").write_text(json.dumps({"user": "x"}))
    (tmp_path / "run" / "gpu-intents" / ".half.json.tmp").write_text("{")
    assert intents.read_all(directory) == [_intent()]
    assert intents.remove(directory, "t" * 32) and not intents.remove(directory, "t" * 32)
    assert intents.read_all(str(tmp_path / "nowhere")) == []


# -- reserve() with intents -----------------------------------------------------------------------------


class _Api:
    def __init__(self):
        self.docs = []

    def containers(self, all=False):
        return [
            {"Id": d["Id"], "Names": [d["Name"]], "State": "created", "Labels": d["Config"]["Labels"]}
            for d in self.docs
        ]

    def inspect_container(self, cid):
        return next(d for d in self.docs if d["Id"] == cid)


class _Client:
    """Docker as the allocator reads it; ``create`` stores what a create through the gateway stores."""

    def __init__(self):
        self.api = _Api()

    def create(self, name, grant, labels=None):
        doc = {
            "Id": (name * 64)[:64],
            "Name": f"/{name}",
            "Config": {
                "Labels": {"ds01.user": grant.user, **allocator.grant_labels(grant), **(labels or {})},
                "Env": [],
            },
            "HostConfig": {"DeviceRequests": [allocator.device_request(grant)]},
        }
        self.api.docs.append(doc)
        return doc

    def close(self):
        pass


class _Events:
    def __init__(self):
        self.events = []

    def write(self, event_type, user=None, source=None, **details):
        self.events.append((event_type, user, details))
        return True


class _Answered(Exception):
    """What docker.errors.APIError looks like to the allocator: the daemon's HTTP status came back."""

    def __init__(self, status):
        super().__init__(f"daemon answered {status}")
        self.response = type("R", (), {"status_code": status})()


def _reserve(tmp_path, client, user, request, events=None, settle=intents.SETTLE_S):
    return allocator.reserve(
        user,
        request,
        limits=record.replace(LAB.resolve("alice"), user=user, allow_full_gpu=True, max_gpu_equivalents=None),
        inventory=DEMO,
        client=client,
        lock_path=str(tmp_path / "run" / "gpu-allocator.lock"),
        lock_timeout_s=1.0,
        cache=docker_state.InspectCache(),
        event_log=events if events is not None else _Events(),
        intent_settle_s=settle,
    )


def _on_disk(tmp_path):
    return intents.read_all(str(tmp_path / "run" / "gpu-intents"))


def test_the_intent_is_on_disk_before_the_grant_is_used_and_gone_after(tmp_path):
    client = _Client()
    with _reserve(tmp_path, client, "alice", Request(device_ids=(UUID["0"],), container="alice-a")) as grant:
        (intent,) = _on_disk(tmp_path)
        assert (intent.token, intent.user, intent.container) == (grant.intent, "alice", "alice-a")
        assert intent.uuids == (UUID["0"],) and intent.slots == ("0",)
        assert intent.pid == os.getpid() and intent.created_at.endswith("Z")
        assert allocator.grant_labels(grant)[intents.LABEL] == intent.token == intent.labels[intents.LABEL]
        client.create("alice-a", grant)
    assert _on_disk(tmp_path) == []


def test_a_refused_create_removes_its_intent(tmp_path):
    events = _Events()
    with pytest.raises(_Answered), _reserve(tmp_path, _Client(), "alice", Request(device_ids=(UUID["0"],)), events):
        raise _Answered(409)
    assert _on_disk(tmp_path) == []
    with _reserve(tmp_path, _Client(), "bob", Request(device_ids=(UUID["0"],))) as grant:  # the slot is free at once
        assert grant.slots == ("0",)
    assert events.events[-1][0] == "gpu.release" and events.events[-1][2]["pending"] is False


def test_an_unanswered_create_keeps_the_slot_until_it_settles(tmp_path):
    events = _Events()
    client = _Client()
    with (
        pytest.raises(TimeoutError),
        _reserve(tmp_path, client, "alice", Request(device_ids=(UUID["0"],), container="a1"), events),
    ):
        raise TimeoutError("the daemon did not answer")
    (kept,) = _on_disk(tmp_path)
    assert kept.pid is None and "TimeoutError" in kept.abandoned
    assert events.events[-1][2]["pending"] is True and "stay held" in events.events[-1][2]["reason"]
    with (
        pytest.raises(allocator.AllocationRefused) as caught,
        _reserve(tmp_path, client, "bob", Request(device_ids=(UUID["0"],))),
    ):
        pytest.fail("the slot of an unanswered create was granted again")
    assert caught.value.code == "NO_GPU_AVAILABLE" and "held by another container" in caught.value.sentence
    with _reserve(tmp_path, client, "bob", Request(device_ids=(UUID["0"],)), events, settle=0.0) as grant:
        assert grant.slots == ("0",)  # settled: no container appeared, the writer let go
    expired = [e for e in events.events if e[2].get("intent_expired")]
    assert [(e[0], e[1], e[2]["container"]) for e in expired] == [("gpu.release", "alice", "a1")]


def test_a_container_made_for_a_vanished_writer_is_recovered_and_keeps_its_gpu(tmp_path):
    events = _Events()
    client = _Client()
    directory = str(tmp_path / "run" / "gpu-intents")
    grant = allocator.Grant("alice", ("1",), (UUID["1"],), 1.0, (None,), "alice-cut", intent="c" * 32)
    cut = _intent(token="c" * 32, container="alice-cut", pid=_dead_pid(), boot_id=intents.boot_id())
    intents.write(directory, record.replace(cut, boot_s=intents.boot_clock()))  # a young intent
    client.create("alice-cut", grant)  # the daemon finished the create after its writer died
    with (
        pytest.raises(allocator.AllocationRefused),
        _reserve(tmp_path, client, "bob", Request(device_ids=(UUID["1"],)), events),
    ):
        pytest.fail("the recovered container's GPU was granted again")
    assert _on_disk(tmp_path) == []
    recovered = [e for e in events.events if e[0] == "gpu.intent_recovered"]
    assert len(recovered) == 1
    user, details = recovered[0][1:]
    assert user == "alice" and details["recovered"] is True and details["container"] == "alice-cut"
    assert details["writer_alive"] is False and details["intent"] == "c" * 32
