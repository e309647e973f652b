"""The detector's window on Docker: the full list, one container by id, and the event stream."""

from __future__ import annotations

import contextlib
from typing import Any, Optional

from .. import docker
from ..docker.sdk import DOCKER_ERRORS, HAS_DOCKER, APIError, DockerException, NotFound, ReadTimeout, RequestException


class DockerUnavailable(Exception):
    """Docker could not be asked (not installed, not running, not reachable)."""


class DockerSource:
    """The detector's window on Docker: the full list through the ``docker`` package, one container by
    id (after an event), and the event stream."""

    def __init__(self, timeout: float = 30.0) -> None:
        if not HAS_DOCKER:
            raise DockerUnavailable("the docker Python SDK is not installed")
        self.timeout = timeout
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            try:
                self._client = docker.client_from_env(self.timeout)
            except docker.DockerStateError as exc:
                raise DockerUnavailable(str(exc)) from exc
        return self._client

    def reset(self) -> None:
        if self._client is not None:
            with contextlib.suppress(*DOCKER_ERRORS):
                self._client.close()
        self._client = None

    def list_all(self) -> list:
        """``docker inspect`` dicts of every container, all states."""
        try:
            return _list_all_attrs(self.client())
        except (DockerException, RequestException, OSError) as exc:
            self.reset()
            raise DockerUnavailable(str(exc)) from exc

    def inspect(self, cid: str) -> Optional[dict]:
        try:
            return self.client().api.inspect_container(cid)
        except NotFound:
            return None
        except (DockerException, RequestException, OSError) as exc:
            self.reset()
            raise DockerUnavailable(str(exc)) from exc

    def events(self) -> Any:
        """A new event stream (its own client: the stream blocks a connection)."""
        try:
            client = docker.client_from_env(self.timeout)
            client.ping()
            return client, client.events(decode=True, filters={"type": "container"})
        except (docker.DockerStateError, DockerException, RequestException, OSError) as exc:
            raise DockerUnavailable(str(exc)) from exc


def _list_all_attrs(client: Any) -> list:
    """Every container's inspect dict (all states). The list answered, so the daemon is up: a container whose
    inspect times out or is answered with an error (its owner keeps it busy in the daemon: an upload into it still
    arriving holds it) is left out
    of this scan, with a warning, instead of the whole scan failing as if Docker were down."""
    out = []
    for summary in client.api.containers(all=True):
        try:
            out.append(client.api.inspect_container(summary["Id"]))
        except NotFound:
            continue  # removed between the list and the inspect
        except (ReadTimeout, APIError) as exc:  # this container only (a daemon gone fails the next call)
            docker.skip_unreadable(summary, exc)
    return out
