"""The gateway's cost and its resistance to connection floods, side by side with the daemon's own socket.

    .venv/bin/python benchmarks/gateway.py [--containers 50] [--log-mb 100] [--samples 15]
                                           [--slowloris 500] [--idle 1000,20000] [--follow-lines 150]

Run as root. Starts ``ds01 gateway serve`` (its default timeouts and per-uid cap) on a temp socket in
front of /var/run/docker.sock, creates two users in group ``docker`` -- ``gwbench`` (whose latency is
measured) and ``gwnoise`` (who floods) -- and prints, each row ``direct  gateway  ratio``:

- ``docker ps -a`` p50/p95 with N of gwbench's containers, and ``docker create`` p50/p95;
- ``docker logs`` throughput on a ~100 MB log (best of 3 each side; the ratio is gateway/direct);
- ``docker logs -f`` latency: a container prints its clock every 50 ms, a direct and a gateway
  follower read the same lines at the same time; p50/p95 of line -> client;
- floods by gwnoise, each against gwbench's idle ``docker ps`` through the gateway (ratio to the
  quiet baseline): S slowloris connections trickling a head one byte a second; 1000 and 20 000
  idle connections (opened by helper processes of 5000 each: this machine's hard RLIMIT_NOFILE is
  20 000 and root cannot raise it here). A ``ps`` that does not answer within 30 s is "stuck".
  Also printed: how many flood connections were answered 429 or cut off, and how many lines the
  gateway logged meanwhile.

Every container carries the label ``ds01.bench=1`` and is removed at the end. Figures, no thresholds.
"""

from __future__ import annotations

import argparse
import functools
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
NOISE = "gwnoise"
DIRECT = "unix:///var/run/docker.sock"
PS_TIMEOUT_S = 30.0
PER_HELPER = 5000

# Runs as the flooding user (system python3, readable by everyone). argv: socket, mode, count, seconds.
# Opens `count` connections (mode idle: nothing sent; trickle: "GET / HTTP/1.1\r\n" then one byte a
# second, reopening what the gateway cuts off), prints "ready", holds them until stdin closes, then
# prints a JSON summary.
FLOOD = r"""
import json, resource, select, socket, sys, threading, time
path, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
live, failed, refused, cut = {}, 0, 0, 0
poller = select.poll()
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.setblocking(False)
    deadline = time.monotonic() + 5
    while True:  # a full backlog answers EAGAIN at once: wait for room, up to 5 s
        try:
            s.connect(path)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                s.close()
                raise
            time.sleep(0.005)
    if mode == "trickle":
        s.send(b"GET /v1.41/containers/json HTTP/1.1\r\n")
    live[s.fileno()] = s
    poller.register(s, select.POLLIN)
for i in range(count):
    try:
        connect()
    except OSError:
        failed = count - i  # the gateway stopped accepting: give up on the rest
        break
opened = len(live)
print("ready", flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while True:
    done = stop.is_set()  # one last look after stdin closed: answers that came in meanwhile count
    for fd, _ev in poller.poll(200 if done else 0):
        s = live.pop(fd)
        poller.unregister(fd)
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 429"):
            refused += 1
        else:
            cut += 1
        s.close()
        if mode == "trickle":
            try:
                connect()
            except OSError:
                failed += 1
    if mode == "trickle":
        for s in live.values():
            try:
                s.send(b"X")
            except OSError:
                pass
    if done:
        break
    stop.wait(1.0)
print(json.dumps({"opened": opened, "failed": failed, "refused_429": refused, "closed": cut}), flush=True)
"""


def env_of(user, host):
    home = "/root" if user == "root" else f"/home/{user}"
    return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "DOCKER_HOST": host, "HOME": home}


def as_user(user, host, argv):
    if user == "root":
        return argv
    return ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env_of(user, host).items()], *argv]


def sh(user, host, *args, check=True, timeout=600):
    proc = subprocess.run(
        as_user(user, host, [DOCKER, *args]), capture_output=True, env=env_of(user, host), timeout=timeout, check=False
    )
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


def start_gateway(root: Path, src: str = ""):
    for sub in ("log", "run", "state"):
        (root / sub).mkdir()
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
            "--socket-group",
            "docker",
        ],
        stdout=open(root / "gw.log", "w"),  # noqa: SIM115 - the gateway child keeps it open
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": src} if src else None,
    )
    for _i in range(150):
        if sock.exists():
            return proc, sock
        time.sleep(0.1)
    raise RuntimeError((root / "gw.log").read_text())


def row(name, direct, gateway, unit):
    ratio = gateway / direct if direct else float("nan")
    print(f"  {name:<40} {direct:>10.3f} {gateway:>10.3f} {unit:<6} x{ratio:.2f}", flush=True)


def ps_once(host):
    """One `docker ps -a -q` of gwbench in seconds, or None when it failed or took over PS_TIMEOUT_S."""
    t = time.perf_counter()
    try:
        proc = sh(USER, host, "ps", "-a", "-q", check=False, timeout=PS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    return time.perf_counter() - t if proc.returncode == 0 else None


def ps_samples(host, n):
    """n samples of ps_once; after two stuck ones in a row the rest count as stuck without waiting."""
    out = []
    for _i in range(n):
        out.append(ps_once(host) if out[-2:] != [None, None] else None)
    return out


def flood_row(name, quiet, samples, extra):
    answered = [s for s in samples if s is not None]
    stuck = len(samples) - len(answered)
    if not answered:
        print(f"  {name:<40} {quiet * 1e3:>10.1f} {'failed':>10} ms     ({stuck}/{len(samples)} failed) {extra}")
        return
    p50 = pct(answered, 50)
    print(
        f"  {name:<40} {quiet * 1e3:>10.1f} {p50 * 1e3:>10.1f} ms     x{p50 / quiet:.2f}"
        f"  p95 {pct(answered, 95) * 1e3:.1f} ms, {stuck}/{len(samples)} failed; {extra}",
        flush=True,
    )


def flood(sock, mode, count, hold_s, host, samples, log_path):
    """Open `count` connections as gwnoise, sample gwbench's ps while they are held, return (samples, summary)."""
    helpers = []
    lines0 = len(log_path.read_text().splitlines())
    left = count
    while left > 0:
        n = min(PER_HELPER, left)
        left -= n
        helpers.append(
            subprocess.Popen(
                ["runuser", "-u", NOISE, "--", "/usr/bin/python3", "-c", FLOOD, str(sock), mode, str(n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    ready = []

    def wait_ready(p):
        ready.append(p.stdout.readline().strip())

    waiters = [threading.Thread(target=wait_ready, args=(p,), daemon=True) for p in helpers]
    for w in waiters:
        w.start()
    deadline = time.monotonic() + max(60.0, count / 200)
    for w in waiters:
        w.join(max(0.0, deadline - time.monotonic()))
    t_end = time.monotonic() + hold_s
    out = ps_samples(host, samples)
    while time.monotonic() < t_end:
        time.sleep(0.5)
    summary = {"opened": 0, "failed": 0, "refused_429": 0, "closed": 0}
    for p in helpers:
        try:
            stdout, _unused = p.communicate("", timeout=120)
            line = stdout.strip().splitlines()[-1] if stdout.strip() else "{}"
            for k, v in json.loads(line).items():
                summary[k] += v
        except (subprocess.TimeoutExpired, ValueError):
            p.kill()
    summary["ready_helpers"] = f"{sum(r == 'ready' for r in ready)}/{len(helpers)}"
    summary["gateway_log_lines"] = len(log_path.read_text().splitlines()) - lines0
    return out, summary


def logs_throughput(host, user, name):
    t = time.perf_counter()
    proc = subprocess.run(
        as_user(user, host, [DOCKER, "logs", name]),
        env=env_of(user, host),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return len(proc.stdout) / (time.perf_counter() - t) / 1e6


def follow_latency(hosts, name, lines):
    """Per host, the delays (s) between a line's clock stamp in the container and its arrival."""
    delays = {h: [] for h, _u in hosts}
    procs = []
    for host, user in hosts:
        procs.append(
            subprocess.Popen(
                as_user(user, host, [DOCKER, "logs", "-f", "--tail", "0", name]),
                env=env_of(user, host),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        )

    def reader(host, proc):
        for raw in proc.stdout:
            now = time.time()
            try:
                delays[host].append(now - float(raw.decode().strip()))
            except ValueError:
                continue
            if len(delays[host]) >= lines:
                break

    threads = [threading.Thread(target=reader, args=(h, p)) for (h, _u), p in zip(hosts, procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(lines * 0.2 + 30)
    for p in procs:
        p.kill()
        p.wait()
    return delays


def bench_basic(args, gw_host, label):
    print(f"creating {args.containers} containers of {USER} ...", flush=True)
    for i in range(args.containers):
        sh(USER, gw_host, "create", *label, "--name", f"gwbench-{i}", IMAGE)
    print(f"\n{'':<42} {'direct':>10} {'gateway':>10}")
    hosts = ((DIRECT, "root"), (gw_host, USER))
    ps = {h: timed(lambda h=h, u=u: sh(u, h, "ps", "-a", "-q"), args.samples) for h, u in hosts}
    row(f"docker ps -a p50 ({args.containers} ctrs)", pct(ps[DIRECT], 50) * 1e3, pct(ps[gw_host], 50) * 1e3, "ms")
    row("docker ps -a p95", pct(ps[DIRECT], 95) * 1e3, pct(ps[gw_host], 95) * 1e3, "ms")
    creates = {}
    for host, user in hosts:
        names: list = []
        creates[host] = timed(functools.partial(_create_one, host, user, names, label), args.samples)
        for name in names:
            sh("root", DIRECT, "rm", "-f", name, check=False)
    row("docker create p50", pct(creates[DIRECT], 50) * 1e3, pct(creates[gw_host], 50) * 1e3, "ms")
    row("docker create p95", pct(creates[DIRECT], 95) * 1e3, pct(creates[gw_host], 95) * 1e3, "ms")


def bench_logs(args, gw_host, label):
    lines = args.log_mb * 1024 * 1024 // 100
    script = f"yes '{'x' * 98}' | head -n {lines}"
    sh(USER, gw_host, "run", *label, "--name", "gwbench-log", IMAGE, "sh", "-c", script, timeout=900)
    tput = {DIRECT: [], gw_host: []}
    for _round in range(3):
        for host, user in ((DIRECT, "root"), (gw_host, USER)):
            tput[host].append(logs_throughput(host, user, "gwbench-log"))
    row(f"docker logs ({args.log_mb} MB), best of 3", max(tput[DIRECT]), max(tput[gw_host]), "MB/s")


def bench_follow(args, gw_host, label):
    sh(USER, gw_host, "run", "-d", *label, "--name", "gwbench-tick", IMAGE, "sh", "-c",
       "while :; do date +%s.%N; sleep 0.05; done")  # fmt: skip
    time.sleep(1)
    delays = follow_latency(((DIRECT, "root"), (gw_host, USER)), "gwbench-tick", args.follow_lines)
    for q in (50, 95):
        row(f"logs -f line->client p{q}", pct(delays[DIRECT], q) * 1e3, pct(delays[gw_host], q) * 1e3, "ms")
    sh("root", DIRECT, "rm", "-f", "gwbench-tick", check=False)


def bench_floods(args, sock, gw_host, log_path):
    print(f"\nfloods by {NOISE}; {USER}'s `docker ps -a -q` through the gateway:")
    print(f"  {'':<40} {'quiet':>10} {'flooded':>10}")
    quiet = pct([s for s in ps_samples(gw_host, args.samples) if s is not None], 50)
    if args.slowloris:
        out, summary = flood(sock, "trickle", args.slowloris, args.slowloris_s, gw_host, args.samples, log_path)
        flood_row(f"slowloris {args.slowloris} conns, {args.slowloris_s:g} s", quiet, out, json.dumps(summary))
    for count in [int(c) for c in args.idle.split(",") if c.strip()]:
        out, summary = flood(sock, "idle", count, 0, gw_host, args.samples, log_path)
        flood_row(f"{count} idle conns", quiet, out, json.dumps(summary))
        after = ps_once(gw_host)
        print(f"    after the flood closed: ps {'failed' if after is None else f'{after * 1e3:.1f} ms'}", flush=True)


def _create_one(host: str, user: str, names: list, label: list) -> None:
    names.append(f"gwbench-c{len(names)}-{user}")
    sh(user, host, "create", *label, "--name", names[-1], IMAGE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--log-mb", type=int, default=100)
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--follow-lines", type=int, default=150)
    parser.add_argument("--slowloris", type=int, default=500, help="trickling connections (default 500)")
    parser.add_argument("--slowloris-s", type=float, default=40.0, help="how long they trickle (default 40 s)")
    parser.add_argument("--idle", default="1000,20000", help="idle connection counts (default 1000,20000)")
    parser.add_argument("--sections", default="basic,logs,follow,floods", help="which parts to run (default: all)")
    parser.add_argument(
        "--gateway-src",
        default="",
        help="run the gateway from another copy of the ds01 package (a directory holding ds01/, e.g. from "
        "`git archive REV plugins/module_utils/ds01`) to compare two versions",
    )
    args = parser.parse_args()
    if os.geteuid():
        sys.exit("run as root: the benchmark creates Unix users and starts the gateway")
    for user in (USER, NOISE):
        if subprocess.run(["id", user], capture_output=True, check=False).returncode:
            subprocess.run(["useradd", "-m", "-G", "docker", user], check=True)
    root = Path(tempfile.mkdtemp(prefix="ds01-gwbench-", dir="/tmp"))
    os.chmod(root, 0o755)
    gw, sock = start_gateway(root, args.gateway_src)
    sections = set(args.sections.split(","))
    gw_host = f"unix://{sock}"
    label = ["--network", "none", "--label", "ds01.bench=1"]
    try:
        if "basic" in sections:
            bench_basic(args, gw_host, label)
        if "logs" in sections:
            bench_logs(args, gw_host, label)
        if "follow" in sections:
            bench_follow(args, gw_host, label)
        if "floods" in sections:
            bench_floods(args, sock, gw_host, root / "gw.log")
        print(f"\ngateway alive at the end: {gw.poll() is None}")
    finally:
        subprocess.run(
            f"{DOCKER} -H {DIRECT} ps -aq --filter label=ds01.bench=1 | xargs -r {DOCKER} -H {DIRECT} rm -f",
            shell=True,
            capture_output=True,
            check=False,
        )
        gw.terminate()
        try:
            gw.wait(10)
        except subprocess.TimeoutExpired:
            gw.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
