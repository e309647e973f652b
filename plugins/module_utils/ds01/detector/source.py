"""The detector's window on Docker: the full list, one container by id, and the event stream."""

from __future__ import annotations

import contextlib
from typing import Any, Optional

try:
    import docker
    from docker.errors import DockerException, NotFound

    HAS_DOCKER = True
except ImportError:  # the core imports without the SDK; the commands then say what is missing
    docker = None
    HAS_DOCKER = False

    class DockerException(Exception):  # type: ignore[no-redef]
        pass

    class NotFound(DockerException):  # type: ignore[no-redef]
        pass


try:  # requests' errors surface through the SDK's streaming calls
    from requests.exceptions import RequestException
except ImportError:  # pragma: no cover - requests comes with docker

    class RequestException(Exception):  # type: ignore[no-redef]
        pass


DOCKER_ERRORS = (DockerException, RequestException, OSError)


class DockerUnavailable(Exception):
    """Docker could not be asked (not installed, not running, not reachable)."""


class DockerSource:
    """The detector's window on Docker: the full list through ``docker_state``, one container by
    id (after an event), and the event stream."""

    def __init__(self, timeout: float = 30.0) -> None:
        if not HAS_DOCKER:
            raise DockerUnavailable("the docker Python SDK is not installed")
        self.timeout = timeout
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=self.timeout)
            except DockerException as exc:
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
            client = docker.from_env(timeout=self.timeout)
            client.ping()
            return client, client.events(decode=True, filters={"type": "container"})
        except (DockerException, RequestException, OSError) as exc:
            raise DockerUnavailable(str(exc)) from exc


def _list_all_attrs(client: Any) -> list:
    """Every container's inspect dict (all states)."""
    out = []
    for summary in client.api.containers(all=True):
        try:
            out.append(client.api.inspect_container(summary["Id"]))
        except NotFound:
            continue  # removed between the list and the inspect
    return out
