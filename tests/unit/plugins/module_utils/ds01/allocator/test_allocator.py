"""The allocator's decision, table-driven, and the reservation/job mapping around it.

Holdings are built in memory exactly as ``docker_state`` builds them from Docker (a GPU claim
resolved against the inventory), so these tests exercise the same records as the engine tests.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import allocator, config, fsutil, gpu, record
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import docker as docker_state
from ansible_collections.ds01.infra.plugins.module_utils.ds01.allocator import Request

FIXTURES = Path(__file__).resolve().parents[5] / "fixtures"
TOPO = FIXTURES / "topology"
LAB = config.load_config(str(FIXTURES / "lab" / "resource-limits.yaml"))

DEMO = gpu.read_inventory(str(TOPO / "demo.yaml"))
WHOLE = gpu.read_inventory(str(TOPO / "whole.yaml"))
MIG_EMPTY = gpu.read_inventory(str(TOPO / "mig-empty.yaml"))
UUID = {s.slot_id: s.uuid for s in DEMO.slots() + DEMO.mig_parents()}


def limits(user="alice", **changes):
    """The lab's limits for ``user`` (alice: student, dave: researcher, datasciencelab: admin)."""
    resolved = LAB.resolve(user)
    if "gpu_limit" in changes:
        agg = changes.pop("gpu_limit")
        resolved = record.replace(
            resolved, aggregate=record.replace(resolved.aggregate or config.Aggregate(), gpu_limit=agg)
        )
    return record.replace(resolved, **changes)


def held(name, owner, *slot_ids, state="running", inventory=DEMO, **claim):
    """A container of ``owner`` holding ``slot_ids`` through a DeviceRequest of their UUIDs."""
    ids = tuple(inventory.slot(s).uuid for s in slot_ids)
    gpu_claim = docker_state.GpuClaim(ids=ids, source="device_requests" if ids else "", **claim)
    labels = {"ds01.user": owner} if owner else {}
    info = docker_state.container_info({"Id": name * 4, "Names": [f"/{name}"], "State": state, "Labels": labels})
    return docker_state.attach_slots(record.replace(info, gpu=gpu_claim), inventory)


STUDENT_NO_FULL = {"allow_full_gpu": False}
ONE_SEVENTH = 1 / 7

# (id, inventory, limits kwargs, holdings, request, expected)
# expected: ("grant", slots, gpueq) or ("refuse", code, [phrases in the sentence])
CASES = [
    # -- grants: placement ----------------------------------------------------------------------
    ("mig-smallest-first", DEMO, dict(**STUDENT_NO_FULL), [], Request(), ("grant", ("2.2",), ONE_SEVENTH)),
    (
        "mig-packs-onto-gpu-with-holders",
        DEMO,
        dict(**STUDENT_NO_FULL),
        [held("other", "bob", "3.0")],
        Request(),
        ("grant", ("3.1",), ONE_SEVENTH),
    ),
    (
        "preferred-profile",
        DEMO,
        dict(**STUDENT_NO_FULL),
        [],
        Request(mig_profile="3g.20gb"),
        ("grant", ("2.0",), 3 / 7),
    ),
    (
        "preferred-profile-taken-falls-back",
        DEMO,
        dict(**STUDENT_NO_FULL),
        [held("big", "bob", "2.0")],
        Request(mig_profile="3g.20gb"),
        ("grant", ("2.2",), ONE_SEVENTH),
    ),
    ("two-mig-slots", DEMO, dict(**STUDENT_NO_FULL), [], Request(count=2), ("grant", ("2.2", "2.3"), 2 / 7)),
    ("full-allowed-gets-whole-first", DEMO, {}, [], Request(), ("grant", ("0",), 1.0)),
    ("researcher-two-full", DEMO, {"user": "dave"}, [], Request(count=2), ("grant", ("0", "1"), 2.0)),
    (
        "full-gpu-takes-the-untouched-gpu",
        DEMO,
        {"user": "dave"},
        [held("a", "bob", "0")],
        Request(full_gpu=True),
        ("grant", ("1",), 1.0),
    ),
    (
        "researcher-three-whole-then-mig",
        DEMO,
        {"user": "dave"},
        [],
        Request(count=3),
        ("grant", ("0", "1", "2.2"), 2 + ONE_SEVENTH),
    ),
    (
        "near-quota-gets-a-slice-that-fits",
        DEMO,
        {"max_gpu_equivalents": 1.5, "gpu_limit": None},
        [held("mine", "alice", "0")],
        Request(),
        ("grant", ("2.2",), ONE_SEVENTH),
    ),
    (
        "epsilon-exactly-at-limit-is-allowed",
        DEMO,
        {"max_gpu_equivalents": 1.0, "gpu_limit": None, "max_containers_per_user": None, **STUDENT_NO_FULL},
        [held(f"m{i}", "alice", f"3.{i}") for i in range(6)],
        Request(),
        ("grant", ("3.6",), ONE_SEVENTH),
    ),
    (
        "gpueq-1g-plus-3g",
        DEMO,
        {},
        [],
        Request(device_ids=(UUID["2.0"], UUID["2.2"])),
        ("grant", ("2.0", "2.2"), 4 / 7),
    ),
    (
        "gpueq-full-plus-1g",
        DEMO,
        {"user": "dave"},
        [],
        Request(device_ids=("0", UUID["3.0"])),
        ("grant", ("0", "3.0"), 1 + ONE_SEVENTH),
    ),
    ("gpueq-two-full", DEMO, {}, [], Request(device_ids=(UUID["0"], UUID["1"])), ("grant", ("0", "1"), 2.0)),
    ("device-by-index", DEMO, {"user": "dave"}, [], Request(device_ids=("1",)), ("grant", ("1",), 1.0)),
    ("device-by-nvidia-mig-form", DEMO, {}, [], Request(device_ids=("3:2",)), ("grant", ("3.2",), ONE_SEVENTH)),
    ("device-by-slot-id", DEMO, {}, [], Request(device_ids=("2.1",)), ("grant", ("2.1",), 2 / 7)),
    (
        "admin-unlimited-many-slots",
        DEMO,
        {"user": "datasciencelab"},
        [],
        Request(count=5),
        ("grant", ("0", "1", "2.2", "2.3", "3.0"), 2 + 3 / 7),
    ),
    (
        "admin-all-takes-every-free-slot",
        DEMO,
        {"user": "datasciencelab"},
        [held("x", "bob", "3.0"), held("y", "bob", "3.1")],
        Request(all_gpus=True, admin=True),
        ("grant", ("0", "1", "2.0", "2.1", "2.2", "2.3", "3.2", "3.3", "3.4", "3.5", "3.6"), 4 - 2 / 7),
    ),
    ("whole-only-host", WHOLE, {"user": "dave"}, [], Request(), ("grant", ("0",), 1.0)),
    (
        "per-container-cap-is-not-the-users-total",
        DEMO,
        dict(**STUDENT_NO_FULL),
        [held("a", "alice", "3.0"), held("b", "alice", "3.1")],
        Request(count=2),
        ("grant", ("3.2", "3.3"), 2 / 7),
    ),
    (
        "mig-parent-held-whole-blocks-its-instances",
        DEMO,
        dict(**STUDENT_NO_FULL),
        [held("raw", "bob", "2")],
        Request(),
        ("grant", ("3.0",), ONE_SEVENTH),
    ),
    (
        "unknown-owner-still-occupies",
        DEMO,
        {"user": "dave"},
        [held("orphan", None, "0")],
        Request(full_gpu=True),
        ("grant", ("1",), 1.0),
    ),
    ("mig-empty-gpu-is-never-used", MIG_EMPTY, {"user": "dave"}, [], Request(), ("grant", ("0",), 1.0)),
    # -- refusals -------------------------------------------------------------------------------
    (
        "user-at-limit",
        DEMO,
        {"max_gpu_equivalents": 1.0, "gpu_limit": None},
        [held("train-a", "alice", "0")],
        Request(),
        ("refuse", "USER_AT_LIMIT", ["You hold 1.0 of your 1.0 GPU-equivalents", "train-a", "docker rm -f train-a"]),
    ),
    (
        "mig-never-weighs-zero",
        DEMO,
        {"max_gpu_equivalents": 1.0, "gpu_limit": None, "max_containers_per_user": None},
        [held(f"m{i}", "alice", f"3.{i}") for i in range(7)],
        Request(),
        ("refuse", "USER_AT_LIMIT", ["You hold 1.0 of your 1.0"]),
    ),
    (
        "quota-includes-the-request",
        DEMO,
        {"max_gpu_equivalents": 1.0, "gpu_limit": None, "max_containers_per_user": None, **STUDENT_NO_FULL},
        [held(f"m{i}", "alice", f"3.{i}") for i in range(6)],
        Request(count=2),
        ("refuse", "USER_AT_LIMIT", ["You hold 0.86 of your 1.0", "needs 0.29 more"]),
    ),
    (
        "aggregate-checked-first",
        DEMO,
        {},
        [held("train-a", "alice", "0"), held("train-b", "alice", "1")],
        Request(),
        ("refuse", "AGGREGATE_GPU_QUOTA_EXCEEDED", ["above your total of 2.0", "train-a, train-b"]),
    ),
    (
        "aggregate-tighter",
        DEMO,
        {"max_gpu_equivalents": 4.0, "gpu_limit": 1.0},
        [held("a", "alice", "0")],
        Request(),
        ("refuse", "AGGREGATE_GPU_QUOTA_EXCEEDED", ["1.14"]),
    ),
    (
        "user-limit-tighter",
        DEMO,
        {"max_gpu_equivalents": 1.0, "gpu_limit": 4.0},
        [held("a", "alice", "0")],
        Request(),
        ("refuse", "USER_AT_LIMIT", []),
    ),
    (
        "quota-refused-before-availability",
        DEMO,
        {"max_gpu_equivalents": 1.0, "gpu_limit": None, "max_containers_per_user": None},
        [held("a", "alice", "0")] + [held(f"o{s}", "bob", s) for s in ("1", "2.0", "2.1", "2.2", "2.3")],
        Request(),
        ("refuse", "USER_AT_LIMIT", []),
    ),
    (
        "request-bigger-than-quota-holding-nothing",
        DEMO,
        {"user": "dave", "max_gpu_equivalents": 1.5, "gpu_limit": None},
        [],
        Request(count=2, full_gpu=True),
        ("refuse", "USER_AT_LIMIT", ["You hold 0.0 of your 1.5", "Ask for fewer GPUs or a MIG slice"]),
    ),
    (
        "free-slots-too-big-for-remaining-quota",
        DEMO,
        {"max_gpu_equivalents": 1.5, "gpu_limit": None, "max_containers_per_user": None},
        [held("a", "alice", "0")]
        + [held(f"o{s}", "bob", s) for s in ("2.0", "2.1", "2.2", "2.3")]
        + [held(f"p{i}", "bob", f"3.{i}") for i in range(7)],
        Request(),
        ("refuse", "USER_AT_LIMIT", ["the free GPUs right now"]),
    ),
    (
        "exceeds-container-limit",
        DEMO,
        {},
        [],
        Request(count=3),
        ("refuse", "EXCEEDS_CONTAINER_LIMIT", ["3 GPUs in one container", "limit is 2", "--gpus 2"]),
    ),
    (
        "exceeds-container-limit-with-devices",
        DEMO,
        {"max_gpu_slots_per_container": 1},
        [],
        Request(device_ids=("2.2", "2.3")),
        ("refuse", "EXCEEDS_CONTAINER_LIMIT", []),
    ),
    (
        "container-limit-counts-every-state",
        DEMO,
        {},
        [held("a", "alice", state="exited"), held("b", "alice", state="created"), held("c", "alice", "3.0")],
        Request(),
        ("refuse", "CONTAINER_LIMIT", ["3 containers", "stopped ones count too", "a, b, c", "limit is 3"]),
    ),
    (
        "container-limit-before-quota",
        DEMO,
        {"max_containers_per_user": 1},
        [held("a", "alice", "0"), held("b", "alice", "1")],
        Request(),
        ("refuse", "CONTAINER_LIMIT", []),
    ),
    (
        "full-gpu-not-allowed",
        DEMO,
        dict(**STUDENT_NO_FULL),
        [],
        Request(full_gpu=True),
        ("refuse", "FULL_GPU_NOT_ALLOWED", ["(student) may not use a whole GPU", "--gpus 1"]),
    ),
    (
        "full-gpu-not-allowed-by-device",
        DEMO,
        dict(**STUDENT_NO_FULL),
        [],
        Request(device_ids=(UUID["1"],)),
        ("refuse", "FULL_GPU_NOT_ALLOWED", []),
    ),
    (
        "whole-only-host-no-full",
        WHOLE,
        dict(**STUDENT_NO_FULL),
        [],
        Request(),
        ("refuse", "FULL_GPU_NOT_ALLOWED", ["only whole GPUs"]),
    ),
    (
        "no-mig-free-only-whole",
        DEMO,
        dict(**STUDENT_NO_FULL, max_containers_per_user=None),
        [held(f"o{s}", "bob", s) for s in ("2.0", "2.1", "2.2", "2.3")]
        + [held(f"p{i}", "bob", f"3.{i}") for i in range(7)],
        Request(),
        ("refuse", "NO_GPU_AVAILABLE", ["only whole GPUs are free", "ds01 gpu status"]),
    ),
    (
        "full-gpu-none-free",
        DEMO,
        {"user": "dave"},
        [held("a", "bob", "0"), held("b", "carol", "1")],
        Request(full_gpu=True),
        ("refuse", "NO_GPU_AVAILABLE", ["0 free"]),
    ),
    (
        "device-held-by-another",
        DEMO,
        {},
        [held("theirs", "bob", "2.1")],
        Request(device_ids=("2.1",)),
        ("refuse", "NO_GPU_AVAILABLE", ["held by another container"]),
    ),
    (
        "device-held-by-own-container",
        DEMO,
        {},
        [held("mine", "alice", "2.1")],
        Request(device_ids=("2.1",)),
        ("refuse", "NO_GPU_AVAILABLE", ["your container mine"]),
    ),
    (
        "gpus-all-container-holds-everything",
        DEMO,
        {"user": "dave"},
        [held("greedy", "bob", all=True)],
        Request(),
        ("refuse", "NO_GPU_AVAILABLE", []),
    ),
    (
        "mig-empty-full-gpu",
        MIG_EMPTY,
        {"user": "dave"},
        [held("a", "bob", "0", inventory=MIG_EMPTY)],
        Request(full_gpu=True),
        ("refuse", "NO_GPU_AVAILABLE", []),
    ),
    # `--gpus all` from a user: "the GPUs I may have" (issue 16)
    ("all-for-user-per-container-limit", DEMO, {}, [], Request(all_gpus=True), ("grant", ("0", "1"), 2.0)),
    (
        "all-for-user-mig-only",
        DEMO,
        dict(**STUDENT_NO_FULL),
        [],
        Request(all_gpus=True),
        ("grant", ("2.2", "2.3"), 2 / 7),
    ),
    ("all-for-user-quota-room", DEMO, {}, [held("a", "alice", "0")], Request(all_gpus=True), ("grant", ("1",), 1.0)),
    (
        "all-for-user-at-quota-is-refused-as-gpus-1",
        DEMO,
        {},
        [held("a", "alice", "0", "1")],
        Request(all_gpus=True),
        ("refuse", "AGGREGATE_GPU_QUOTA_EXCEEDED", ["GPU-equivalents"]),
    ),
    (
        "all-for-user-none-free",
        WHOLE,
        {"user": "dave"},
        [held(f"o{s.slot_id}", "bob", s.slot_id, inventory=WHOLE) for s in WHOLE.slots()],
        Request(all_gpus=True),
        ("refuse", "NO_GPU_AVAILABLE", []),
    ),
    (
        "all-and-devices",
        DEMO,
        {},
        [],
        Request(all_gpus=True, device_ids=("0",)),
        ("refuse", "POLICY_DENIED", ["not both"]),
    ),
    ("count-zero", DEMO, {}, [], Request(count=0), ("refuse", "POLICY_DENIED", ["at least one GPU"])),
    (
        "unknown-device",
        DEMO,
        {},
        [],
        Request(device_ids=("GPU-nope",)),
        ("refuse", "POLICY_DENIED", ["no GPU or MIG instance 'GPU-nope'"]),
    ),
    (
        "mig-parent-named",
        DEMO,
        {"user": "dave"},
        [],
        Request(device_ids=("2",)),
        ("refuse", "POLICY_DENIED", ["split into MIG instances (2.0, 2.1, 2.2, 2.3)"]),
    ),
    ("bad-profile", DEMO, {}, [], Request(mig_profile="huge"), ("refuse", "POLICY_DENIED", ["not a MIG profile"])),
    (
        "full-and-profile",
        DEMO,
        {},
        [],
        Request(full_gpu=True, mig_profile="1g.5gb"),
        ("refuse", "POLICY_DENIED", []),
    ),
]


@pytest.mark.parametrize(
    ("inventory", "lim", "holdings", "request_", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decision_table(inventory, lim, holdings, request_, expected):
    outcome = allocator.decide(inventory, holdings, limits(**lim), request_)
    if expected[0] == "grant":
        assert isinstance(outcome, allocator.Grant), outcome
        _first, slots, weight = expected
        assert outcome.slots == slots
        assert outcome.gpueq == pytest.approx(weight, abs=1e-9)
        assert outcome.uuids == tuple(inventory.slot(s).uuid for s in slots)
        occupied = allocator.occupied_slots(holdings)
        assert not set(outcome.slots) & set(occupied), "a granted slot was already held"
    else:
        assert isinstance(outcome, allocator.Refusal), outcome
        _first, code, phrases = expected
        assert outcome.code == code, outcome.sentence
        for phrase in phrases:
            assert phrase in outcome.sentence
        assert outcome.sentence.endswith("."), "a refusal is a full sentence"


@pytest.mark.parametrize(
    ("lim", "holdings", "warning"),
    [
        ({}, [], "--gpus all: granted 2 GPU slots (GPU 0, GPU 1), your limit per container"),
        (
            dict(**STUDENT_NO_FULL),
            [],
            "--gpus all: granted 2 GPU slots (MIG 1g.5gb (2.2), MIG 1g.5gb (2.3)), your limit per container",
        ),
        (
            {},
            [held("a", "alice", "0")],
            "--gpus all: granted 1 GPU slot (GPU 1), what your GPU quota has room for (1.0 GPU-equivalents)",
        ),
        (
            {"user": "dave"},
            [held(s.slot_id, "bob", s.slot_id) for s in DEMO.slots() if s.slot_id != "3.6"],
            "--gpus all: granted 1 GPU slot (MIG 1g.5gb (3.6)), every free slot you may use",
        ),
    ],
)
def test_gpus_all_from_a_user_says_what_was_granted(lim, holdings, warning):
    outcome = allocator.decide(DEMO, holdings, limits(**lim), Request(all_gpus=True))
    assert isinstance(outcome, allocator.Grant), outcome
    assert outcome.warnings == (warning,)
    assert not set(outcome.slots) & set(allocator.occupied_slots(holdings))


def test_requests_other_than_all_carry_no_warning():
    assert allocator.decide(DEMO, [], limits(), Request(count=2)).warnings == ()
    assert allocator.decide(DEMO, [], limits("datasciencelab"), Request(all_gpus=True, admin=True)).warnings == ()


def test_every_refusal_code_is_covered_by_the_table():
    codes = {c[-1][1] for c in CASES if c[-1][0] == "refuse"}
    assert codes == set(allocator.CODES)


@pytest.mark.parametrize(
    ("slot_ids", "weight"),
    [(("0", "1"), 2.0), (("2.2", "2.0"), 4 / 7), (("0", "3.0"), 8 / 7), (("2.1",), 2 / 7), (("2.0",), 3 / 7)],
)
def test_user_usage_sums_distinct_slots(slot_ids, weight):
    holdings = [held("a", "alice", *slot_ids), held("b", "alice", *slot_ids[:1])]  # the same slot twice counts once
    usage = allocator.user_usage(DEMO, holdings, "alice")
    assert usage.gpueq == pytest.approx(weight)
    assert set(usage.slots) == set(slot_ids)


def test_decision_is_deterministic_and_pure():
    holdings = [held("x", "bob", "3.0")]
    before = [record.asdict(h) for h in holdings]
    first = allocator.decide(DEMO, holdings, limits(**STUDENT_NO_FULL), Request(count=2))
    second = allocator.decide(DEMO, holdings, limits(**STUDENT_NO_FULL), Request(count=2))
    assert first == second
    assert [record.asdict(h) for h in holdings] == before


def test_safe_default_limits_get_a_slice_not_a_whole_gpu():
    safe = config.safe_limits("nobody-known")
    outcome = allocator.decide(DEMO, [], safe, Request())
    assert isinstance(outcome, allocator.Grant) and outcome.slots == ("2.2",)
    refused = allocator.decide(DEMO, [], safe, Request(full_gpu=True))
    assert refused.code == allocator.FULL_GPU_NOT_ALLOWED


# -- labels and DeviceRequest ---------------------------------------------------------------------


def test_grant_labels_and_device_request_round_trip_through_the_reader():
    grant = allocator.decide(DEMO, [], limits("dave"), Request(device_ids=("0", "2.2")))
    labels = allocator.grant_labels(grant)
    assert labels == {
        "ds01.gpu.slots": "0,2.2",
        "ds01.gpu.uuids": f"{UUID['0']},{UUID['2.2']}",
        "ds01.gpu.gpueq": "1.142857",
    }
    request = allocator.device_request(grant)
    assert request["DeviceIDs"] == [UUID["0"], UUID["2.2"]] and request["Capabilities"] == [["gpu"]]
    inspect = {"Id": "c" * 64, "Name": "/x", "Config": {"Labels": labels}, "HostConfig": {"DeviceRequests": [request]}}
    info = docker_state.container_info(inspect=inspect, inventory=DEMO)
    assert info.slots == ("0", "2.2") and info.gpu.source == "device_requests"


# -- reading holdings -------------------------------------------------------------------------------


def _inspect(device_requests=None, labels=None, env=None):
    return {
        "Id": "f" * 64,
        "Name": "/c",
        "Config": {"Labels": labels or {}, "Env": env or []},
        "HostConfig": {"DeviceRequests": device_requests},
        "State": {"Status": "created", "StartedAt": "0001-01-01T00:00:00Z"},
    }


GPU_CAPS = [["gpu"]]


@pytest.mark.parametrize(
    ("inspect", "slots", "source"),
    [
        (_inspect([{"DeviceIDs": [UUID["2.1"]], "Capabilities": GPU_CAPS}]), ("2.1",), "device_requests"),
        (
            _inspect([{"DeviceIDs": [f"{UUID['0']},{UUID['1']}"], "Capabilities": GPU_CAPS}]),
            ("0", "1"),
            "device_requests",
        ),
        (_inspect([{"DeviceIDs": ["0", "3:1"], "Driver": "nvidia"}]), ("0", "3.1"), "device_requests"),
        (_inspect([{"Count": -1, "Capabilities": GPU_CAPS}]), ("0", "1", "2", "3"), "device_requests"),
        (_inspect([{"Count": 1, "Capabilities": GPU_CAPS}]), ("0",), "device_requests"),
        (_inspect(None, labels={"ds01.gpu.uuids": f"{UUID['3.0']},{UUID['3.1']}"}), ("3.0", "3.1"), "label"),
        (_inspect(None, labels={"ds01.gpu.uuid": UUID["3.2"]}), ("3.2",), "label"),
        (_inspect(None, env=[f"NVIDIA_VISIBLE_DEVICES={UUID['2.0']}"]), ("2.0",), "env"),
        (_inspect(None, env=["NVIDIA_VISIBLE_DEVICES=all"]), (), ""),  # every CUDA image sets it
        (_inspect([{"DeviceIDs": ["x"], "Capabilities": [["compute"]], "Driver": "other"}]), (), ""),
    ],
)
def test_gpu_claim_sources(inspect, slots, source):
    info = docker_state.container_info(inspect=inspect, inventory=DEMO)
    assert info.slots == slots
    assert info.gpu.source == source


def test_device_requests_win_over_label():
    inspect = _inspect([{"DeviceIDs": [UUID["0"]], "Capabilities": GPU_CAPS}], labels={"ds01.gpu.uuids": UUID["1"]})
    assert docker_state.container_info(inspect=inspect, inventory=DEMO).slots == ("0",)


def test_foreign_device_ids_are_reported_not_slots():
    inspect = _inspect([{"DeviceIDs": ["GPU-elsewhere", UUID["1"]], "Capabilities": GPU_CAPS}])
    info = docker_state.container_info(inspect=inspect, inventory=DEMO)
    assert info.slots == ("1",) and info.unknown_ids == ("GPU-elsewhere",)


class FakeApi:
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


class FakeClient:
    def __init__(self, docs):
        self.api = FakeApi(docs)

    def close(self):
        pass


def _doc(cid, user, *slot_ids):
    return {
        "Id": cid * 64,
        "Name": f"/{cid}",
        "Config": {"Labels": {"ds01.user": user}, "Env": []},
        "HostConfig": {"DeviceRequests": [{"DeviceIDs": [UUID[s] for s in slot_ids], "Capabilities": GPU_CAPS}]},
        "State": {"Status": "created"},
    }


def test_inspect_cache_inspects_each_container_once():
    client = FakeClient([_doc("a", "alice", "0"), _doc("b", "bob", "2.1")])
    cache = docker_state.InspectCache()
    first = docker_state.list_containers(client, DEMO, cache)
    client.api.docs.append(_doc("c", "carol", "3.0"))
    second = docker_state.list_containers(client, DEMO, cache)
    assert [c.slots for c in first] == [("0",), ("2.1",)]
    assert [c.slots for c in second] == [("0",), ("2.1",), ("3.0",)]
    assert client.api.inspected == ["a" * 64, "b" * 64, "c" * 64]
    client.api.docs.pop(0)
    docker_state.list_containers(client, DEMO, cache)
    assert len(cache) == 2


# -- the reservation ------------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.events = []

    def write(self, event_type, user=None, source=None, **details):
        self.events.append((event_type, user, details))
        return True


def _reserve(tmp_path, client, user="alice", request=None, **kw):
    return allocator.reserve(
        user,
        request or Request(container="job"),
        limits=kw.pop("limits", limits(user, **STUDENT_NO_FULL)),
        inventory=kw.pop("inventory", DEMO),
        client=client,
        lock_path=str(tmp_path / "run" / "gpu-allocator.lock"),
        lock_timeout_s=kw.pop("lock_timeout_s", 1.0),
        cache=docker_state.InspectCache(),
        **kw,
    )


def test_reserve_yields_the_grant_with_the_lock_held_and_logs_it(tmp_path):
    events = Recorder()
    lock_path = tmp_path / "run" / "gpu-allocator.lock"
    with _reserve(tmp_path, FakeClient([_doc("a", "bob", "2.2")]), event_log=events) as grant:
        assert grant.slots == ("2.3",)
        fd = os.open(lock_path, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600
    fd = os.open(lock_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the block
    os.close(fd)
    assert events.events[0][0] == "gpu.allocate" and events.events[0][2]["slots"] == ["2.3"]


def test_reserve_raises_refusals_instead_of_yielding(tmp_path):
    events = Recorder()
    docs = [_doc(c, "alice") for c in "abc"]
    ran = []
    with pytest.raises(allocator.AllocationRefused) as caught, _reserve(tmp_path, FakeClient(docs), event_log=events):
        ran.append(True)
    assert not ran
    assert caught.value.code == "CONTAINER_LIMIT"
    assert events.events[0][0] == "gpu.reject" and events.events[0][2]["code"] == "CONTAINER_LIMIT"


def test_reserve_refuses_when_the_lock_stays_taken(tmp_path):
    other = fsutil.FileLock(str(tmp_path / "run" / "gpu-allocator.lock"))
    assert other.acquire(1.0)
    try:
        with (
            pytest.raises(allocator.AllocationRefused) as caught,
            _reserve(tmp_path, FakeClient([]), lock_timeout_s=0.2),
        ):
            pytest.fail("granted without the lock")
    finally:
        other.release()
    assert caught.value.code == "NO_GPU_AVAILABLE" and "busy" in caught.value.sentence


def test_reserve_refuses_when_the_inventory_is_down(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("gpus: nope\n")
    with (
        pytest.raises(allocator.AllocationRefused) as caught,
        _reserve(tmp_path, FakeClient([]), inventory=None, config=_Cfg(tmp_path, broken)),
    ):
        pytest.fail("granted without an inventory")
    assert caught.value.code == "NO_GPU_AVAILABLE" and "cannot check the GPUs" in caught.value.sentence


class _Cfg:
    """Just enough of a Config for reserve(): paths and the gpu_allocation section."""

    def __init__(self, tmp_path, topology):
        self.paths = type("P", (), {"run_dir": str(tmp_path / "run"), "state_dir": str(tmp_path / "state")})()
        self._section = {"backend": "fake", "topology": str(topology), "lock_timeout_s": 1.0, "mapping_dir": None}

    def section(self, name):
        assert name == "gpu_allocation"
        return self._section


def test_reserve_logs_a_release_when_the_create_fails(tmp_path):
    events = Recorder()
    with pytest.raises(RuntimeError), _reserve(tmp_path, FakeClient([]), event_log=events):
        raise RuntimeError("docker create failed")
    assert [e[0] for e in events.events] == ["gpu.allocate", "gpu.release"]
    lock = fsutil.FileLock(str(tmp_path / "run" / "gpu-allocator.lock"))
    assert lock.acquire(0.1)
    lock.release()


def test_reserve_rewrites_the_job_mapping_after_the_block(tmp_path):
    client = FakeClient([_doc("a", "bob", "2.2")])
    mapping = tmp_path / "map"
    with _reserve(tmp_path, client, mapping_dir=str(mapping)) as grant:
        doc = _doc("j", "alice", *grant.slots)
        client.api.docs.append(doc)
    assert (mapping / "2").read_text() == "alice/j\nbob/a\n"


# -- dcgm-exporter job mapping ----------------------------------------------------------------------


def test_job_mapping_files_follow_dcgm_exporter(tmp_path):
    holdings = [
        held("train", "alice", "0"),
        held("s1", "bob", "2.1"),
        held("s2", "carol", "2.2"),
        held("x", None, "3.0"),
    ]
    written = allocator.sync_job_mapping(DEMO, holdings, str(tmp_path))
    assert written == {"0": ["alice/train"], "2": ["bob/s1", "carol/s2"], "3": ["unknown/x"]}
    assert sorted(os.listdir(tmp_path)) == ["0", "2", "3"]
    assert (tmp_path / "2").read_text() == "bob/s1\ncarol/s2\n"
    before = os.stat(tmp_path / "0")
    allocator.sync_job_mapping(DEMO, holdings[:2], str(tmp_path))  # carol and x released
    assert sorted(os.listdir(tmp_path)) == ["0", "2"]  # no empty file for GPU 3 (it would drop its metrics)
    assert (tmp_path / "2").read_text() == "bob/s1\n"
    assert os.stat(tmp_path / "0").st_ino == before.st_ino  # unchanged files are left alone
    (tmp_path / "notes.txt").write_text("kept")
    allocator.sync_job_mapping(DEMO, [], str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2026-11-22T19:23:20.148283123Z", "2026-11-22T19:23:20.148283+00:00"),
        ("2026-11-22T19:23:20Z", "2026-11-22T19:23:20+00:00"),
        ("2026-11-22T19:23:20.1+02:00", "2026-11-22T19:23:20.100000+02:00"),
        (1700000000, "2023-11-14T22:13:20+00:00"),
        ("0001-01-01T00:00:00Z", None),
        (None, None),
    ],
)
def test_docker_timestamps(text, iso):
    parsed = docker_state.parse_time(text)
    assert (parsed.isoformat() if parsed else None) == iso


def test_reserve_refuses_when_the_lock_file_cannot_be_opened(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run directory should be")
    with pytest.raises(allocator.AllocationRefused) as caught, _reserve(tmp_path, FakeClient([])):
        pytest.fail("granted without the lock")
    assert caught.value.code == "NO_GPU_AVAILABLE" and "allocator lock" in caught.value.sentence


# ds01.gpu.request=full|<profile> (the gateway's request label) arrives as full_gpu or an only_profile request
FULL_LABEL = {"full_gpu": True, "label": "ds01.gpu.request=full"}
MIG3_LABEL = {"mig_profile": "3g.20gb", "only_profile": True, "label": "ds01.gpu.request=3g.20gb"}


@pytest.mark.parametrize(
    ("lim", "holdings", "ask", "slots", "warning"),
    [
        (
            {},
            [],
            Request(**MIG3_LABEL),
            ("2.0",),
            "ds01.gpu.request=3g.20gb: granted MIG 3g.20gb (GPU 2, instance 1, slot 2.0)",
        ),
        (STUDENT_NO_FULL, [], Request(**MIG3_LABEL), ("2.0",), "granted MIG 3g.20gb (GPU 2, instance 1, slot 2.0)"),
        ({}, [], Request(**FULL_LABEL), ("0",), "ds01.gpu.request=full: granted whole GPU 0"),
        ({}, [held("a", "bob", "0")], Request(**FULL_LABEL), ("1",), "ds01.gpu.request=full: granted whole GPU 1"),
        # with --gpus 2 (count) and with --gpus all: only slots of the asked kind
        ({}, [], Request(count=2, **FULL_LABEL), ("0", "1"), "granted whole GPU 0, whole GPU 1"),
        ({}, [], Request(all_gpus=True, **FULL_LABEL), ("0", "1"), "ds01.gpu.request=full: granted whole GPU 0"),
        ({}, [], Request(all_gpus=True, **MIG3_LABEL), ("2.0",), "ds01.gpu.request=3g.20gb: granted MIG 3g.20gb"),
        # a named device of the asked kind
        ({}, [], Request(device_ids=(UUID["2.0"],), **MIG3_LABEL), ("2.0",), "granted MIG 3g.20gb"),
        # 1g.5gb exists twice on GPU 2 and seven times on GPU 3: the packing order still applies
        (
            STUDENT_NO_FULL,
            [],
            Request(mig_profile="1g.5gb", only_profile=True, label="ds01.gpu.request=1g.5gb"),
            ("2.2",),
            "ds01.gpu.request=1g.5gb: granted MIG 1g.5gb (GPU 2, instance 13, slot 2.2)",
        ),
    ],
)
def test_request_label_gets_only_its_kind_and_says_which(lim, holdings, ask, slots, warning):
    outcome = allocator.decide(DEMO, holdings, limits(**lim), ask)
    assert isinstance(outcome, allocator.Grant), outcome
    assert outcome.slots == slots
    kinds = {DEMO.slot(s).kind for s in outcome.slots}
    profiles = {DEMO.slot(s).profile for s in outcome.slots}
    if ask.full_gpu:
        assert kinds == {gpu.KIND_GPU}
    else:
        assert profiles == {ask.mig_profile}
    assert any(warning in w for w in outcome.warnings), outcome.warnings
    assert outcome.warnings[-1].startswith(ask.label + ": granted ")


@pytest.mark.parametrize(
    ("lim", "holdings", "ask", "code", "phrases"),
    [
        # an unknown profile names this server's profiles
        (
            {},
            [],
            Request(mig_profile="7g.80gb", only_profile=True, label="ds01.gpu.request=7g.80gb"),
            "POLICY_DENIED",
            ["ds01.gpu.request=7g.80gb", "no MIG profile '7g.80gb'", "1g.5gb, 2g.10gb, 3g.20gb", "`full`"],
        ),
        (
            {},
            [],
            Request(mig_profile="banana", only_profile=True, label="ds01.gpu.request=banana"),
            "POLICY_DENIED",
            ["ds01.gpu.request=banana", "1g.5gb, 2g.10gb, 3g.20gb"],
        ),
        # full for a group without whole GPUs: the existing refusal
        (STUDENT_NO_FULL, [], Request(**FULL_LABEL), "FULL_GPU_NOT_ALLOWED", ["may not use a whole GPU"]),
        (
            STUDENT_NO_FULL,
            [],
            Request(all_gpus=True, **FULL_LABEL),
            "FULL_GPU_NOT_ALLOWED",
            ["may not use a whole GPU"],
        ),
        # the one 3g.20gb is taken: no other profile instead
        (
            {},
            [held("a", "bob", "2.0")],
            Request(**MIG3_LABEL),
            "NO_GPU_AVAILABLE",
            ["MIG 3g.20gb slices", "0 free"],
        ),
        (
            {},
            [held("a", "bob", "2.0")],
            Request(all_gpus=True, **MIG3_LABEL),
            "NO_GPU_AVAILABLE",
            ["MIG 3g.20gb slices"],
        ),
        # both whole GPUs taken: no MIG slice instead
        ({}, [held("a", "bob", "0"), held("b", "bob", "1")], Request(**FULL_LABEL), "NO_GPU_AVAILABLE", ["whole GPUs"]),
        # a named device of another kind
        ({}, [], Request(device_ids=(UUID["2.2"],), **MIG3_LABEL), "POLICY_DENIED", ["not a MIG 3g.20gb instance"]),
        ({}, [], Request(device_ids=(UUID["2.2"],), **FULL_LABEL), "POLICY_DENIED", ["not a whole GPU"]),
    ],
)
def test_request_label_refusals(lim, holdings, ask, code, phrases):
    outcome = allocator.decide(DEMO, holdings, limits(**lim), ask)
    assert isinstance(outcome, allocator.Refusal), outcome
    assert outcome.code == code, outcome.sentence
    for phrase in phrases:
        assert phrase in outcome.sentence
    assert outcome.sentence.endswith(".")


def test_request_label_is_only_on_a_server_without_that_kind_refused():
    outcome = allocator.decide(WHOLE, [], limits(), Request(**MIG3_LABEL))
    assert isinstance(outcome, allocator.Refusal)
    assert "it has no MIG slices" in outcome.sentence
