"""Fixtures of the gateway's adversarial corpus; the harness itself is tests/integration/gwharness.py."""

from __future__ import annotations

import pytest
from gwharness import Harness, HarnessError, start_gateway


@pytest.fixture(scope="session")
def attack_gw(repo_root, docker_client, test_label) -> Harness:
    """A gateway on a temp socket with users atk1 (attacker), atk2 (victim), atkadm (admin) and canaries.

    Everything the corpus made (named with ``attack_gw.prefix`` or labelled with the session label)
    is removed at the end of the session.
    """
    try:
        harness = start_gateway(repo_root, docker_client, str(test_label))
    except HarnessError as exc:
        pytest.fail(str(exc))
    yield harness
    harness.close()


@pytest.fixture(autouse=True)
def _networks_of_a_test_removed(request):
    """A user may have 4 networks (the gateway's cap): a corpus test's networks go when it ends, so the
    tests after it start from none. Only for tests that use the attack gateway."""
    if "attack_gw" not in request.fixturenames:
        yield
        return
    harness = request.getfixturevalue("attack_gw")
    before = {net["Id"] for net in harness.client.api.networks()}
    yield
    for net in harness.client.api.networks():
        if net["Id"] not in before and net["Name"].startswith(harness.prefix) and not net.get("Containers"):
            try:
                harness.client.api.remove_network(net["Id"])
            except Exception:  # still in use by a container the test left: the session cleanup takes it
                continue
