"""Connection floods through the gateway by real users on the real daemon (rule C9).

A gateway runs in this process (a thread with its own event loop) on a temp socket in front of
/var/run/docker.sock, with a 1 s head timeout so a slowloris is cut off quickly, and the default
per-uid cap (256). ``gwconnflood`` floods it from a ``python3`` run as that user (``runuser``);
``gwconnps`` runs the real docker CLI through it meanwhile. Correctness only: how much the flood
slows ``docker ps`` is measured by benchmarks/gateway.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import server

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

FLOODER, OTHER = "gwconnflood", "gwconnps"
DOCKER_BIN = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"

# argv: socket, mode (idle | trickle), count. Opens the connections, prints "ready", then waits for
# a line on stdin (idle) or until the gateway has closed every connection (trickle, bytes sent one
# at a time), and prints per-connection what the gateway sent back.
FLOOD = textwrap.dedent(
    r"""
    import json, resource, select, socket, sys, time
    path, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        if mode == "trickle":
            s.sendall(b"GET /v1.41/containers/json HTTP/1.1\r\n")
        s.setblocking(False)
        socks.append(s)
    print("ready", flush=True)
    answers = {}
    if mode == "idle":
        sys.stdin.readline()
    deadline = time.monotonic() + 120
    while len(answers) < len(socks) and time.monotonic() < deadline:
        for i, s in enumerate(socks):
            if i in answers:
                continue
            try:
                data = s.recv(4096)
            except BlockingIOError:
                if mode == "trickle":
                    try:
                        s.send(b"X")
                    except OSError:
                        answers[i] = "write failed"
                continue
            except OSError as exc:
                data = str(exc).encode()
            answers[i] = data.decode(errors="replace")
        if mode == "idle":
            break  # the held ones stay silent: report what came back so far
        time.sleep(0.2)
    print(json.dumps(answers), flush=True)
    """
)


def _ensure_user(name: str) -> None:
    if subprocess.run(["id", name], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-G", "docker", name], check=True)


@pytest.fixture(scope="module")
def gateway_socket():
    if os.geteuid() != 0:
        pytest.fail("these tests create Unix users and run as them: run them as root (make integration)")
    for user in (FLOODER, OTHER):
        _ensure_user(user)
    root = Path(tempfile.mkdtemp(prefix="ds01-gwconn-", dir="/tmp"))
    os.chmod(root, 0o755)
    for sub in ("log", "run", "state"):
        (root / sub).mkdir()
    (root / "resource-limits.yaml").write_text("paths: {state_dir: state, log_dir: log, run_dir: run}\n")
    sock = str(root / "gw.sock")
    loop = asyncio.new_event_loop()
    gw = server.Gateway(
        str(root / "resource-limits.yaml"),
        listen=sock,
        upstream="/var/run/docker.sock",
        socket_group="docker",
        head_timeout_s=1.0,
        idle_timeout_s=60.0,
    )
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(gw.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30), "the gateway did not start"
    yield sock
    loop.call_soon_threadsafe(gw.server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    shutil.rmtree(root, ignore_errors=True)


def _docker(user: str, sock: str, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": f"/home/{user}", "DOCKER_HOST": f"unix://{sock}"}
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()], DOCKER_BIN, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _flood(sock: str, mode: str, count: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["runuser", "-u", FLOODER, "--", "/usr/bin/python3", "-c", FLOOD, sock, mode, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _answers(proc: subprocess.Popen, release: bool) -> dict:
    stdout, _err = proc.communicate("go\n" if release else "", timeout=180)
    return json.loads(stdout.strip().splitlines()[-1])


def test_slowloris_is_cut_off_while_another_user_is_served(gateway_socket):
    flood = _flood(gateway_socket, "trickle", 40)
    ps = _docker(OTHER, gateway_socket, "ps", "-a")
    answers = _answers(flood, release=False)
    assert ps.returncode == 0 and ps.stdout.startswith("CONTAINER ID"), ps.stderr
    assert len(answers) == 40
    assert all(a.startswith("HTTP/1.1 408 Request Timeout") for a in answers.values()), set(answers.values())


def test_a_thousand_idle_connections_do_not_stop_another_user(gateway_socket):
    flood = _flood(gateway_socket, "idle", 1000)
    try:
        ps = _docker(OTHER, gateway_socket, "ps", "-a")
        capped = _docker(FLOODER, gateway_socket, "ps", "-a")
    finally:
        answers = _answers(flood, release=True)
    assert ps.returncode == 0 and ps.stdout.startswith("CONTAINER ID"), ps.stderr
    refused = [a for a in answers.values() if a.startswith("HTTP/1.1 429")]
    assert len(refused) == 1000 - server.MAX_CONNECTIONS_PER_UID
    assert all("connections open to the Docker socket" in a for a in refused)
    # the flooder's own client at the cap is told why, in a sentence
    assert capped.returncode != 0 and "connections open to the Docker socket" in capped.stderr, capped.stderr
    # the cap is per connection held: once the flood is gone the flooder is served again
    for _attempt in range(40):  # until the gateway has seen the flooder's connections close
        again = _docker(FLOODER, gateway_socket, "ps", "-a")
        if again.returncode == 0:
            break
        time.sleep(0.25)
    assert again.returncode == 0, again.stderr
