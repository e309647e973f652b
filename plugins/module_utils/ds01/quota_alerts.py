"""Quota alerts: tell a user once per cooldown when they reach 80 % or 100 % of a quota.

Pure policy: ``evaluate(measures, prior, now, cooldown_h)`` → (alerts to deliver, new state).
The state (per user, ``<state_dir>/quota-alerts/<login>.json``, mode 0644) is also what the login
greeting shows until the usage drops below 80 % again ("until cleared").

A measure is ``(used, limit)``; a limit of None (unlimited) never alerts. A level rise (80 → 100)
is delivered at once; the same level again only after the cooldown.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Optional

from . import fsutil, identity
from .record import record

LEVELS = (100, 80)
SUBDIR = "quota-alerts"
LABELS = {"gpu": "GPU-equivalents", "containers": "containers", "memory": "memory (all your containers together)"}
ADVICE = {
    "gpu": "Remove a GPU container you no longer need (`docker rm -f NAME`) before asking for another GPU.",
    "containers": "Remove containers you no longer need (`docker ps -a`, then `docker rm NAME`).",
    "memory": "Processes in your containers will be killed when you reach 100%: stop a job or lower its memory use.",
}


@record(frozen=True)
class Alert:
    measure: str
    level: int
    used: float
    limit: float

    def sentence(self) -> str:
        used = f"{self.used:.3g}" if self.measure != "memory" else _gib(self.used)
        limit = f"{self.limit:.3g}" if self.measure != "memory" else _gib(self.limit)
        pct = 100.0 * self.used / self.limit if self.limit else 100.0
        head = "reached" if self.level >= 100 else "is at"
        return f"Your {LABELS[self.measure]} quota {head} {pct:.0f}% ({used} of {limit}). {ADVICE[self.measure]}"


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 1024**3:.1f} GiB"


def level_of(used: float, limit: Optional[float]) -> int:
    if limit is None or limit <= 0:
        return 0
    ratio = used / limit
    for level in LEVELS:
        if ratio >= level / 100.0 - 1e-9:
            return level
    return 0


def evaluate(
    measures: dict[str, tuple[float, Optional[float]]],
    prior: dict,
    now: dt.datetime,
    cooldown_h: float,
) -> tuple[list[Alert], dict]:
    """Which alerts to deliver now, and the state to keep (see module docstring)."""
    state: dict = {}
    deliver: list[Alert] = []
    for measure, (used, limit) in sorted(measures.items()):
        level = level_of(used, limit)
        if level == 0:
            continue  # cleared: dropped from the state, no longer shown at login
        before = prior.get(measure) or {}
        sent_at = _parse(before.get("sent_at"))
        due = level > int(before.get("level", 0)) or sent_at is None or now - sent_at >= dt.timedelta(hours=cooldown_h)
        entry = {"level": level, "used": used, "limit": limit, "sent_at": before.get("sent_at")}
        if due:
            deliver.append(Alert(measure, level, float(used), float(limit)))
            entry["sent_at"] = now.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        state[measure] = entry
    return deliver, state


def _parse(text: Optional[str]) -> Optional[dt.datetime]:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def state_path(state_dir: str, login: str) -> Optional[str]:
    return os.path.join(state_dir, SUBDIR, f"{login}.json") if identity.valid_login(login) else None


def load_state(state_dir: str, login: str) -> dict:
    path = state_path(state_dir, login)
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    alerts = data.get("alerts") if isinstance(data, dict) else None
    return alerts if isinstance(alerts, dict) else {}


def save_state(state_dir: str, login: str, alerts: dict) -> None:
    """Atomic replace; an empty state removes the file (nothing to show at login)."""
    path = state_path(state_dir, login)
    if path is None:
        return
    if not alerts:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    fsutil.atomic_write_json(path, {"schema_version": "1", "user": login, "alerts": alerts})
