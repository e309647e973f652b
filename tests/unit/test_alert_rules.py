"""The shipped Prometheus rules load in promtool and their alerts fire (and stay quiet) as intended."""

from __future__ import annotations

import os
import shutil
import subprocess

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
RULES = os.path.join(ROOT, "roles", "ds01_monitoring", "files", "ds01_alerts.yml")
TESTS = os.path.join(ROOT, "tests", "fixtures", "promtool", "ds01_alerts_test.yml")


def _promtool(*args):
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes from Debian's prometheus package, installed by `make test`"
    return subprocess.run([promtool, *args], capture_output=True, text=True, check=False, cwd=os.path.dirname(TESTS))


def test_rules_are_valid():
    proc = _promtool("check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerts_fire_on_known_series():
    proc = _promtool("test", "rules", os.path.basename(TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
