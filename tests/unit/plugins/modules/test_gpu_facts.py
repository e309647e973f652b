"""ds01.infra.gpu_facts: GPU and MIG topology as facts, through the inventory the allocator uses."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ds01.infra.plugins.modules import gpu_facts

TOPOLOGY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "topology")


def test_demo_topology_facts(run_module):
    result = run_module(gpu_facts, {"topology": os.path.join(TOPOLOGY, "demo.yaml")}, check=True)
    assert result["changed"] is False
    facts = result["ansible_facts"]
    assert facts["ds01_gpu_backend"] == "fake"
    gpus = facts["ds01_gpus"]
    assert [g["index"] for g in gpus] == sorted(g["index"] for g in gpus)
    whole = [g for g in gpus if not g["mig"]]
    mig = [g for g in gpus if g["mig"]]
    assert whole and mig
    for record in whole:
        assert record["slots"] == [str(record["index"])] and record["gpueq"] == 1.0 and record["instances"] == []
    for record in mig:
        assert record["slots"] == [i["slot"] for i in record["instances"]]
        assert all(slot.startswith(f"{record['index']}.") for slot in record["slots"])
        # the one GPU weight: compute slices / 7, summed over the instances
        expected = sum(int(i["profile"].split("g.")[0][-1]) / 7 for i in record["instances"])
        assert record["gpueq"] == pytest.approx(expected, abs=1e-3)


def test_mig_gpu_without_instances_offers_no_slot(run_module):
    result = run_module(gpu_facts, {"topology": os.path.join(TOPOLOGY, "mig-empty.yaml")}, check=True)
    empty = [g for g in result["ansible_facts"]["ds01_gpus"] if g["mig"] and not g["instances"]]
    assert empty and all(g["slots"] == [] and g["gpueq"] == 0 for g in empty)


def test_unreadable_topology_is_a_module_failure_with_a_sentence(run_module, tmp_path):
    result = run_module(gpu_facts, {"topology": str(tmp_path / "missing.yaml")}, fails=True)
    assert "cannot read the GPU" in result["msg"] and "missing.yaml" in result["msg"]


def test_without_nvidia_driver_nvml_fails_clearly(run_module, monkeypatch):
    monkeypatch.delenv("DS01_GPU_TOPOLOGY", raising=False)
    result = run_module(gpu_facts, {}, fails=True)
    assert result["msg"].startswith("cannot read the GPU inventory:")


def test_missing_inventory_module_fails_clearly(run_module, monkeypatch):
    monkeypatch.setattr(gpu_facts, "gpu", None)
    monkeypatch.setattr(gpu_facts, "GPU_IMPORT_ERROR", ImportError("No module named yaml"))
    result = run_module(gpu_facts, {}, fails=True)
    assert "gpu.py" in result["msg"]
