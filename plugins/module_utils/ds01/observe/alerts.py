"""The quota-alert pass over a snapshot, and the notices it delivers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Callable, Optional

from .. import config as config_mod
from .. import lifecycle as lc
from .. import logs, quota_alerts
from .accounting import quota_measures
from .records import ALERT_EVENT, iso

log = logs.get(__package__)


def run_alerts(
    config: config_mod.Config,
    snap: Mapping[str, Any],
    now: dt.datetime,
    *,
    dry_run: bool = False,
    deliver: Optional[Callable[[str, Any, str], Any]] = None,
    emit: Optional[Callable[..., Any]] = None,
) -> dict:
    """One pass over the snapshot's users: evaluate, deliver, record (see ``quota_alerts``).

    Returns ``{"schema_version": "1", "now", "dry_run", "users": {login: {"alerts": [..], "delivered": [..]}},
    "errors": [str]}`` (only logins with an alert level or a change are listed).
    """
    state_dir = config.paths.state_dir
    report: dict = {"schema_version": "1", "now": iso(now), "dry_run": dry_run, "users": {}, "errors": []}
    limits_of = snap.get("_limits") or {}
    for login, user in sorted((snap.get("users") or {}).items()):
        try:
            limits = limits_of.get(login) or config.resolve(login)
            memory = (snap.get("slices") or {}).get(login, {}).get("memory_current")
            measures = quota_measures(user, limits, memory)
            prior = quota_alerts.load_state(state_dir, login)
            sent, state = quota_alerts.evaluate(measures, prior, now, limits.policies.quota_alert_cooldown_h)
            if not state and not prior:
                continue
            entry = {
                "alerts": [dict(v, measure=k) for k, v in sorted(state.items())],
                "delivered": [{"measure": a.measure, "level": a.level, "sentence": a.sentence()} for a in sent],
            }
            report["users"][login] = entry
            if dry_run:
                continue
            if state != prior:
                quota_alerts.save_state(state_dir, login, state)
            for alert in sent:
                if deliver is not None:
                    deliver(
                        login,
                        alert,
                        lc.quota_line(limits, float(user.get("gpueq", 0.0)), int(user.get("containers", 0))),
                    )
                if emit is not None:
                    emit(
                        ALERT_EVENT,
                        user=login,
                        measure=alert.measure,
                        level=alert.level,
                        used=alert.used,
                        limit=alert.limit,
                    )
        except Exception as exc:
            log.exception("quota alert for %s failed", login)
            report["errors"].append(f"{login}: {type(exc).__name__}: {exc}")
    return report


def alert_notice(alert: quota_alerts.Alert) -> lc.Notice:
    level = "ALERT" if alert.level >= 100 else "WARNING"
    title = f"QUOTA {'REACHED' if alert.level >= 100 else 'ALMOST REACHED'} — {quota_alerts.LABELS[alert.measure]}"
    return lc.Notice(level, title, (alert.sentence(), "`ds01 limits` shows your quota and what uses it."))


def notifier_delivery(notifier: Any) -> Callable[[str, Any, str], Any]:
    def deliver(login: str, alert: quota_alerts.Alert, quota: str) -> Any:
        return notifier.deliver(login, None, alert_notice(alert), quota)

    return deliver
