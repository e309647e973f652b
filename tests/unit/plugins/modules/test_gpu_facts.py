"""ds01.infra.gpu_facts: the fact shape, and the module over a stand-in GPU inventory."""

from __future__ import annotations

import types

import pytest

from ansible_collections.ds01.infra.plugins.modules import gpu_facts

WHOLE = {"index": 0, "uuid": "GPU-0000", "name": "NVIDIA A100-SXM4-40GB", "memory_mib": 40960}
MIG = {
    "index": 1,
    "uuid": "GPU-1111",
    "name": "NVIDIA A100-SXM4-40GB",
    "memory_mib": 40960,
    "mig": True,
    "instances": [{"profile": "3g.20gb", "uuid": "MIG-aaaa"}, {"profile": "2g.10gb", "uuid": "MIG-bbbb"}],
}


@pytest.mark.parametrize(
    ("profile", "gpueq"),
    [("1g.5gb", 0.1429), ("2g.10gb", 0.2857), ("3g.20gb", 0.4286), ("7g.40gb", 1.0), ("", None), ("weird", None)],
)
def test_profile_gpueq(profile, gpueq):
    assert gpu_facts.profile_gpueq(profile) == gpueq


@pytest.mark.parametrize(
    ("record", "slots", "gpueq", "instance_slots"),
    [
        (WHOLE, ["0"], 1.0, []),
        (MIG, ["1.0", "1.1"], 0.7143, ["1.0", "1.1"]),
        ({**MIG, "instances": []}, [], 0.0, []),  # MIG on, no instances: nothing to allocate
        (types.SimpleNamespace(index=2, uuid="GPU-2", name="x", memory_mib=1, mig=False, instances=()), ["2"], 1.0, []),
        (
            {**MIG, "instances": [{"profile": "1g.5gb", "uuid": "M", "slot": "1.4", "gpueq": 0.15}]},
            ["1.4"],
            0.15,
            ["1.4"],
        ),
    ],
)
def test_gpu_fact(record, slots, gpueq, instance_slots):
    fact = gpu_facts.gpu_fact(record)
    assert fact["slots"] == slots and fact["gpueq"] == gpueq
    assert [i["slot"] for i in fact["instances"]] == instance_slots


def test_module_reads_the_fake_backend(run_module, monkeypatch, tmp_path):
    seen = []

    def fake_inventory(path):
        seen.append(path)
        return types.SimpleNamespace(gpus=lambda: [MIG, WHOLE])

    monkeypatch.setattr(gpu_facts, "gpu", types.SimpleNamespace(fake_inventory=fake_inventory))
    topology = str(tmp_path / "topology.yaml")
    result = run_module(gpu_facts, {"topology": topology}, check=True)
    assert seen == [topology] and result["changed"] is False
    facts = result["ansible_facts"]
    assert facts["ds01_gpu_backend"] == "fake"
    assert [g["index"] for g in facts["ds01_gpus"]] == [0, 1]
    assert facts["ds01_gpus"][1]["instances"][0] == {
        "slot": "1.0",
        "uuid": "MIG-aaaa",
        "profile": "3g.20gb",
        "gpueq": 0.4286,
    }


def test_backend_failure_is_a_module_failure(run_module, monkeypatch):
    def broken():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(gpu_facts, "gpu", types.SimpleNamespace(nvml_inventory=broken))
    result = run_module(gpu_facts, {}, fails=True)
    assert "NVML Shared Library Not Found" in result["msg"]


def test_missing_inventory_module_fails_clearly(run_module, monkeypatch):
    monkeypatch.setattr(gpu_facts, "gpu", None)
    monkeypatch.setattr(gpu_facts, "GPU_IMPORT_ERROR", ImportError("No module named gpu"))
    result = run_module(gpu_facts, {}, fails=True)
    assert "gpu.py" in result["msg"]
