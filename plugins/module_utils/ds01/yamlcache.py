"""Parsed YAML kept across processes, so that a cold ``ds01`` command need not import PyYAML at all.

Importing PyYAML and parsing the config and the fake GPU topology is the largest start-up cost of a command
(``ds01 gpu plan``, ``ds01 limits --brief``). Root's commands keep what a file parsed to in
``/var/cache/ds01/yaml/``, one JSON file per source file, **keyed by the file's exact text**: a later command reads
the text again (it always does) and uses the kept data only when the text is the same, character for character, so
an edited file is never answered from the cache, whatever its mtime says.

Only data that JSON gives back exactly is kept: strings, integers, finite floats, booleans, null, lists, mappings
with string keys, and dates and naive datetimes (tagged); a file holding anything else (sets, binary, anchors shared
by two places, time zones …) is parsed every time. A cache file is used only when it and its directory belong to
root (or the caller) and no group or other may write them; only root writes them, and only for world-readable
source files (the cache is world-readable, so that users' login commands use it too), and only where the
``ds01_common`` role made ``/var/cache/ds01`` (a sandbox deploy, a demo or a test run as root writes nothing there).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import stat
from typing import Any, Optional

from . import fsutil

CACHE_DIR = "/var/cache/ds01/yaml"
MAX_FILES = 64  # source files remembered; the least recently written are dropped beyond this
_TAG = "\x00"  # the key of a tagged value; a mapping with a key starting with it is never kept


class Unkept(Exception):
    """The data holds something JSON would not give back exactly."""


def _encode(value: Any, seen: set) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unkept("a non-finite float")
        return value
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        if value.tzinfo is not None:
            raise Unkept("a datetime with a time zone")
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if value.__class__ in (list, dict):  # exactly what the YAML loader builds (no subclass)
        if id(value) in seen:  # an alias: the same object in two places
            raise Unkept("a shared value")
        seen.add(id(value))
        if value.__class__ is list:
            return [_encode(item, seen) for item in value]
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith(_TAG):
                raise Unkept("a key that is not a plain string")
            out[key] = _encode(item, seen)
        return out
    raise Unkept(type(value).__name__)


def _decode_tag(obj: dict) -> Any:
    tag = obj.get(_TAG)
    if tag == "date":
        return dt.date.fromisoformat(obj["v"])
    if tag == "datetime":
        return dt.datetime.fromisoformat(obj["v"])
    return obj


def cache_file(source: str, cache_dir: str = CACHE_DIR) -> str:
    """The cache file of ``source`` (its absolute path, ``%`` and ``/`` escaped, as one file name)."""
    name = os.path.abspath(source).replace("%", "%25").replace("/", "%2F")
    return os.path.join(cache_dir, name + ".json")


def lookup(source: str, text: str, cache_dir: str = CACHE_DIR) -> Optional[tuple]:
    """``(data, lines)`` kept for ``source`` when its text is exactly ``text`` and the cache is trusted; else None.

    ``lines`` is ``[(key path tuple, line), …]`` as the config reader indexed the file.
    """
    path = cache_file(source, cache_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            if not _trusted(os.fstat(handle.fileno())) or not _trusted(os.stat(cache_dir)):
                return None
            entry = json.loads(handle.read(), object_hook=_decode_tag)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("text") != text or not isinstance(entry.get("lines"), list):
        return None
    return entry.get("data"), [(tuple(key), line) for key, line in entry["lines"]]


def remember(source: str, text: str, data: Any, lines: list, cache_dir: str = CACHE_DIR) -> bool:
    """Keep ``data`` (and the reader's ``lines``) for ``source``'s ``text``; True when written.

    Only root writes, only for a world-readable source, only data JSON gives back exactly; best effort (a cache
    that cannot be written costs time, not correctness).
    """
    if os.geteuid() != 0:
        return False
    try:
        if not os.stat(source).st_mode & stat.S_IROTH:
            return False
        entry = {"text": text, "data": _encode(data, set()), "lines": [[list(key), line] for key, line in lines]}
    except (OSError, Unkept):
        return False
    path = cache_file(source, cache_dir)
    if len(os.path.basename(path)) > 255:
        return False
    if not os.path.isdir(os.path.dirname(cache_dir)):
        return False  # /var/cache/ds01 is the role's to make: a sandbox, a test or a demo writes nothing outside
    try:
        if os.path.isdir(cache_dir) and not _trusted(os.stat(cache_dir)):
            return False
        fsutil.atomic_write_json(path, entry, mode=0o644)
        _trim(cache_dir)
    except OSError:
        return False
    return True


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _trim(cache_dir: str) -> None:
    """Drop the least recently written cache files beyond ``MAX_FILES``."""
    names = [n for n in os.listdir(cache_dir) if n.endswith(".json")]
    if len(names) <= MAX_FILES:
        return
    dated = []
    for name in names:
        try:
            dated.append((os.stat(os.path.join(cache_dir, name)).st_mtime_ns, name))
        except OSError:
            continue
    for _mtime, name in sorted(dated)[: len(dated) - MAX_FILES]:
        try:
            os.unlink(os.path.join(cache_dir, name))
        except OSError:
            pass
