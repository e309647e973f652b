"""The last refusal each user met, kept where that user (and only that user) can read it.

The event log is the audit trail and is readable by root and the admin group only; a student
asking ``ds01 why`` must still get an answer. So whoever refuses a request (the gateway, the
allocator) also calls ``record()``, which replaces ``<state_dir>/refusals/<login>.json``
atomically with mode 0600, owned by that user's uid. Nobody else can read it; the user cannot
change anything but their own view. ``read()`` never raises.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any, Optional

from . import fsutil, identity, logs

log = logs.get(__name__)

SUBDIR = "refusals"


def _path(state_dir: str, login: str) -> Optional[str]:
    if not identity.valid_login(login):
        return None
    return os.path.join(state_dir, SUBDIR, f"{login}.json")


def record(
    state_dir: str,
    login: str,
    code: str,
    sentence: str,
    uid: Optional[int] = None,
    details: Optional[dict] = None,
    now: Optional[dt.datetime] = None,
) -> bool:
    """Remember the refusal for ``ds01 why``; False (logged) if it could not be written."""
    path = _path(state_dir, login)
    if path is None:
        log.warning("not recording a refusal for invalid login %r", login)
        return False
    when = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    body = {
        "schema_version": "1",
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "user": login,
        "code": code,
        "message": sentence,
        "details": details or {},
    }
    try:
        fsutil.atomic_write(path, json.dumps(body, default=str), mode=0o600, uid=uid)
    except (OSError, TypeError, ValueError) as exc:
        log.warning("could not record the refusal for %s: %s", login, exc)
        return False
    return True


def read(state_dir: str, login: str) -> Optional[dict[str, Any]]:
    path = _path(state_dir, login)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("user") == login else None
