"""The lifecycle policy, rule by rule, with ``now`` injected: decide() over simulated sweeps.

Config used here (written to a temp dir): idle timeout 1 h, max runtime 10 h, grace 10 min,
idle window 2 sweeps, warnings at 50/87.5 % (idle) and 75/90 % (runtime), GPU hold 15 min,
stopped-container hold 2 h, created timeout 30 min. Sweeps come every 5 minutes from T0.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, docker
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import lifecycle as lc

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
CID = "a" * 64

LIMITS_YAML = """
defaults:
  idle_timeout_h: 1
  max_runtime_h: 10
  gpu_hold_after_stop_h: 0.25
  container_hold_after_stop_h: 2
default_group: student
groups:
  student:
    members: [alice, bob, carol, erin, sig, grace]
  keepers:
    members: [nolimit]
    idle_timeout_h: null
    max_runtime_h: null
    gpu_hold_after_stop_h: null
    container_hold_after_stop_h: null
    policies:
      created_container_timeout_m: null
policies:
  grace_period_m: 10
  idle_detection_window: 2
  gpu_idle_threshold: 5
  cpu_idle_threshold: 2.0
  network_idle_threshold: 1048576
  process_idle_threshold: 0
  high_demand_threshold: 0.8
  high_demand_idle_reduction: 0.5
  keepalive_max_duration_h: 24
  created_container_timeout_m: 30
  sigterm_grace_s: 20
container_types:
  devcontainer: {idle_timeout_h: null, max_runtime_h: 168, sigterm_grace_s: 30}
  compose: {idle_timeout_h: 0.5, sigterm_grace_s: 45}
  docker: {sigterm_grace_s: 60}
  api: {max_runtime_h: null}
monitoring:
  infrastructure_containers: [ds01-prometheus]
  infrastructure_label: ds01.protected
"""
OVERRIDES_YAML = """
sig:
  policies:
    pre_stop_signal: SIGUSR1
    pre_stop_lead_m: 10
"""
EXEMPTIONS_YAML = """
exemptions:
  - {username: erin, exempt_from: [idle_timeout_h, max_runtime_h], reason: thesis, expires_on: 2099-01-01T00:00:00Z}
  - {username: bob, exempt_from: [idle_timeout_h], reason: old, expires_on: 2026-02-01T00:00:00Z}
  - {username: carol, container: carol-keep, exempt_from: [idle_timeout_h], reason: demo, expires_on: null}
  - {username: grace, exempt_from: [container_hold_after_stop_h, gpu_hold_after_stop_h], expires_on: null}
"""


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle-config")
    (root / "resource-limits.yaml").write_text(textwrap.dedent(LIMITS_YAML))
    (root / "user-overrides.yaml").write_text(textwrap.dedent(OVERRIDES_YAML))
    (root / "lifecycle-exemptions.yaml").write_text(textwrap.dedent(EXEMPTIONS_YAML))
    return config.load_config(str(root / "resource-limits.yaml"))


CTX_KW = {"protected_label": "ds01.protected", "protected_names": frozenset({"ds01-prometheus"})}


def mkfacts(
    state="running",
    name="c1",
    owner="alice",
    ctype="docker",
    gpu=True,
    started=T0,
    finished=None,
    created=T0 - dt.timedelta(minutes=1),
    labels=None,
):
    base = {"ds01.container_type": ctype}
    if gpu:
        base.update({"ds01.gpu.slots": "0", "ds01.gpu.uuids": "GPU-0", "ds01.gpu.gpueq": "1.0"})
    if owner:
        base["ds01.user"] = owner
    base.update(labels or {})
    return docker.ContainerInfo(
        id=CID,
        name=name,
        state=state,
        owner=owner,
        owner_method="label" if owner else "unknown",
        labels=base,
        created=created,
        started_at=started,
        finished_at=finished,
    )


class Sim:
    """Runs decide() sweep after sweep, carrying state and counters like the executor does."""

    def __init__(self, cfg, facts, demand=None, prior=None):
        self.cfg = cfg
        self.facts = facts
        self.limits = cfg.resolve(facts.owner) if facts.owner else None
        self.state = dict(prior or {})
        self.demand = demand
        self.cpu = 0
        self.net = 0
        self.wall = 1_000_000.0

    def sweep(self, minute, kind="idle", gpu_util=0.0, net=0, procs=0, keepalive=None, facts=None):
        """One sweep at T0+minute; ``kind`` idle (0.1 % CPU) or busy (100 % CPU), or None (no sample)."""
        self.wall += 300.0
        self.cpu += int(300e9 if kind == "busy" else 0.3e9 * 0.001 * 10)
        self.net += net
        sample = None
        if kind is not None:
            sample = lc.Sample(
                wall=self.wall,
                cpu_ns=self.cpu,
                net_bytes=self.net,
                busy_processes=procs,
                gpu_util=gpu_util,
                keepalive_mtime=keepalive,
            )
        now = T0 + dt.timedelta(minutes=minute)
        ctx = lc.SweepContext(now=now, demand=self.demand, **CTX_KW)
        decision = lc.decide(facts or self.facts, self.limits, self.state, sample, ctx)
        self.state = decision.state or {}
        return decision

    def run(self, minutes, **kw):
        """Sweeps at each minute until a stop; returns {minute: [(kind, rule, event)]} for sweeps that acted."""
        out = {}
        for minute in minutes:
            d = self.sweep(minute, **kw)
            if d.actions:
                out[minute] = [(a.kind, a.rule, a.event) for a in d.actions]
            if any(a.kind in ("stop", "remove") for a in d.actions):
                break  # the container is stopped or gone: no further sweeps see it running
        return out


def every5(start, stop):
    return list(range(start, stop + 1, 5))


WARN1 = [("notify", "idle", lc.EV_IDLE_WARNING)]
STOP_REMOVE = [("stop", "idle", lc.EV_IDLE_STOP), ("remove", "idle", lc.EV_REMOVE)]


# ---------------------------------------------------------------------------------------------
# Idle: the whole timeline (grace 10 m, timeout 60 m, warnings at 30 m and 52.5 m of idle)
# ---------------------------------------------------------------------------------------------


def test_idle_container_warned_twice_then_stopped_and_removed(cfg):
    sim = Sim(cfg, mkfacts())
    acted = sim.run(every5(5, 90))
    # idle clock starts at the end of the grace period (T0+10): 30 m idle at +40, 52.5 m at +62.5 → +65
    assert acted == {40: WARN1, 65: WARN1, 75: STOP_REMOVE}


def test_final_warning_gives_real_notice_before_the_stop(cfg):
    """Final warning at +65; the stop waits (1 - 0.875) x 60 m = 7.5 m after it, so not at +70."""
    sim = Sim(cfg, mkfacts())
    sim.run(every5(5, 65))
    assert sim.sweep(70).actions == []
    assert sim.state["idle_final_at"] == "2026-11-22T09:05:00Z"
    stop = sim.sweep(75).actions[0]
    assert (stop.kind, stop.grace_s) == ("stop", 60.0)  # container type docker: sigterm_grace_s 60


@pytest.mark.parametrize(
    ("minute", "expected"),
    [
        (5, []),  # in the grace period
        (9, []),  # still in grace (grace ends at +10)
        (39, []),  # 29 m idle: just below 50 %
        (40, ["notify"]),  # exactly 50 % of the timeout
    ],
)
def test_idle_warning_boundaries(cfg, minute, expected):
    sim = Sim(cfg, mkfacts())
    sim.run([m for m in every5(5, 35) if m < minute])
    assert [a.kind for a in sim.sweep(minute).actions] == expected


def test_grace_period_counts_nothing(cfg):
    sim = Sim(cfg, mkfacts())
    d = sim.sweep(5)
    assert d.actions == [] and sim.state["idle_streak"] == 0
    assert any("grace" in n for n in d.notes)


def test_window_needs_consecutive_idle_sweeps(cfg):
    sim = Sim(cfg, mkfacts())
    sim.run([5, 10])
    assert sim.state["idle_streak"] == 1
    sim.sweep(15)
    assert sim.state["idle_streak"] == 2


def test_busy_container_is_never_warned(cfg):
    sim = Sim(cfg, mkfacts())
    assert sim.run(every5(5, 300), kind="busy") == {}
    assert sim.state["idle_warned"] == 0


def test_activity_after_a_warning_resets_the_idle_clock_and_warnings(cfg):
    sim = Sim(cfg, mkfacts())
    assert sim.run(every5(5, 40)) == {40: WARN1}
    sim.sweep(45, kind="busy")
    assert sim.state["idle_warned"] == 0 and sim.state["last_active"] == "2026-11-22T08:45:00Z"
    acted = sim.run(every5(50, 140))
    assert acted == {75: WARN1, 100: WARN1, 110: STOP_REMOVE}


@pytest.mark.parametrize(
    ("signals", "verdict"),
    [
        ({"gpu_util": 50.0}, lc.ACTIVE),  # GPU busy, CPU idle
        ({"gpu_util": 5.0}, lc.IDLE),  # at the threshold counts as idle
        ({"gpu_util": 5.1}, lc.ACTIVE),
        ({"gpu_util": None}, lc.IDLE),  # MIG: utilisation unknown, decided on the other signals
        ({"net": 2 * 1048576}, lc.ACTIVE),  # network since the last sweep above 1 MiB
        ({"net": 1048576}, lc.IDLE),  # exactly the threshold
        ({"procs": 1}, lc.ACTIVE),  # one process running or in I/O wait
        ({"kind": "busy"}, lc.ACTIVE),
    ],
)
def test_signals(cfg, signals, verdict):
    sim = Sim(cfg, mkfacts())
    sim.sweep(20)  # first sight: baseline counters, inconclusive
    kind = signals.pop("kind", "idle")
    d = sim.sweep(25, kind=kind, **signals)
    assert sim.state["idle_streak"] == (0 if verdict == lc.ACTIVE else 1)
    assert (verdict == lc.ACTIVE) == any(n.startswith("active") for n in d.notes)


def test_network_uses_the_delta_not_the_cumulative_counter(cfg):
    """A container that moved 50 GiB once, long ago, is idle when nothing moves now."""
    sim = Sim(cfg, mkfacts())
    sim.net = 50 * 1024**3
    sim.run(every5(5, 25))
    assert sim.state["idle_streak"] >= 3


def test_cpu_rate_uses_real_seconds_between_samples(cfg):
    limits = cfg.resolve("alice")
    prior = {"cpu_ns": 0, "sample_wall": 100.0}
    busy = lc.Sample(wall=102.0, cpu_ns=2 * 10**9)  # 2 s of CPU in 2 real seconds: 100 %
    verdict, _reasons, readings = lc.classify(busy, prior, limits.policies, T0)
    assert verdict == lc.ACTIVE and readings["cpu_percent"] == pytest.approx(100.0)


def test_first_sample_without_previous_counters_is_inconclusive(cfg):
    limits = cfg.resolve("alice")
    verdict, reasons, _rest = lc.classify(lc.Sample(wall=1.0, cpu_ns=10), {}, limits.policies, T0)
    assert verdict == lc.UNKNOWN and "no CPU reading" in reasons[0]


def test_no_sample_does_not_advance_the_window(cfg):
    sim = Sim(cfg, mkfacts())
    sim.run([5, 10, 15])
    streak = sim.state["idle_streak"]
    sim.sweep(20, kind=None)
    assert sim.state["idle_streak"] == streak


def test_fresh_keepalive_file_is_activity(cfg):
    sim = Sim(cfg, mkfacts())
    acted = sim.run(every5(5, 120), keepalive=T0 + dt.timedelta(minutes=1))
    assert acted == {}


def test_keepalive_older_than_its_max_duration_is_ignored(cfg):
    sim = Sim(cfg, mkfacts())
    acted = sim.run(every5(5, 75), keepalive=T0 - dt.timedelta(hours=25))
    assert acted[75] == STOP_REMOVE


@pytest.mark.parametrize(
    ("demand", "first_warning_minute"),
    [
        (0.9, 25),  # above 0.8: timeout 60 m x 0.5 = 30 m → 15 m idle at +25
        (0.8, 40),  # exactly the threshold: not "above", no reduction
        (None, 40),  # capacity unknown: no reduction
    ],
)
def test_high_demand_cuts_the_idle_timeout(cfg, demand, first_warning_minute):
    sim = Sim(cfg, mkfacts(), demand=demand)
    acted = sim.run(every5(5, 45))
    assert min(acted) == first_warning_minute


@pytest.mark.parametrize(
    ("ctype", "owner", "stop_minute"),
    [
        ("devcontainer", "alice", None),  # type says idle_timeout_h: null → exempt for that type
        ("compose", "alice", 45),  # type's explicit 0.5 h beats alice's 1 h
        ("docker", "alice", 75),  # docker sets no idle value: alice's own 1 h
        ("docker", "nolimit", None),  # the user's own null: no idle limit
        ("api", "alice", 75),  # api sets only max_runtime_h: idle is the user's
    ],
)
def test_idle_timeout_comes_from_type_then_user(cfg, ctype, owner, stop_minute):
    sim = Sim(cfg, mkfacts(ctype=ctype, owner=owner))
    acted = sim.run(every5(5, 200))
    stops = [m for m, actions in acted.items() if ("stop", "idle", lc.EV_IDLE_STOP) in actions]
    assert stops == ([stop_minute] if stop_minute else [])


def test_restart_resets_the_idle_episode(cfg):
    sim = Sim(cfg, mkfacts())
    sim.run(every5(5, 65))
    assert sim.state["idle_warned"] == 2
    restarted = mkfacts(started=T0 + dt.timedelta(minutes=68))
    d = sim.sweep(70, facts=restarted)
    assert d.actions == [] and sim.state["idle_warned"] == 0 and "cpu_ns" in sim.state


def test_late_first_sight_still_warns_before_stopping(cfg):
    """Seen for the first time 3 h after start (state lost): baseline, window of 2 idle sweeps, then
    the final warning at once, and the stop only 7.5 m after it (at the next sweep past +197.5)."""
    sim = Sim(cfg, mkfacts())
    acted = sim.run(every5(180, 210))
    assert acted == {190: WARN1, 200: STOP_REMOVE}


def test_stop_grace_falls_back_to_the_policy(cfg):
    sim = Sim(cfg, mkfacts(ctype="unknown"))  # no "unknown" entry: policies.sigterm_grace_s
    acted = {m: d for m in every5(5, 90) if (d := sim.sweep(m)).actions}
    stop = next(a for d in acted.values() for a in d.actions if a.kind == "stop")
    assert stop.grace_s == 20.0


# ---------------------------------------------------------------------------------------------
# Exemptions and protection
# ---------------------------------------------------------------------------------------------

FYI = [("notify", "idle", lc.EV_EXEMPT_NOTICE)]


@pytest.mark.parametrize(
    ("owner", "name", "labels", "expected"),
    [
        ("erin", "c1", None, {70: FYI}),  # user exemption: one FYI at the timeout, nothing else
        ("bob", "c1", None, {40: WARN1, 65: WARN1, 75: STOP_REMOVE}),  # expired exemption: normal
        ("carol", "carol-keep", None, {70: FYI}),  # exemption naming this container
        ("carol", "carol-other", None, {40: WARN1, 65: WARN1, 75: STOP_REMOVE}),  # …not her others
        ("alice", "c1", {lc.EXEMPT_LABEL: "true"}, {70: FYI}),  # the admin-only label
    ],
)
def test_idle_exemptions(cfg, owner, name, labels, expected):
    sim = Sim(cfg, mkfacts(owner=owner, name=name, labels=labels))
    assert sim.run(every5(5, 300)) == expected


def test_exempt_notice_says_why_and_keeps_the_container(cfg):
    sim = Sim(cfg, mkfacts(owner="erin"))
    notice = next(d for m in every5(5, 90) if (d := sim.sweep(m)).actions).actions[0].notice
    text = " ".join(notice.lines)
    assert "FYI" in notice.title and "NOT being stopped" in text and "until 2099-01-01" in text


@pytest.mark.parametrize(
    ("labels", "name", "state"),
    [
        ({"ds01.protected": "true"}, "c1", "running"),
        ({"ds01.monitoring": "true"}, "c1", "running"),
        ({}, "ds01-prometheus", "running"),
        ({"ds01.protected": "true"}, "c1", "created"),
        ({"ds01.protected": "true"}, "c1", "exited"),
    ],
)
def test_protected_containers_are_never_touched(cfg, labels, name, state):
    facts = mkfacts(name=name, labels=labels, state=state, finished=T0)
    sim = Sim(cfg, facts)
    assert (
        sim.run(
            every5(
                5,
                2000,
            )
        )
        == {}
    )
    d = sim.sweep(3000)
    assert d.skipped.startswith("protected") and d.state is None


def test_container_without_owner_is_left_alone(cfg):
    d = lc.decide(mkfacts(owner=None, state="created"), None, {}, None, lc.SweepContext(now=T0 + dt.timedelta(days=9)))
    assert d.actions == [] and "no owner" in d.skipped


def test_running_container_without_gpu_has_no_idle_or_runtime_rule(cfg):
    sim = Sim(cfg, mkfacts(gpu=False))
    assert sim.run(every5(5, 60 * 24)) == {}


# ---------------------------------------------------------------------------------------------
# Max runtime (10 h; warnings at 7.5 h and 9 h; final notice 1 h)
# ---------------------------------------------------------------------------------------------

RWARN = [("notify", "runtime", lc.EV_RUNTIME_WARNING)]
RSTOP = [("stop", "runtime", lc.EV_RUNTIME_STOP)]


def hourly(*hours):
    return [int(h * 60) for h in hours]


def test_runtime_warnings_then_stop_without_removal(cfg):
    sim = Sim(cfg, mkfacts())
    acted = sim.run(hourly(1, 7.49, 7.5, 8, 8.99, 9, 9.5, 9.99, 10, 10.5), kind="busy")
    assert acted == {450: RWARN, 540: RWARN, 600: RSTOP}
    assert sim.state["runtime_stopped_at"] == "2026-11-22T18:00:00Z"


def test_runtime_is_counted_from_the_first_start_across_restarts(cfg):
    sim = Sim(cfg, mkfacts())
    sim.run(hourly(1, 2), kind="busy")
    restarted = mkfacts(started=T0 + dt.timedelta(hours=5))
    acted = {}
    for minute in hourly(6, 7.5, 9, 10):
        d = sim.sweep(minute, kind="busy", facts=restarted)
        if d.actions:
            acted[minute] = [(a.kind, a.rule, a.event) for a in d.actions]
    assert acted == {450: RWARN, 540: RWARN, 600: RSTOP}
    assert sim.state["first_started_at"] == "2026-11-22T08:00:00Z"


def test_runtime_stop_due_without_warnings_waits_for_the_final_notice(cfg):
    sim = Sim(cfg, mkfacts())
    acted = sim.run(hourly(12, 12.5, 13), kind="busy")
    assert acted == {720: RWARN, 780: RSTOP}


def test_restart_after_a_runtime_stop_is_stopped_again(cfg):
    sim = Sim(cfg, mkfacts())
    sim.run(hourly(7.5, 9, 10), kind="busy")
    d = sim.sweep(11 * 60, kind="busy", facts=mkfacts(started=T0 + dt.timedelta(hours=10, minutes=30)))
    assert [a.kind for a in d.actions] == ["stop"]


@pytest.mark.parametrize(
    ("owner", "ctype", "expected"),
    [
        ("erin", "docker", {600: [("notify", "runtime", lc.EV_EXEMPT_NOTICE)]}),  # exempt: one FYI
        ("alice", "api", {}),  # type's explicit null: no runtime limit
        ("nolimit", "docker", {}),  # user's null
        ("alice", "devcontainer", {}),  # 168 h, not reached within the 12 h simulated
    ],
)
def test_runtime_limit_sources_and_exemption(cfg, owner, ctype, expected):
    sim = Sim(cfg, mkfacts(owner=owner, ctype=ctype))
    assert sim.run(hourly(1, 5, 10, 11, 12), kind="busy") == expected


# ---------------------------------------------------------------------------------------------
# Pre-stop signal (user "sig": SIGUSR1, 10 minutes before the stop)
# ---------------------------------------------------------------------------------------------


def test_pre_stop_signal_goes_first_and_once(cfg):
    sim = Sim(cfg, mkfacts(owner="sig"))
    acted = sim.run(every5(5, 90))
    sig = [("signal", "idle", lc.EV_PRE_STOP)]
    # stop due at +70 (idle since +10, 60 m); the signal at +60 (stop - 10 m); final warning +65
    assert acted == {40: WARN1, 60: sig, 65: WARN1, 75: STOP_REMOVE}


def test_pre_stop_signal_comes_its_lead_before_a_late_stop(cfg):
    """First seen at 12 h (over the 10 h cap): final warning now (stop at 13 h), the signal at 12:50
    (first sweep at 13:00), and the stop no sooner than 10 minutes after the signal."""
    sim = Sim(cfg, mkfacts(owner="sig"))
    acted = sim.run([720, 750, 765, 780, 785, 790], kind="busy")
    assert acted == {720: RWARN, 780: [("signal", "runtime", lc.EV_PRE_STOP)], 790: RSTOP}


def test_no_pre_stop_signal_unless_configured(cfg):
    sim = Sim(cfg, mkfacts())
    acted = sim.run(every5(5, 90))
    assert all(a[0] != "signal" for actions in acted.values() for a in actions)


# ---------------------------------------------------------------------------------------------
# Cleanup: created-never-started, exited, GPU holds
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "labels", "age_m", "removed"),
    [
        ("alice", None, 29, False),
        ("alice", None, 30, True),  # exactly created_container_timeout_m
        ("nolimit", None, 600, False),  # created_container_timeout_m: null
        ("alice", {lc.EXEMPT_LABEL: "true"}, 600, False),
    ],
)
def test_created_never_started(cfg, owner, labels, age_m, removed):
    facts = mkfacts(state="created", owner=owner, labels=labels, started=None, created=T0)
    d = Sim(cfg, facts).sweep(age_m, kind=None)
    assert [(a.kind, a.details.get("reason")) for a in d.actions] == (
        [("remove", "created_never_started")] if removed else []
    )


@pytest.mark.parametrize(
    ("owner", "gpu", "stopped_m", "reason"),
    [
        ("alice", False, 119, None),
        ("alice", False, 120, "hold_expired"),  # container_hold_after_stop_h 2
        ("alice", True, 14, None),
        ("alice", True, 15, "gpu_hold_expired"),  # gpu_hold_after_stop_h 0.25
        ("nolimit", True, 10_000, None),  # both holds null: never
        ("grace", True, 10_000, None),  # exempt from both holds
    ],
)
def test_stopped_container_holds(cfg, owner, gpu, stopped_m, reason):
    facts = mkfacts(state="exited", owner=owner, gpu=gpu, finished=T0)
    d = Sim(cfg, facts).sweep(stopped_m, kind=None)
    assert [a.details.get("reason") for a in d.actions] == ([reason] if reason else [])
    if reason:
        assert d.actions[0].event == lc.EV_REMOVE and d.actions[0].notice is not None


def test_stopped_container_without_finished_at_is_kept(cfg):
    d = Sim(cfg, mkfacts(state="exited", finished=None)).sweep(10_000, kind=None)
    assert d.actions == [] and any("FinishedAt" in n for n in d.notes)


def test_idle_stop_left_unfinished_is_removed_next_sweep(cfg):
    prior = {"pending_remove": "idle_stop", "started_at": "2026-11-22T08:00:00Z"}
    facts = mkfacts(state="exited", finished=T0 + dt.timedelta(minutes=75))
    d = Sim(cfg, facts, prior=prior).sweep(80, kind=None)
    assert [(a.kind, a.details["reason"]) for a in d.actions] == [("remove", "idle_stop")]


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T08:00:00.123456789Z", dt.datetime(2026, 11, 22, 8, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-22T09:00:00+01:00", T0),
        ("0001-01-01T00:00:00Z", None),  # Docker's "never"
        ("", None),
        ("yesterday", None),
    ],
)
def test_parse_time(text, expected):
    assert lc.parse_time(text) == expected


def test_effective_values(cfg):
    alice = cfg.resolve("alice")
    assert lc.effective_timeout(alice, "devcontainer", "idle_timeout_h") is None
    assert lc.effective_timeout(alice, "devcontainer", "max_runtime_h") == 168
    assert lc.effective_timeout(alice, "compose", "max_runtime_h") == 10  # not explicit: the user's
    assert lc.sigterm_grace(alice, "compose") == 45
    assert lc.sigterm_grace(alice, "docker") == 60


def test_state_keeps_the_first_start_and_drops_counters_on_restart(cfg):
    prior = {"first_started_at": "2026-11-22T08:00:00Z", "started_at": "2026-11-22T08:00:00Z", "cpu_ns": 5}
    state = lc.carry_state(prior, mkfacts(started=T0 + dt.timedelta(hours=3)))
    assert state["first_started_at"] == "2026-11-22T08:00:00Z"
    assert state["started_at"] == "2026-11-22T11:00:00Z" and "cpu_ns" not in state


def test_warning_text_says_what_when_why_and_how_to_keep(cfg):
    sim = Sim(cfg, mkfacts(name="train-7"))
    notice = sim.run(every5(5, 35)) or None
    assert notice is None
    action = sim.sweep(40).actions[0]
    text = " ".join(action.notice.lines)
    assert "train-7" in text and "STOPPED and REMOVED at 2026-11-22 09:10 UTC (in 30m)" in text
    assert "idle 30m" in text and "touch /workspace/.keep-alive" in text and "lifecycle-exemptions.yaml" in text


# ---------------------------------------------------------------------------------------------
# The executor with a fake Docker: one bad container never stops the sweep
# ---------------------------------------------------------------------------------------------


class FakeOps:
    """Created containers overdue for removal; ``broken`` ones fail to remove, ``gone`` ones vanished."""

    def __init__(self, ids, broken=(), gone=()):
        self.ids, self.broken, self.gone = ids, set(broken), set(gone)
        self.removed = []

    def list_containers(self, on_error=None):
        created = int(T0.timestamp())
        summaries = [
            {"Id": cid, "Names": [f"/c{n}"], "State": "created", "Created": created, "Labels": {"ds01.user": "alice"}}
            for n, cid in enumerate(self.ids)
        ]
        return [docker.container_info(summary) for summary in summaries]

    def remove(self, cid):
        if cid in self.broken:
            raise RuntimeError("daemon said no")
        if cid in self.gone:
            return False
        self.removed.append(cid)
        return True


def test_one_failing_container_does_not_stop_the_sweep(cfg, tmp_path):
    ids = [c * 64 for c in "abcd"]
    ops = FakeOps(ids, broken=[ids[1]], gone=[ids[2]])
    events = []
    store = lc.StateStore(str(tmp_path / "lifecycle"))
    store.save("e" * 64, {"stale": True})  # a container that no longer exists
    report = lc.run_sweep(
        cfg, ops, T0 + dt.timedelta(hours=1), emit=lambda t, **d: events.append((t, d.get("container"))), store=store
    )
    assert ops.removed == [ids[0], ids[3]]
    assert [(e["id"], e["step"]) for e in report.errors] == [(ids[1], "remove")]
    assert (lc.EV_FAILED, "c1") in events and events.count((lc.EV_REMOVE, "c0")) == 1
    assert (lc.EV_REMOVE, "c2") not in events  # vanished before we acted: nothing to record
    assert store.ids() == [ids[1]]  # kept for the retry; the removed, vanished and stale ones dropped


def test_dry_run_changes_and_records_nothing(cfg, tmp_path):
    ops = FakeOps(["a" * 64])
    events = []
    store = lc.StateStore(str(tmp_path / "lifecycle"))
    report = lc.run_sweep(cfg, ops, T0 + dt.timedelta(hours=1), dry_run=True, emit=events.append, store=store)
    assert [a.kind for d in report.decisions for a in d.actions] == ["remove"]
    assert ops.removed == [] and events == [] and not (tmp_path / "lifecycle").exists()


def test_gpu_probe_reads_the_inventory_the_allocator_uses(tmp_path):
    """Utilisation and capacity come from gpu.py (fake topology here); MIG without a reading is unknown."""
    topology = Path(__file__).resolve().parents[5] / "fixtures" / "topology" / "activity.yaml"
    (tmp_path / "resource-limits.yaml").write_text(
        f"default_group: student\ngroups:\n  student: {{}}\ngpu_allocation: {{backend: fake, topology: {topology}}}\n"
    )
    probe = lc.gpu_probe_from_config(config.load_config(str(tmp_path / "resource-limits.yaml")))
    assert probe.utilization(["GPU-d0d0d0d0-0000-4000-8000-000000000000"]) == 37.0
    assert probe.utilization(["MIG-d1d1d1d1-0001-4000-8000-000000000000"]) == 0.0
    assert probe.utilization(["MIG-d1d1d1d1-0000-4000-8000-000000000000"]) is None  # no reading: other signals decide
    assert probe.capacity_gpueq() == pytest.approx(1 + 7 / 7)


def test_gpu_probe_without_inventory_knows_nothing(tmp_path):
    (tmp_path / "resource-limits.yaml").write_text(
        "default_group: student\ngroups:\n  student: {}\ngpu_allocation: {backend: fake, topology: missing.yaml}\n"
    )
    probe = lc.gpu_probe_from_config(config.load_config(str(tmp_path / "resource-limits.yaml")))
    assert probe.utilization(["GPU-x"]) is None and probe.capacity_gpueq() is None
