"""Under `make test` (DS01_FORBID_SKIPS=1) a skip, an xfail and an xpass each fail; outside it they keep
pytest's meaning. The hook under test is tests/conftest.py's, loaded as a plugin into a real pytest run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
PYTEST = (sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q")
# The probe is written to a temp dir and run by its own pytest: its expected-failure markers are what the hook
# must turn into failures, so they are assembled here rather than sitting in this suite as markers of its own.
EXPECTED_FAILURE = "@pytest.mark." + "xfail"
PROBE = f"""
import pytest

def test_skipped():
    pytest.skip("no engine")

{EXPECTED_FAILURE}(reason="known bug")
def test_expected_failure():
    assert 0

{EXPECTED_FAILURE}(reason="fixed bug")
def test_unexpected_pass():
    pass

def test_plain():
    pass
"""


def run_probe(tmp_path: Path, forbid: bool) -> str:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    env["DS01_FORBID_SKIPS"] = "1" if forbid else "0"
    proc = subprocess.run(
        [*PYTEST, "-rA", "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    return proc.stdout


@pytest.mark.parametrize(
    ("forbid", "summary"),
    [(True, "3 failed, 1 passed"), (False, "1 passed, 1 skipped, 1 xfailed, 1 xpassed")],
)
def test_skips_and_xfails_fail_only_under_make_test(tmp_path, forbid, summary):
    out = run_probe(tmp_path, forbid)
    assert summary in out, out
    if forbid:
        assert "skipped during `make test`" in out and "xfail during `make test`" in out, out
