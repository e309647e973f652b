"""The exporter renders a known snapshot into metrics Prometheus and promtool accept."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import exporter


def _snapshot(_previous):
    snap = exporter.empty_snapshot()
    snap["slots"] = [
        {
            "gpu": 0,
            "slot": "0",
            "uuid": "GPU-0",
            "kind": "gpu",
            "profile": None,
            "gpueq": 1.0,
            "container": "train",
            "user": "alice",
            "holders": 2,  # a double booking (observe.assign_holders counts every holder)
        },
        {"gpu": 2, "slot": "2.0", "uuid": "MIG-a", "kind": "mig", "profile": "3g.20gb", "gpueq": 3 / 7},
        {
            "gpu": 2,
            "slot": "2.1",
            "uuid": "MIG-b",
            "kind": "mig",
            "profile": "1g.5gb",
            "gpueq": 1 / 7,
            "container": "nb",
            "user": "bob",
        },
    ]
    snap["containers"] = [
        {"name": "train", "state": "running", "type": "docker", "user": "alice"},
        {"name": "nb", "state": "exited", "type": "devcontainer", "user": "bob"},
        {"name": "rogue", "state": "running", "type": "docker", "user": "carol", "unmanaged_gpu": True},
    ]
    snap["users"] = {
        "alice": {
            "group": "student",
            "gpueq": 1.0,
            "slots": 1,
            "containers": 1,
            "gpu_quota": 2.0,
            "container_quota": 3,
        },
        "bob": {
            "group": "admin",
            "gpueq": 1 / 7,
            "slots": 1,
            "containers": 1,
            "gpu_quota": None,
            "container_quota": None,
        },
    }
    snap["events_24h"] = {"gpu.allocate": 4, "gpu.reject": 1}
    snap["refusals_24h"] = {"USER_AT_LIMIT": 1}
    snap["components"] = {"detector": {"last_run": 1_700_000_000.0}}
    snap["slices"] = {
        "alice": {
            "group": "student",
            "memory_current": 1024,
            "memory_max": 4096,
            "cpu_usage_seconds": 12.5,
            "tasks_current": 3,
            "oom_kills": 1,
            "psi": {"memory": {"some": {"avg10": 25.0, "avg60": 10.0, "avg300": 1.0, "total": 5.0}}},
        }
    }
    snap["gateway"] = {
        "requests": {"forwarded": 10, "refused": 2},
        "latency": {"buckets": [[0.01, 8], [0.1, 12], ["+Inf", 12]], "sum": 0.3},
    }
    return snap


@pytest.fixture
def text():
    cache = exporter.SnapshotCache(_snapshot, cache_s=60)
    return generate_latest(exporter.make_registry(cache)).decode()


def _samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_values_parse_back(text):
    s = _samples(text)
    assert s[("ds01_gpu_capacity_gpueq", ())] == pytest.approx(1 + 4 / 7)
    assert s[("ds01_gpu_allocated_gpueq", ())] == pytest.approx(1 + 1 / 7)
    assert s[("ds01_gpu_slot_allocated", (("container", "nb"), ("slot", "2.1"), ("user", "bob")))] == 1
    assert s[("ds01_gpu_slot_holders", (("slot", "0"),))] == 2 and s[("ds01_gpu_slot_holders", (("slot", "2.0"),))] == 0
    assert s[("ds01_gpu_slot_holders", (("slot", "2.1"),))] == 1
    assert s[("ds01_user_gpu_quota_gpueq", (("group", "student"), ("user", "alice")))] == 2.0
    # unlimited quota: no sample, so usage/quota is simply absent for bob
    assert ("ds01_user_gpu_quota_gpueq", (("group", "admin"), ("user", "bob"))) not in s
    assert s[("ds01_unmanaged_gpu_containers", ())] == 1
    assert s[("ds01_containers", (("state", "exited"), ("type", "devcontainer")))] == 1
    assert s[("ds01_user_oom_kills_total", (("group", "student"), ("user", "alice")))] == 1
    key = (
        "ds01_user_pressure_ratio",
        (("group", "student"), ("kind", "some"), ("resource", "memory"), ("user", "alice"), ("window", "avg10")),
    )
    assert s[key] == 0.25
    assert s[("ds01_gateway_requests_total", (("outcome", "refused"),))] == 2
    assert s[("ds01_gateway_request_seconds_count", ())] == 12
    assert s[("ds01_detector_last_run_timestamp_seconds", ())] == 1_700_000_000.0


def test_promtool_accepts_the_metrics(text):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make test` (Debian's prometheus package)"
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_failing_refresh_keeps_the_last_snapshot():
    calls = []

    def build(previous):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("docker is down")
        return _snapshot(previous)

    cache = exporter.SnapshotCache(build, cache_s=0)
    first = cache.get()
    time.sleep(0.01)
    assert cache.get() is first
    assert cache.errors == {"exporter": 1}
