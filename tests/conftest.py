"""Session fixtures shared by every suite: the checkout, the ds01 CLI, and the real Docker engine.

Docker fixtures never skip: a test that asks for the engine or an image and cannot have it
fails with a sentence saying which ``make`` target provides it (``make docker``, ``make images``).

Every container a test creates must carry the session's label (``test_label``)::

    client.containers.create(image, labels={**test_label.labels, "ds01.user": "alice"}, ...)
    subprocess.run(["docker", "create", "--label", test_label, ...])

At the end of the session every container carrying it is removed, whatever the tests left.
The label value is unique per session, so concurrent sessions on one engine never touch each
other's containers.
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_LABEL_KEY = "ds01.test"

# The images scripts/images.sh builds (same environment overrides).
EMPTY_IMAGE = os.environ.get("DS01_IMAGE_EMPTY", "local/empty:latest")
RUNNABLE_IMAGE = os.environ.get("DS01_IMAGE_MIN", "local/debian-min:bookworm")
SYSTEMD_IMAGE = os.environ.get("DS01_IMAGE_SYSTEMD", "local/debian-systemd:bookworm")


class SessionLabel(str):
    """``ds01.test=<uuid>``: usable as a ``docker --label`` / ``--filter label=`` value as is.

    ``.key`` and ``.value`` are its halves, ``.labels`` the dict to pass as container labels.
    """

    key: str
    value: str

    def __new__(cls, key: str, value: str) -> SessionLabel:
        self = super().__new__(cls, f"{key}={value}")
        self.key = key
        self.value = value
        return self

    @property
    def labels(self) -> dict[str, str]:
        return {self.key: self.value}


def _docker_unreachable(why: object) -> str:
    return (
        f"the Docker engine is not reachable ({why}). These tests need a real engine: "
        "run `make docker` (it starts dockerd when none answers), or `make test`."
    )


def remove_labelled_containers(label: str) -> list[str]:
    """Force-remove (with volumes) every container carrying ``label``; return their names."""
    import docker

    client = docker.from_env()
    try:
        removed = []
        for container in client.containers.list(all=True, filters={"label": label}):
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                continue
            removed.append(container.name)
        return removed
    finally:
        client.close()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout (= the collection root)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def ds01_bin(repo_root: Path) -> Path:
    """``.venv/bin/ds01``: the CLI installed editable from this checkout by ``make venv``."""
    path = repo_root / ".venv" / "bin" / "ds01"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} does not exist: run `make venv` (it installs the checkout's ds01 CLI)")
    return path


@pytest.fixture(scope="session")
def test_label():
    """The session's container label; containers carrying it are removed when the session ends."""
    label = SessionLabel(TEST_LABEL_KEY, uuid.uuid4().hex)
    os.environ["DS01_TEST_LABEL"] = str(label)  # for subprocesses that create containers
    yield label
    try:
        removed = remove_labelled_containers(label)
    except Exception as exc:  # an edge: cleanup must not turn a passed session into an error
        warnings.warn(f"could not remove the containers labelled {label}: {exc!r}", stacklevel=1)
        return
    if removed:
        print(f"\nremoved {len(removed)} test container(s) labelled {label}: {', '.join(sorted(removed))}")


@pytest.fixture(scope="session")
def docker_client(test_label):
    """A docker SDK client for the engine ``make docker`` runs (API version negotiated)."""
    try:
        import docker
        import requests
    except ImportError as exc:
        pytest.fail(f"the docker SDK is not importable ({exc}): run `make venv`")
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        pytest.fail(_docker_unreachable(exc))
    yield client
    client.close()


def _require_image(client, name: str) -> str:
    import docker

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {name} does not exist: run `make images` (it builds the local test images)")
    return name


@pytest.fixture(scope="session")
def empty_image(docker_client) -> str:
    """An image with no files: for containers that are created and inspected, never started."""
    return _require_image(docker_client, EMPTY_IMAGE)


@pytest.fixture(scope="session")
def runnable_image(docker_client) -> str:
    """Debian minbase with python3, bash, coreutils; ``CMD sleep infinity``. Run it with ``network_mode="none"``."""
    return _require_image(docker_client, RUNNABLE_IMAGE)


@pytest.fixture(scope="session")
def systemd_image(docker_client) -> str:
    """Debian with systemd as ``/sbin/init`` (the molecule platform)."""
    return _require_image(docker_client, SYSTEMD_IMAGE)


# ``make test`` (scripts/pytest.sh) sets DS01_FORBID_SKIPS=1: there, a test that skips has not
# shown anything, so it fails with its skip reason instead of quietly counting as fine.
FORBID_SKIPS = os.environ.get("DS01_FORBID_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not FORBID_SKIPS:
        return
    if hasattr(report, "wasxfail"):
        # An expected failure (or an unexpected pass) shows nothing either: under `make test` it fails.
        report.outcome = "failed"
        report.longrepr = f"xfail during `make test`, where every test must pass as written: {report.wasxfail}"
        del report.wasxfail
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped during `make test`, where every test must run: {reason}"
