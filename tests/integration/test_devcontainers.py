"""The real Dev Containers CLI (``@devcontainers/cli`` from npm) run by an ordinary user through a real gateway.

``devcontainer up`` and ``devcontainer exec`` run as the Unix user ``dcu1`` (made with ``useradd -m``) with
``DOCKER_HOST=unix://<gateway socket>``, on the world of ``userworld.py``: a private dockerd, the test image
loaded into it, a stand-in ``nvidia-container-runtime-hook`` and a fake topology of one whole GPU. The
``devcontainer.json`` is the one docs/users/devcontainers.md tells the lab to hand out (image, ``runArgs``
with a GPU request, a bind mount, ``postCreateCommand``).

The CLI is installed by ``scripts/devcontainer-cli.sh`` under ``.cache/devcontainers-cli/`` (once; the
fixture calls it, so a fresh ``make test`` installs it). Evidence is read as root on the private daemon's
own socket: the container's ds01 labels, its cgroup parent, its DeviceRequests, and the file the user's
``postCreateCommand`` wrote, with its owner.
"""

from __future__ import annotations

import json
import pwd
import subprocess
from pathlib import Path

import pytest
from userworld import IMAGE, WorldError, user_world

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import identity

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

USER = "dcu1"
GPU_UUID = "GPU-dcdcdcdc-0000-4000-8000-000000000001"

LIMITS = """
default_group: student
groups:
  student:
    max_containers_per_user: 4
    max_gpu_equivalents: 1.0
    max_gpu_slots_per_container: 1
    allow_full_gpu: true
    idle_timeout_h: 5
    max_runtime_h: 50
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

DOC = Path(__file__).resolve().parents[2] / "docs" / "users" / "devcontainers.md"
DOC_MARK = "<!-- devcontainer.json: tested by tests/integration/test_devcontainers.py -->"


def handed_out() -> dict:
    """The devcontainer.json docs/users/devcontainers.md hands out (the ```json block after DOC_MARK), with the
    test image in place of the documented one."""
    text = DOC.read_text()
    if DOC_MARK not in text:
        pytest.fail(f"{DOC} lost its marked devcontainer.json ({DOC_MARK})")
    block = text.split(DOC_MARK, 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    config = json.loads(block)
    config["image"] = IMAGE if config["image"] == "local/debian-min:bookworm" else config["image"]
    return config


@pytest.fixture(scope="module")
def devcontainer_cli(repo_root) -> str:
    """The ``devcontainer`` program, installed by scripts/devcontainer-cli.sh when missing."""
    done = subprocess.run(
        [str(repo_root / "scripts" / "devcontainer-cli.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail("scripts/devcontainer-cli.sh failed:\n" + done.stderr)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def world(repo_root, docker_client):
    try:
        with user_world(
            repo_root, docker_client, (USER,), LIMITS.format(image=IMAGE), TOPOLOGY, prefix="ds01-devc-"
        ) as made:
            yield made
    except WorldError as exc:
        pytest.fail(str(exc))


def _devcontainer(world, cli: str, user: str, *args: str) -> subprocess.CompletedProcess:
    """``devcontainer ARGS`` as ``user``, through the gateway, with a login-like environment."""
    home = pwd.getpwnam(user).pw_dir
    environ = {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": f"{home}/tmp",  # the CLI's /tmp/devcontainercli-<user> would outlive this user's uid
        "DOCKER_HOST": f"unix://{world.socket}",
        "LC_ALL": "C.UTF-8",
    }
    env_args = ["env", "-i", *(f"{k}={v}" for k, v in environ.items())]
    return subprocess.run(
        ["runuser", "-u", user, "--", *env_args, cli, *args], capture_output=True, text=True, check=False, cwd=home
    )


def _project(user: str, config: dict) -> Path:
    """~/project with .devcontainer/devcontainer.json and ~/datasets, made by the user (runuser)."""
    home = Path(pwd.getpwnam(user).pw_dir)
    script = (
        "mkdir -p ~/tmp ~/project/.devcontainer ~/datasets && echo rows > ~/datasets/train.csv && "
        "cat > ~/project/.devcontainer/devcontainer.json"
    )
    subprocess.run(["runuser", "-u", user, "--", "sh", "-c", script], input=json.dumps(config), text=True, check=True)
    return home / "project"


def test_devcontainer_up_and_exec_get_the_users_labels_slice_gpu_and_post_create(world, devcontainer_cli):
    user = pwd.getpwnam(USER)
    project = _project(USER, handed_out())

    up = _devcontainer(world, devcontainer_cli, USER, "up", "--workspace-folder", str(project))
    assert up.returncode == 0, up.stdout + up.stderr
    result = json.loads(up.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "success", up.stdout
    container_id = result["containerId"]

    # root's view on the daemon's own socket
    attrs = world.engine.api.inspect_container(container_id)
    labels = attrs["Config"]["Labels"]
    host = attrs["HostConfig"]
    assert attrs["State"]["Running"]
    assert labels["ds01.user"] == USER
    assert labels["ds01.container_type"] == "devcontainer"
    assert labels["devcontainer.local_folder"] == str(project)
    assert host["CgroupParent"] == identity.slice_unit("student", identity.sanitize_username(USER))
    assert [r["DeviceIDs"] for r in host["DeviceRequests"]] == [[GPU_UUID]]
    assert labels["ds01.gpu.uuids"] == GPU_UUID
    assert attrs["Config"]["User"] == f"{user.pw_uid}:{user.pw_gid}"
    assert host["NetworkMode"] == "none"

    # postCreateCommand ran, as the user, with the bind mount in place
    ran = project / ".post-create-ran"
    assert ran.read_text().split() == [str(user.pw_uid), "train.csv"]
    assert ran.stat().st_uid == user.pw_uid

    inside = _devcontainer(
        world, devcontainer_cli, USER, "exec", "--workspace-folder", str(project), "sh", "-c", "id -u; pwd"
    )
    assert inside.returncode == 0, inside.stdout + inside.stderr
    assert inside.stdout.split()[-2:] == [str(user.pw_uid), "/workspaces/project"]

    world.engine.api.remove_container(container_id, force=True)
