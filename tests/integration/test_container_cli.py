"""``ds01 container deploy|list|stop|retire`` run by ordinary Unix users through a real gateway.

A gateway (``ds01 gateway serve``) runs on a temp socket in front of a private dockerd
(``private_dockerd.PrivateDockerd``, its own data root, the test image loaded into it) with a fake
topology of ONE whole GPU, so a second GPU container can only get it after the first is retired.

This machine has no NVIDIA container toolkit, so a container with a GPU request cannot start on the shared
engine. The private dockerd finds a stand-in ``nvidia-container-runtime-hook`` on its PATH (dockerd registers
its ``gpu`` device driver only when that program exists, and runs it as the container's prestart hook): the
stand-in accepts the container and does nothing, so GPU containers start with the ``NVIDIA_VISIBLE_DEVICES``
the daemon sets. GPUs are faked at that boundary and at the topology file only; the daemon, the gateway, the
allocator and the users are real.

Users ``dep1`` and ``dep2`` are made with ``useradd -m`` (removed afterwards, homes included); they run the
CLI as themselves through ``runuser`` with Debian's ``/usr/bin/python3 -m ds01`` over a copy of the core (the
checkout's venv interpreter lives under /root, which other users cannot execute), talking to the gateway
through ``$DOCKER_HOST`` like any Docker client. Evidence is read as root on the private daemon's socket
(docker SDK) and on the host's file system.
"""

from __future__ import annotations

import json
import pwd
import time
import uuid
from pathlib import Path

import docker
import pytest
from userworld import EMPTY_IMAGE, IMAGE, WorldError, user_world

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

USERS = ("dep1", "dep2")
GPU_UUID = "GPU-0d0d0d0d-0000-4000-8000-000000000001"

LIMITS = """
default_group: student
groups:
  student:
    max_containers_per_user: 4
    max_gpu_equivalents: 2.0
    max_gpu_slots_per_container: 1
    allow_full_gpu: true
    idle_timeout_h: 5
    max_runtime_h: 50
container_types:
  ds01: {{idle_timeout_h: 3, max_runtime_h: 12}}
images:
  allowed: ["{image}"]
  default: "{image}"
gpu_allocation:
  backend: fake
  topology: topology.yaml
paths:
  state_dir: state
  log_dir: log
  run_dir: run
"""
TOPOLOGY = f"""
gpus:
  - {{index: 0, uuid: {GPU_UUID}, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}}
"""


@pytest.fixture(scope="module")
def world(repo_root, docker_client):
    """Users, a private dockerd with the stand-in hook and the test image, and a gateway in front of it."""
    try:
        with user_world(repo_root, docker_client, USERS, LIMITS.format(image=IMAGE), TOPOLOGY) as made:
            yield made
    except WorldError as exc:
        pytest.fail(str(exc))


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _gone(client, name: str) -> bool:
    try:
        client.api.inspect_container(name)
    except docker.errors.NotFound:
        return True
    return False


def test_deploy_with_a_gpu_list_exec_retire_and_the_slot_goes_to_the_next_deploy(world):
    first, second = _name("dep-a"), _name("dep-b")
    user = pwd.getpwnam("dep1")
    workspace = Path(user.pw_dir) / "workspace" / first
    assert not workspace.exists()

    done = world.ds01("dep1", "container", "deploy", first, "--gpus", "1")
    assert done.returncode == 0, done.stderr
    assert f"docker exec -it {first} bash" in done.stdout
    assert "Attach to Running Container" in done.stdout
    assert "idle: stopped after 3 h without activity (container_types.ds01)" in done.stdout
    assert "runtime: stopped 12 h after it first started (container_types.ds01)" in done.stdout

    # root's view on the daemon's own socket: what the container really got
    attrs = world.engine.api.inspect_container(first)
    labels = attrs["Config"]["Labels"]
    assert attrs["State"]["Running"]
    assert labels["ds01.user"] == "dep1" and labels["ds01.container_type"] == "ds01"
    assert labels["ds01.gpu.slots"] == "0" and labels["ds01.gpu.uuids"] == GPU_UUID
    assert [r["DeviceIDs"] for r in attrs["HostConfig"]["DeviceRequests"]] == [[GPU_UUID]]
    assert attrs["Config"]["User"] == f"{user.pw_uid}:{user.pw_gid}"
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    assert [json.loads(labels["ds01.binds"])["sources"][0]["source"]] == [str(workspace)]
    assert [b.split(":")[1] for b in attrs["HostConfig"]["Binds"]] == ["/workspace"]
    assert workspace.is_dir() and workspace.stat().st_uid == user.pw_uid

    listed = world.ds01("dep1", "container", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)["containers"]}
    assert rows[first]["gpu_slots"] == ["0"] and rows[first]["gpu_uuids"] == [GPU_UUID]
    assert rows[first]["state"] == "running" and rows[first]["type"] == "ds01"
    assert rows[first]["workspace"] == str(workspace)
    assert rows[first]["limits"]["applies"] is True
    assert rows[first]["limits"]["idle_timeout_h"] == {"hours": 3.0, "from": "container_types.ds01", "exempt": None}
    assert rows[first]["limits"]["max_runtime_h"]["hours"] == 12.0
    others = world.ds01("dep2", "container", "list", "--json")
    assert others.returncode == 0 and json.loads(others.stdout)["containers"] == [], others.stdout

    inside = world.docker("dep1", "exec", first, "sh", "-c", "id -u; pwd; echo from-inside > /workspace/made-inside")
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.split() == [str(user.pw_uid), "/workspace"]
    made = workspace / "made-inside"
    assert made.read_text() == "from-inside\n" and made.stat().st_uid == user.pw_uid

    # the only GPU is held: a second deploy is refused with the gateway's sentence, after waiting a little
    refused = world.ds01("dep1", "container", "deploy", second, "--gpus", "1", "--wait", "3s")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "NO_GPU_AVAILABLE" in refused.stderr and "Waiting for a GPU" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _gone(world.engine, second)

    retired = world.ds01("dep1", "container", "retire", first)
    assert retired.returncode == 0, retired.stderr
    assert f"Your workspace {workspace} is kept." in retired.stdout
    assert _gone(world.engine, first)
    assert made.read_text() == "from-inside\n"

    again = world.ds01("dep1", "container", "deploy", second, "--gpus", "1")
    assert again.returncode == 0, again.stderr
    assert world.engine.api.inspect_container(second)["Config"]["Labels"]["ds01.gpu.slots"] == "0"
    stopped = world.ds01("dep1", "container", "stop", second)
    assert stopped.returncode == 0, stopped.stderr
    assert world.engine.api.inspect_container(second)["State"]["Running"] is False
    assert world.ds01("dep1", "container", "retire", second).returncode == 0
    assert _gone(world.engine, second)


def test_deploy_without_gpu_runs_the_given_command_in_the_chosen_workspace(world):
    name = _name("dep-c")
    home = Path(pwd.getpwnam("dep2").pw_dir)
    chosen = home / "projects" / "thesis"
    done = world.ds01(
        "dep2", "container", "deploy", name, "--workspace", str(chosen), "--", "sh", "-c", "echo $HOME > out; sleep 600"
    )
    assert done.returncode == 0, done.stderr
    assert "Idle and runtime limits stop only containers holding a GPU" in done.stdout
    attrs = world.engine.api.inspect_container(name)
    assert attrs["HostConfig"]["DeviceRequests"] in (None, [])
    assert attrs["Config"]["Cmd"] == ["sh", "-c", "echo $HOME > out; sleep 600"]
    out = chosen / "out"
    for _attempt in range(50):  # the command writes it once it runs
        if out.exists() and out.read_text():
            break
        time.sleep(0.1)
    assert out.read_text() == "/workspace\n"
    # dep1 cannot retire dep2's container: the gateway shows it only to its owner
    foreign = world.ds01("dep1", "container", "retire", name)
    assert foreign.returncode == 1 and "Traceback" not in foreign.stderr, foreign.stderr
    assert not _gone(world.engine, name)
    assert world.ds01("dep2", "container", "retire", name).returncode == 0
    assert _gone(world.engine, name) and chosen.is_dir()


def test_an_image_off_the_list_is_refused_with_the_list(world):
    name = _name("dep-d")
    refused = world.ds01("dep1", "container", "deploy", name, "--image", EMPTY_IMAGE)
    assert refused.returncode == 1
    assert f"image {EMPTY_IMAGE} is not on this lab's list of approved images: {IMAGE}" in refused.stderr
    assert _gone(world.engine, name)
