"""The Docker SDK (``docker`` on PyPI): the one module of ds01 that imports it.

Everything that changes Docker, streams its events or talks to a daemon over tcp/ssh goes through
the SDK client made here. Its exception types are re-exported (``DockerException``, ``APIError``,
``NotFound``, ``ImageNotFound``, ``RequestException``, ``DOCKER_ERRORS``) so no other module
imports ``docker.errors``; without the SDK installed they are stand-ins that nothing raises, and
``client_from_env`` says what is missing.

The package imports this module lazily (``ds01.docker.__getattr__``), so a reader that only lists
containers through ``engine.Engine`` never pays the SDK's import.
"""

from __future__ import annotations

from typing import Any

from .records import DockerStateError

try:
    import docker
    from docker.errors import APIError, DockerException, ImageNotFound, NotFound

    HAS_DOCKER = True
except ImportError:  # the core imports without the SDK; callers say what is missing
    docker = None
    HAS_DOCKER = False

    class DockerException(Exception):  # type: ignore[no-redef]
        pass

    class APIError(DockerException):  # type: ignore[no-redef]
        pass

    class NotFound(APIError):  # type: ignore[no-redef]
        pass

    class ImageNotFound(NotFound):  # type: ignore[no-redef]
        pass


try:  # the SDK's transport errors come from requests
    from requests.exceptions import ReadTimeout, RequestException
except ImportError:  # pragma: no cover - requests comes with docker

    class RequestException(Exception):  # type: ignore[no-redef]
        pass

    class ReadTimeout(RequestException):  # type: ignore[no-redef]
        pass


DOCKER_ERRORS = (DockerException, RequestException, OSError)


def client_from_env(timeout: float = 30.0) -> Any:
    """A docker SDK client for ``$DOCKER_HOST`` (or the default socket); ``DockerStateError`` if none."""
    if not HAS_DOCKER:
        raise DockerStateError("the docker Python SDK is not installed, so Docker cannot be asked")
    try:
        return docker.from_env(timeout=timeout)
    except DockerException as exc:
        raise DockerStateError(f"cannot reach the Docker engine ({exc})") from exc


def device_request(device_ids: list, capabilities: Any = (("gpu",),)) -> Any:
    """A ``docker.types.DeviceRequest`` for the SDK's ``create`` (``--gpus device=…``)."""
    if not HAS_DOCKER:
        raise DockerStateError("the docker Python SDK is not installed, so Docker cannot be asked")
    return docker.types.DeviceRequest(device_ids=list(device_ids), capabilities=[list(c) for c in capabilities])


__all__ = [
    "DOCKER_ERRORS",
    "HAS_DOCKER",
    "APIError",
    "DockerException",
    "ImageNotFound",
    "NotFound",
    "ReadTimeout",
    "RequestException",
    "client_from_env",
    "device_request",
    "docker",
]
