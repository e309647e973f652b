"""Exec instances a user created and has not started.

dockerd keeps every exec instance (its command, environment and settings) in memory until its
container stops, started or not. ``docker exec`` creates and starts one at once, but the API lets a
client create thousands and never start them: in the round-7 attack 100 of them took dockerd from
0.45 GB to 5.1 GB. The gateway counts each user's unstarted ones and refuses a create past
``MAX_PENDING``, after asking the daemon which of them are still waiting.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

MAX_PENDING = 32


class ExecLedger:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self.pending: dict = {}  # login -> {exec id: container id}

    def add(self, login: str, exec_id: str, container_id: str) -> None:
        self.pending.setdefault(login, {})[exec_id] = container_id

    def started(self, exec_id: str) -> None:
        for entries in self.pending.values():
            entries.pop(exec_id, None)

    async def full(self, login: str, inspect: Callable[[str], Any]) -> Optional[int]:
        """None while ``login`` may create another; else how many still wait. Before refusing it asks the
        daemon (``inspect(exec id)``): an instance that is gone, started or finished no longer counts."""
        entries = self.pending.get(login, {})
        if len(entries) < self.max_pending:
            return None
        for exec_id in list(entries):
            info = await inspect(exec_id)
            if info is None or info.get("Running") or info.get("Pid") or info.get("ExitCode") is not None:
                entries.pop(exec_id, None)
        return len(entries) if len(entries) >= self.max_pending else None


def sentence(waiting: int) -> str:
    return (
        f"you have {waiting} exec instances that were created and never started; the Docker daemon keeps each in "
        "memory until its container stops. Start them (`docker exec` does both at once), or stop the container, "
        "then try again."
    )
