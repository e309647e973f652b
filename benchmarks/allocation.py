"""How the allocator's cost grows with the number of containers on the host.

Two measurements:

1. **The pure decision** (``allocator.decide``) with 50, 200 and 1000 containers present, built in
   memory exactly as ``docker_state`` builds them (the demo topology; a third of the containers
   hold a GPU slot — all 13 slots held, the rest by unknown-to-the-host UUIDs, so the occupancy
   scan sees every claim; the asking user owns two). Each size: the median of 200 decisions of
   a student asking ``--gpus 1`` (granted when a slot is free, else refused: both are timed).
2. **Reading Docker** (``docker_state.list_containers``) with 50 and 200 real containers created
   on the engine (created, never started, each with a DeviceRequest): the cold read (one list +
   one inspect per container: what a one-shot ``ds01 gpu`` pays), the warm read (an
   ``InspectCache`` kept by the gateway: one list + inspects of new ids only), and the SDK's
   ``containers.list(all=True, sparse=False)`` for comparison. Median of 5 reads each.

Growth is printed as the ratio to the 50-container case (linear growth: 4.0 at 200, 20.0 at 1000).

Run: ``.venv/bin/python benchmarks/allocation.py [--no-docker]`` (Docker running for part 2).
Containers are labelled ``ds01.test=bench-<id>`` and removed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import uuid

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, ".collections"))

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import allocator, config, docker_state, gpu  # noqa: E402

TOPOLOGY = os.path.join(REPO, "tests", "fixtures", "topology", "demo.yaml")
SIZES = (50, 200, 1000)
DOCKER_SIZES = (50, 200)


def build_holdings(inventory: gpu.Inventory, n: int) -> list:
    slots = inventory.slots()
    out = []
    for i in range(n):
        owner = "alice" if i < 2 else f"user{i % 97}"
        if i % 3 == 0:
            k = i // 3
            ids = (slots[k].uuid,) if k < len(slots) else (f"GPU-elsewhere-{i}",)
        else:
            ids = ()
        info = docker_state.container_info(
            {"Id": f"{i:064d}", "Names": [f"/c{i}"], "State": "exited", "Labels": {"ds01.user": owner}}
        )
        claim = docker_state.GpuClaim(ids=ids, source="device_requests" if ids else "")
        out.append(docker_state.attach_slots(dataclasses.replace(info, gpu=claim), inventory))
    return out


def time_decisions(inventory: gpu.Inventory, n: int, repeats: int = 200) -> float:
    holdings = build_holdings(inventory, n)
    limits = dataclasses.replace(config.safe_limits("alice"), max_containers_per_user=None)
    request = allocator.Request()
    times = []
    for _i in range(repeats):
        t = time.perf_counter()
        allocator.decide(inventory, holdings, limits, request)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_docker(inventory: gpu.Inventory, sizes: tuple) -> dict:
    import docker

    client = docker.from_env(timeout=120)
    label = f"bench-{uuid.uuid4().hex[:12]}"
    results = {}
    created = 0
    try:
        for size in sizes:
            while created < size:
                slot = inventory.slots()[created % len(inventory.slots())]
                client.api.create_container(
                    "local/empty",
                    command=["true"],
                    name=f"{label}-{created}",
                    labels={"ds01.test": label, "ds01.user": f"user{created % 7}"},
                    host_config=client.api.create_host_config(
                        network_mode="none",
                        device_requests=[docker.types.DeviceRequest(device_ids=[slot.uuid], capabilities=[["gpu"]])],
                    ),
                )
                created += 1
            total = len(client.api.containers(all=True))
            cold, warm, sdk = [], [], []
            for _i in range(5):
                t = time.perf_counter()
                docker_state.list_containers(client, inventory)
                cold.append(time.perf_counter() - t)
            cache = docker_state.InspectCache()
            docker_state.list_containers(client, inventory, cache)
            for _i in range(5):
                t = time.perf_counter()
                docker_state.list_containers(client, inventory, cache)
                warm.append(time.perf_counter() - t)
            for _i in range(5):
                t = time.perf_counter()
                client.containers.list(all=True, sparse=False)
                sdk.append(time.perf_counter() - t)
            results[size] = (total, statistics.median(cold), statistics.median(warm), statistics.median(sdk))
    finally:
        for c in client.api.containers(all=True, filters={"label": f"ds01.test={label}"}):
            client.api.remove_container(c["Id"], force=True)
        client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-docker", action="store_true", help="only the pure decision")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    inventory = gpu.read_inventory(TOPOLOGY)

    print("1. allocator.decide (pure), median of 200, demo topology (13 slots)")
    base = None
    for n in SIZES:
        t = time_decisions(inventory, n)
        base = base or t
        print(f"   {n:5d} containers: {t * 1e6:8.1f} us   x{t / base:5.2f} vs 50")

    if args.no_docker:
        return 0
    print("2. docker_state.list_containers on the real engine, median of 5")
    results = time_docker(inventory, DOCKER_SIZES)
    b_cold, b_warm, b_sdk = (results[DOCKER_SIZES[0]][i] for i in (1, 2, 3))
    for size, (total, cold, warm, sdk) in results.items():
        print(
            f"   {size:4d} created ({total} on the engine): cold {cold * 1e3:7.1f} ms (x{cold / b_cold:4.2f})   "
            f"warm cache {warm * 1e3:6.1f} ms (x{warm / b_warm:4.2f})   "
            f"SDK list(sparse=False) {sdk * 1e3:7.1f} ms (x{sdk / b_sdk:4.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
