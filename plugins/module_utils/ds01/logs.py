"""Loggers that import ``logging`` when they first log.

Every runtime module takes its logger from here: ``log = logs.get(__name__)``. The logger is the standard library's
(``logging.getLogger(name)``, so handlers, levels, ``caplog`` and the journal see nothing different), looked up on the
first call. Why: ``logging`` imports ``traceback``, ``linecache``, ``tokenize``, ``textwrap``, ``string`` and
``threading``, about a tenth of a cold ``ds01 gpu plan`` or login ``ds01 limits`` that logs nothing
(``benchmarks/allocation.py``).

A command sets its output with ``configure`` (``logging.basicConfig``) and ``set_level``: done at once when ``logging``
is already imported, else by the first logger that logs, or by ``settle`` once the command's modules are imported
(one of them may import ``logging`` itself).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

_pending: list = []  # what ``configure``/``set_level`` asked for, done when logging is imported


class Logger:
    """A stand-in for ``logging.getLogger(name)``; every attribute is the real logger's."""

    __slots__ = ("_real", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._real: Any = None

    def __getattr__(self, attr: str) -> Any:
        real = self._real
        if real is None:
            real = self._real = _logging().getLogger(self.name)
        return getattr(real, attr)

    def __repr__(self) -> str:
        return f"<ds01 logger {self.name}>"


def get(name: str) -> Any:
    """The logger ``name`` (``logging.getLogger``'s), imported when first used."""
    return Logger(name)


def configure(level: str, fmt: str) -> None:
    """``logging.basicConfig(level=level, format=fmt)`` for this process, now or when logging is first used."""
    _defer(lambda logging: logging.basicConfig(level=level, format=fmt))


def set_level(level: str) -> None:
    """The root logger's level (``"INFO"``), now or when logging is first used."""
    _defer(lambda logging: logging.getLogger().setLevel(level))


def settle() -> None:
    """Do what was asked if ``logging`` is imported by now (a module may have imported it itself)."""
    if _pending and "logging" in sys.modules:
        _logging()


def _defer(action: Callable[[Any], None]) -> None:
    _pending.append(action)
    settle()


def _logging() -> Any:
    import logging

    while _pending:
        _pending.pop(0)(logging)
    return logging
