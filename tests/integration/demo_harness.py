"""Runs the demo converge (``ansible-playbook -i inventory/demo playbooks/site.yml``) into a sandbox root
from a frozen copy of the checkout (its tracked and not-ignored files) installed as ``ds01.infra``, so that
edits made to the checkout while a test runs cannot leak into it. Used by test_remove_playbook (the demo's
idempotence, then remove) and test_config_import_rollback (import, rollback and the refused config).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Demo:
    """A copy of the checkout as a collection, its wheelhouse, and a sandbox root (``root``)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.collections_root = tmp_path / "collections"
        self.collection = self.collections_root / "ansible_collections" / "ds01" / "infra"
        self.root = tmp_path / "root"
        self.root.mkdir()
        self._copy_checkout()
        subprocess.run(
            [str(self.collection / "scripts" / "wheelhouse.sh"), str(self.collection / ".cache" / "wheels")],
            env={**os.environ, "PIP": str(BIN / "pip")},
            capture_output=True,
            check=True,
        )

    def _copy_checkout(self) -> None:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        )
        for name in filter(None, listed.stdout.decode().split("\0")):
            source = REPO / name
            if not source.is_file():  # deleted in the work tree but still in the index
                continue
            target = self.collection / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)

    def site(self, *extra: str, playbook: str = "playbooks/site.yml") -> tuple:
        """``(rc, the ansible.posix.json document, stderr)`` of one run of ``playbook`` (playbooks/site.yml)."""
        env = {
            **os.environ,
            "DEMO_ROOT": str(self.root),
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections_root),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_LOCAL_TEMP": str(self.tmp_path / "ansible-local"),
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        proc = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", "inventory/demo", playbook, *extra],
            cwd=self.collection,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(
                f"ansible-playbook printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            ) from None
        return proc.returncode, data, proc.stderr

    def converge(self, *extra: str, playbook: str = "playbooks/site.yml") -> dict:
        rc, data, stderr = self.site(*extra, playbook=playbook)
        assert rc == 0, json.dumps(failed_results(data), indent=1) + stderr[-4000:]
        return data


def snapshot(root: Path) -> dict:
    """Every path under ``root``: content hash, mode and mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None
        out[str(path.relative_to(root))] = (digest, st.st_mode, st.st_mtime_ns)
    return out


def task_results(data: dict) -> list:
    """``[(task name, result)]`` for every task of every play, in order."""
    return [
        (task["task"]["name"], result)
        for play in data["plays"]
        for task in play["tasks"]
        for result in task["hosts"].values()
    ]


def changed_tasks(data: dict) -> list:
    return [name for name, result in task_results(data) if result.get("changed")]


def failed_results(data: dict) -> list:
    return [(name, result.get("msg")) for name, result in task_results(data) if result.get("failed")]
