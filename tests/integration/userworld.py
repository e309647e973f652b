"""Ordinary Unix users running ``ds01`` and ``docker`` through a real gateway on a private dockerd.

Shared by ``test_container_cli.py`` and ``test_user_docs.py``. ``user_world(...)`` makes the users
(``useradd -m``, removed afterwards with their homes), a private dockerd (its own data root, the test
images loaded into it) that finds a stand-in ``nvidia-container-runtime-hook`` on its PATH, a copy of
the core the users can execute with Debian's ``/usr/bin/python3``, and ``ds01 gateway serve`` on a temp
socket in front of the daemon with a fake GPU topology. GPUs are faked at the NVIDIA hook and the
topology file only; the daemon, the gateway, the allocator and the users are real.

This machine has no NVIDIA container toolkit: dockerd registers its ``gpu`` device driver only when
``nvidia-container-runtime-hook`` exists, and runs it as the container's prestart hook; the stand-in
accepts the container and does nothing, so GPU containers start with the ``NVIDIA_VISIBLE_DEVICES`` the
daemon sets.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import docker
from private_dockerd import PrivateDockerd

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "plugins" / "module_utils" / "ds01"
PYTHON = "/usr/bin/python3"
DOCKER_BIN = shutil.which("docker", path="/usr/local/bin:/usr/bin") or "docker"
FAKE_HOOK = (
    "#!/bin/sh\n# stands in for the NVIDIA container toolkit: accept the container, change nothing\ncat >/dev/null\n"
)
IMAGE = os.environ.get("DS01_IMAGE_MIN", "local/debian-min:bookworm")
EMPTY_IMAGE = os.environ.get("DS01_IMAGE_EMPTY", "local/empty:latest")


class WorldError(Exception):
    """The world could not be set up (the message says what to do)."""


class World:
    def __init__(self, root: Path, socket_path: str, engine) -> None:
        self.root = root
        self.socket = socket_path
        self.engine = engine  # root's SDK client on the private daemon's own socket

    def ds01(self, user: str, *args: str) -> subprocess.CompletedProcess:
        """``ds01 --config … ARGS`` as ``user``, with an environment like a login's."""
        home = pwd.getpwnam(user).pw_dir
        environ = {
            "PATH": "/usr/bin:/bin",
            "HOME": home,
            "PYTHONPATH": str(self.root / "pkg"),
            "DOCKER_HOST": f"unix://{self.socket}",
            "LC_ALL": "C.UTF-8",
        }
        argv = [PYTHON, "-m", "ds01", "--config", str(self.root / "resource-limits.yaml"), *args]
        env_args = ["env", "-i", *(f"{k}={v}" for k, v in environ.items())]
        return subprocess.run(
            ["runuser", "-u", user, "--", *env_args, *argv], capture_output=True, text=True, check=False, cwd="/"
        )

    def docker(self, user: str, *args: str) -> subprocess.CompletedProcess:
        environ = {"PATH": "/usr/bin:/bin", "HOME": pwd.getpwnam(user).pw_dir, "DOCKER_HOST": f"unix://{self.socket}"}
        env_args = ["env", "-i", *(f"{k}={v}" for k, v in environ.items())]
        return subprocess.run(
            ["runuser", "-u", user, "--", *env_args, DOCKER_BIN, *args], capture_output=True, text=True, check=False
        )


@contextlib.contextmanager
def user_world(
    repo_root: Path,
    docker_client,
    users: tuple,
    limits: str,
    topology: str,
    files: Mapping[str, Path] = (),
    prefix: str = "ds01-deploy-",
) -> Iterator[World]:
    """The world above; ``limits`` is the text of resource-limits.yaml, ``files`` more files (name → source,
    a file or a directory) copied beside it, e.g. the lab's ``groups/`` and ``lifecycle-exemptions.yaml``."""
    if os.geteuid() != 0:
        raise WorldError("make test runs as root: these tests create Unix users and run as them")
    for image in (IMAGE, EMPTY_IMAGE):
        try:
            docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            raise WorldError(f"image {image} does not exist: run `make images`") from None
    made = []
    for name in users:
        if subprocess.run(["id", name], capture_output=True, check=False).returncode != 0:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
            made.append(name)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o755)
    for sub in ("log", "run", "state", "hook", "daemon"):
        (root / sub).mkdir()
    hook = root / "hook" / "nvidia-container-runtime-hook"
    hook.write_text(FAKE_HOOK)
    hook.chmod(0o755)
    for name, source in dict(files).items():
        if Path(source).is_dir():
            shutil.copytree(source, root / name)
        else:
            shutil.copy(source, root / name)
    (root / "resource-limits.yaml").write_text(limits)
    (root / "topology.yaml").write_text(topology)
    shutil.copytree(CORE, root / "pkg" / "ds01", ignore=shutil.ignore_patterns("__pycache__"))
    daemon = PrivateDockerd(str(root / "daemon"))
    proc = None
    log = open(root / "gateway.log", "w")  # noqa: SIM115 - closed at teardown
    try:
        daemon.start(env={**os.environ, "PATH": f"{hook.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
        saved = subprocess.Popen([DOCKER_BIN, "save", IMAGE, EMPTY_IMAGE], stdout=subprocess.PIPE)
        subprocess.run(
            [DOCKER_BIN, "-H", daemon.host, "load", "-q"], stdin=saved.stdout, check=True, capture_output=True
        )
        saved.stdout.close()
        if saved.wait() != 0:
            raise WorldError(f"`docker save {IMAGE} {EMPTY_IMAGE}` failed")
        sock = str(root / "gw.sock")
        proc = subprocess.Popen(
            [
                str(repo_root / ".venv/bin/ds01"),
                "--config",
                str(root / "resource-limits.yaml"),
                "gateway",
                "serve",
                "--listen",
                sock,
                "--upstream",
                daemon.path,
                "--socket-group",
                "docker",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DS01_GPU_TOPOLOGY": str(root / "topology.yaml")},
        )
        while not os.path.exists(sock):
            if proc.poll() is not None:
                raise WorldError("the gateway did not start:\n" + (root / "gateway.log").read_text())
            time.sleep(0.1)
        client = docker.DockerClient(base_url=daemon.host)
        yield World(root, sock, client)
        client.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        log.close()
        print((root / "gateway.log").read_text()[-3000:])
        daemon.stop()  # its containers, images and data root go with the temp directory
        shutil.rmtree(root, ignore_errors=True)
        for name in made:
            subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
