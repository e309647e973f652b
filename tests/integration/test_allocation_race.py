"""200 concurrent reserve-and-create attempts for 28 free slots, on the real Docker engine.

Separate processes (a fork pool of 16 workers) each run ``reserve()`` and ``docker create`` inside
the reservation, as the gateway does. Users have no quota, so the only thing standing between a
request and a slot is the lock: exactly 28 containers must hold slots, no slot twice, and the
other 172 get a clear NO_GPU_AVAILABLE sentence (upstream released its lock before the create and
could hand one slot to two containers: reference §13 #10).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import allocator, config, gpu, record
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import docker as docker_state

docker = pytest.importorskip("docker")
pytestmark = [pytest.mark.docker, pytest.mark.slow]

ATTEMPTS = 200
WORKERS = 16
SLOTS = 28  # 4 GPUs in MIG mode, 7x 1g.5gb each

_STATE: dict = {}


def _topology(path: Path) -> Path:
    tag = uuid.uuid4().hex
    lines = ["gpus:"]
    for i in range(4):
        lines.append(f"  - {{index: {i}, uuid: GPU-{tag[:8]}-{i:04d}-4000-8000-{tag[8:20]}, name: A100, mig: true,")
        items = ", ".join(
            f"{{profile: 1g.5gb, uuid: MIG-{tag[:8]}-{i:04d}-{n:04d}-8000-{tag[8:20]}}}" for n in range(7)
        )
        lines.append(f"     instances: [{items}]}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _init(topology: str, lock_path: str, mapping_dir: str, labels: dict, image: str) -> None:
    logging_quiet()
    _STATE.update(
        client=docker.from_env(timeout=120),
        inventory=gpu.read_inventory(topology),
        cache=docker_state.InspectCache(),
        lock_path=lock_path,
        mapping_dir=mapping_dir,
        labels=labels,
        image=image,
    )


def logging_quiet() -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # safe_limits warns once per resolve


def _attempt(i: int) -> tuple:
    user = f"racer{i % 25}"
    limits = record.replace(
        config.safe_limits(user),
        max_gpu_equivalents=None,
        max_containers_per_user=None,
        max_gpu_slots_per_container=None,
    )
    name = f"race-{_STATE['labels']['ds01.test'][:8]}-{i:03d}"
    client = _STATE["client"]
    started = time.monotonic()
    try:
        with allocator.reserve(
            user,
            allocator.Request(count=1, container=name),
            limits=limits,
            inventory=_STATE["inventory"],
            client=client,
            lock_path=_STATE["lock_path"],
            lock_timeout_s=90,
            cache=_STATE["cache"],
            mapping_dir=_STATE["mapping_dir"],
        ) as grant:
            client.api.create_container(
                _STATE["image"],
                command=["true"],
                name=name,
                labels={**_STATE["labels"], "ds01.user": user, **allocator.grant_labels(grant)},
                host_config=client.api.create_host_config(
                    network_mode="none", device_requests=[allocator.device_request(grant)]
                ),
            )
    except allocator.AllocationRefused as exc:
        return ("refused", exc.code, exc.sentence, time.monotonic() - started)
    return ("granted", grant.slots, name, time.monotonic() - started)


def test_200_concurrent_requests_for_28_slots(docker_client, empty_image, test_label, tmp_path):
    topology = str(_topology(tmp_path / "race.yaml"))
    inventory = gpu.read_inventory(topology)
    assert len(inventory.slots()) == SLOTS
    lock_path = str(tmp_path / "run" / "gpu-allocator.lock")
    mapping_dir = str(tmp_path / "dcgm")
    labels = {**test_label.labels}
    ctx = multiprocessing.get_context("fork")
    started = time.monotonic()
    with ctx.Pool(WORKERS, initializer=_init, initargs=(topology, lock_path, mapping_dir, labels, empty_image)) as pool:
        results = pool.map(_attempt, range(ATTEMPTS), chunksize=1)
    wall = time.monotonic() - started

    granted = [r for r in results if r[0] == "granted"]
    refused = [r for r in results if r[0] == "refused"]
    assert len(granted) == SLOTS, f"{len(granted)} grants"
    assert len(refused) == ATTEMPTS - SLOTS
    assert {r[1] for r in refused} == {"NO_GPU_AVAILABLE"}
    assert all("taken right now" in r[2] and "Nothing was created" in r[2] for r in refused), refused[0]

    # What Docker says, read independently: 28 containers, 28 distinct slots, each exactly once.
    holdings = docker_state.list_containers(docker_client, inventory)
    ours = [c for c in holdings if c.labels.get(test_label.key) == test_label.value and c.name.startswith("race-")]
    held = [s for c in ours for s in c.slots]
    assert len(ours) == SLOTS
    assert sorted(held) == sorted(s.slot_id for s in inventory.slots())
    assert sorted(s for r in granted for s in r[1]) == sorted(held)
    # Every container's labels say what its DeviceRequest holds.
    assert all(c.labels["ds01.gpu.slots"] == ",".join(c.slots) for c in ours)
    # The job mapping written after each grant shows all 28 (7 per GPU).
    assert sorted(os.listdir(mapping_dir)) == ["0", "1", "2", "3"]
    assert all(len(Path(mapping_dir, f).read_text().splitlines()) == 7 for f in os.listdir(mapping_dir))
    print(
        f"\n{ATTEMPTS} attempts, {WORKERS} processes: {wall:.1f} s wall, slowest attempt "
        f"{max(r[3] for r in results):.2f} s"
    )
    assert wall < 120
