"""A second, private dockerd for tests that stop and restart a daemon (never the shared engine).

Used by the detector's watcher test (tests/integration/test_detector_docker.py) and the fault suite
(tests/integration/test_faults_daemon.py). The daemon has its own data root, exec root, pidfile and
socket under ``root``; it runs without a bridge or iptables, so its containers need ``--network none``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def pings(path: str, timeout: float = 1.0) -> bool:
    """True when the daemon on the Unix socket ``path`` answers ``GET /_ping`` with 200 OK."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            piece = sock.recv(4096)
            if not piece:
                break
            data += piece
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        sock.close()


class PrivateDockerd:
    """A second dockerd with its own data root, exec root, pidfile and socket (never the shared one)."""

    def __init__(self, root):
        self.root = root
        self.path = os.path.join(root, "docker.sock")
        self.host = f"unix://{self.path}"  # the one the watcher uses
        self.side = f"unix://{os.path.join(root, 'side.sock')}"  # for the test alone
        self.listen = self.host
        self.proc = None
        self.driver = "overlay2"

    def start(self, listen=None, env=None):
        """Start the daemon (``env``: its environment, default this process's) and wait until it answers."""
        self.listen = listen or self.host
        log = open(os.path.join(self.root, "dockerd.log"), "ab")  # noqa: SIM115 - kept for the daemon's life
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                os.path.join(self.root, "data"),
                "--exec-root",
                os.path.join(self.root, "exec"),
                "--pidfile",
                os.path.join(self.root, "dockerd.pid"),
                "-H",
                self.listen,
                "--bridge",
                "none",
                "--iptables=false",
                "--ip-forward=false",
                "--storage-driver",
                self.driver,
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}")
            if subprocess.run(["docker", "-H", self.listen, "info"], capture_output=True, check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("dockerd did not become ready")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def docker(self, *args):
        return subprocess.run(["docker", "-H", self.listen, *args], capture_output=True, text=True, check=True).stdout
