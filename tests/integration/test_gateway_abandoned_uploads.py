"""A streamed upload its client abandons or trickles must not hold the daemon (attack round 12, F1).

For ``PUT /containers/{id}/archive`` dockerd holds the container's lock until the tar has arrived: no inspect,
kill or remove of it gets through, root's included. Before the fix, a client that declared 1 GB, sent a tar header
and went away (or just stopped sending) left the gateway's connection to the daemon open for ever, so the container
stayed locked, and every user's ``--gpus`` create hung behind the allocator's inspect of it.

A gateway runs in this process (a thread with its own event loop) in front of /var/run/docker.sock with a 2 s body
timeout and the demo's fake GPU topology; ``gwupload`` uploads, ``gwupother`` asks for a GPU, both as real users
(``runuser``, the docker CLI and python3). The evidence is root's: ``docker inspect`` on the daemon's own socket
answers (the lock is gone), and what the daemon stored for the other user's GPU container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import server

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

UPLOADER, OTHER = "gwupload", "gwupother"
DOCKER_BIN = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"
ROOT_DOCKER = [DOCKER_BIN, "-H", "unix:///var/run/docker.sock"]
IMAGE = os.environ.get("DS01_IMAGE_MIN", "local/debian-min:bookworm")
EMPTY = os.environ.get("DS01_IMAGE_EMPTY", "local/empty:latest")
TOPOLOGY = Path(__file__).resolve().parents[1] / "fixtures" / "topology" / "demo.yaml"
BODY_TIMEOUT_S = 2.0

# argv: socket, container, mode (close | stall | trickle). Sends the head of an archive upload that declares 1 GB,
# a tar header for a 1 GB file and 1 KiB of it; then closes (close), waits for the gateway's answer (stall), or
# keeps sending until killed or cut off (trickle: 64 KiB every 0.5 s; slow: 1 KiB every 0.5 s). Prints "sent",
# then (stall, or a trickle cut off) the status line that came back.
UPLOAD = textwrap.dedent(
    r"""
    import io, socket, sys, tarfile, time
    path, container, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    member = tarfile.TarInfo("big")
    member.size = 10**9
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(
        f"PUT /v1.41/containers/{container}/archive?path=/tmp HTTP/1.1\r\nHost: docker\r\n"
        "Content-Type: application/x-tar\r\nContent-Length: 1000000000\r\n\r\n".encode()
        + member.tobuf(format=tarfile.USTAR_FORMAT) + b"x" * 1024
    )
    print("sent", flush=True)
    if mode == "close":
        s.close()
    elif mode == "stall":
        s.settimeout(30)
        print(s.recv(4096).decode(errors="replace").split("\r\n")[0], flush=True)
    else:  # trickle: 64 KiB every 0.5 s, well over the gateway's floor; slow: 1 KiB every 0.5 s, under it
        piece = b"x" * (65536 if mode == "trickle" else 1024)
        s.settimeout(0.5)
        while True:
            time.sleep(0.5)
            try:
                s.sendall(piece)
            except OSError:
                break
        s.settimeout(10)
        try:
            print(s.recv(4096).decode(errors="replace").split("\r\n")[0], flush=True)
        except OSError as exc:
            print(f"no answer: {exc}", flush=True)
    """
)


def _ensure_user(name: str) -> None:
    if subprocess.run(["id", name], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)


@pytest.fixture(scope="module")
def gateway_socket():
    yield from _gateway()


@pytest.fixture(scope="module")
def capped_socket():
    """A gateway that lets one user hold only 3 connections (the cap is MAX_CONNECTIONS_PER_UID otherwise)."""
    yield from _gateway(max_connections_per_uid=3)


def _gateway(**options):
    if os.geteuid() != 0:
        pytest.fail("these tests create Unix users and run as them: run them as root (make integration)")
    for user in (UPLOADER, OTHER):
        _ensure_user(user)
    root = Path(tempfile.mkdtemp(prefix="ds01-gwupload-", dir="/tmp"))
    os.chmod(root, 0o755)
    for sub in ("log", "run", "state"):
        (root / sub).mkdir()
    (root / "resource-limits.yaml").write_text(
        "default_group: student\n"
        "groups:\n  student: {max_gpu_equivalents: 1.0, max_containers_per_user: 4}\n"
        "paths: {state_dir: state, log_dir: log, run_dir: run}\n"
        f"gpu_allocation: {{backend: fake, topology: {TOPOLOGY}}}\n"
    )
    sock = str(root / "gw.sock")
    loop = asyncio.new_event_loop()
    gw = server.Gateway(
        str(root / "resource-limits.yaml"),
        listen=sock,
        upstream="/var/run/docker.sock",
        socket_group="docker",
        body_timeout_s=BODY_TIMEOUT_S,
        **options,
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
    for user in (UPLOADER, OTHER):
        left = subprocess.run(
            [*ROOT_DOCKER, "ps", "-aq", "--filter", f"label=ds01.user={user}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if left:
            subprocess.run([*ROOT_DOCKER, "rm", "-f", *left], capture_output=True, timeout=120, check=False)
    shutil.rmtree(root, ignore_errors=True)


def _docker(user: str, sock: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": f"/home/{user}", "DOCKER_HOST": f"unix://{sock}"}
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()], DOCKER_BIN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _root_inspect(name: str, timeout_s: float) -> subprocess.CompletedProcess:
    """Root's inspect on the daemon's own socket, given up after ``timeout_s`` (rc 124: the daemon holds it)."""
    return subprocess.run(
        ["timeout", str(timeout_s), *ROOT_DOCKER, "inspect", name], capture_output=True, text=True, check=False
    )


def _running_container(sock: str) -> str:
    name = f"gwup-{uuid.uuid4().hex[:8]}"
    run = _docker(UPLOADER, sock, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "300")
    assert run.returncode == 0, run.stderr
    return name


def _upload(sock: str, container: str, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["runuser", "-u", UPLOADER, "--", "/usr/bin/python3", "-c", UPLOAD, sock, container, mode],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # runuser and its python3 are one process group: _stop ends both
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _released(name: str, give_up_s: float) -> None:
    """Root's inspect of ``name`` answers again (an unreleased lock never does: give up after ``give_up_s``)."""
    start = time.monotonic()
    while time.monotonic() - start < give_up_s:
        if _root_inspect(name, 3).returncode == 0:
            return
    pytest.fail(f"the daemon still holds {name} {give_up_s:g} s after its upload ended")


def test_an_upload_whose_client_goes_away_releases_the_container_at_once(gateway_socket):
    name = _running_container(gateway_socket)
    upload = _upload(gateway_socket, name, "close")
    assert upload.wait(10) == 0
    _released(name, 20)
    removed = subprocess.run([*ROOT_DOCKER, "rm", "-f", name], capture_output=True, text=True, timeout=30, check=False)
    assert removed.returncode == 0, removed.stderr


def test_an_upload_that_stops_sending_is_cut_off_after_the_body_timeout(gateway_socket):
    name = _running_container(gateway_socket)
    upload = _upload(gateway_socket, name, "stall")
    out, _err = upload.communicate(timeout=40)
    assert out.strip().splitlines()[-1] == "HTTP/1.1 408 Request Timeout", out
    _released(name, 20)
    # the container is still there and running (the daemon kept what it had unpacked of the user's own upload)
    state = json.loads(_root_inspect(name, 10).stdout)[0]["State"]
    assert state["Running"] is True, state


def test_a_container_locked_by_its_owners_upload_does_not_stop_another_users_gpu_request(gateway_socket):
    name = _running_container(gateway_socket)
    upload = _upload(gateway_socket, name, "trickle")
    try:
        time.sleep(1)
        assert _root_inspect(name, 3).returncode == 124  # the daemon really holds it while the upload goes on
        gpu_name = f"gwup-gpu-{uuid.uuid4().hex[:8]}"
        asked = ("create", "--name", gpu_name, "--network", "none", "--gpus", "1", EMPTY, "true")
        made = _docker(OTHER, gateway_socket, *asked)
        assert made.returncode == 0, made.stderr
        # granted while the upload still holds the container: the allocator never waited for it
        assert _root_inspect(name, 3).returncode == 124
        assert upload.poll() is None
        stored = json.loads(_root_inspect(gpu_name, 10).stdout)[0]
        [request] = stored["HostConfig"]["DeviceRequests"]
        assert len(request["DeviceIDs"]) == 1 and stored["Config"]["Labels"]["ds01.user"] == OTHER
    finally:
        _stop(upload)
    _released(name, 20)


def test_streams_whose_clients_were_interrupted_give_their_connections_back(capped_socket):
    """Round 13 (F2): an interrupted `docker events` (or `logs -f`, `wait`) left the gateway holding its connection
    and the daemon's for as long as the daemon said nothing, each one counted against the user's connection cap,
    until every command of theirs was refused. Three are interrupted here, at a cap of 3."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": f"/home/{UPLOADER}",
        "DOCKER_HOST": f"unix://{capped_socket}",
    }
    argv = ["runuser", "-u", UPLOADER, "--", "env", *[f"{k}={v}" for k, v in env.items()], DOCKER_BIN, "events"]
    streams = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)]
    streams += [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)]
    streams += [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)]
    time.sleep(2)
    held = _docker(UPLOADER, capped_socket, "ps", "-q")
    assert held.returncode != 0 and "connections open" in held.stderr, held  # the cap is reached: 3 streams hold it
    for stream in streams:
        _stop(stream)
    start = time.monotonic()
    while True:  # the gateway notices each client gone within a few seconds of quiet
        again = _docker(UPLOADER, capped_socket, "ps", "-q")
        if again.returncode == 0:
            break
        assert time.monotonic() - start < 60, again.stderr  # a connection never given back fails here
        time.sleep(1)


def test_an_upload_trickled_below_the_floor_is_cut_off(gateway_socket):
    """Round 13: an upload trickled a byte every few seconds never stalled, so its owner could keep their container
    locked in the daemon (past the lifecycle's reach) for as long as they liked. Under 64 KiB in a body timeout
    (2 s here) it is cut off, and the daemon lets the container go."""
    name = _running_container(gateway_socket)
    upload = _upload(gateway_socket, name, "slow")
    out, _err = upload.communicate(timeout=60)
    assert out.strip().splitlines()[-1] == "HTTP/1.1 408 Request Timeout", out
    _released(name, 20)
