"""Moved: Docker is read through the ``docker`` package (``from . import docker``).

This name forwards to it until the last importer has moved (issue 15); it imports nothing of the SDK.
"""

from __future__ import annotations

from typing import Any

from . import docker as _docker


def __getattr__(name: str) -> Any:
    return getattr(_docker, name)
