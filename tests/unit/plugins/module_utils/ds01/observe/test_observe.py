"""Pure parts of observe/: holders, totals, OOM rises, the event window, release estimates, bars, mapping."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, docker, events
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import observe as ob

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
SLOTS = [
    {"gpu": 0, "slot": "0", "uuid": "GPU-0", "kind": "gpu", "profile": None, "gpueq": 1.0},
    {"gpu": 1, "slot": "1.0", "uuid": "MIG-a", "kind": "mig", "profile": "3g.20gb", "gpueq": 3 / 7},
    {"gpu": 1, "slot": "1.1", "uuid": "MIG-b", "kind": "mig", "profile": "2g.10gb", "gpueq": 2 / 7},
]


WEIGHTS = ob.slot_weights(SLOTS)


def _h(name, user, state="running", slots=(), uuids=(), **times):
    """A container as Docker's records give it (slots resolved), times as Docker writes them."""
    return docker.ContainerInfo(
        id="a" * 64,
        name=name,
        state=state,
        owner=user,
        owner_method="ds01.user",
        labels={"ds01.container_type": "docker"},
        slots=slots,
        uuids=uuids,
        facts={},
        **{key: docker.parse_time(value) for key, value in times.items()},
    )


def test_holders_are_matched_by_uuid_then_slot_id():
    rows = ob.assign_holders(SLOTS, [_h("t", "alice", uuids=("GPU-0",)), _h("n", "bob", slots=("1.1",))])
    assert [(r["slot"], r.get("container"), r.get("user")) for r in rows] == [
        ("0", "t", "alice"),
        ("1.0", None, None),
        ("1.1", "n", "bob"),
    ]


def test_inventory_records_weigh_slots_with_the_inventory():
    doc = {
        "containers": {
            "x": {
                "id": "x",
                "name": "nb",
                "user": "bob",
                "status": "exited",
                "gpu_slots": ["1.0"],
                "gpu_devices": ["MIG-a"],
                "origin": "devcontainer",
                "container_type": None,
            }
        }
    }
    (h,) = ob.containers_from_inventory(doc)
    assert ob.container_gpueq(h, WEIGHTS) == pytest.approx(3 / 7) and ob.container_type(h) == "devcontainer"
    assert h.uuids == ("MIG-a",)
    totals = ob.user_totals([h, _h("p", "bob")], WEIGHTS)
    assert totals == {"bob": {"gpueq": pytest.approx(3 / 7), "slots": 1, "containers": 2}}


@pytest.mark.parametrize(
    ("previous", "current", "rises", "keep"),
    [
        ({}, {"a": 3}, [], {"a": 3}),  # first sight: a baseline, no event for old kills
        ({"a": 3}, {"a": 5}, [("a", 2, 5)], {"a": 5}),
        ({"a": 5}, {"a": 1}, [], {"a": 1}),  # slice recreated: a new baseline
        ({"a": 5}, {"a": None}, [], {"a": 5}),  # unreadable: keep what we knew
    ],
)
def test_oom_rises(previous, current, rises, keep):
    assert ob.oom_rises(previous, current) == (rises, keep)


def test_event_window_reads_only_appended_lines_and_forgets_old_ones(tmp_path):
    path = tmp_path / "events.jsonl"
    log = events.EventLog(str(path), clock=lambda: NOW - dt.timedelta(hours=30))
    log.write("gpu.reject", user="a", code="NO_GPU_AVAILABLE")  # older than 24 h
    log = events.EventLog(str(path), clock=lambda: NOW - dt.timedelta(hours=1))
    log.write("gpu.reject", user="a", code="USER_AT_LIMIT")
    log.write("auth.denied", user="b", code="NOT_OWNER")
    window = ob.EventWindow(str(path))
    window.refresh(NOW.timestamp())
    assert window.counts(NOW.timestamp()) == ({"gpu.reject": 1, "auth.denied": 1}, {"USER_AT_LIMIT": 1, "NOT_OWNER": 1})
    pos = window._pos
    with open(path, "a") as handle:
        handle.write(
            json.dumps({"timestamp": "2026-11-22T11:30:00Z", "event_type": "container.remove", "schema_version": "1"})
            + "\n"
        )
        handle.write('{"partial": ')  # a line still being written is left for the next refresh
    window.refresh(NOW.timestamp())
    assert window._pos > pos
    assert window.counts(NOW.timestamp())[0]["container.remove"] == 1
    path.write_text("")  # truncated (copytruncate): read again from the start
    window.refresh(NOW.timestamp())
    assert window.counts(NOW.timestamp()) == ({}, {})


def _limits(tmp_path, extra=""):
    (tmp_path / "resource-limits.yaml").write_text(
        "defaults: {max_gpu_equivalents: 1, max_containers_per_user: 2, max_runtime_h: 24, idle_timeout_h: 1,"
        " gpu_hold_after_stop_h: 0.25}\ndefault_group: student\ngroups: {student: {members: [alice]}}\n"
        "paths: {state_dir: s, log_dir: l, run_dir: r}\n" + extra
    )
    return config.load_config(str(tmp_path / "resource-limits.yaml")).resolve("alice")


def test_release_is_the_earliest_of_runtime_cap_and_idle_stop(tmp_path):
    limits = _limits(tmp_path)
    holder = _h("t", "alice", slots=("0",), started_at="2026-11-22T00:00:00Z")
    rel = ob.estimate_release(holder, limits, {"first_started_at": "2026-11-21T20:00:00Z"}, NOW, WEIGHTS)
    # runtime: first start 20:00 + 24 h + 0.25 h GPU hold + one sweep
    assert rel.at == dt.datetime(2026, 11, 22, 20, 20, tzinfo=dt.timezone.utc) and "max runtime" in rel.reason
    idle = {"first_started_at": "2026-11-21T20:00:00Z", "idle_streak": 2, "last_active": "2026-11-22T11:30:00Z"}
    rel = ob.estimate_release(holder, limits, idle, NOW, WEIGHTS)
    assert rel.at == dt.datetime(2026, 11, 22, 12, 35, tzinfo=dt.timezone.utc) and rel.reason.startswith("idle")
    stopped = _h("s", "alice", state="exited", slots=("0",), finished_at="2026-11-22T11:55:00Z")
    at = ob.estimate_release(stopped, limits, {}, NOW, WEIGHTS).at
    assert at == dt.datetime(2026, 11, 22, 12, 15, tzinfo=dt.timezone.utc)


def test_an_exempt_holder_has_no_runtime_estimate(tmp_path):
    (tmp_path / "lifecycle-exemptions.yaml").write_text(
        "exemptions:\n  - {username: alice, exempt_from: [max_runtime_h], expires_on: 2099-01-01T00:00:00Z}\n"
    )
    limits = _limits(tmp_path)
    state = {"first_started_at": "2026-11-21T20:00:00Z"}
    rel = ob.estimate_release(_h("t", "alice", slots=("0",)), limits, state, NOW, WEIGHTS)
    assert rel.at is None


def test_removal_advice_frees_just_enough_stopped_first(tmp_path):
    limits = _limits(tmp_path)
    mine = [
        _h("run", "alice", slots=("1.0",)),  # 3/7 by the inventory's weights
        _h("old", "alice", state="exited", slots=("1.1",)),  # 2/7
    ]
    got = ob.removal_advice("AGGREGATE_GPU_QUOTA_EXCEEDED", mine, {"requested_gpueq": 2 / 7 + 0.1}, limits, WEIGHTS)
    assert [h.name for h in got] == ["old"]
    got = ob.removal_advice("CONTAINER_LIMIT", mine, {}, limits, WEIGHTS)
    assert [h.name for h in got] == ["old"]


@pytest.mark.parametrize(
    ("used", "limit", "expected"),
    [(1, 2, "[#####.....] 50%"), (0, 1, "[..........] 0%"), (3, 2, "[##########] 150%"), (1, None, "(no limit)")],
)
def test_usage_bar(used, limit, expected):
    assert ob.usage_bar(used, limit) == expected


def test_memory_limit_bytes():
    assert ob.memory_limit_bytes("64G") == 64 * 1024**3
    assert ob.memory_limit_bytes("50%", total_ram=1000) == 500
    assert ob.memory_limit_bytes("infinity") is None and ob.memory_limit_bytes(None) is None


def test_systemctl_show_blocks():
    text = "Id=ds01-a.slice\nControlGroup=/ds01.slice/ds01-a.slice\n\nId=ds01-b.slice\nControlGroup=\n"
    assert ob.parse_systemctl_show(text) == {"ds01-a.slice": "/ds01.slice/ds01-a.slice"}


def test_brief_line_is_one_line_with_alerts(tmp_path):
    limits = _limits(tmp_path)
    report = ob.limits_report(
        limits,
        mine=[_h("t", "alice", slots=("0",))],  # 1.0 by the inventory's weights
        weights=WEIGHTS,
        slice_usage=None,
        alerts={"gpu": {"level": 100, "used": 1.0, "limit": 1.0, "sent_at": "2026-11-22T11:00:00Z"}},
        grant=None,
        exempt_bare_metal=False,
        now=NOW,
        source="detector",
    )
    line = ob.brief_line(report)
    assert "\n" not in line
    assert line.startswith("alice (student) | GPU 1/1 gpueq [##########] 100% | containers 1/2")
    assert "QUOTA ALERT: gpu 100%" in line


def test_every_holder_of_a_slot_is_counted():
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import observe as ob

    slots = [{"slot": "0", "uuid": "GPU-0"}, {"slot": "1", "uuid": "GPU-1"}, {"slot": "2", "uuid": "GPU-2"}]
    holdings = [
        docker.ContainerInfo(
            id="a1", name="a", owner="alice", owner_method="ds01.user", state="running", slots=("0",), uuids=("GPU-0",)
        ),
        docker.ContainerInfo(
            id="b1", name="b", owner="bob", owner_method="ds01.user", state="created", slots=(), uuids=("GPU-0",)
        ),
        docker.ContainerInfo(
            id="c1", name="c", owner="carol", owner_method="ds01.user", state="running", slots=("1",), uuids=()
        ),
    ]
    rows = {r["slot"]: r for r in ob.assign_holders(slots, holdings)}
    assert (rows["0"]["holders"], rows["0"]["container"]) == (2, "a")
    assert (rows["1"]["holders"], rows["1"]["user"]) == (1, "carol")
    assert rows["2"]["holders"] == 0 and "container" not in rows["2"]


def test_gpu_status_text_marks_a_double_booked_slot():
    from ansible_collections.ds01.infra.plugins.module_utils.ds01.cli import gpu as cli_gpu

    holder = {"container": "a", "id": "1", "user": "alice", "owner_method": "label", "state": "running"}
    other = {**holder, "container": "b", "id": "2", "user": "bob"}
    slot = {"slot": "0", "gpu": 0, "uuid": "GPU-0", "kind": "gpu", "profile": None, "gpueq": 1.0, "free": False}
    doc = {
        "source": "fake",
        "capacity_gpueq": 1.0,
        "allocated_gpueq": 1.0,
        "total_slots": 1,
        "free_slots": 0,
        "slots": [{**slot, "container": "a", "user": "alice", "holders": [holder, other]}],
        "unusable_gpus": [],
        "foreign_devices": [],
    }
    text = cli_gpu._status_text(doc)
    assert "DOUBLE-BOOKED: also held by b (bob)" in text
    doc["slots"][0]["holders"] = [holder]
    assert "DOUBLE-BOOKED" not in cli_gpu._status_text(doc)


def test_an_inventory_entry_reads_back_as_the_same_entry():
    from ansible_collections.ds01.infra.plugins.module_utils.ds01.detector import classification

    attrs = {
        "Id": "f" * 64,
        "Name": "/nb",
        "Created": "2026-11-22T08:00:00.123456789Z",
        "State": {"Status": "running", "Running": True, "StartedAt": "2026-11-22T08:00:01.987654321Z", "Pid": 42},
        "Config": {
            "Image": "local/empty",
            "Labels": {"ds01.user": "bob", "ds01.gpu.slots": "1.0", "ds01.managed": "true"},
        },
        "HostConfig": {"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["MIG-a"], "Capabilities": [["gpu"]]}]},
    }
    record = classification.container_record(attrs, "bob", "ds01.user", NOW)
    record["gpu_shared_with"] = []
    info = docker.ContainerInfo.from_inventory(json.loads(json.dumps(record)))
    assert json.dumps(info.to_inventory()) == json.dumps(record)
    assert (info.owner, info.state, info.slots, info.uuids, info.pid) == ("bob", "running", ("1.0",), ("MIG-a",), 42)
    assert info.started_at == dt.datetime(2026, 11, 22, 8, 0, 1, 987654, tzinfo=dt.timezone.utc)
    assert ob.container_gpueq(info, WEIGHTS) == pytest.approx(3 / 7) and not ob.unmanaged_gpu(info)


def test_a_list_summary_is_weighed_by_its_labels():
    labelled = {"ds01.user": "bob", "ds01.gpu.slots": "1.0,1.1", "ds01.gpu.uuids": "MIG-a,MIG-b"}
    summaries = [
        {"Id": "a" * 64, "Names": ["/x"], "State": "Exited", "Labels": {**labelled, "ds01.gpu.gpueq": "0.5"}},
        {"Id": "b" * 64, "Names": ["/y"], "State": "running", "Labels": labelled},
        {"Id": "c" * 64, "Names": [], "State": "", "Labels": {"ds01.gpu.gpueq": "1"}},
    ]
    x, y, z = ob.containers_from_summaries(summaries)
    assert (x.state, ob.container_gpueq(x, WEIGHTS), ob.held_slots(x), x.uuids) == (
        "exited",
        0.5,
        ("1.0", "1.1"),
        ("MIG-a", "MIG-b"),
    )
    assert ob.container_gpueq(y, WEIGHTS) == pytest.approx(5 / 7)  # no gpueq label: its labelled slots weighed
    assert (z.name, z.state, z.owner, ob.container_gpueq(z, WEIGHTS), ob.holds_gpu(z)) == (
        "c" * 12,
        "unknown",
        None,
        1.0,
        False,
    )
    assert ob.user_totals([x, y, z], WEIGHTS) == {
        "bob": {"gpueq": pytest.approx(0.5 + 5 / 7), "slots": 4, "containers": 2}
    }
    assert not any(ob.unmanaged_gpu(c) for c in (x, y, z))
