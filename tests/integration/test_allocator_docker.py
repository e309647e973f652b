"""The allocator on the real Docker engine: holdings read back from real containers.

GPUs are fake (a topology file with UUIDs made up for this session, so other sessions on the same
engine never hold them); the containers are real: created with real DeviceRequests naming those
UUIDs (``docker create --gpus device=…``), or, for the legacy paths, started and exited with the
``ds01.gpu.uuids`` label or an ``NVIDIA_VISIBLE_DEVICES`` of UUIDs. Every container carries the
session label and network mode none; the session removes them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import allocator, config, gpu, record
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import docker as docker_state
from ansible_collections.ds01.infra.plugins.module_utils.ds01.allocator import Request

docker = pytest.importorskip("docker")
pytestmark = [pytest.mark.docker]

LAB = Path(__file__).resolve().parent.parent / "fixtures" / "lab" / "resource-limits.yaml"


def write_topology(path: Path, mig_gpus: int = 2, whole_gpus: int = 2) -> Path:
    """The demo shape (whole GPUs, then MIG GPUs of 7x 1g.5gb) with this session's own UUIDs."""
    tag = uuid.uuid4().hex
    lines = ["gpus:"]
    for i in range(whole_gpus + mig_gpus):
        lines.append(
            f"  - index: {i}\n    uuid: GPU-{tag[:8]}-{i:04d}-4000-8000-{tag[8:20]}\n    name: NVIDIA A100-SXM4-40GB"
        )
        if i >= whole_gpus:
            lines.append("    mig: true\n    instances:")
            lines += [
                f"      - {{profile: 1g.5gb, uuid: MIG-{tag[:8]}-{i:04d}-{n:04d}-8000-{tag[8:20]}}}" for n in range(7)
            ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def inventory(tmp_path):
    return gpu.read_inventory(str(write_topology(tmp_path / "topology.yaml")))


@pytest.fixture
def users():
    tag = uuid.uuid4().hex[:8]
    return {"alice": f"alice-{tag}", "bob": f"bob-{tag}"}


def _holdings(client, inventory):
    return docker_state.list_containers(client, inventory)


def _by_name(holdings, name):
    return next(c for c in holdings if c.name == name)


def _cli_create(test_label, name, *args):
    cmd = ["docker", "create", "--network", "none", "--label", str(test_label), "--name", name, *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_created_containers_hold_their_device_requests(docker_client, empty_image, test_label, inventory, users):
    whole, mig = inventory.slot("0"), inventory.slot("2.3")
    name_a = f"alloc-a-{uuid.uuid4().hex[:6]}"
    _cli_create(
        test_label,
        name_a,
        "--gpus",
        f"device={whole.uuid}",
        "--label",
        f"ds01.user={users['alice']}",
        empty_image,
        "true",
    )
    name_b = f"alloc-b-{uuid.uuid4().hex[:6]}"
    docker_client.containers.create(
        empty_image,
        command=["true"],
        name=name_b,
        network_mode="none",
        labels={**test_label.labels, "ds01.user": users["bob"]},
        device_requests=[docker.types.DeviceRequest(device_ids=[mig.uuid], capabilities=[["gpu"]])],
    )
    holdings = _holdings(docker_client, inventory)
    a, b = _by_name(holdings, name_a), _by_name(holdings, name_b)
    assert (a.state, a.owner, a.owner_method, a.slots, a.uuids) == (
        "created",
        users["alice"],
        "ds01.user",
        ("0",),
        (whole.uuid,),
    )
    assert (b.slots, b.owner, b.gpu.source) == (("2.3",), users["bob"], "device_requests")
    # The decision sees them: bob may not have 2.3 again, alice's whole GPU counts 1.0 against her.
    refused = allocator.decide(inventory, holdings, config.safe_limits(users["bob"]), Request(device_ids=("2.3",)))
    assert refused.code == "NO_GPU_AVAILABLE" and f"your container {name_b}" in refused.sentence
    usage = allocator.user_usage(inventory, holdings, users["alice"])
    assert usage.gpueq == 1.0 and usage.holder_names == [name_a]


def test_exited_legacy_containers_hold_through_label_and_env(docker_client, runnable_image, test_label, inventory):
    label_slot, env_slot = inventory.slot("3.0"), inventory.slot("3.1")
    names = {}
    for key, extra in (
        ("label", {"labels": {"ds01.gpu.uuids": label_slot.uuid}}),
        ("env", {"environment": {"NVIDIA_VISIBLE_DEVICES": env_slot.uuid}}),
    ):
        name = f"alloc-{key}-{uuid.uuid4().hex[:6]}"
        labels = {**test_label.labels, "aime.mlc.USER": "legacy-user", **extra.pop("labels", {})}
        container = docker_client.containers.run(
            runnable_image, ["true"], name=name, network_mode="none", detach=True, labels=labels, **extra
        )
        container.wait(timeout=60)
        names[key] = name
    holdings = _holdings(docker_client, inventory)
    by_label, by_env = _by_name(holdings, names["label"]), _by_name(holdings, names["env"])
    assert (by_label.state, by_label.slots, by_label.gpu.source) == ("exited", ("3.0",), "label")
    assert (by_env.state, by_env.slots, by_env.gpu.source) == ("exited", ("3.1",), "env")
    assert by_label.owner == "legacy-user" and by_label.owner_method == "aime.mlc.USER"
    assert by_env.started_at is None  # not asked for detail
    detailed = _by_name(docker_state.list_containers(docker_client, inventory, detail=True), names["env"])
    assert detailed.started_at is not None and detailed.finished_at is not None  # Docker may order them oddly


def test_removing_the_container_frees_the_slot(docker_client, empty_image, test_label, inventory, users):
    slot = inventory.slot("2.0")
    container = docker_client.containers.create(
        empty_image,
        command=["true"],
        network_mode="none",
        labels={**test_label.labels, "ds01.user": users["bob"]},
        device_requests=[docker.types.DeviceRequest(device_ids=[slot.uuid], capabilities=[["gpu"]])],
    )
    alice = config.safe_limits(users["alice"])
    before = allocator.decide(inventory, _holdings(docker_client, inventory), alice, Request(device_ids=(slot.uuid,)))
    assert before.code == "NO_GPU_AVAILABLE" and "another container" in before.sentence
    container.remove(force=True)
    after = allocator.decide(inventory, _holdings(docker_client, inventory), alice, Request(device_ids=(slot.uuid,)))
    assert isinstance(after, allocator.Grant) and after.slots == ("2.0",)


def test_owner_from_aime_name(docker_client, empty_image, test_label, inventory):
    name = f"project-{uuid.uuid4().hex[:6]}._.65534"  # nobody
    docker_client.containers.create(
        empty_image, command=["true"], name=name, network_mode="none", labels=test_label.labels
    )
    info = _by_name(_holdings(docker_client, inventory), name)
    assert (info.owner, info.owner_method) == ("nobody", "name_uid")


def test_reserve_create_and_read_back(docker_client, empty_image, test_label, inventory, users, tmp_path):
    """The whole path: reserve → create with the grant's labels and DeviceRequest → status → mapping."""
    # safe defaults (1.0 gpueq, no whole GPU) with room for several slots per container
    limits = record.replace(config.safe_limits(users["alice"]), max_gpu_slots_per_container=8)
    name = f"alloc-res-{uuid.uuid4().hex[:6]}"
    mapping = tmp_path / "dcgm"
    with allocator.reserve(
        users["alice"],
        Request(count=2, container=name),
        limits=limits,
        inventory=inventory,
        client=docker_client,
        lock_path=str(tmp_path / "run" / "gpu-allocator.lock"),
        lock_timeout_s=5,
        mapping_dir=str(mapping),
    ) as grant:
        docker_client.api.create_container(
            empty_image,
            command=["true"],
            name=name,
            labels={**test_label.labels, "ds01.user": users["alice"], **allocator.grant_labels(grant)},
            host_config=docker_client.api.create_host_config(
                network_mode="none", device_requests=[allocator.device_request(grant)]
            ),
        )
    info = _by_name(_holdings(docker_client, inventory), name)
    assert info.slots == grant.slots == ("2.0", "2.1") and info.labels["ds01.gpu.slots"] == "2.0,2.1"
    assert (mapping / "2").read_text().splitlines() == [f"{users['alice']}/{name}"]
    # Her 2/7 + 6 more 1g slices would pass 1.0: the next request for 6 is refused with her container named.
    with (
        pytest.raises(allocator.AllocationRefused) as caught,
        allocator.reserve(
            users["alice"],
            Request(count=6),
            limits=limits,
            inventory=inventory,
            client=docker_client,
            lock_path=str(tmp_path / "run" / "gpu-allocator.lock"),
            lock_timeout_s=5,
        ),
    ):
        pytest.fail("granted above the quota")
    assert caught.value.code == "USER_AT_LIMIT" and name in caught.value.sentence


def test_cli_status_plan_users(docker_client, empty_image, test_label, inventory, users, ds01_bin, tmp_path):
    slot = inventory.slot("1")
    name = f"alloc-cli-{uuid.uuid4().hex[:6]}"
    docker_client.containers.create(
        empty_image,
        command=["true"],
        name=name,
        network_mode="none",
        labels={**test_label.labels, "ds01.user": users["bob"]},
        device_requests=[docker.types.DeviceRequest(device_ids=[slot.uuid], capabilities=[["gpu"]])],
    )
    env = {**os.environ, "DS01_GPU_TOPOLOGY": inventory.source.split(":", 1)[1]}

    def ds01(*args):
        return subprocess.run(
            [str(ds01_bin), "--config", str(LAB), "gpu", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    status = ds01("status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    row = next(s for s in doc["slots"] if s["slot"] == "1")
    assert (row["free"], row["container"], row["user"], row["kind"], row["gpueq"]) == (
        False,
        name,
        users["bob"],
        "gpu",
        1.0,
    )
    assert doc["total_slots"] == 16 and doc["capacity_gpueq"] == pytest.approx(4.0)

    granted = ds01("plan", users["alice"], "--json")
    assert granted.returncode == 0 and json.loads(granted.stdout)["grant"]["slots"] == ["0"]
    refused = ds01("plan", users["alice"], "--device", slot.uuid, "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["refusal"]["code"] == "NO_GPU_AVAILABLE"
    text = ds01("plan", users["alice"], "--count", "3")
    assert text.returncode == 1 and text.stdout.startswith("EXCEEDS_CONTAINER_LIMIT: ")

    usage = ds01("users", "--json")
    assert usage.returncode == 0, usage.stderr
    bob = next(u for u in json.loads(usage.stdout)["users"] if u["user"] == users["bob"])
    assert (bob["gpueq"], bob["gpu_containers"], bob["group"], bob["gpu_quota"]) == (1.0, [name], "student", 2.0)
