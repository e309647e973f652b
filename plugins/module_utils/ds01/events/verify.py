"""Verifying the hash chain: ``verify_chain`` reads the log and its rotated files (compressed ones too) and names
the first edited, inserted or removed line, or a cut head or end (see "The chain" in the package docstring)."""

from __future__ import annotations

import gzip
import json
import os
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO, Callable, Optional

from ..record import record
from .chain import chain_files, chain_header, line_hash

_VERIFY_RECENT = 1024  # line hashes verify keeps, to tell an insertion or a cut end from an edit


@record
class ChainBreak:
    """The first place the chain does not hold: ``file`` and 1-based ``line``, what it looks like, and a sentence.

    ``what``: ``edited``, ``inserted``, ``removed``, ``head_cut``, ``end_cut``, ``restarted``, ``unlinked`` (a line
    without a link after the chain began), ``unlocked`` (a line written without the lock that does not link).
    """

    file: str
    line: int
    what: str
    message: str


@record
class ChainReport:
    """What ``verify_chain`` found across the log and its rotated files (oldest first)."""

    files: list
    lines: int = 0
    chained: int = 0
    unlocked: int = 0  # lines written without the chain lock whose links still hold
    begins: str = ""  # "start": the chain's first line is here; "rotated": it continues a file no longer kept
    first: Optional[tuple] = None  # (file, line) of the first chained line
    unchained: Optional[dict] = None  # {"count", "from": [file, line], "to": [file, line]}: lines before the chain
    broken: Optional[ChainBreak] = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    @property
    def status(self) -> str:
        if self.broken is not None:
            return "broken"
        if self.lines == 0:
            return "empty"
        return "intact" if self.chained else "unchained"

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "status": self.status,
            "files": list(self.files),
            "lines": self.lines,
            "chained": self.chained,
            "unlocked": self.unlocked,
            "begins": self.begins or None,
            "unchained": self.unchained,
            "broken": None if self.broken is None else dict(vars(self.broken)),
            "message": self.message(),
        }

    def message(self) -> str:
        if self.broken is not None:
            return self.broken.message
        if self.lines == 0:
            return "the event log is empty: nothing to verify"
        if not self.chained:
            start = self.unchained["from"] if self.unchained else [self.files[0], 1]
            return (
                f"unchained from {_where(*start)}: none of the {self.lines} line(s) carries a link "
                "(written before the chain existed); nothing is verified"
            )
        text = f"intact: {self.chained} linked line(s) in {len(self.files)} file(s) verify"
        if self.begins == "rotated":
            text += f"; the chain begins at {_where(*self.first)}, which continues a file no longer kept"
        if self.unchained:
            text += (
                f"; unchained from {_where(*self.unchained['from'])} to {_where(*self.unchained['to'])} "
                f"({self.unchained['count']} line(s) written before the chain existed, not covered)"
            )
        if self.unlocked:
            text += f"; {self.unlocked} line(s) were written without the chain lock (their links hold)"
        return text


def _where(path: str, line: int) -> str:
    return f"{os.path.basename(path)} line {line}"


def _file_lines(path: str) -> Iterator[bytes]:
    """Every line of a log file (gzip-compressed or not), newline stripped; a final fragment is a line too."""
    opener: Callable[..., BinaryIO] = gzip.open if path.endswith(".gz") else open  # type: ignore[assignment]
    with opener(path, "rb") as handle:
        for raw in handle:
            yield raw[:-1] if raw.endswith(b"\n") else raw


def verify_chain(path: str) -> ChainReport:
    """Check the hash chain of the log at ``path`` and of its rotated files; stop at the first break.

    Raises ``OSError`` (and ``EOFError``/``zlib.error`` for a damaged ``.gz``) when a file cannot be read.
    """
    files = [name for name in chain_files(path) if os.path.lexists(name)]
    report = ChainReport(files=files)
    prev_hash: Optional[str] = None
    prev_kind: Optional[str] = None
    expected_seq: Optional[int] = None  # the number the next line should carry
    recent: deque = deque()  # (hash, (file, line), ordinal) of the last _VERIFY_RECENT lines
    index: dict = {}  # hash -> ordinal (position in the stream of lines) of the lines in ``recent``
    ordinal = 0
    for name in files:
        for line_no, raw in enumerate(_file_lines(name), 1):
            ordinal += 1
            report.lines += 1
            here = (name, line_no)
            digest = line_hash(raw)
            header = chain_header(raw)
            problem: Optional[ChainBreak] = None
            if header is None:
                if report.chained:
                    problem = _unlinked(here, raw)
                else:
                    if report.unchained is None:
                        report.unchained = {"count": 0, "from": list(here), "to": list(here)}
                    report.unchained["count"] += 1
                    report.unchained["to"] = list(here)
            else:
                prev, seq, kind = header
                if prev_hash is None:
                    problem = _first_link(report, here, seq, kind)
                elif prev != prev_hash:
                    problem = _broken_link(here, prev, seq, kind, prev_kind, expected_seq, recent, index.get(prev))
                elif (
                    expected_seq is not None and seq != expected_seq and "unlocked" not in (kind, prev_kind)
                ):  # the link holds, so the number itself was changed
                    problem = ChainBreak(
                        name,
                        line_no,
                        "edited",
                        f"{_where(*here)} was edited: it is number {seq} in the chain where {expected_seq} was due",
                    )
                if problem is None:
                    report.chained += 1
                    report.unlocked += kind == "unlocked"
                    if report.first is None:
                        report.first = here
                    expected_seq = seq
                prev_kind = kind
            if problem is not None:
                report.broken = problem
                return report
            if expected_seq is not None:
                expected_seq += 1
            prev_hash = digest
            recent.append((digest, here, ordinal))
            index[digest] = ordinal
            if len(recent) > _VERIFY_RECENT:
                old_digest, _old_place, old_ordinal = recent.popleft()
                if index.get(old_digest) == old_ordinal:
                    del index[old_digest]
    return report


def _unlinked(here: tuple, raw: bytes) -> ChainBreak:
    try:
        parsed = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        why = "it carries no link: it was inserted, or its link was edited away"
    else:
        why = "it is not an event line (blank, cut short by a failed write, or damaged)"
    return ChainBreak(here[0], here[1], "unlinked", f"{_where(*here)} breaks the chain: {why}")


def _first_link(report: ChainReport, here: tuple, seq: int, kind: Optional[str]) -> Optional[ChainBreak]:
    """The first linked line of all, when no line comes before it."""
    if kind in ("start", "rotated"):
        report.begins = kind
        return None
    if kind == "unlocked":
        return ChainBreak(
            here[0],
            here[1],
            "unlocked",
            f"{_where(*here)} was written without the chain lock and links to no line that is kept: not verifiable",
        )
    return ChainBreak(
        here[0],
        here[1],
        "head_cut",
        f"the head of {os.path.basename(here[0])} was cut: its first line (number {seq} in the chain) links to a "
        "line that is gone and is not the line the file began with",
    )


def _broken_link(
    here: tuple,
    prev: str,
    seq: int,
    kind: Optional[str],
    prev_kind: Optional[str],
    expected: Optional[int],
    recent: deque,
    linked: Optional[int],
) -> ChainBreak:
    """Name what happened where a line does not link to the line before it (``recent``: the lines before it, as
    ``(hash, (file, line), ordinal)``; ``linked``: the ordinal of the recent line it does link to, if any)."""
    name, line_no = here
    previous = recent[-1][1]
    if kind == "start":
        return ChainBreak(
            name,
            line_no,
            "restarted",
            f"the chain starts again at {_where(*here)}: the line before it ({_where(*previous)}) is not linked to "
            "(a writer could not read the end of the previous file, or the line was forged)",
        )
    if "unlocked" in (kind, prev_kind):
        return ChainBreak(
            name,
            line_no,
            "unlocked",
            f"{_where(*here)} does not link to {_where(*previous)}, and one of them was written without the chain "
            "lock: a race between writers that could not take the lock, or an edit",
        )
    if linked is not None:
        position = linked - recent[0][2]
        first_inserted = recent[position + 1][1]
        count = recent[-1][2] - linked
        return ChainBreak(
            first_inserted[0],
            first_inserted[1],
            "inserted",
            f"{_where(*first_inserted)} was inserted ({count} line(s) in all): {_where(*here)} links to "
            f"{_where(*recent[position][1])}, the line before it",
        )
    if line_no == 1 and kind is None:
        gap = f" ({seq - expected} line(s) missing)" if expected is not None and seq > expected else ""
        return ChainBreak(
            name,
            line_no,
            "head_cut",
            f"the head of {os.path.basename(name)} was cut{gap}: its first line (number {seq} in the chain) is not "
            f"the line the file began with, and does not link to the end of {os.path.basename(previous[0])}",
        )
    if expected is not None and seq > expected:
        missing = seq - expected
        if line_no == 1:
            return ChainBreak(
                previous[0],
                previous[1],
                "end_cut",
                f"the end of {os.path.basename(previous[0])} was cut after line {previous[1]}: {missing} line(s) "
                f"missing before {_where(*here)}, the next file's first line",
            )
        return ChainBreak(
            name,
            line_no,
            "removed",
            f"{missing} line(s) were removed between {_where(*previous)} and {_where(*here)} "
            f"(number {expected} in the chain was due, {seq} came)",
        )
    return ChainBreak(
        previous[0],
        previous[1],
        "edited",
        f"{_where(*previous)} was edited: {_where(*here)} no longer links to it",
    )
