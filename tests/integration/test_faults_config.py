"""Every command survives a broken config: it runs on the last good one, saved on disk, and says so in one line.

Real ``ds01`` processes on a temporary config directory (as root, as the timers run). The lifecycle sweep is a dry
run scoped by a label no container carries, so nothing on the shared engine is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TOPOLOGY = os.path.abspath(os.path.join(ROOT, "tests", "fixtures", "topology", "whole.yaml"))

LIMITS = """
defaults:
  max_gpu_equivalents: {gpus}
  max_containers_per_user: 3
default_group: student
groups:
  student:
    members: [alice]
paths:
  state_dir: state
  log_dir: log
  run_dir: run
"""
# YAML that parses, with a value the schema refuses
BAD_VALUE = LIMITS.format(gpus=1).replace("max_containers_per_user: 3", "max_containers_per_user: many")
# not YAML at all (the paths block is still intact)
BAD_SYNTAX = LIMITS.format(gpus=1).replace("default_group: student", "default_group: [student")


@pytest.fixture()
def sandbox(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the timers run as root: run the integration tests as root (make test does)")
    for name in ("state", "log", "run"):
        (tmp_path / name).mkdir()
    (tmp_path / "resource-limits.yaml").write_text(LIMITS.format(gpus=1))
    return tmp_path


def _ds01(ds01_bin, sandbox, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DS01_")}
    env.update(DS01_CONFIG=str(sandbox / "resource-limits.yaml"), DS01_GPU_TOPOLOGY=TOPOLOGY)
    return subprocess.run([str(ds01_bin), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _limits(ds01_bin, sandbox) -> tuple:
    proc = _ds01(ds01_bin, sandbox, "limits", "alice", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return doc["gpu"]["quota_gpueq"], doc["containers"]["max"], proc.stderr


def _fallback_line(stderr: str, problem: str) -> str:
    lines = [line for line in stderr.splitlines() if "last good configuration" in line]
    assert len(lines) == 1, stderr
    assert "resource-limits.yaml" in lines[0] and problem in lines[0], lines[0]
    assert "ds01 config check" in lines[0]
    return lines[0]


@pytest.mark.parametrize("broken, problem", [(BAD_VALUE, "max_containers_per_user"), (BAD_SYNTAX, "not valid YAML")])
def test_commands_run_on_the_last_good_config(sandbox, ds01_bin, docker_client, broken, problem):
    config_file = sandbox / "resource-limits.yaml"
    bundle = sandbox / "state" / "last-good-config" / "bundle.json"

    assert _limits(ds01_bin, sandbox)[:2] == (1.0, 3)
    assert bundle.is_file() and oct(bundle.stat().st_mode & 0o777) == "0o644"
    # the last good one is the latest good one
    config_file.write_text(LIMITS.format(gpus=2))
    assert _limits(ds01_bin, sandbox)[:2] == (2.0, 3)

    config_file.write_text(broken)
    check = _ds01(ds01_bin, sandbox, "config", "check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert problem in check.stdout + check.stderr

    gpus, containers, stderr = _limits(ds01_bin, sandbox)
    assert (gpus, containers) == (2.0, 3)
    _fallback_line(stderr, problem)

    status = _ds01(ds01_bin, sandbox, "gpu", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert len(json.loads(status.stdout)["slots"]) == 4
    _fallback_line(status.stderr, problem)

    nobody = f"ds01.test.faults={uuid.uuid4().hex}"
    sweep = _ds01(ds01_bin, sandbox, "lifecycle", "run", "--dry-run", "--json", "--only-label", nobody)
    assert sweep.returncode == 0, sweep.stderr
    report = json.loads(sweep.stdout)
    assert report["dry_run"] is True and report["containers"] == [] and report["errors"] == []
    _fallback_line(sweep.stderr, problem)

    events = _ds01(ds01_bin, sandbox, "events", "--json")
    assert events.returncode == 0, events.stderr
    _fallback_line(events.stderr, problem)

    # a broken file is never saved as the last good one
    assert json.loads(bundle.read_text())["files"]["resource-limits.yaml"] == LIMITS.format(gpus=2)


def test_without_a_saved_config_a_broken_one_still_stops_commands(sandbox, ds01_bin):
    (sandbox / "resource-limits.yaml").write_text(BAD_VALUE)
    proc = _ds01(ds01_bin, sandbox, "limits", "alice", "--json")
    assert proc.returncode == 2
    assert "max_containers_per_user" in proc.stderr and "ds01 config check" in proc.stderr
    assert not (sandbox / "state" / "last-good-config").exists()


def test_a_bundle_others_may_write_is_not_trusted(sandbox, ds01_bin):
    assert _limits(ds01_bin, sandbox)[:2] == (1.0, 3)
    bundle = sandbox / "state" / "last-good-config" / "bundle.json"
    os.chmod(bundle, 0o666)
    (sandbox / "resource-limits.yaml").write_text(BAD_VALUE)
    proc = _ds01(ds01_bin, sandbox, "limits", "alice", "--json")
    assert proc.returncode == 2, proc.stdout
    assert "writable by no one else" in proc.stderr
