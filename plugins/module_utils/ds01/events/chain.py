"""The hash chain: a line's header and link, the files the chain runs through (the log and its rotated
siblings), and the link a line appended after a file's last line gets (see "The chain" in the package docstring)."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections import deque
from collections.abc import Iterator
from typing import Optional

from .common import MAX_LINE_BYTES, lines_backwards

CHAIN_GENESIS = "0" * 64  # the ``prev`` of a log's first line when no earlier file exists
CHAIN_KINDS = ("rotated", "start", "unlocked")
CHAIN_KEYS = ("prev", "seq", "chain")  # the chain header's keys; readers drop them from the envelope
_CHAIN_HEADER_RE = re.compile(rb'^\{"prev":"([0-9a-f]{64})","seq":([0-9]{1,19})(?:,"chain":"([a-z]+)")?,')
# The most bytes a chain header adds to a line: ``"prev":"<64 hex>",`` ``"seq":<19 digits>,`` ``"chain":"unlocked",``
CHAIN_HEADROOM = len('"prev":"",') + 64 + len('"seq":,') + 19 + len('"chain":"unlocked",')
MAX_BODY_BYTES = MAX_LINE_BYTES - CHAIN_HEADROOM  # what render_line may use, so that every header fits
_SEQ_LOOKBACK_LINES = 64  # lines a writer looks back past fragments for the last sequence number
TAIL_BLOCK = 8192  # a writer reads the log's end in blocks this big (a line is at most 4000 bytes)


def chain_line(body: bytes, prev: str, seq: int, kind: Optional[str] = None) -> bytes:
    """``body`` (a ``render_line`` result) with its chain header: ``{"prev":…,"seq":…[,"chain":kind],…``."""
    header = f'{{"prev":"{prev}","seq":{seq}' + (f',"chain":"{kind}"' if kind else "")
    return header.encode("ascii") + b"," + body[1:]


def line_hash(line: bytes) -> str:
    """The link to a line: sha256 (hex) of its bytes without the newline that ends it."""
    return hashlib.sha256(line).hexdigest()


def chain_header(line: bytes) -> Optional[tuple]:
    """``(prev, seq, kind)`` of a chained line (kind None for an ordinary one), or None for a line without a link."""
    match = _CHAIN_HEADER_RE.match(line)
    if match is None:
        return None
    kind = match.group(3).decode("ascii") if match.group(3) else None
    return match.group(1).decode("ascii"), int(match.group(2)), kind


_ROTATED_RE = re.compile(r"^(?:\.(?P<n>\d+)|-(?P<date>\d{8,14}))(?P<gz>\.gz)?$")


def _rotated_siblings(path: str, compressed: bool) -> list[tuple[float, int, str]]:
    """``(mtime, age key, path)`` of the rotated siblings of ``path`` (``.gz`` ones too when ``compressed``)."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    found = []
    for name in names:
        if not name.startswith(base):
            continue
        match = _ROTATED_RE.match(name[len(base) :])
        if match is None or (match.group("gz") and not compressed):
            continue
        full = os.path.join(directory, name)
        try:
            mtime = os.stat(full).st_mtime
        except OSError:
            continue
        # Age order: older files first; ``.N`` grows with age, ``-DATE`` shrinks with it.
        age_key = -int(match.group("n")) if match.group("n") else int(match.group("date"))
        found.append((mtime, age_key, full))
    return found


def rotated_files(path: str) -> list[tuple[float, str]]:
    """``(mtime, path)`` of the plain rotated siblings of ``path``, oldest first."""
    return [(mtime, full) for mtime, _age, full in sorted(_rotated_siblings(path, compressed=False))]


def chain_files(path: str) -> list[str]:
    """The files the chain runs through, oldest first: every rotated sibling (compressed ones too), by the age its
    name gives, then the log itself (listed even when it does not exist)."""
    ordered = sorted(_rotated_siblings(path, compressed=True), key=lambda item: (item[1], item[2]))
    return [full for _mtime, _age, full in ordered] + [path]


def link_after(lines: Iterator[bytes]) -> tuple:
    """``(prev, seq, None)`` for a line written after ``lines`` (a file's lines, last first, as
    ``lines_backwards`` gives them): ``prev`` links to the last line, ``seq`` counts on from the last line that has
    a header (lines without one, such as fragments or pre-chain lines, count too; 1 when none is near)."""
    last = next(lines, None)
    if last == b"":  # the file ends with a newline: what follows it is no line
        last = next(lines, None)
    if last is None:
        return CHAIN_GENESIS, 1, None
    distance = 1
    line: Optional[bytes] = last
    while line is not None and distance <= _SEQ_LOOKBACK_LINES:
        header = chain_header(line)
        if header is not None:
            return line_hash(last), header[1] + distance, None
        line = next(lines, None)
        distance += 1
    return line_hash(last), 1, None


def tail_lines(path: str) -> Iterator[bytes]:
    """The last lines of a rotated file (gzip-compressed or not), last first, as ``lines_backwards`` gives them."""
    if not path.endswith(".gz"):
        with open(path, "rb") as handle:
            yield from lines_backwards(handle, TAIL_BLOCK)
        return
    with gzip.open(path, "rb") as handle:
        kept = deque(handle, maxlen=_SEQ_LOOKBACK_LINES + 1)  # the whole file streams through once
    if kept and kept[-1].endswith(b"\n"):
        yield b""
    for line in reversed(kept):
        yield line.rstrip(b"\n")
