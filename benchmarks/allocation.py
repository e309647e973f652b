"""How the allocator's cost grows with the number of containers on the host.

Two measurements:

1. **The pure decision** (``allocator.decide``) with 50, 200 and 1000 containers present, built in
   memory exactly as the ``docker`` package builds them (the demo topology; a third of the
   containers hold a GPU slot — all 13 slots held, the rest by unknown-to-the-host UUIDs, so the
   occupancy scan sees every claim; the asking user owns two). Each size: the median of 200
   decisions of a student asking ``--gpus 1`` (granted when a slot is free, else refused: both timed).
2. **A cold ``ds01 gpu plan``** (a new process, as an admin runs it) with 50, 200 and 1000 real
   containers on the engine (created, never started; a third with a DeviceRequest naming a demo
   GPU), side by side in one run with **the floor**: ``python -c pass`` (the same interpreter)
   plus one ``docker ps -a`` (one list call by Docker's own CLI). The runs are interleaved
   (python, docker ps, ds01, python, …) and each figure is the median of ``--runs``. Before the
   timed runs, one ``ds01 gpu plan`` has seen the containers (its facts cache, in the sandbox's
   run_dir, holds them: "cold" is a new process, not a never-seen container); that first run is
   printed too. The host is set up as the roles leave it: bytecode is written (``PYTHONDONTWRITEBYTECODE``
   is dropped for the commands), and ``/var/cache/ds01`` exists (``ds01_common`` makes it), so root's
   parse cache keeps what the config and topology parsed to (``yamlcache``); when this run had to make
   that directory it removes it at the end. The ratio ds01 / floor is printed per size; **at 200
   containers it must be within 1.5**, else the benchmark exits 1.

Run: ``.venv/bin/python benchmarks/allocation.py [--no-docker] [--runs 21]`` (root, Docker running).
``$DS01_CMD`` runs another ds01 (e.g. a checkout of an older commit). Containers are labelled
``ds01.test=bench-<id>`` and removed at the end; the config and its state live in a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, ".collections"))

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import allocator, config, docker, gpu, record, yamlcache  # noqa: E402

TOPOLOGY = os.path.join(REPO, "tests", "fixtures", "topology", "demo.yaml")
SIZES = (50, 200, 1000)
GATE_SIZE = 200
GATE_RATIO = 1.5
DS01 = os.environ.get("DS01_CMD") or os.path.join(REPO, ".venv", "bin", "ds01")


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
        info = docker.container_info(
            {"Id": f"{i:064d}", "Names": [f"/c{i}"], "State": "exited", "Labels": {"ds01.user": owner}}
        )
        claim = docker.GpuClaim(ids=ids, source="device_requests" if ids else "")
        out.append(docker.attach_slots(record.replace(info, gpu=claim), inventory))
    return out


def time_decisions(inventory: gpu.Inventory, n: int, repeats: int = 200) -> float:
    holdings = build_holdings(inventory, n)
    limits = record.replace(config.safe_limits("alice"), max_containers_per_user=None)
    request = allocator.Request()
    times = []
    for _i in range(repeats):
        t = time.perf_counter()
        allocator.decide(inventory, holdings, limits, request)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sandbox() -> tuple:
    root = tempfile.mkdtemp(prefix="ds01-bench-alloc-")
    for sub in ("state", "log", "run"):
        os.makedirs(os.path.join(root, sub))
    cfg = os.path.join(root, "resource-limits.yaml")
    with open(cfg, "w") as handle:
        handle.write(
            "default_group: student\ngroups:\n  student: {}\n"
            f"paths: {{state_dir: {root}/state, log_dir: {root}/log, run_dir: {root}/run}}\n"
            f"gpu_allocation: {{backend: fake, topology: {TOPOLOGY}}}\n"
        )
    return root, cfg


def ensure_image() -> None:
    if subprocess.run(["docker", "image", "inspect", "local/empty"], capture_output=True, check=False).returncode:
        subprocess.run(
            "tar -c --files-from /dev/null | docker import - local/empty", shell=True, check=True, capture_output=True
        )


# As on an installed host, where pip compiled the package: bytecode is written on the first run.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list) -> float:
    t = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, check=False)
    elapsed = time.perf_counter() - t
    if done.returncode not in (0, 1):  # 1: the plan is a refusal, which is an answer too
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-400:]}")
    return elapsed


def installed_cache() -> bool:
    """Make ``/var/cache/ds01`` as the ``ds01_common`` role does (root's, 0755), unless it exists; True when made."""
    parent = os.path.dirname(yamlcache.CACHE_DIR)
    if os.path.isdir(parent):
        return False
    os.makedirs(parent, mode=0o755)
    os.chmod(parent, 0o755)
    return True


def time_cli(inventory: gpu.Inventory, runs: int, sizes: tuple) -> dict:
    import docker as sdk  # the benchmark makes containers with the SDK; ds01 itself is run as a command

    made_cache = installed_cache()
    client = sdk.from_env(timeout=120)
    label = f"bench-{uuid.uuid4().hex[:12]}"
    root, cfg = sandbox()
    plan = [DS01, "--config", cfg, "gpu", "plan", "alice", "--json"]
    floor_py = [sys.executable, "-c", "pass"]
    floor_ps = ["docker", "ps", "-a"]
    slots = inventory.slots()
    results = {}
    created = 0
    try:
        for size in sizes:
            while created < size:
                requests = None
                if created % 3 == 0:
                    uid = slots[created % len(slots)].uuid
                    requests = [sdk.types.DeviceRequest(device_ids=[uid], capabilities=[["gpu"]])]
                client.api.create_container(
                    "local/empty",
                    command=["true"],
                    name=f"{label}-{created}",
                    labels={"ds01.test": label, "ds01.user": f"user{created % 7}"},
                    host_config=client.api.create_host_config(network_mode="none", device_requests=requests),
                )
                created += 1
            total = len(client.api.containers(all=True))
            first = timed(plan)  # sees the new containers once (fills the facts cache)
            py, ps, cli = [], [], []
            for _i in range(runs):
                py.append(timed(floor_py))
                ps.append(timed(floor_ps))
                cli.append(timed(plan))
            results[size] = (total, first, statistics.median(py), statistics.median(ps), statistics.median(cli))
    finally:
        for c in client.api.containers(all=True, filters={"label": f"ds01.test={label}"}):
            client.api.remove_container(c["Id"], force=True)
        client.close()
        shutil.rmtree(root, ignore_errors=True)
        if made_cache:
            shutil.rmtree(os.path.dirname(yamlcache.CACHE_DIR), ignore_errors=True)
        else:  # the sandbox's files were kept in the host's cache: drop just those
            for source in (cfg, TOPOLOGY):
                with contextlib.suppress(OSError):
                    os.unlink(yamlcache.cache_file(source))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-docker", action="store_true", help="only the pure decision")
    parser.add_argument("--runs", type=int, default=21, help="timed runs of each command per size")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="container counts (default 50,200,1000)")
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
    ensure_image()
    print(f"2. a cold `ds01 gpu plan` (new process) vs the floor, median of {args.runs}; ds01 = {DS01}")
    results = time_cli(inventory, args.runs, tuple(int(n) for n in args.sizes.split(",")))
    status = 0
    print(
        "   containers (on engine)   python -c pass   docker ps -a   floor      ds01 gpu plan   ratio   "
        "(first run, new containers)"
    )
    for size, (total, first, py, ps, cli) in results.items():
        floor = py + ps
        ratio = cli / floor
        gate = ""
        if size == GATE_SIZE:
            gate = "  ok" if ratio <= GATE_RATIO else f"  OVER the {GATE_RATIO}x bound"
            status = status or (0 if ratio <= GATE_RATIO else 1)
        print(
            f"   {size:5d} ({total:5d})          {py * 1e3:7.1f} ms     {ps * 1e3:7.1f} ms   {floor * 1e3:6.1f} ms"
            f"   {cli * 1e3:8.1f} ms     x{ratio:4.2f}   ({first * 1e3:.0f} ms){gate}"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
