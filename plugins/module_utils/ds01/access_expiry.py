"""Bare-metal grant expiry made visible: a warning one hour before, an event when it lapses.

A grant (``<bare_metal_access.state_dir>/<login>.json``, ``profile.render_grant``) ends by itself at
its ``expires_epoch``: the login deterrent stops honouring it, nothing has to delete it. This sweep
tells people about it, once per grant:

- ``access.expiry_warning`` when the grant ends within ``WARN_BEFORE_S`` (one hour) and is still active;
- ``access.expire`` once it has ended (``int(now) >= expires_epoch``, the deterrent's own rule).

A grant first seen after it ended gets only ``access.expire`` (no late warning). Both events carry
``expires_at``, ``granted_by`` and ``message``: the sentence the user is shown (``deliver``, at the
edge: their terminals and their notice spool, which the next login greeting shows). What was
already said is kept per user in
``<paths.state_dir>/access-notices/<login>.json`` (``{"expires_epoch", "warned", "expired"}``); a
renewed grant has a new ``expires_epoch`` and starts afresh, a revoked one drops its record.

The periodic caller is ``ds01 lifecycle run`` (``ds01-lifecycle.timer``, every 5 minutes), before it
reaches Docker, so grants expire visibly even when the engine is down; ``ds01 access sweep`` runs the
same pass by hand (``--now`` to decide as if at another time).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any, Callable, Optional

from . import events, fsutil, logs, notify
from . import grants as grants_mod
from .record import record

log = logs.get(__name__)

WARN_BEFORE_S = 3600
NOTICES_DIR = "access-notices"
LOCK_NAME = "access-expiry.lock"

Emit = Callable[..., Any]
Deliver = Callable[[str, str, str, list], Any]


@record(frozen=True)
class Action:
    """One thing to tell one user: ``kind`` is ``warn`` or ``expire``."""

    user: str
    kind: str
    expires_epoch: int
    granted_by: Optional[str]

    @property
    def event_type(self) -> str:
        return "access.expiry_warning" if self.kind == "warn" else "access.expire"

    @property
    def expires_at(self) -> str:
        moment = dt.datetime.fromtimestamp(self.expires_epoch, dt.timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def message(self, now_epoch: float) -> str:
        when = dt.datetime.fromtimestamp(self.expires_epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if self.kind == "warn":
            minutes = max(1, int((self.expires_epoch - now_epoch + 59) // 60))
            return (
                f"Your bare-metal GPU access ends at {when} (in {minutes} minutes): save your work; after that, "
                "new login shells hide the GPUs. Ask an admin to run `ds01 access grant` if you need longer."
            )
        return (
            f"Your bare-metal GPU access ended at {when}: new login shells hide the GPUs. "
            "Use a container (`docker run --gpus 1 ...`), or ask an admin to grant access again."
        )


def decide(grant: dict, notice: Optional[dict], now_epoch: float) -> Optional[Action]:
    """What to say about one grant file's document, given what was already said (pure).

    ``grant``: the parsed grant file; ``notice``: the user's record in the notices directory, or None.
    """
    user = grant.get("user")
    epoch = grant.get("expires_epoch")
    if grant.get("type") == "permanent" or not isinstance(user, str):
        return None
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        return None
    said = notice if isinstance(notice, dict) and notice.get("expires_epoch") == epoch else {}
    granted_by = grant.get("granted_by") if isinstance(grant.get("granted_by"), str) else None
    if int(now_epoch) >= epoch:
        return None if said.get("expired") else Action(user, "expire", epoch, granted_by)
    if epoch - now_epoch <= WARN_BEFORE_S and not said.get("warned"):
        return Action(user, "warn", epoch, granted_by)
    return None


def notices_dir(state_dir: str) -> str:
    return os.path.join(state_dir, NOTICES_DIR)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s); treating it as absent", path, exc)
        return None
    return data if isinstance(data, dict) else None


def sweep(
    grant_dir: str,
    state_dir: str,
    now: dt.datetime,
    *,
    emit: Optional[Emit] = None,
    deliver: Optional[Deliver] = None,
    dry_run: bool = False,
) -> dict:
    """One pass over every grant: warn, record expiry, forget revoked grants.

    ``emit(event_type, user=…, **details)`` records an event, ``deliver(user, level, title, lines)``
    shows the sentence to the user; neither is called in a dry run, and nothing is written then.
    Returns ``{"now", "dry_run", "actions": [{"user", "kind", "event", "expires_at", "message",
    "delivered"}], "errors": [str]}``.
    """
    now_epoch = now.timestamp()
    seen_dir = notices_dir(state_dir)
    report: dict = {"now": now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "dry_run": dry_run}
    actions: list = []
    errors: list = []
    grants = grants_mod.logins(grant_dir)
    for login in grants:
        found = grants_mod.read(grant_dir, login, now_epoch)
        grant = found.doc if found is not None else None
        if not grant or grant.get("user") != login:
            continue
        record_path = os.path.join(seen_dir, f"{login}.json")
        action = decide(grant, _read_json(record_path), now_epoch)
        if action is None:
            continue
        message = action.message(now_epoch)
        entry = {
            "user": login,
            "kind": action.kind,
            "event": action.event_type,
            "expires_at": action.expires_at,
            "message": message,
            "delivered": None,
        }
        actions.append(entry)
        if dry_run:
            continue
        said = _read_json(record_path) or {}
        if said.get("expires_epoch") != action.expires_epoch:
            said = {"expires_epoch": action.expires_epoch, "warned": False, "expired": False}
        said["warned" if action.kind == "warn" else "expired"] = True
        try:
            _write_record(record_path, said)
        except OSError as exc:
            # Not recorded: say nothing now rather than repeat it every sweep.
            errors.append(f"cannot record the {action.kind} notice for {login} in {record_path}: {exc}")
            continue
        if emit is not None:
            emit(
                action.event_type,
                user=login,
                expires_at=action.expires_at,
                granted_by=action.granted_by,
                message=message,
            )
        if deliver is not None:
            title = "GPU access ends soon" if action.kind == "warn" else "GPU access ended"
            level = "WARNING" if action.kind == "warn" else "NOTICE"
            entry["delivered"] = deliver(login, level, title, [message])
    if not dry_run:
        for login in grants_mod.logins(seen_dir):
            if login not in grants:
                try:
                    os.unlink(os.path.join(seen_dir, f"{login}.json"))
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    errors.append(f"cannot drop the notice record of {login}: {exc}")
    report["actions"] = actions
    report["errors"] = errors
    return report


def _write_record(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fsutil.atomic_write(path, json.dumps(data, sort_keys=True) + "\n", mode=0o600)


def notice_delivery(state_dir: str) -> Callable[[str, str, str, list], list]:
    """``deliver(user, level, title, lines)``: the notice box to every terminal ``user`` is logged in on and into
    their spool (``notify``), so the next login greeting shows it; returns where it went."""

    def deliver(user: str, level: str, title: str, lines: list) -> list:
        notifier = notify.Notifier(spool_dir=notify.spool_dir(state_dir))
        where = notifier.deliver(user, None, notify.Message(level, title, tuple(lines)))
        return list(where["terminals"]) + ([where["file"]] if where["file"] else [])

    return deliver


def run(config: Any, now: dt.datetime, *, dry_run: bool = False, source: str = "ds01 access") -> dict:
    """The sweep over ``config``'s grant directory, with its events and notices, under the lock.

    Never raises ``OSError`` into its caller (the lifecycle sweep goes on): a failure is in ``errors``.
    """
    grant_dir = config.section("bare_metal_access")["state_dir"]
    state_dir = config.paths.state_dir
    if dry_run:
        return sweep(grant_dir, state_dir, now, dry_run=True)
    event_log = events.EventLog(events.default_log_path(config))

    def emit(event_type: str, user: Optional[str] = None, **details: Any) -> None:
        if not event_log.write(event_type, user=user, source=source, **details):
            log.warning("event %s for %s could not be recorded", event_type, user)

    try:
        with fsutil.FileLock(os.path.join(config.paths.run_dir, LOCK_NAME), wait_s=0) as lock:
            if not lock.acquired:
                return {"now": None, "dry_run": False, "actions": [], "errors": [], "busy": True}
            return sweep(grant_dir, state_dir, now, emit=emit, deliver=notice_delivery(state_dir))
    except OSError as exc:
        log.warning("the bare-metal grant expiry pass failed: %s", exc)
        return {"now": None, "dry_run": False, "actions": [], "errors": [f"the expiry pass failed: {exc}"]}
