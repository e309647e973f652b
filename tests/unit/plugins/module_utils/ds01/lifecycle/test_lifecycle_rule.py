"""Which lifecycle value governs a container: one rule, told and enforced alike.

The rule (``config.RULE``): an exemption > the user's override > ``groups.<g>.container_types.<type>`` >
``container_types.<type>`` > the group's value > ``defaults`` > the built-in default.

Three kinds of test:
- a table over a config that writes a value at every level, checked against hand-worked answers;
- the same table over the lab's shipped config (the example inventory's ``ds01_common_limits`` and the
  lab fixture), where every container type sets its own timeouts;
- agreement: for every (user, type) pair, what ``ds01 limits USER --json`` prints is what the
  lifecycle's ``decide()`` does over simulated sweeps: no stop before the value, a stop soon after it,
  and no stop at all where the value is "none".
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, docker
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import lifecycle as lc

ROOT = Path(__file__).resolve().parents[6]
UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
CLI = (sys.executable, "-m", "ansible_collections.ds01.infra.plugins.module_utils.ds01")

RULE_YAML = """
defaults:
  max_runtime_h: 24            # idle_timeout_h is left to the built-in 0.5
default_group: student
groups:
  student:
    members: [stu, ovr, ovrnull, exc, excc]
  researcher:
    members: [res]
    idle_timeout_h: 1          # the group's value
    max_runtime_h: 48
    container_types:
      docker: {idle_timeout_h: 3}          # the group's per-type value
      devcontainer: {max_runtime_h: 400}
  plain:
    members: [pla]
container_types:
  devcontainer: {idle_timeout_h: null, max_runtime_h: 168, sigterm_grace_s: 30}
  docker: {idle_timeout_h: 0.75, max_runtime_h: 36}
  compose: {max_runtime_h: 72}
policies:
  grace_period_m: 10
  idle_detection_window: 2
"""
RULE_OVERRIDES = """
ovr:
  idle_timeout_h: 2
ovrnull:
  idle_timeout_h: null
"""
RULE_EXEMPTIONS = """
exemptions:
  - {username: exc, exempt_from: [idle_timeout_h], reason: thesis, expires_on: 2099-01-01T00:00:00Z}
  - {username: excc, container: keep, exempt_from: [max_runtime_h], reason: demo, expires_on: null}
"""

# (user, type) -> (idle_timeout_h, where, max_runtime_h, where), worked out by hand from RULE_YAML.
RULE_TABLE = {
    ("pla", "api"): (0.5, "builtin", 24.0, "defaults"),
    ("pla", "docker"): (0.75, "container_types.docker", 36.0, "container_types.docker"),
    ("pla", "compose"): (0.5, "builtin", 72.0, "container_types.compose"),
    ("stu", "devcontainer"): (None, "container_types.devcontainer", 168.0, "container_types.devcontainer"),
    ("res", "api"): (1.0, "group:researcher", 48.0, "group:researcher"),
    ("res", "compose"): (1.0, "group:researcher", 72.0, "container_types.compose"),
    ("res", "docker"): (3.0, "group:researcher.container_types.docker", 36.0, "container_types.docker"),
    ("res", "devcontainer"): (
        None,
        "container_types.devcontainer",
        400.0,
        "group:researcher.container_types.devcontainer",
    ),
    # a type nobody lists falls to the "unknown" row, which nobody lists either: the user's own values
    ("res", "ds01"): (1.0, "group:researcher", 48.0, "group:researcher"),
    ("ovr", "docker"): (2.0, "override", 36.0, "container_types.docker"),
    ("ovr", "devcontainer"): (2.0, "override", 168.0, "container_types.devcontainer"),
    ("ovrnull", "docker"): (None, "override", 36.0, "container_types.docker"),
    ("ovrnull", "api"): (None, "override", 24.0, "defaults"),
}


def write_config(root: Path, limits: str, overrides: str = "", exemptions: str = "", members=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "resource-limits.yaml").write_text(textwrap.dedent(limits))
    if overrides:
        (root / "user-overrides.yaml").write_text(textwrap.dedent(overrides))
    if exemptions:
        (root / "lifecycle-exemptions.yaml").write_text(textwrap.dedent(exemptions))
    for group, logins in (members or {}).items():
        (root / "groups").mkdir(exist_ok=True)
        (root / "groups" / f"{group}.members").write_text("".join(f"{u}\n" for u in logins))
    return root / "resource-limits.yaml"


def shipped_limits() -> str:
    """The example inventory's ``ds01_common_limits``: what the role writes to resource-limits.yaml."""
    data = yaml.safe_load((ROOT / "inventory/example/group_vars/gpu_servers/limits.yml").read_text())
    return yaml.safe_dump(data["ds01_common_limits"], sort_keys=False)


LAB_MEMBERS = {"student": ["stu"], "researcher": ["res"], "faculty": ["fac"], "admin": ["adm"]}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    base = tmp_path_factory.mktemp("rule")
    return {
        "rule": write_config(base / "rule", RULE_YAML, RULE_OVERRIDES, RULE_EXEMPTIONS),
        "inventory": write_config(base / "inventory", shipped_limits(), members=LAB_MEMBERS),
        "lab": write_config(
            base / "lab", (ROOT / "tests/fixtures/lab/resource-limits.yaml").read_text(), members=LAB_MEMBERS
        ),
    }


@pytest.mark.parametrize(("pair", "expected"), sorted(RULE_TABLE.items()))
def test_the_most_specific_value_written_down_governs(configs, pair, expected):
    limits = config.load_config(str(configs["rule"])).resolve(pair[0])
    idle = limits.governing(pair[1], "idle_timeout_h")
    runtime = limits.governing(pair[1], "max_runtime_h")
    assert (*idle, *runtime) == expected


def test_sigterm_grace_follows_the_same_rule(configs):
    cfg = config.load_config(str(configs["rule"]))
    assert cfg.resolve("stu").governing("devcontainer", "sigterm_grace_s") == (30.0, "container_types.devcontainer")
    assert cfg.resolve("stu").governing("docker", "sigterm_grace_s") == (60.0, "builtin")


@pytest.mark.parametrize("which", ["inventory", "lab"])
def test_the_shipped_config_lets_a_group_set_its_own_per_type_timeouts(configs, which, tmp_path):
    """In the lab's config every type sets its own timeouts, so a group's plain value never shows; a group's
    per-type row and a user's override both do."""
    cfg = config.load_config(str(configs[which]))
    res = cfg.resolve("res")
    assert res.governing("docker", "idle_timeout_h") == (0.5, "container_types.docker")
    assert res.governing("docker", "max_runtime_h") == (48.0, "container_types.docker")
    assert res.governing("devcontainer", "idle_timeout_h") == (None, "container_types.devcontainer")

    data = yaml.safe_load(configs[which].read_text())
    data["groups"]["researcher"]["container_types"] = {"docker": {"idle_timeout_h": 4, "max_runtime_h": 96}}
    path = write_config(
        tmp_path / "with-group-rows",
        yaml.safe_dump(data),
        overrides="stu:\n  idle_timeout_h: null\n",
        members=LAB_MEMBERS,
    )
    cfg = config.load_config(str(path))
    assert cfg.resolve("res").governing("docker", "idle_timeout_h") == (4.0, "group:researcher.container_types.docker")
    assert cfg.resolve("res").governing("docker", "max_runtime_h") == (96.0, "group:researcher.container_types.docker")
    assert cfg.resolve("fac").governing("docker", "idle_timeout_h") == (0.5, "container_types.docker")
    assert cfg.resolve("stu").governing("docker", "idle_timeout_h") == (None, "override")


def test_a_group_row_for_an_unknown_type_is_refused_with_its_place(tmp_path):
    path = write_config(
        tmp_path / "bad",
        """
        default_group: student
        groups:
          student:
            container_types:
              dokcer: {idle_timeout_h: 1}
        """,
    )
    with pytest.raises(config.ConfigError) as err:
        config.load_config(str(path))
    text = err.value.render()
    assert "groups.student.container_types.dokcer" in text
    assert "docker" in text  # did you mean


# ---------------------------------------------------------------------------------------------
# Agreement: what `ds01 limits --json` tells is what decide() does
# ---------------------------------------------------------------------------------------------


def limits_json(path: Path, login: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    proc = subprocess.run(
        [*CLI, "--config", str(path), "limits", login, "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def facts(owner: str, ctype: str, name: str) -> docker.ContainerInfo:
    labels = {"ds01.user": owner, "ds01.container_type": ctype, "ds01.gpu.slots": "0", "ds01.gpu.uuids": "GPU-0"}
    return docker.ContainerInfo(
        id="b" * 64,
        name=name,
        state="running",
        owner=owner,
        owner_method="label",
        labels={**labels, "ds01.gpu.gpueq": "1.0"},
        created=T0,
        started_at=T0,
    )


def first_stop(limits, fact, *, busy: bool, step: dt.timedelta, until: dt.timedelta):
    """Sweep every ``step`` from T0 (busy: 100 % CPU; else idle) and return the time of the first stop by
    the rule under test (busy: runtime; idle: idle)."""
    state: dict = {}
    cpu, wall, at = 0, 1_000_000.0, dt.timedelta(0)
    while at <= until:
        at += step
        wall += step.total_seconds()
        cpu += int(step.total_seconds() * 1e9) if busy else 0
        sample = lc.Sample(wall=wall, cpu_ns=cpu, net_bytes=0, busy_processes=0, gpu_util=0.0)
        decision = lc.decide(fact, limits, state, sample, lc.SweepContext(now=T0 + at))
        state = decision.state or {}
        stops = [a for a in decision.actions if a.kind == "stop" and a.rule == ("runtime" if busy else "idle")]
        if stops:
            return at, stops[0].rule, stops[0].grace_s
    return None, None, None


@pytest.mark.parametrize(
    ("which", "login"),
    [(w, u) for w in ("rule",) for u in ("exc", "excc", "ovr", "ovrnull", "pla", "res", "stu")]
    + [(w, u) for w in ("inventory", "lab") for u in ("stu", "res", "fac", "adm", "nobody")],
)
def test_limits_json_and_the_lifecycle_agree_for_every_type(configs, which, login):
    path = configs[which]
    told = limits_json(path, login)["lifecycle"]["by_type"]
    assert set(told) == set(config.CONTAINER_TYPES)
    limits = config.load_config(str(path)).resolve(login)
    grace = limits.policies.grace_period_m
    window = limits.policies.idle_detection_window
    for ctype, row in told.items():
        for key, busy in (("max_runtime_h", True), ("idle_timeout_h", False)):
            hours = row[key]
            exempt = limits.exemption_for(key, T0, "c1") is not None
            step = dt.timedelta(minutes=5) if (hours or 0) <= 24 else dt.timedelta(hours=1)
            horizon = dt.timedelta(hours=(hours or 200) + 4, minutes=grace)
            at, _rule, grace_s = first_stop(limits, facts(login, ctype, "c1"), busy=busy, step=step, until=horizon)
            where = f"{which}/{login}/{ctype}/{key}={hours}"
            if hours is None or exempt:
                assert at is None, f"{where}: stopped at {at} although told 'none' or exempt"
                continue
            start = dt.timedelta(hours=hours) + (dt.timedelta(0) if busy else dt.timedelta(minutes=grace))
            assert start <= at <= start + step * (window + 3), f"{where}: stopped at {at}, told {hours} h"
            assert grace_s == row["sigterm_grace_s"], where
    # the per-container exemption covers its container only
    if login == "excc":
        hours = told["docker"]["max_runtime_h"]
        at, _rule, _g = first_stop(
            limits, facts(login, "docker", "keep"), busy=True, step=dt.timedelta(hours=1), until=dt.timedelta(hours=200)
        )
        assert at is None, f"the exempt container keep was stopped at {at} (max runtime {hours} h)"


def test_config_show_states_the_rule_and_each_types_source(configs):
    proc = subprocess.run(
        [*CLI, "--config", str(configs["rule"]), "config", "show", "res"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert config.RULE in " ".join(proc.stdout.split())
    docker_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("docker "))
    assert "idle_timeout_h 3h [group:researcher.container_types.docker]" in docker_line
    assert "max_runtime_h 36h [container_types.docker]" in docker_line
