"""One lifecycle sweep's wall and CPU time over 50, 200 and 500 containers, and what one activity
read of a running container costs by each method.

    .venv/bin/python benchmarks/lifecycle.py [--sizes 50,200,500] [--running 5] [--repeat 3]

Containers: ``created`` from ``local/empty`` (built here if missing), a third of them labelled as
GPU holders, owners spread over 20 logins, plus ``--running`` GPU-labelled containers that sleep
(from the runnable image) so the sampling path runs too. The sweep lists only this run's
containers (label filter), decides and executes for real (nothing is due, so it writes state and
acts on nothing). "cold" is the first sweep at a size (state files written), "warm" the median of
the next ``--repeat``. The read comparison times, per running container: the cgroup/proc read used
by the sweep, ``container.stats(stream=False, one_shot=True)`` and ``container.stats(stream=False)``.
Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".collections"))

import docker  # noqa: E402

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config  # noqa: E402
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import lifecycle as lc  # noqa: E402

RUNNABLE = ("local/debian-min:bookworm", "local/debian-systemd:bookworm")
GPU = {"ds01.gpu.slots": "0", "ds01.gpu.uuids": "GPU-bench", "ds01.gpu.gpueq": "1.0"}


def ensure_empty(client):
    try:
        client.images.get("local/empty")
    except docker.errors.ImageNotFound:
        subprocess.run("tar -c --files-from /dev/null | docker import - local/empty", shell=True, check=True)


def runnable(client):
    for name in RUNNABLE:
        try:
            client.images.get(name)
            return name
        except docker.errors.ImageNotFound:
            continue
    return None


def make_config(root):
    for sub in ("state", "log", "run"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    path = os.path.join(root, "resource-limits.yaml")
    with open(path, "w") as handle:
        handle.write(
            textwrap.dedent(f"""
            groups: {{student: {{}}}}
            paths: {{state_dir: {root}/state, log_dir: {root}/log, run_dir: {root}/run}}
            """)
        )
    return config.load_config(path)


class Probe(lc.GpuProbe):
    def utilization(self, uuids):
        return 0.0

    def capacity_gpueq(self):
        return 4.0


def sweep_once(cfg, ops):
    report = lc.run_sweep(cfg, ops, dt.datetime.now(dt.timezone.utc), gpu=Probe(), emit=lambda *a, **k: None)
    assert not report.errors, report.errors
    return report.wall_s, report.cpu_s


def read_costs(client, containers, host):
    """ms per container for each read method (median over the running containers)."""
    out = {"cgroup+proc": [], "stats one_shot": [], "stats (2 samples)": []}
    for c in containers:
        c.reload()
        pid = c.attrs["State"]["Pid"]
        t = time.perf_counter()
        cg = host.cgroup_dir(pid)
        host.cpu_ns(cg), host.net_bytes(pid), host.busy_processes(cg)
        out["cgroup+proc"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        c.stats(stream=False, one_shot=True)
        out["stats one_shot"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        c.stats(stream=False)
        out["stats (2 samples)"].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in out.items() if v}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,500")
    parser.add_argument("--running", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    client = docker.from_env(timeout=120)
    ensure_empty(client)
    image = runnable(client)
    run_id = uuid.uuid4().hex[:8]
    label = f"ds01.bench.run={run_id}"
    ops = lc.DockerOps(client, filters={"label": [label]})
    base = {"ds01.test": "1", "ds01.bench.run": run_id, "ds01.container_type": "docker"}
    created = 0
    running = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="ds01-bench-") as root:
        cfg = make_config(root)
        try:
            if image and args.running:
                for i in range(args.running):
                    labels = {**base, **GPU, "ds01.user": f"user{i % 20}"}
                    running.append(
                        client.containers.run(
                            image,
                            ["sleep", "infinity"],
                            labels=labels,
                            network_mode="none",
                            detach=True,
                            name=f"bench-run-{run_id}-{i}",
                        )
                    )
            for size in sizes:
                t = time.perf_counter()
                while created + len(running) < size:
                    labels = {**base, "ds01.user": f"user{created % 20}", **(GPU if created % 3 == 0 else {})}
                    client.api.create_container(
                        "local/empty",
                        command=["x"],
                        labels=labels,
                        host_config=client.api.create_host_config(network_mode="none"),
                        name=f"bench-{run_id}-{created}",
                    )
                    created += 1
                setup = time.perf_counter() - t
                cold = sweep_once(cfg, ops)
                warm = [sweep_once(cfg, ops) for _i in range(args.repeat)]
                rows.append((size, cold, statistics.median(w[0] for w in warm), statistics.median(w[1] for w in warm)))
                print(f"  {size} containers ready (+{setup:.1f} s to create)", file=sys.stderr)
            costs = read_costs(client, running, lc.HostReader()) if running else {}
        finally:
            for c in client.containers.list(all=True, filters={"label": label}):
                c.remove(force=True)

    print(
        f"lifecycle sweep ({len(running)} running GPU-labelled containers, the rest created; "
        f"one list call, inspect for non-created, cgroup/proc reads for running GPU holders)"
    )
    print(
        f"{'containers':>10} {'cold wall s':>12} {'cold cpu s':>11} {'warm wall s':>12} {'warm cpu s':>11}"
        f" {'ms/container':>13}"
    )
    for size, (cw, cc), ww, wc in rows:
        print(f"{size:>10} {cw:>12.3f} {cc:>11.3f} {ww:>12.3f} {wc:>11.3f} {1000 * ww / size:>13.2f}")
    if costs:
        ref = costs["cgroup+proc"]
        print("activity read of one running container (median ms; ratio to the cgroup read):")
        for name, ms in costs.items():
            print(f"  {name:<18} {ms:>9.2f} ms  x{ms / ref:,.0f}")


if __name__ == "__main__":
    main()
