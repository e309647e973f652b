"""Bare-metal grant files: the one reader (the format and the deterrent's rule are ``profile.py``'s).

A grant is ``<bare_metal_access.state_dir>/<login>.json`` (``profile.render_grant``). Whether it is active is
decided on the file's *text* by ``profile.grant_active``, the same patterns the profile.d deterrent applies, so
the detector, ``ds01 limits``, ``ds01 access`` and the expiry sweep agree with what a login shell does, even
about a file that is not valid JSON.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from . import identity, logs, profile
from .record import field, record

SUFFIX = ".json"
MAX_BYTES = 65536  # a grant file is a few hundred bytes; a larger one is read no further

log = logs.get(__name__)


@record(frozen=True)
class GrantFile:
    login: str
    active: bool  # the deterrent's rule on the file's text
    doc: dict = field(default_factory=dict)  # the JSON object; {} when the text is not one

    def as_dict(self) -> dict:
        """The document with ``active`` (what ``ds01 access`` shows)."""
        return {**self.doc, "active": self.active}


def read(grant_dir: Optional[str], login: str, now_epoch: float) -> Optional[GrantFile]:
    """``login``'s grant file, or None: no directory, not a login name, no file, or a file that cannot be read
    (logged; the deterrent cannot read it either, so it grants nothing)."""
    if not grant_dir or not identity.valid_login(login):
        return None
    path = os.path.join(grant_dir, login + SUFFIX)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(MAX_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("bare-metal grant %s unreadable (%s): treated as no grant", path, exc)
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {}
    return GrantFile(login, profile.grant_active(text, now_epoch), doc if isinstance(doc, dict) else {})


def logins(grant_dir: Optional[str]) -> list:
    """The logins with a grant file in ``grant_dir``, sorted; [] when it does not exist.

    ``PermissionError`` goes to the caller (``ds01 access list`` run by a non-admin says so)."""
    try:
        names = os.listdir(grant_dir) if grant_dir else []
    except FileNotFoundError:
        return []
    found = (n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX))
    return sorted(n for n in found if identity.valid_login(n))
