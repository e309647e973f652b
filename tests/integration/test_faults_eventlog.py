"""The event log on a real file system that fills up or turns read-only: what it can keep is kept, the rest counted.

The log directory is a real 64 KiB tmpfs (mounted as root). Events are written by the real ``ds01`` CLI in separate
processes and by an in-process ``EventLog``; the state and run directories live on the ordinary disk, as
``/var/lib/ds01`` and ``/run/ds01`` live on other file systems than ``/var/log`` on a host.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import subprocess
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config as config_mod
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import events, exporter, observe, profile

LIMITS = """
defaults:
  max_gpu_equivalents: 1
  max_containers_per_user: 2
default_group: student
groups:
  student:
    members: [alice]
paths:
  state_dir: state
  log_dir: log
  run_dir: run
"""


def _mount_tmpfs(where: str) -> None:
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", where], check=True)


def _unmount(where: str) -> None:
    # remount read-write first: a test that failed half-way may have left it read-only
    subprocess.run(["mount", "-o", "remount,rw", where], check=False, capture_output=True)
    subprocess.run(["umount", where], check=False, capture_output=True)
    if os.path.ismount(where):
        subprocess.run(["umount", "-l", where], check=True)


@pytest.fixture()
def sandbox(tmp_path):
    """A config whose ``log_dir`` is a fresh 64 KiB tmpfs; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root: run the integration tests as root (make test does)")
    (tmp_path / "resource-limits.yaml").write_text(LIMITS)
    for name in ("state", "run"):
        (tmp_path / name).mkdir()
    log_dir = str(tmp_path / "log")
    _mount_tmpfs(log_dir)
    try:
        yield tmp_path
    finally:
        _unmount(log_dir)


def _env(tmp_path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DS01_")}
    env["DS01_CONFIG"] = str(tmp_path / "resource-limits.yaml")
    return env


def _ds01(ds01_bin, tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ds01_bin), *args], env=env or _env(tmp_path), capture_output=True, text=True, timeout=120, check=False
    )


def _log_event(ds01_bin, tmp_path, event_type: str, **details: str) -> subprocess.CompletedProcess:
    pairs = [f"{key}={value}" for key, value in details.items()]
    return _ds01(ds01_bin, tmp_path, "events", "log", event_type, "source=faultcli", *pairs)


def _fill(directory: str) -> str:
    """Fill the file system of ``directory`` with a ballast file; its path."""
    ballast = os.path.join(directory, "ballast")
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                if os.write(fd, b"\0" * 4096) == 0:
                    break
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    finally:
        os.close(fd)
    return ballast


def _events_json(ds01_bin, tmp_path) -> dict:
    proc = _ds01(ds01_bin, tmp_path, "events", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _types(doc: dict) -> list:
    return [event["event_type"] for event in doc["events"]]


def _scrape(config: config_mod.Config) -> dict:
    """``ds01_events_dropped_total`` by writer, as the exporter renders it from a fresh snapshot."""
    cache = exporter.SnapshotCache(lambda previous: observe.build_snapshot(config, previous, persist=False))
    text = exporter.generate_latest(exporter.make_registry(cache)).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ds01_events_dropped_total":
                found[sample.labels["writer"]] = sample.value
    return found


def test_a_full_log_disk_loses_only_what_it_must_and_counts_it(sandbox, ds01_bin):
    config = config_mod.load_config(str(sandbox / "resource-limits.yaml"))
    log_path = events.default_log_path(config)
    assert _log_event(ds01_bin, sandbox, "test.before", n="1").returncode == 0
    assert _log_event(ds01_bin, sandbox, "test.before", n="2").returncode == 0

    ballast = _fill(os.path.dirname(log_path))
    writer = events.EventLog(log_path)
    results = [writer.write("test.full", source="faulttest", n=n, pad="x" * 300) for n in range(12)]
    kept = results.index(False)  # what still fitted into the last page of the log is kept
    assert results == [True] * kept + [False] * (12 - kept)
    lost = 12 - kept
    cli_lost = _log_event(ds01_bin, sandbox, "test.lost", n="cli")
    assert cli_lost.returncode == 0  # a writer never fails its caller
    assert "not recorded" in cli_lost.stderr
    with open(log_path, "rb") as handle:
        cut = handle.read()
    assert not cut.endswith(b"\n"), "the first lost event should have been cut short by the full file system"
    assert writer.dropped == lost
    assert "No space left on device" in writer.last_error

    counters = events.read_drop_counts(events.dropped_dir(config))
    assert counters == {"faulttest": lost, "faultcli": 1}
    stored = json.loads((sandbox / "run" / "events-dropped" / "faulttest.json").read_text())
    assert stored["dropped"] == lost and stored["writer"] == "faulttest"
    assert _scrape(config) == {"faulttest": float(lost), "faultcli": 1.0}

    os.unlink(ballast)
    marker = uuid.uuid4().hex
    assert _log_event(ds01_bin, sandbox, "test.after", marker=marker).returncode == 0
    doc = _events_json(ds01_bin, sandbox)
    assert _types(doc) == ["test.before", "test.before"] + ["test.full"] * kept + ["test.after"]
    assert [event["details"]["n"] for event in doc["events"][2:-1]] == list(range(kept))
    after = doc["events"][-1]
    assert after["details"] == {"marker": marker} and after["source"] == "faultcli"
    with open(log_path, "rb") as handle:
        lines = handle.read().split(b"\n")
    assert lines[-1] == b"" and json.loads(lines[-2])["details"]["marker"] == marker
    # the fragment, on a line of its own: the head of a cut line (the chain header comes first), not an event
    assert lines[-3].startswith(b'{"prev":"')
    with pytest.raises(ValueError):
        json.loads(lines[-3])

    # the next writer after recovery has nothing to repair: one line per event, no blank lines
    assert writer.write("test.after", source="faulttest", n=2)
    with open(log_path, "rb") as handle:
        assert handle.read().count(b"\n\n") == 0
    assert _scrape(config) == {"faulttest": float(lost), "faultcli": 1.0}


def test_a_read_only_log_counts_every_lost_event_and_recovers(sandbox, ds01_bin):
    config = config_mod.load_config(str(sandbox / "resource-limits.yaml"))
    log_path = events.default_log_path(config)
    assert _log_event(ds01_bin, sandbox, "test.before", n="1").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", os.path.dirname(log_path)], check=True)

    writer = events.EventLog(log_path)
    assert [writer.write("test.lost", source="faulttest", n=n) for n in range(5)] == [False] * 5
    assert "Read-only file system" in writer.last_error
    for n in range(2):
        assert _log_event(ds01_bin, sandbox, "test.lost", n=str(n)).returncode == 0
    assert events.read_drop_counts(events.dropped_dir(config)) == {"faulttest": 5, "faultcli": 2}
    assert _scrape(config) == {"faulttest": 5.0, "faultcli": 2.0}

    subprocess.run(["mount", "-o", "remount,rw", os.path.dirname(log_path)], check=True)
    marker = uuid.uuid4().hex
    assert _log_event(ds01_bin, sandbox, "test.after", marker=marker).returncode == 0
    doc = _events_json(ds01_bin, sandbox)
    assert _types(doc) == ["test.before", "test.after"]
    assert doc["events"][-1]["details"] == {"marker": marker}


def test_lifecycle_run_lists_the_events_it_lost(sandbox, ds01_bin, docker_client, empty_image, test_label):
    """A real sweep on the real engine (only this test's container) while the log is read-only."""
    config = config_mod.load_config(str(sandbox / "resource-limits.yaml"))
    log_path = events.default_log_path(config)
    run_label = f"ds01.test.faults={uuid.uuid4().hex}"
    key, value = run_label.split("=")
    container = docker_client.containers.create(
        empty_image,
        command=["/nothing"],
        name=f"faults-{value[:12]}",
        labels={**test_label.labels, key: value, "ds01.user": "alice", "ds01.managed": "true"},
        network_mode="none",
    )
    # a bare-metal grant that has ended: the sweep records its end (an event) before it looks at containers
    now = dt.datetime.now(dt.timezone.utc)
    grants = sandbox / "state" / "bare-metal-grants"
    grants.mkdir()
    (grants / "alice.json").write_text(
        profile.render_grant("alice", "root", now - dt.timedelta(days=2), now - dt.timedelta(hours=1))
    )
    subprocess.run(["mount", "-o", "remount,ro", os.path.dirname(log_path)], check=True)
    try:
        when = (now + dt.timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
        proc = _ds01(ds01_bin, sandbox, "lifecycle", "run", "--json", "--now", when, "--only-label", run_label)
    finally:
        try:
            container.remove(force=True)
        except Exception as exc:  # already removed by the sweep
            assert "No such container" in str(exc) or "404" in str(exc)
    report = json.loads(proc.stdout)
    assert proc.returncode == 3, proc.stderr
    assert [c["name"] for c in report["containers"]] == [container.name]
    removals = [a for c in report["containers"] for a in c["actions"] if a["kind"] == "remove"]
    assert removals, report
    lost = [e for e in report["errors"] if e["step"] == "event"]
    assert any(e["container"] == container.name for e in lost), report["errors"]
    assert any("bare-metal grant" in e["error"] for e in lost), report["errors"]
    assert all("Read-only file system" in e["error"] for e in lost if e["container"]), lost
    assert report["summary"]["errors"] == len(report["errors"])
    counted = events.read_drop_counts(events.dropped_dir(config))["lifecycle"]
    assert counted == len([a for c in report["containers"] for a in c["actions"] if a.get("event")]) + 1
