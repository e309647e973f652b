"""The GPU inventory: topology files, the weight function, and the NVML backend on a stand-in pynvml."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import gpu

TOPO = Path(__file__).resolve().parents[4] / "fixtures" / "topology"


def test_demo_topology_slots_and_capacity():
    inv = gpu.read_inventory(str(TOPO / "demo.yaml"))
    assert [s.slot_id for s in inv.slots()] == ["0", "1", "2.0", "2.1", "2.2", "2.3"] + [f"3.{i}" for i in range(7)]
    assert inv.slot("2.1").profile == "2g.10gb" and inv.slot("2.1").gpu_instance_id == 5
    assert inv.slot("2.1").gpu_uuid == "GPU-22222222-2222-4222-8222-222222222222"
    assert inv.capacity_gpueq() == pytest.approx(4.0)
    assert [p.slot_id for p in inv.mig_parents()] == ["2", "3"]
    assert inv.unusable_gpus() == []


def test_mig_gpu_without_instances_is_not_allocatable():
    inv = gpu.read_inventory(str(TOPO / "mig-empty.yaml"))
    assert [s.slot_id for s in inv.slots()] == ["0"]
    assert [g.index for g in inv.unusable_gpus()] == [1]
    assert inv.resolve("1").mig_parent  # a container may still name it


@pytest.mark.parametrize(
    ("profile", "weight"),
    [
        ("1g.10gb", 1 / 7),
        ("1g.5gb", 1 / 7),
        ("1g.10gb+me", 1 / 7),
        ("2g.20gb", 2 / 7),
        ("3g.40gb", 3 / 7),
        ("4g.20gb", 4 / 7),
        ("7g.80gb", 1.0),
        ("1c.3g.20gb", 1 / 7),
    ],
)
def test_gpueq_of_mig_profiles(profile, weight):
    slot = gpu.Slot("0.0", 0, "MIG-x", gpu.KIND_MIG, "A100", profile=profile)
    assert gpu.gpueq(slot) == pytest.approx(weight)
    assert gpu.gpueq(slot) > 0


def test_gpueq_of_whole_gpus_and_combinations():
    inv = gpu.read_inventory(str(TOPO / "demo.yaml"))
    assert gpu.gpueq(inv.slot("0")) == 1.0
    assert inv.slot("0").gpueq + inv.slot("1").gpueq == 2.0
    assert inv.slot("2.2").gpueq + inv.slot("2.0").gpueq == pytest.approx(4 / 7)
    assert inv.slot("0").gpueq + inv.slot("3.0").gpueq == pytest.approx(1 + 1 / 7)


def test_a_mig_slot_with_an_unreadable_profile_never_weighs_zero():
    with pytest.raises(ValueError, match="not a MIG profile"):
        gpu.gpueq(gpu.Slot("0.0", 0, "MIG-x", gpu.KIND_MIG, "A100", profile="mystery"))


@pytest.mark.parametrize(
    ("device_id", "slot_id"),
    [
        ("GPU-11111111-1111-4111-8111-111111111111", "1"),
        ("gpu-11111111-1111-4111-8111-111111111111", "1"),
        ("MIG-33333333-0004-4000-8000-000000000000", "3.4"),
        ("0", "0"),
        ("2.3", "2.3"),
        ("2:3", "2.3"),
        ("3", "3"),
    ],
)
def test_resolve_device_ids(device_id, slot_id):
    inv = gpu.read_inventory(str(TOPO / "demo.yaml"))
    assert inv.resolve(device_id).slot_id == slot_id


def test_fake_processes_and_utilisation():
    inv = gpu.read_inventory(str(TOPO / "activity.yaml"))
    procs = inv.compute_processes()
    assert [(p.pid, p.slot, p.uuid, p.used_memory_mib) for p in procs] == [
        (1234, "0", "GPU-d0d0d0d0-0000-4000-8000-000000000000", 100),
        (1240, "0", "GPU-d0d0d0d0-0000-4000-8000-000000000000", 2048),
        (2001, "1.0", "MIG-d1d1d1d1-0000-4000-8000-000000000000", 512),
    ]
    assert procs[2].gpu_uuid == "GPU-d1d1d1d1-0000-4000-8000-000000000000"
    assert inv.utilization("GPU-d0d0d0d0-0000-4000-8000-000000000000") == 37.0
    assert inv.utilization("MIG-d1d1d1d1-0000-4000-8000-000000000000") is None
    assert inv.utilization("MIG-d1d1d1d1-0001-4000-8000-000000000000") == 0.0
    with pytest.raises(LookupError):
        inv.utilization("GPU-not-here")


def test_fake_backend_rereads_the_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("gpus:\n  - {index: 0, uuid: GPU-a, name: X, utilization_gpu: 5}\n")
    inv = gpu.read_inventory(str(path))
    path.write_text("gpus:\n  - {index: 0, uuid: GPU-a, name: X, utilization_gpu: 90, processes: [{pid: 7}]}\n")
    assert inv.utilization("GPU-a") == 90.0
    assert [p.pid for p in inv.compute_processes()] == [7]


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("gpus: 3\n", "a list 'gpus'"),
        ("gpus:\n  - {uuid: GPU-a}\n", "has no 'index'"),
        ("gpus:\n  - {index: 0, uuid: abc}\n", "starting with 'GPU-'"),
        ("gpus:\n  - {index: 0, uuid: GPU-a}\n  - {index: 0, uuid: GPU-b}\n", "appears twice"),
        ("gpus:\n  - {index: 0, uuid: GPU-a, instances: [{profile: 1g.5gb, uuid: MIG-a}]}\n", "mig: true"),
        (
            "gpus:\n  - {index: 0, uuid: GPU-a, mig: true, instances: [{profile: big, uuid: MIG-a}]}\n",
            "not a MIG profile",
        ),
        ("gpus:\n  - {index: 0, uuid: GPU-a, mig: true, instances: [{profile: 1g.5gb, uuid: GPU-b}]}\n", "'MIG-'"),
        ("gpus: [\n", "not valid YAML"),
    ],
)
def test_bad_topology_files_are_a_sentence(tmp_path, text, phrase):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(gpu.GpuInventoryError, match=phrase) as caught:
        gpu.read_inventory(str(path))
    assert str(path) in str(caught.value)


def test_missing_topology_file(tmp_path):
    with pytest.raises(gpu.GpuInventoryError, match="cannot read the GPU topology file"):
        gpu.read_inventory(str(tmp_path / "absent.yaml"))


class _Section:
    def __init__(self, values):
        self.values = values

    def section(self, name):
        assert name == "gpu_allocation"
        return self.values


def test_backend_selection(monkeypatch):
    monkeypatch.delenv(gpu.TOPOLOGY_ENV, raising=False)
    demo = str(TOPO / "demo.yaml")
    assert gpu.topology_path(None) is None
    assert gpu.topology_path(_Section({"backend": "nvml", "topology": demo})) is None
    assert gpu.topology_path(_Section({"backend": "fake", "topology": demo})) == demo
    monkeypatch.setenv(gpu.TOPOLOGY_ENV, str(TOPO / "whole.yaml"))
    assert gpu.topology_path(_Section({"backend": "fake", "topology": demo})).endswith("whole.yaml")
    inv = gpu.inventory_from_config(_Section({"backend": "nvml", "topology": None}))
    assert inv.source.startswith("fake:") and len(inv.slots()) == 4
    assert [p.pid for p in gpu.compute_processes(None)] == []


# -- NVML backend on a stand-in pynvml --------------------------------------------------------------


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_NotFound(NVMLError):
    pass


class FakeNvml:
    """GPU 0 whole (no MIG support), GPU 1 in MIG mode with devices at indices 0 and 2 (1 is a gap)."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NotFound = NVMLError_NotFound
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, fail_init=False):
        self.fail_init = fail_init
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self):
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetUUID(self, h):
        return {("gpu", 0): b"GPU-n0", ("gpu", 1): b"GPU-n1", ("mig", 1, 0): "MIG-n1-0", ("mig", 1, 2): "MIG-n1-2"}[h]

    def nvmlDeviceGetName(self, h):
        if h[0] == "gpu":
            return b"NVIDIA H100 80GB HBM3"
        return "NVIDIA H100 80GB HBM3 MIG 3g.40gb" if h[2] == 0 else "NVIDIA H100 80GB HBM3 MIG"

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=80 * 1024**3)

    def nvmlDeviceGetMigMode(self, h):
        if h == ("gpu", 0):
            raise NVMLError_NotSupported("Not Supported")
        return (1, 1)

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 3

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, n):
        if n == 1:
            raise NVMLError_NotFound("Not Found")
        return ("mig", h[1], n)

    def nvmlDeviceGetAttributes(self, h):
        if h[2] == 0:
            return types.SimpleNamespace(gpuInstanceSliceCount=3, computeInstanceSliceCount=3, memorySizeMB=40448)
        return types.SimpleNamespace(gpuInstanceSliceCount=2, computeInstanceSliceCount=1, memorySizeMB=20224)

    def nvmlDeviceGetGpuInstanceId(self, h):
        return 2 if h[2] == 0 else 5

    def nvmlDeviceGetComputeInstanceId(self, h):
        return 0

    def nvmlDeviceGetUtilizationRates(self, h):
        if h[0] == "mig":
            raise NVMLError_NotSupported("Not Supported")
        return types.SimpleNamespace(gpu=42)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        if h == ("gpu", 0):
            return [types.SimpleNamespace(pid=10, usedGpuMemory=512 * 1024**2)]
        if h == ("mig", 1, 2):
            return [types.SimpleNamespace(pid=11, usedGpuMemory=None)]
        return []


def test_nvml_backend_lists_gpus_and_mig_devices():
    nvml = FakeNvml()
    inv = gpu.read_inventory(nvml=nvml)
    assert [s.slot_id for s in inv.slots()] == ["0", "1.0", "1.2"]
    whole, big, small = inv.slots()
    assert (whole.uuid, whole.memory_mib, whole.kind) == ("GPU-n0", 81920, "gpu")
    assert (big.uuid, big.profile, big.compute_slices, big.gpu_instance_id) == ("MIG-n1-0", "3g.40gb", 3, 2)
    assert (small.profile, small.compute_slices) == ("1c.2g.20gb", 1)  # rebuilt from attributes
    assert small.gpueq == pytest.approx(1 / 7)
    assert nvml.inits == nvml.shutdowns == 1


def test_nvml_processes_and_utilisation():
    nvml = FakeNvml()
    inv = gpu.read_inventory(nvml=nvml)
    procs = inv.compute_processes()
    assert [(p.pid, p.slot, p.uuid, p.used_memory_mib) for p in procs] == [
        (10, "0", "GPU-n0", 512),
        (11, "1.2", "MIG-n1-2", None),
    ]
    assert inv.utilization("GPU-n0") == 42.0
    assert inv.utilization("MIG-n1-0") is None  # NVML does not report MIG utilisation
    assert nvml.inits == nvml.shutdowns


def test_nvml_errors_become_a_sentence():
    with pytest.raises(gpu.GpuInventoryError, match=r"NVML could not start .*Driver Not Loaded.*nvidia-smi"):
        gpu.read_inventory(nvml=FakeNvml(fail_init=True))


def test_nvml_missing_binding_is_a_sentence(monkeypatch):
    monkeypatch.setattr(gpu, "pynvml", None)
    with pytest.raises(gpu.GpuInventoryError, match="nvidia-ml-py"):
        gpu.NvmlBackend()


def test_real_pynvml_without_a_driver_is_a_sentence():
    pytest.importorskip("pynvml")
    try:
        gpu.read_inventory()
    except gpu.GpuInventoryError as exc:
        assert "NVML could not" in str(exc)
    # on a machine with a GPU the read simply succeeds
