"""The ds01 command's edge: help for every command, usage errors, no tracebacks, lazy imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import cli

LAB = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "fixtures", "lab", "resource-limits.yaml")


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ansible_collections.ds01.infra.plugins.module_utils.ds01", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
    )


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help(command):
    proc = _run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: ds01" in proc.stdout and "Traceback" not in proc.stderr


def test_top_level_help_lists_every_command():
    proc = _run("--help")
    assert proc.returncode == 0
    for command in cli.COMMANDS:
        assert command in proc.stdout


def test_unknown_command_is_a_usage_error():
    proc = _run("frobnicate")
    assert proc.returncode == cli.EXIT_USAGE and "invalid choice" in proc.stderr


def test_broken_config_is_exit_2_with_the_problem(tmp_path):
    (tmp_path / "resource-limits.yaml").write_text("groups: [\n")
    proc = _run("--config", str(tmp_path / "resource-limits.yaml"), "config", "show", "alice")
    assert proc.returncode == cli.EXIT_USAGE
    assert "is not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_config_comes_from_the_environment():
    proc = _run("config", "show", "erin", "--json", env={"DS01_CONFIG": LAB})
    assert proc.returncode == 0 and '"group": "faculty"' in proc.stdout


def test_a_command_imports_only_its_own_feature():
    probe = (
        "import sys; from ansible_collections.ds01.infra.plugins.module_utils.ds01 import cli; "
        f"cli.main(['--config', {LAB!r}, 'config', 'show', 'alice']); "
        "print('docker' in sys.modules, any(m.endswith('.detector') for m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False False"
