"""``ds01 alerts run`` through the real CLI against the real Docker engine, judged by what it delivered.

User ``alr1`` (a real Unix user, so the notice spool can be shared with them) holds real containers
labelled ``ds01.user=alr1`` (``local/empty``, ``network_mode: none``, created and never started) against a
limit of 2 containers. One run at 2 of 2 must write the alert state, one ``quota.alert`` event and one
notice in the user's spool; a second run inside the cooldown must deliver nothing more; a dry run writes
nothing; when the usage drops below 80 % the alert is cleared. Other users' containers on the shared
engine may appear in the report too: only alr1's are asserted.
"""

from __future__ import annotations

import json
import os
import subprocess

import docker
import pytest

pytestmark = [pytest.mark.docker]

USER = "alr1"
TOPOLOGY = """
gpus:
  - {index: 0, uuid: GPU-00000000-0000-0000-0000-0000000000a1, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}
"""
LIMITS = """
defaults:
  max_gpu_equivalents: 1
  max_containers_per_user: 100
default_group: student
groups:
  student: {members: []}
  tight:
    members: [alr1]
    max_containers_per_user: 2
policies:
  quota_alert_cooldown_h: 4
gpu_allocation: {backend: fake, topology: topo.yaml}
paths: {state_dir: state, log_dir: log, run_dir: run}
"""


@pytest.fixture(scope="module")
def account():
    assert os.geteuid() == 0, "make test runs as root: this test creates a Unix user"
    made = subprocess.run(["id", USER], capture_output=True, check=False).returncode != 0
    if made:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True, capture_output=True)
    yield USER
    if made:
        subprocess.run(["userdel", "-r", USER], check=False, capture_output=True)


@pytest.fixture
def sandbox(tmp_path, account):
    for sub in ("state", "log", "run"):
        (tmp_path / sub).mkdir()
    (tmp_path / "topo.yaml").write_text(TOPOLOGY)
    (tmp_path / "resource-limits.yaml").write_text(LIMITS)
    return tmp_path


@pytest.fixture
def containers(docker_client, empty_image, test_label):
    made = []

    def create(n):
        container = docker_client.containers.create(
            empty_image,
            command=["/nonexistent"],
            name=f"alr1-c{n}-{test_label.value[:8]}",
            labels={**test_label.labels, "ds01.user": USER, "ds01.managed": "true", "ds01.container_type": "docker"},
            network_mode="none",
        )
        made.append(container)
        return container

    yield create
    for container in made:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            continue


def alerts_run(ds01_bin, sandbox, *flags):
    proc = subprocess.run(
        [str(ds01_bin), "--config", str(sandbox / "resource-limits.yaml"), "alerts", "run", "--json", *flags],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def my_events(sandbox):
    path = sandbox / "log" / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event_type"] == "quota.alert" and e.get("user") == USER]


def spool_lines(sandbox):
    path = sandbox / "state" / "notices" / f"{USER}.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def test_alert_at_quota_is_delivered_once_per_cooldown_and_cleared_below(ds01_bin, sandbox, containers):
    first = containers(1)
    containers(2)
    state_file = sandbox / "state" / "quota-alerts" / f"{USER}.json"

    dry = alerts_run(ds01_bin, sandbox, "--dry-run")
    assert [(d["measure"], d["level"]) for d in dry["users"][USER]["delivered"]] == [("containers", 100)]
    assert not state_file.exists() and my_events(sandbox) == [] and spool_lines(sandbox) == []

    report = alerts_run(ds01_bin, sandbox)
    [delivered] = report["users"][USER]["delivered"]
    assert (delivered["measure"], delivered["level"]) == ("containers", 100)
    sentence = delivered["sentence"]
    assert sentence.startswith("Your containers quota reached 100% (2 of 2).") and "docker rm NAME" in sentence
    state = json.loads(state_file.read_text())
    assert state["user"] == USER and list(state["alerts"]) == ["containers"]
    assert (state["alerts"]["containers"]["level"], state["alerts"]["containers"]["used"]) == (100, 2)
    [event] = my_events(sandbox)
    assert event["details"]["measure"] == "containers" and event["details"]["level"] == 100
    assert (event["details"]["used"], event["details"]["limit"]) == (2, 2)
    [notice] = [json.loads(line) for line in spool_lines(sandbox)]
    assert sentence in notice["lines"] and notice["level"] == "ALERT"

    again = alerts_run(ds01_bin, sandbox)
    assert again["users"][USER]["delivered"] == []
    assert [a["level"] for a in again["users"][USER]["alerts"]] == [100]
    assert len(my_events(sandbox)) == 1 and len(spool_lines(sandbox)) == 1
    assert json.loads(state_file.read_text()) == state

    first.remove(force=True)
    cleared = alerts_run(ds01_bin, sandbox)
    assert cleared["users"][USER]["delivered"] == [] and cleared["users"][USER]["alerts"] == []
    assert not state_file.exists(), "a cleared alert leaves nothing to show at login"
    assert len(my_events(sandbox)) == 1 and len(spool_lines(sandbox)) == 1
