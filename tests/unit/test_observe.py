"""Pure parts of observe/: holders, totals, OOM rises, the event window, release estimates, bars, mapping."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, events
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import observe as ob

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
SLOTS = [
    {"gpu": 0, "slot": "0", "uuid": "GPU-0", "kind": "gpu", "profile": None, "gpueq": 1.0},
    {"gpu": 1, "slot": "1.0", "uuid": "MIG-a", "kind": "mig", "profile": "3g.20gb", "gpueq": 3 / 7},
    {"gpu": 1, "slot": "1.1", "uuid": "MIG-b", "kind": "mig", "profile": "2g.10gb", "gpueq": 2 / 7},
]


def _h(name, user, state="running", slots=(), uuids=(), gpueq=0.0, **kw):
    return ob.Holding(
        id="a" * 64, name=name, user=user, state=state, type="docker", slots=slots, uuids=uuids, gpueq=gpueq, **kw
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
    (h,) = ob.holdings_from_inventory(doc, ob.slot_weights(SLOTS))
    assert h.gpueq == pytest.approx(3 / 7) and h.type == "devcontainer" and h.uuids == ("MIG-a",)
    assert ob.user_totals([h, _h("p", "bob")]) == {"bob": {"gpueq": pytest.approx(3 / 7), "slots": 1, "containers": 2}}


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
    rel = ob.estimate_release(holder, limits, {"first_started_at": "2026-11-21T20:00:00Z"}, NOW)
    # runtime: first start 20:00 + 24 h + 0.25 h GPU hold + one sweep
    assert rel.at == dt.datetime(2026, 11, 22, 20, 20, tzinfo=dt.timezone.utc) and "max runtime" in rel.reason
    idle = {"first_started_at": "2026-11-21T20:00:00Z", "idle_streak": 2, "last_active": "2026-11-22T11:30:00Z"}
    rel = ob.estimate_release(holder, limits, idle, NOW)
    assert rel.at == dt.datetime(2026, 11, 22, 12, 35, tzinfo=dt.timezone.utc) and rel.reason.startswith("idle")
    stopped = _h("s", "alice", state="exited", slots=("0",), finished_at="2026-11-22T11:55:00Z")
    assert ob.estimate_release(stopped, limits, {}, NOW).at == dt.datetime(2026, 11, 22, 12, 15, tzinfo=dt.timezone.utc)


def test_an_exempt_holder_has_no_runtime_estimate(tmp_path):
    (tmp_path / "lifecycle-exemptions.yaml").write_text(
        "exemptions:\n  - {username: alice, exempt_from: [max_runtime_h], expires_on: 2099-01-01T00:00:00Z}\n"
    )
    limits = _limits(tmp_path)
    rel = ob.estimate_release(_h("t", "alice", slots=("0",)), limits, {"first_started_at": "2026-11-21T20:00:00Z"}, NOW)
    assert rel.at is None


def test_removal_advice_frees_just_enough_stopped_first(tmp_path):
    limits = _limits(tmp_path)
    mine = [
        _h("run", "alice", slots=("1.0",), gpueq=3 / 7),
        _h("old", "alice", state="exited", slots=("1.1",), gpueq=2 / 7),
    ]
    got = ob.removal_advice("AGGREGATE_GPU_QUOTA_EXCEEDED", mine, {"requested_gpueq": 2 / 7 + 0.1}, limits)
    assert [h.name for h in got] == ["old"]
    got = ob.removal_advice("CONTAINER_LIMIT", mine, {}, limits)
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
        mine=[_h("t", "alice", slots=("0",), gpueq=1.0)],
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
        ob.Holding(
            id="a1", name="a", user="alice", state="running", type="docker", slots=("0",), uuids=("GPU-0",), gpueq=1.0
        ),
        ob.Holding(
            id="b1", name="b", user="bob", state="created", type="docker", slots=(), uuids=("GPU-0",), gpueq=1.0
        ),
        ob.Holding(id="c1", name="c", user="carol", state="running", type="docker", slots=("1",), uuids=(), gpueq=1.0),
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
