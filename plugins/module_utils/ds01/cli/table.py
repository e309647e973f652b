"""The one way the ``ds01`` command lays out a text table (``--json`` output never comes through here).

Columns are as wide as their widest cell, two spaces apart; a column is left-aligned unless ``align`` says
``r`` for it (numbers). Lines carry no trailing spaces. A cell longer than its ``max_width`` is cut and ends
in ``...``; a tab, line break or other unprintable character inside a cell becomes a space, so one row
is always one line and a cell cannot move the terminal's cursor. Only ASCII is added to what cells hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

ELLIPSIS = "..."

Widths = Union[None, int, Sequence[Optional[int]]]


def cell_text(value: Any, limit: Optional[int] = None) -> str:
    """A cell as one line of text (None is empty), cut to ``limit`` characters with an ellipsis."""
    text = "" if value is None else str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " for c in text)
    if limit is not None and len(text) > limit:
        return text[: max(0, limit - len(ELLIPSIS))] + ELLIPSIS[:limit]
    return text


def lines(
    headers: Optional[Sequence[str]],
    rows: Iterable[Sequence[Any]],
    *,
    align: str = "",
    max_width: Widths = None,
    gap: str = "  ",
) -> list:
    """The table as a list of lines: the header first (unless ``headers`` is None), then one line per row.

    ``align``: one letter per column, ``l`` or ``r``; missing letters mean ``l``. ``max_width``: one limit
    for every cell, or one per column (None: no limit). A row with a different number of cells than the
    header (or the first row) is a ``ValueError``: a caller's mistake, never a user's.
    """
    table = [list(r) for r in rows]
    if headers is not None:
        table.insert(0, list(headers))
    if not table:
        return []
    ncols = len(table[0])
    if any(len(r) != ncols for r in table):
        raise ValueError(f"every row of a table needs {ncols} cells")
    if len(align) > ncols or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} is not one of l/r for each of {ncols} columns")
    if isinstance(max_width, int) or max_width is None:
        limits: list = [max_width] * ncols
    else:
        limits = list(max_width)
        if len(limits) != ncols:
            raise ValueError(f"max_width needs one limit for each of {ncols} columns")
    if any(lim is not None and lim < 1 for lim in limits):
        raise ValueError("a column's max_width is at least 1")
    texts = [[cell_text(v, lim) for v, lim in zip(r, limits)] for r in table]
    widths = [max(len(r[i]) for r in texts) for i in range(ncols)]
    sides = align.ljust(ncols, "l")
    return [
        gap.join(t.rjust(w) if side == "r" else t.ljust(w) for t, w, side in zip(r, widths, sides)).rstrip()
        for r in texts
    ]


def render(
    headers: Optional[Sequence[str]],
    rows: Iterable[Sequence[Any]],
    *,
    align: str = "",
    max_width: Widths = None,
    gap: str = "  ",
    indent: str = "",
) -> str:
    """The table as one string (see ``lines``), each line after ``indent``; empty for no header and no rows."""
    return "\n".join(
        (indent + line).rstrip() for line in lines(headers, rows, align=align, max_width=max_width, gap=gap)
    )
