"""The test harness itself: the session fixtures reach a real Docker engine and its local images.

A container "holding" a GPU is a real container whose HostConfig carries an nvidia DeviceRequest;
it is created, never started (there is no NVIDIA runtime here), and Docker keeps the request
exactly as given: that is the record the allocator and the gateway read back.
"""

from __future__ import annotations

import docker
import pytest

pytestmark = pytest.mark.docker

FAKE_GPU = "GPU-00000000-0000-4000-8000-0000000000aa"
# Proves bash, python3 and coreutils are there, and which network interfaces the container sees.
SCRIPT = 'echo "hello from python$(python3 -c "import sys; print(sys.version_info[0])")"; ls /sys/class/net'


def test_created_container_keeps_its_gpu_device_request(docker_client, empty_image, test_label):
    # An owner no other test uses: later tests count containers per user on this same engine.
    owner = f"harness-{test_label.value[:8]}"
    container = docker_client.containers.create(
        empty_image,
        command=["/nonexistent"],
        labels={**test_label.labels, "ds01.user": owner},
        network_mode="none",
        device_requests=[docker.types.DeviceRequest(driver="nvidia", device_ids=[FAKE_GPU], capabilities=[["gpu"]])],
    )
    try:
        attrs = docker_client.api.inspect_container(container.id)
        # The session label finds it, as the end-of-session cleanup would.
        found = docker_client.containers.list(all=True, filters={"label": test_label})
    finally:
        container.remove(force=True)

    assert attrs["State"]["Status"] == "created"
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    [request] = attrs["HostConfig"]["DeviceRequests"]
    assert request["Driver"] == "nvidia"
    assert request["DeviceIDs"] == [FAKE_GPU]
    assert request["Capabilities"] == [["gpu"]]
    assert attrs["Config"]["Labels"]["ds01.user"] == owner
    assert container.id in {c.id for c in found}


def test_runnable_image_runs_a_command_without_network(docker_client, runnable_image, test_label):
    container = docker_client.containers.run(
        runnable_image,
        command=["bash", "-c", SCRIPT],
        labels=test_label.labels,
        network_mode="none",
        detach=True,
    )
    try:
        result = container.wait(timeout=120)
        logs = container.logs().decode()
    finally:
        container.remove(force=True)

    assert result["StatusCode"] == 0, logs
    greeting, *interfaces = logs.splitlines()
    assert greeting == "hello from python3"
    # network_mode none: loopback is the only interface the container sees.
    assert interfaces == ["lo"]
