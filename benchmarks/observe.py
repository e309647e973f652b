"""Exporter scrape latency with N containers (p50/p95 of 50 scrapes, cold and cached) and
``ds01 limits --brief`` latency (detector inventory fresh, and the Docker fallback).

    .venv/bin/python benchmarks/observe.py [--containers 200] [--scrapes 50]

Containers are ``created`` from ``local/empty`` (label ``ds01.test=1`` + a run label), a third of
them holding fake-topology GPU UUIDs through real DeviceRequests, owners spread over 20 logins.
"Cold" scrapes rebuild the snapshot every time (cache 0 s; the docker package's inspect cache warm after
the first), "cached" scrapes serve the last snapshot (cache 60 s). Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".collections"))

import docker  # noqa: E402

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, exporter  # noqa: E402
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import observe as ob  # noqa: E402

UUIDS = [f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-0000-0000-0000-000000000000" for i in range(4)]
TOPOLOGY = "gpus:\n" + "".join(
    f"  - {{index: {i}, uuid: {u}, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}}\n" for i, u in enumerate(UUIDS)
)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] * 1000


def scrape(port):
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        resp.read()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    client = docker.from_env()
    run = uuid.uuid4().hex[:8]
    root = tempfile.mkdtemp(prefix="ds01-bench-observe-")
    for sub in ("state", "log", "run"):
        os.makedirs(os.path.join(root, sub))
    with open(os.path.join(root, "topo.yaml"), "w") as handle:
        handle.write(TOPOLOGY)
    users = [f"u{i:02d}" for i in range(20)]
    with open(os.path.join(root, "resource-limits.yaml"), "w") as handle:
        handle.write(
            f"groups: {{student: {{members: [{', '.join(users)}]}}}}\ndefault_group: student\n"
            "gpu_allocation: {backend: fake, topology: topo.yaml}\n"
            "paths: {state_dir: state, log_dir: log, run_dir: run}\n"
        )
    cfg = config.load_config(os.path.join(root, "resource-limits.yaml"))
    made = []
    try:
        for i in range(args.containers):
            labels = {"ds01.test": "1", "ds01.bench": run, "ds01.user": users[i % 20], "ds01.managed": "true"}
            requests = None
            if i % 3 == 0:
                u = UUIDS[i % 4]
                labels.update({"ds01.gpu.slots": str(i % 4), "ds01.gpu.uuids": u, "ds01.gpu.gpueq": "1.0"})
                requests = [docker.types.DeviceRequest(device_ids=[u], capabilities=[["gpu"]])]
            made.append(
                client.containers.create(
                    "local/empty", command=["none"], labels=labels, network_mode="none", device_requests=requests
                )
            )
        print(f"{len(made)} containers created")
        for cache_s, label in ((0.0, "cold (rebuild every scrape)"), (60.0, "cached")):
            observer = ob.Observer(cfg, docker_client=client)
            cache = exporter.SnapshotCache(observer.build, cache_s=cache_s)
            ports = []
            threading.Thread(
                target=exporter.serve, args=(cache, "127.0.0.1", 0), kwargs={"ready": ports.append}, daemon=True
            ).start()
            while not ports:
                time.sleep(0.01)
            first = scrape(ports[0])
            times = [scrape(ports[0]) for _i in range(args.scrapes)]
            print(
                f"scrape {label}: first {first * 1000:.0f} ms, p50 {pct(times, 0.5):.1f} ms, "
                f"p95 {pct(times, 0.95):.1f} ms over {args.scrapes}; snapshot build "
                f"{cache.get()['build_seconds'] * 1000:.0f} ms"
            )
        # ds01 limits --brief: once with a fresh detector inventory, once falling back to Docker
        snap = ob.build_snapshot(cfg, None, docker_client=client)
        inventory = {
            "schema_version": "1",
            "updated_at_epoch": time.time() + 3600,
            "docker": {"ok": True},
            "containers": {
                h.id: {
                    "id": h.id,
                    "name": h.name,
                    "user": h.owner,
                    "status": h.state,
                    "gpu_slots": list(ob.held_slots(h)),
                    "gpu_devices": list(h.uuids),
                    "origin": "ds01-managed",
                    "container_type": "docker",
                }
                for h in snap["_holdings"]
            },
        }
        ds01 = os.path.join(HERE, "..", ".venv", "bin", "ds01")
        argv = [ds01, "--config", os.path.join(root, "resource-limits.yaml"), "limits", "u01", "--brief"]
        for label in ("detector inventory fresh", "Docker fallback"):
            path = os.path.join(root, "state", "workloads.json")
            if label.startswith("detector"):
                ob.save_json(path, inventory)
            elif os.path.exists(path):
                os.unlink(path)
            times = []
            for _i in range(10):
                t0 = time.perf_counter()
                out = subprocess.run(argv, capture_output=True, text=True, check=True)
                times.append(time.perf_counter() - t0)
            print(
                f"ds01 limits --brief ({label}): p50 {pct(times, 0.5):.0f} ms, max {max(times) * 1000:.0f} ms: "
                f"{out.stdout.strip()}"
            )
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ds01.cli"], check=True)
        print(f"(python start + import ds01.cli alone: {(time.perf_counter() - t0) * 1000:.0f} ms)")
    finally:
        for c in made:
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass
        print(f"removed {len(made)} containers")


if __name__ == "__main__":
    main()
