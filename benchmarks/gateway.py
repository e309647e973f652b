"""The gateway's cost, side by side with the daemon's own socket (run as root).

    .venv/bin/python benchmarks/gateway.py [--containers 200] [--log-mb 100] [--soak-s 300] [--clients 20]

Starts ``ds01 gateway serve`` on a temp socket in front of /var/run/docker.sock, creates a user
``gwbench`` (group docker) so the gateway applies the full non-admin policy, and prints:

- ``docker ps`` p50/p95 with N containers of that user (created, not started);
- create+start latency (``docker run -d``), p50/p95;
- ``docker logs`` throughput on a container with a ~100 MB log;
- a soak: C concurrent clients doing ps / inspect / logs / create+rm for S seconds, errors and the
  gateway's RSS growth.

Every container carries the label ``ds01.bench=1`` and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKER = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"
IMAGE = os.environ.get("DS01_IMAGE_MIN", "local/debian-min:bookworm")
USER = "gwbench"
DIRECT = "unix:///var/run/docker.sock"


def sh(user, host, *args, check=True, timeout=600):
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "DOCKER_HOST": host, "HOME": f"/home/{user}"}
    cmd = [DOCKER, *args]
    if user != "root":
        cmd = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()], *cmd]
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout, check=False)
    if check and proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.decode()[-400:]}")
    return proc


def timed(fn, n):
    out = []
    for _i in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_gateway(root: Path):
    (root / "log").mkdir()
    (root / "resource-limits.yaml").write_text(
        "default_group: student\ngroups:\n  student:\n    max_containers_per_user: 10000\n"
        "paths: {state_dir: state, log_dir: log, run_dir: run}\n"
    )
    sock = root / "gw.sock"
    proc = subprocess.Popen(
        [
            str(REPO / ".venv/bin/ds01"),
            "--config",
            str(root / "resource-limits.yaml"),
            "gateway",
            "serve",
            "--listen",
            str(sock),
            "--upstream",
            "/var/run/docker.sock",
        ],
        stdout=open(root / "gw.log", "w"),  # noqa: SIM115 - the gateway child keeps it open
        stderr=subprocess.STDOUT,
    )
    for _i in range(150):
        if sock.exists():
            return proc, f"unix://{sock}"
        time.sleep(0.1)
    raise RuntimeError((root / "gw.log").read_text())


def row(name, direct, gateway, unit):
    ratio = gateway / direct if direct else float("nan")
    print(f"  {name:<34} {direct:>10.3f} {gateway:>10.3f} {unit:<6} x{ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--log-mb", type=int, default=100)
    parser.add_argument("--soak-s", type=float, default=300.0, help="soak duration in seconds (default 300)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid():
        sys.exit("run as root: the benchmark creates a Unix user and starts the gateway")
    if subprocess.run(["id", USER], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "-m", "-G", "docker", USER], check=True)
    root = Path(tempfile.mkdtemp(prefix="ds01-gwbench-", dir="/tmp"))
    os.chmod(root, 0o755)
    gw, gw_host = start_gateway(root)
    results = {}
    try:
        print(f"creating {args.containers} containers of {USER} ...", flush=True)
        for i in range(args.containers):
            sh(USER, gw_host, "create", "--network", "none", "--label", "ds01.bench=1", "--name", f"gwbench-{i}", IMAGE)
        print(f"\n{'':<36} {'direct':>10} {'gateway':>10}")
        ps = {
            h: timed(lambda h=h, u=u: sh(u, h, "ps", "-a", "-q"), args.samples)
            for h, u in ((DIRECT, "root"), (gw_host, USER))
        }
        row(f"docker ps -a p50 ({args.containers} ctrs)", pct(ps[DIRECT], 50) * 1e3, pct(ps[gw_host], 50) * 1e3, "ms")
        row("docker ps -a p95", pct(ps[DIRECT], 95) * 1e3, pct(ps[gw_host], 95) * 1e3, "ms")
        for i in range(args.containers):
            sh("root", DIRECT, "rm", "-f", f"gwbench-{i}", check=False)

        runs = {}
        for host, user in ((DIRECT, "root"), (gw_host, USER)):
            names = []

            def run_one(host=host, user=user, names=names):  # pylint: disable=dangerous-default-value  # binds this loop's list
                name = f"gwbench-run-{len(names)}-{user}"
                names.append(name)
                sh(
                    user,
                    host,
                    "run",
                    "-d",
                    "--network",
                    "none",
                    "--label",
                    "ds01.bench=1",
                    "--name",
                    name,
                    IMAGE,
                    "sleep",
                    "600",
                )

            runs[host] = timed(run_one, max(5, args.samples // 2))
            for name in names:
                sh("root", DIRECT, "rm", "-f", name, check=False)
        row("create+start p50", pct(runs[DIRECT], 50) * 1e3, pct(runs[gw_host], 50) * 1e3, "ms")
        row("create+start p95", pct(runs[DIRECT], 95) * 1e3, pct(runs[gw_host], 95) * 1e3, "ms")

        lines = args.log_mb * 1024 * 1024 // 100
        script = f"yes '{'x' * 98}' | head -n {lines}"
        sh(
            USER,
            gw_host,
            "run",
            "--network",
            "none",
            "--label",
            "ds01.bench=1",
            "--name",
            "gwbench-log",
            IMAGE,
            "sh",
            "-c",
            script,
            timeout=900,
        )
        tput = {}
        for host, user in ((DIRECT, "root"), (gw_host, USER)):
            t = time.perf_counter()
            proc = subprocess.run(
                ["runuser", "-u", user, "--", "env", f"DOCKER_HOST={host}", DOCKER, "logs", "gwbench-log"]
                if user != "root"
                else [DOCKER, "-H", host, "logs", "gwbench-log"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            elapsed = time.perf_counter() - t
            tput[host] = len(proc.stdout) / elapsed / 1e6
        row(f"docker logs ({args.log_mb} MB)", tput[DIRECT], tput[gw_host], "MB/s")
        results["logs_mb_s"] = tput

        sh(
            USER,
            gw_host,
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            "ds01.bench=1",
            "--name",
            "gwbench-soak",
            IMAGE,
            "sleep",
            "infinity",
        )
        rss0 = rss_kib(gw.pid)
        errors, ops = [], [0]
        stop = time.monotonic() + args.soak_s
        lock = threading.Lock()

        def client(k):
            i = 0
            while time.monotonic() < stop:
                i += 1
                step = i % 4
                try:
                    if step == 0:
                        sh(USER, gw_host, "ps", "-a", "-q")
                    elif step == 1:
                        sh(USER, gw_host, "inspect", "gwbench-soak")
                    elif step == 2:
                        sh(USER, gw_host, "logs", "--tail", "5", "gwbench-log")
                    else:
                        name = f"gwbench-soak-{k}-{i}"
                        sh(
                            USER,
                            gw_host,
                            "create",
                            "--network",
                            "none",
                            "--label",
                            "ds01.bench=1",
                            "--name",
                            name,
                            IMAGE,
                        )
                        sh(USER, gw_host, "rm", name)
                    with lock:
                        ops[0] += 1
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    with lock:
                        errors.append(str(exc)[:200])

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss1 = rss_kib(gw.pid)
        print(
            f"\nsoak: {args.clients} clients x {args.soak_s:g}s: {ops[0]} operations, {len(errors)} errors, "
            f"gateway RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB ({(rss1 - rss0) / 1024:+.1f} MiB), "
            f"gateway alive: {gw.poll() is None}"
        )
        for err in errors[:5]:
            print("  error:", err)
        print(json.dumps({"ops": ops[0], "errors": len(errors), "rss_kib": [rss0, rss1]}))
    finally:
        subprocess.run(
            f"{DOCKER} -H {DIRECT} ps -aq --filter label=ds01.bench=1 | xargs -r {DOCKER} -H {DIRECT} rm -f",
            shell=True,
            capture_output=True,
            check=False,
        )
        gw.terminate()
        gw.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
