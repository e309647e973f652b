"""Bind sources pinned to the checked directory (gateway/pins.py), against the attack that beat re-checks.

The attacker owns the bind source's parent, so between any check and dockerd's mount it can swap
the directory for a symlink to a place it cannot reach on the host. Here a process running as the
attacker swaps ``~/src`` and a symlink to a root-only directory with ``renameat2(RENAME_EXCHANGE)``
in a tight loop while the container is started, restarted and copied from many times; the effect
is judged by what the container could read and what ``docker cp`` returned, never by the status.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from gwharness import ATTACKER, IMAGE

ROUNDS = 25


@pytest.fixture(autouse=True)
def _own_containers_removed(attack_gw):
    """The attacker's quota is 3: whatever a test made for the attacker goes when it ends."""
    before = {item["Id"] for item in attack_gw.containers_of(ATTACKER)}
    yield
    for item in attack_gw.containers_of(ATTACKER):
        if item["Id"] not in before:
            attack_gw.client.api.remove_container(item["Id"], force=True, v=True)


FLIPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b, seconds = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3])
end = time.monotonic() + seconds
while time.monotonic() < end:
    libc.syscall(316, -100, a, -100, b, 2)  # renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
"""


def _secret_dir(tmp: Path) -> tuple[Path, str]:
    """A root-only directory holding a world-readable file: unreachable for the user on the host
    (no search permission on the parent), readable if a container mounts the inner directory."""
    outer = tmp / "root-only"
    inner = outer / "pub"
    inner.mkdir(parents=True)
    os.chmod(outer, 0o700)
    token = secrets.token_hex(8)
    (inner / "secret.txt").write_text(token)
    os.chmod(inner / "secret.txt", 0o644)
    return inner, token


def test_a_swapped_bind_source_is_never_mounted(attack_gw, tmp_path):
    h = attack_gw
    os.chmod(tmp_path, 0o755)
    inner, token = _secret_dir(tmp_path)
    work = h.scratch(ATTACKER)
    src, alt = work / "src", work / "alt"
    src.mkdir()
    (src / "mine.txt").write_text("mine")
    os.chown(src, h.uid(ATTACKER), h.gid(ATTACKER))
    alt.symlink_to(inner)
    os.lchown(alt, h.uid(ATTACKER), h.gid(ATTACKER))
    assert not h.can_read(ATTACKER, str(inner / "secret.txt"))  # the host denies it

    name = h.name("pin")
    created = h.cli(
        ATTACKER,
        "create",
        "--network",
        "none",
        "--name",
        name,
        "-v",
        f"{src}:/x",
        IMAGE,
        "sh",
        "-c",
        "cat /x/secret.txt /x/mine.txt 2>/dev/null; true",
    )
    assert created.returncode == 0, created.stderr
    flip_script = work / "flip.py"
    flip_script.write_text(FLIPPER)
    flipper = subprocess.Popen(
        ["runuser", "-u", ATTACKER, "--", "/usr/bin/python3", str(flip_script), str(src), str(alt), "120"]
    )
    seen = []
    try:
        for round_ in range(ROUNDS):
            verb = "restart" if round_ % 3 == 2 else "start"
            run = h.cli(ATTACKER, verb, *(["-a"] if verb == "start" else []), name, timeout=60)
            seen.append(run.stdout + run.stderr)
            if verb == "restart":
                h.cli(ATTACKER, "wait", name, timeout=60)
                seen.append(h.cli(ATTACKER, "logs", name, timeout=60).stdout)
            copied = h.api(ATTACKER, "GET", f"/containers/{name}/archive?path=/x/secret.txt")
            if copied[0] == 200:
                with tarfile.open(fileobj=io.BytesIO(copied[2])) as tar:
                    for member in tar.getmembers():
                        handle = tar.extractfile(member)
                        seen.append(handle.read().decode(errors="replace") if handle else "")
    finally:
        flipper.kill()
        flipper.wait()
    leaked = [text for text in seen if token in text]
    assert not leaked, f"the container read the root-only file through a swapped bind source: {leaked[:2]}"
    # the race really ran: rounds saw the attacker's own directory (mounted through the pin) or were
    # refused because the source was a symlink at that moment; never anything else
    assert any("mine" in text or "symbolic link" in text for text in seen), seen[:5]
    stored = h.stored(name)
    binds = stored["HostConfig"]["Binds"]
    assert binds and "/gateway/pins/" in binds[0], binds  # the daemon holds a pin, never the user's path
    assert not any(str(work) in b for b in binds)


def test_pins_dangle_after_the_start(attack_gw):
    """A start the gateway does not see (root on the daemon's socket) mounts an empty directory."""
    h = attack_gw
    work = h.scratch(ATTACKER)
    (work / "data.txt").write_text("data")
    name = h.name("pin")
    made = h.cli(ATTACKER, "create", "--network", "none", "--name", name, "-v", f"{work}:/x", IMAGE, "ls", "/x")
    assert made.returncode == 0, made.stderr
    through_gateway = h.cli(ATTACKER, "start", "-a", name, timeout=60)
    assert "data.txt" in through_gateway.stdout, through_gateway.stderr
    direct = subprocess.run(
        [shutil.which("docker") or "docker", "-H", "unix:///var/run/docker.sock", "start", "-a", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "data.txt" not in direct.stdout  # nothing the gateway did not pin is mounted
