"""Value kinds of resource-limits.yaml: sizes, durations, and the checks that normalise one value.

A ``Kind`` pairs a check (``check(value) -> normalised``, or ``ValueError(expected)``) with whether null
("unlimited") is allowed. The key tables in ``schema`` and ``features`` are built from these checks.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Optional

from ..record import record

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_SYSTEMD_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?[KMGTP]?|\d+(?:\.\d+)?%|infinity)$")
_PERCENT_RE = re.compile(r"^(\d+(?:\.\d+)?)%$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
UNIT_WORD = {"s": "seconds", "m": "minutes", "h": "hours"}


def parse_size(value: Any) -> int:
    """Docker-style size (``32g``, ``512m``, ``1.5G``, bytes as an int) → bytes (1024-based)."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a size must be > 0")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            amount = float(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]
            if amount >= 1:
                return int(amount)
    raise ValueError("a size such as '32g', '512m' or a number of bytes")


def format_size(n_bytes: Optional[int]) -> str:
    if n_bytes is None:
        return "unlimited"
    for unit, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n_bytes >= factor:
            value = n_bytes / factor
            return f"{value:g}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n_bytes}B"


def parse_duration_text(text: str) -> float:
    """``24h``/``30m``/``60s``/``2d``/``1w`` → seconds. A bare number is refused (no unit)."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * SECONDS[match.group(2).lower()]


@record(frozen=True)
class Kind:
    """How one key is checked and normalised: ``check(value) -> normalised`` or ValueError(expected)."""

    check: Callable[[Any], Any]
    nullable: bool = True

    def expected_suffix(self) -> str:
        return ", or null for unlimited" if self.nullable else ""


def number(lo: Optional[float] = None, lo_open: bool = False, hi: Optional[float] = None) -> Callable[[Any], Any]:
    def check(value: Any) -> float:
        desc = "a number"
        if lo is not None:
            desc += f" {'>' if lo_open else '>='} {lo:g}"
        if hi is not None:
            desc += f" and <= {hi:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(desc)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise ValueError(desc)
        if hi is not None and value > hi:
            raise ValueError(desc)
        return float(value)

    return check


def integer(lo: int = 1) -> Callable[[Any], Any]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"a whole number >= {lo}")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def string(pattern: Optional[str] = None, desc: str = "a string") -> Callable[[Any], Any]:
    def check(value: Any) -> str:
        # re.match compiles ``pattern`` on first use (and caches it): the schema's tables cost no compile at import
        if not isinstance(value, str) or not value or (pattern and not re.match(pattern, value)):
            raise ValueError(desc)
        return value

    return check


def choice(*choices: str) -> Callable[[Any], Any]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(repr(c) for c in choices))
        return value

    return check


def string_list(item_check: Optional[Callable[[Any], Any]] = None, desc: str = "a list of strings"):
    def check(value: Any) -> tuple:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(desc)
        if item_check:
            for item in value:
                item_check(item)
        return tuple(value)

    return check


def fractions(value: Any) -> tuple:
    desc = "a list of fractions between 0 and 1, e.g. [0.5, 0.875]"
    if not isinstance(value, list) or not value:
        raise ValueError(desc)
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0 < item < 1:
            raise ValueError(desc)
        out.append(float(item))
    return tuple(sorted(out))


def size(value: Any) -> int:
    return parse_size(value)


def systemd_size(value: Any) -> str:
    desc = "a systemd size such as '96G', '512M', a percentage such as '50%', or 'infinity'"
    if isinstance(value, bool):
        raise ValueError(desc)
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and _SYSTEMD_SIZE_RE.match(value):
        return value
    raise ValueError(desc)


def cpu_quota(value: Any) -> str:
    desc = "a percentage such as '400%' (100% is one CPU)"
    if isinstance(value, str):
        match = _PERCENT_RE.match(value)
        if match and float(match.group(1)) > 0:
            return value
    raise ValueError(desc)


def tasks_max(value: Any) -> str:
    desc = "a whole number > 0, a percentage such as '10%', or 'infinity'"
    if isinstance(value, bool):
        raise ValueError(desc)
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and (value == "infinity" or _PERCENT_RE.match(value) or value.isdigit()):
        return value
    raise ValueError(desc)


def signal_name(value: Any) -> str:
    import signal  # only a config that names a signal pays for it

    if not isinstance(value, str) or not value.startswith("SIG") or not hasattr(signal, value):
        raise ValueError("a signal name such as 'SIGUSR1'")
    return value


def file_path(value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError("a file system path")
    return value


def duration(unit: str, lo_open: bool = True) -> Callable[[Any], Any]:
    check = number(0, lo_open=lo_open)

    def run(value: Any) -> float:
        try:
            return check(value)
        except ValueError:
            raise ValueError(f"a number of {UNIT_WORD[unit]} {'>' if lo_open else '>='} 0") from None

    return run
