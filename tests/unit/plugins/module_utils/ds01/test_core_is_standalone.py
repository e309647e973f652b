"""The runtime core runs on the host without Ansible: as the plain package ``ds01``."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys

CORE_PARENT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "plugins", "module_utils")

PROBE = r"""
import importlib, pkgutil, sys
sys.modules["ansible"] = None          # any `import ansible...` now raises ImportError
sys.path.insert(0, sys.argv[1])
import ds01
names = [m.name for m in pkgutil.walk_packages(ds01.__path__, "ds01.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_core_module_imports_without_ansible():
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, os.path.abspath(CORE_PARENT)],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stderr
    expected = [m for m in pkgutil.iter_modules([os.path.join(CORE_PARENT, "ds01")]) if m.name != "__main__"]
    assert int(proc.stdout.strip()) >= len(expected) >= 5


def test_plain_package_cli_answers(tmp_path):
    """`python -m ds01` from the copied tree works, as /usr/local/bin/ds01 runs it on a host."""
    (tmp_path / "resource-limits.yaml").write_text("default_group: student\ngroups:\n  student: {}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ds01",
            "--config",
            str(tmp_path / "resource-limits.yaml"),
            "config",
            "show",
            "kim",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.abspath(CORE_PARENT),
    )
    assert proc.returncode == 0, proc.stderr
    assert '"group": "student"' in proc.stdout
