"""The lifecycle's state store: one JSON file per container id."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from .. import fsutil, logs

log = logs.get(__package__)

_ID_RE = re.compile(r"^[0-9a-f]{12,64}$")


class StateStore:
    """``<dir>/<container id>.json``, replaced atomically; files of vanished containers are dropped."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, cid: str) -> str:
        if not _ID_RE.match(cid):
            raise ValueError(f"not a container id: {cid!r}")
        return os.path.join(self.directory, f"{cid}.json")

    def load(self, cid: str) -> dict:
        try:
            with open(self._path(cid), encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("lifecycle state of %s is unreadable (%s); starting it afresh", cid[:12], exc)
            return {}
        return data if isinstance(data, dict) else {}

    def ids(self) -> list:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [n[:-5] for n in names if n.endswith(".json") and _ID_RE.match(n[:-5])]

    def save(self, cid: str, data: Mapping[str, Any]) -> None:
        fsutil.atomic_write_json(self._path(cid), data)

    def drop(self, cid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(cid))
