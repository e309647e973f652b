"""Quota alerts at 80 % and 100 %, once per cooldown, cleared below 80 %."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import quota_alerts as qa
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import refusals

T0 = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("used", "limit", "level"),
    [
        (0, 2.0, 0),
        (1.5, 2.0, 0),
        (1.6, 2.0, 80),
        (1.99, 2.0, 80),
        (2.0, 2.0, 100),
        (3, 2.0, 100),
        (5, None, 0),
        (4, 5, 80),
    ],
)
def test_levels(used, limit, level):
    assert qa.level_of(used, limit) == level


def test_first_crossing_is_delivered_then_held_for_the_cooldown():
    sent, state = qa.evaluate({"gpu": (1.6, 2.0)}, {}, T0, cooldown_h=4)
    assert [(a.measure, a.level) for a in sent] == [("gpu", 80)]
    again, state2 = qa.evaluate({"gpu": (1.7, 2.0)}, state, T0 + dt.timedelta(hours=1), cooldown_h=4)
    assert again == [] and state2["gpu"]["sent_at"] == state["gpu"]["sent_at"]
    later, _rest = qa.evaluate({"gpu": (1.7, 2.0)}, state2, T0 + dt.timedelta(hours=4), cooldown_h=4)
    assert [a.level for a in later] == [80]


def test_rising_to_100_is_delivered_at_once():
    _first, state = qa.evaluate({"containers": (4, 5)}, {}, T0, cooldown_h=4)
    sent, state = qa.evaluate({"containers": (5, 5)}, state, T0 + dt.timedelta(minutes=5), cooldown_h=4)
    assert [(a.measure, a.level) for a in sent] == [("containers", 100)]
    assert "100% (5 of 5)" in sent[0].sentence() and "docker rm" in sent[0].sentence()


def test_dropping_below_80_clears_the_alert(tmp_path):
    _first, state = qa.evaluate({"memory": (95 * 1024**3, 96 * 1024**3)}, {}, T0, cooldown_h=4)
    qa.save_state(str(tmp_path), "alice", state)
    assert qa.load_state(str(tmp_path), "alice")["memory"]["level"] == 80
    sent, state = qa.evaluate({"memory": (10 * 1024**3, 96 * 1024**3)}, state, T0, cooldown_h=4)
    qa.save_state(str(tmp_path), "alice", state)
    assert sent == [] and qa.load_state(str(tmp_path), "alice") == {}
    assert not os.path.exists(qa.state_path(str(tmp_path), "alice"))


def test_memory_sentence_speaks_gib():
    sent, _rest = qa.evaluate({"memory": (96 * 1024**3, 96 * 1024**3)}, {}, T0, cooldown_h=4)
    assert "96.0 GiB of 96.0 GiB" in sent[0].sentence()


def test_refusal_record_is_private_and_round_trips(tmp_path):
    assert refusals.record(str(tmp_path), "alice", "USER_AT_LIMIT", "You hold 2 of 2.", uid=os.getuid(), now=T0)
    path = tmp_path / "refusals" / "alice.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    got = refusals.read(str(tmp_path), "alice")
    assert got["code"] == "USER_AT_LIMIT" and got["timestamp"] == "2026-11-22T08:00:00Z"
    assert refusals.read(str(tmp_path), "bob") is None
    assert refusals.record(str(tmp_path), "../etc/passwd", "X", "y") is False
