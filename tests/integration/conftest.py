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
