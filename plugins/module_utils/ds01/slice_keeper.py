"""A capped slice for every login before their first container, deployed or not.

The role (``ds01.infra.user_slices``) writes every known login's slice into ``/etc/systemd/system``
at deploy time. A login that appears later (LDAP/SSSD, ``pam_mkhomedir``) has none until the
playbook runs again, and systemd would make its slice on the fly with no caps when Docker first
asks for it. So the gateway, which runs as root and sees every create and build first, calls
``SliceKeeper.ensure`` for the caller before it forwards one:

- the files come from the one renderer (``slices.files_for``), so they are what the role would
  write for that login;
- a file the role has installed in ``/etc/systemd/system`` is left alone (it is the role's, and it
  wins over ``/run`` anyway); what is missing is written to ``/run/systemd/system``, systemd's
  runtime unit directory, then ``systemctl daemon-reload`` loads it;
- it is skipped where systemd is not running (no ``/run/systemd/system``: test hosts, cgroupfs);
- each (login, file set) is checked once per process; a failure refuses the create with a sentence
  (fail closed: no container runs in an uncapped slice).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional

from . import fsutil, logs, slices

log = logs.get(__name__)

ETC_UNIT_DIR = "/etc/systemd/system"
RUN_UNIT_DIR = "/run/systemd/system"
SYSTEMCTL = ("systemctl",)
RELOAD_TIMEOUT_S = 60.0


class SliceError(Exception):
    """The slice could not be put in place; ``sentence`` says why and what to do."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


class SliceKeeper:
    def __init__(
        self,
        *,
        etc_dir: str = ETC_UNIT_DIR,
        run_dir: str = RUN_UNIT_DIR,
        booted: Optional[Callable[[], bool]] = None,
        systemctl: Sequence[str] = SYSTEMCTL,
    ) -> None:
        self.etc_dir = etc_dir
        self.run_dir = run_dir
        self.booted = booted or (lambda: os.path.isdir(RUN_UNIT_DIR))
        self.systemctl = tuple(systemctl)
        self._done: dict = {}
        self._unloaded = False  # files were written but systemd has not loaded them yet
        self._lock = threading.Lock()

    def ensure(self, config: Any, login: str) -> list:
        """Makes sure ``login``'s slice files are loaded; returns the runtime files it wrote (often none).
        Raises ``SliceError`` when they cannot be."""
        if config is None or not self.booted():
            return []
        try:
            files = slices.files_for(config, login)
        except slices.SliceError as exc:
            raise SliceError(
                f"your resource slice cannot be made ({exc}); ask an admin to fix the configuration"
            ) from None
        stamp = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()
        if self._done.get(login) == stamp:
            return []
        with self._lock:
            if self._done.get(login) == stamp:
                return []
            written = []
            for rel, text in sorted(files.items()):
                if os.path.exists(os.path.join(self.etc_dir, rel)):
                    continue  # the role's; it wins over /run anyway
                path = os.path.join(self.run_dir, rel)
                if _read(path) == text:
                    continue
                try:
                    fsutil.atomic_write(path, text, mode=0o644)
                except OSError as exc:
                    raise SliceError(
                        f"your resource slice could not be written ({path}: {exc.strerror}); ask an admin"
                    ) from None
                written.append(path)
                self._unloaded = True
            if self._unloaded:
                self._reload()
                self._unloaded = False
                if written:
                    log.info("runtime slice files for %s: %s", login, ", ".join(written))
            self._done[login] = stamp
            return written

    def _reload(self) -> None:
        try:
            proc = subprocess.run(
                [*self.systemctl, "daemon-reload"],
                capture_output=True,
                text=True,
                timeout=RELOAD_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SliceError(f"systemd could not load your resource slice ({exc}); ask an admin") from None
        if proc.returncode != 0:
            raise SliceError(
                f"systemd could not load your resource slice (systemctl daemon-reload: {proc.stderr.strip()}); "
                "ask an admin"
            )
