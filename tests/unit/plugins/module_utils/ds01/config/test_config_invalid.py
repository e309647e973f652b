"""Every invalid config under tests/fixtures/invalid is refused with a message naming file, line, key and fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "fixtures", "invalid")

# case directory -> (file the problem is in, line or None, key path or "", substrings of the message)
CASES = {
    "01-unknown-key-typo": (
        "resource-limits.yaml",
        2,
        "defaults.max_gpu_equivalent",
        ["unknown key", "did you mean 'max_gpu_equivalents'"],
    ),
    "02-wrong-type": (
        "resource-limits.yaml",
        4,
        "groups.student.max_containers_per_user",
        ["got 'three'", "a whole number >= 1"],
    ),
    "03-negative-quota": (
        "resource-limits.yaml",
        4,
        "groups.student.max_gpu_equivalents",
        ["got -1", "a number > 0, or null for unlimited"],
    ),
    "04-zero-timeout": ("resource-limits.yaml", 2, "defaults.idle_timeout_h", ["got 0", "hours > 0"]),
    "05-legacy-bare-number": (
        "resource-limits.yaml",
        2,
        "defaults.max_runtime",
        ["bare number is ambiguous", "max_runtime_h: 48", "'48h'"],
    ),
    "06-legacy-bad-unit": (
        "resource-limits.yaml",
        2,
        "defaults.idle_timeout",
        ["'30 parsecs'", "a duration with a unit"],
    ),
    "07-alias-and-new-key": ("resource-limits.yaml", 3, "defaults.max_gpu_slots", ["keep only 'max_gpu_equivalents'"]),
    "08-login-in-two-groups": (
        "groups/student.members",
        1,
        "alice",
        ["group 'student'", "group 'researcher'", "researcher.members:2"],
    ),
    "09-members-file-undefined-group": ("groups/postdoc.members", None, "", ["group 'postdoc'", "does not define"]),
    "10-members-path-unreadable": ("groups/student.members", None, "", ["is a directory"]),
    "11-default-group-undefined": (
        "resource-limits.yaml",
        1,
        "default_group",
        ["got 'students'", "defined groups: student"],
    ),
    "12-yaml-syntax-error": ("resource-limits.broken-yaml", 5, "", ["is not valid YAML"]),
    "13-top-level-not-mapping": ("resource-limits.yaml", None, "", ["expected a mapping"]),
    "14-unknown-top-level-key": (
        "resource-limits.yaml",
        5,
        "polices",
        ["unknown top-level key", "did you mean 'policies'"],
    ),
    "15-group-name-with-hyphen": ("resource-limits.yaml", 4, "groups.post-doc", ["no '-'"]),
    "16-aggregate-cpu-quota-number": (
        "resource-limits.yaml",
        5,
        "groups.student.aggregate.cpu_quota",
        ["got 96", "'400%'"],
    ),
    "17-memory-high-above-max": (
        "resource-limits.yaml",
        6,
        "groups.student.aggregate.memory_high",
        ["128G is above memory_max 96G"],
    ),
    "18-bad-size": ("resource-limits.yaml", 2, "defaults.memory", ["got 'lots'", "'32g'"]),
    "19-exemption-bad-date": (
        "lifecycle-exemptions.yaml",
        4,
        "exemptions[0].expires_on",
        ["'next tuesday'", "ISO date"],
    ),
    "20-exemption-unknown-rule": (
        "lifecycle-exemptions.yaml",
        3,
        "exemptions[0].exempt_from[0]",
        ["got 'idle'", "idle_timeout_h"],
    ),
    "21-override-bad-login": ("user-overrides.yaml", 1, "bad user!", ["is not a login name"]),
    "22-duplicate-key": ("resource-limits.broken-yaml", 3, "defaults.max_cpus", ["duplicate key"]),
    "23-fake-backend-without-topology": (
        "resource-limits.yaml",
        5,
        "gpu_allocation.topology",
        ["must name a topology file"],
    ),
    "24-slice-name-collision": (
        "groups",
        None,
        "",
        ["'alice@staff.example.org'", "'alice@students.example.org'", "slice name 'alice'", "slice_name"],
    ),
    "25-fraction-out-of-range": ("resource-limits.yaml", 6, "policies.high_demand_threshold", ["got 1.5", "<= 1"]),
    "26-unknown-container-type": (
        "resource-limits.yaml",
        6,
        "container_types.devcontainers",
        ["did you mean 'devcontainer'"],
    ),
    "27-null-not-allowed": ("resource-limits.yaml", 2, "defaults.allow_full_gpu", ["null is not allowed"]),
    "28-members-bad-line": ("groups/student.members", 3, "", ["'bob smith' is not a login name"]),
    "29-boolean-as-number": ("resource-limits.yaml", 2, "defaults.max_cpus", ["expected a number > 0"]),
    "30-override-unknown-key": (
        "user-overrides.yaml",
        2,
        "alice.idle_timeout_hours",
        ["did you mean 'idle_timeout_h'"],
    ),
    "31-empty-groups": ("resource-limits.yaml", 2, "groups", ["at least one group"]),
}


def _main_file(case: str) -> str:
    """The case's limits file. Cases that are broken YAML on purpose use the extension
    ``.broken-yaml`` so that linters (ansible-test's yamllint) leave them alone; ds01 reads any name."""
    for name in ("resource-limits.yaml", "resource-limits.broken-yaml"):
        path = os.path.join(FIXTURES, case, name)
        if os.path.exists(path):
            return path
    raise AssertionError(f"{case} has no resource-limits file")


def _load(case: str) -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        config.load_config(_main_file(case))
    return info.value


def test_every_fixture_directory_has_an_expectation():
    assert [*sorted(CASES), "32-many-problems-at-once"] == sorted(os.listdir(FIXTURES))


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_config_is_refused_with_its_message(case):
    rel_file, line, key, needles = CASES[case]
    error = _load(case)
    assert len(error.problems) == 1, error.render()
    problem = error.problems[0]
    assert os.path.realpath(problem.file) == os.path.realpath(os.path.join(FIXTURES, case, rel_file))
    assert problem.line == line
    assert problem.key == key
    for needle in needles:
        assert needle in problem.message, problem.message
    # The rendered text leads with the file and line, so an editor can jump to it.
    where = f"{rel_file.split('/')[-1]}:{line}: " if line else f"{rel_file.split('/')[-1]}: "
    assert where in error.render()


def test_all_problems_are_reported_at_once():
    error = _load("32-many-problems-at-once")
    assert [(p.line, p.key) for p in error.problems] == [
        (2, "defaults.max_cpus"),
        (3, "defaults.memory"),
        (7, "groups.student.max_runtme_h"),
    ]
    assert "did you mean 'max_runtime_h'" in error.problems[2].message


def test_missing_file_is_a_problem_not_a_traceback(tmp_path):
    with pytest.raises(config.ConfigError) as info:
        config.load_config(str(tmp_path / "nope.yaml"))
    assert info.value.problems[0].message == "file not found"


@pytest.mark.parametrize("case", sorted(os.listdir(FIXTURES)))
def test_cli_reports_without_traceback(case):
    """`ds01 config check` exits 1 with the problem list on stdout, never a Python traceback."""
    path = _main_file(case)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ansible_collections.ds01.infra.plugins.module_utils.ds01",
            "--config",
            path,
            "config",
            "check",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "the configuration has" in proc.stdout
