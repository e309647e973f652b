"""Every command example in docs/users/ runs, as an ordinary Unix user, through a real gateway.

The world is ``userworld.user_world``: real users ``ana`` and ``ben`` (students: the lab's default group),
a private dockerd, the gateway in front of it, and the lab's example configuration
(``tests/fixtures/lab/``: resource-limits.yaml with its groups, overrides and exemptions) plus the three
things a host adds (an ``images`` list, the GPU inventory, paths). The GPUs are a fake topology of one
whole A100 (slot 0) and one A100 in MIG mode (slots 1.0 3g.20gb, 1.1 2g.10gb, 1.2 and 1.3 1g.5gb).

How the pages mark examples. Every ```` ```console ```` block is preceded by one HTML comment:

- ``<!-- example: run as USER -->``: each ``$ `` line is a command, run as USER; the lines up to the next
  ``$ `` line are its expected output. Only ``ds01`` and ``docker`` commands are allowed. The commands
  are split like a shell would (``shlex``), without a shell.
- ``<!-- example: not run (REASON) -->``: shown only (an interactive terminal, VS Code's UI, a program the
  test image lacks).

A ``console`` block with neither comment fails the test, as does a ``sh``/``bash``/``shell`` block: so
no command example escapes.

Matching rule (loose where output holds times, ids or temp paths): the output is stdout then stderr, blank
lines dropped, trailing spaces stripped. Expected lines match actual lines in order; a line ``...`` matches
any number of lines (none included); ``[...]`` inside a line matches any text within that line. Without a
final ``...`` the output must end where the expected lines end. The docs' image name
``local/debian-min:bookworm`` stands for the test image (``$DS01_IMAGE_MIN``). Docker's
``WARNING: IPv4 forwarding is disabled`` is dropped: it comes from this test machine's dockerd (started with
``--ip-forward=false``), not from anything a user of the lab's server sees.

The blocks of one page run in order (a page is a walk-through); after each page every container left on
the daemon is removed, so pages do not depend on one another.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from userworld import IMAGE, WorldError, user_world

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "users"
LAB = REPO / "tests" / "fixtures" / "lab"
USERS = ("ana", "ben")
DOC_IMAGE = "local/debian-min:bookworm"
MARKER = re.compile(r"<!--\s*example:\s*(run as (?P<user>[a-z][a-z0-9_-]*)|not run \((?P<why>[^)]+)\))\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")

TOPOLOGY = """
gpus:
  - {index: 0, uuid: GPU-d0c50000-0000-4000-8000-000000000000, name: NVIDIA A100-SXM4-40GB, memory_mib: 40960}
  - index: 1
    uuid: GPU-d0c51111-1111-4111-8111-111111111111
    name: NVIDIA A100-SXM4-40GB
    memory_mib: 40960
    mig: true
    instances:
      - {profile: 3g.20gb, uuid: MIG-d0c51111-0000-4000-8000-000000000000, gpu_instance_id: 1, compute_instance_id: 0}
      - {profile: 2g.10gb, uuid: MIG-d0c51111-0001-4000-8000-000000000000, gpu_instance_id: 5, compute_instance_id: 0}
      - {profile: 1g.5gb, uuid: MIG-d0c51111-0002-4000-8000-000000000000, gpu_instance_id: 13, compute_instance_id: 0}
      - {profile: 1g.5gb, uuid: MIG-d0c51111-0003-4000-8000-000000000000, gpu_instance_id: 14, compute_instance_id: 0}
"""
HOST_PART = """
images:
  allowed: ["{image}"]
  default: "{image}"
gpu_allocation:
  backend: fake
  topology: topology.yaml
paths:
  state_dir: state
  log_dir: log
  run_dir: run
"""


def blocks(page: Path) -> list:
    """(language, marker match or None, line number, body lines) of every fenced block of a page."""
    found = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        found.append((fence.group(1), MARKER.fullmatch(before.strip()), start + 1, body))
    return found


def examples(body: list) -> list:
    """(command, expected lines) of a runnable block."""
    out = []
    for line in body:
        if line.startswith("$ "):
            out.append((line[2:].strip(), []))
        elif not out:
            raise AssertionError(f"output before any `$ ` command: {line!r}")
        else:
            out[-1][1].append(line)
    return out


def _line_matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("[...]"))
    return re.fullmatch(pattern, actual) is not None


def output_matches(expected: list, actual: list) -> bool:
    """The matching rule of the module docstring (``...`` lines: any lines; ``[...]``: any text)."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(output_matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and _line_matches(expected[0], actual[0]) and output_matches(expected[1:], actual[1:])


MACHINE_ONLY = ("WARNING: IPv4 forwarding is disabled. Networking will not work.",)


def _clean(text: str) -> list:
    return [ln.rstrip() for ln in text.splitlines() if ln.strip() and ln.strip() not in MACHINE_ONLY]


PAGES = sorted(DOCS.glob("*.md"))


def test_the_matching_rule():
    assert output_matches(["a", "...", "c [...] e"], ["a", "b", "b", "c d e"])
    assert output_matches(["a", "..."], ["a"])
    assert not output_matches(["a"], ["a", "b"])
    assert not output_matches(["c [...] e"], ["c d f"])


def test_every_console_block_is_marked_and_no_shell_block_escapes():
    assert PAGES, "docs/users/ has no pages"
    unmarked, shell, runnable = [], [], 0
    for page in PAGES:
        for lang, marker, line, _body in blocks(page):
            if lang in ("sh", "bash", "shell", "shell-session"):
                shell.append(f"{page.name}:{line}")
            if lang == "console":
                if marker is None:
                    unmarked.append(f"{page.name}:{line}")
                elif marker.group("user"):
                    runnable += 1
    assert unmarked == [], "console blocks without an <!-- example: ... --> marker"
    assert shell == [], "write command examples as ```console blocks with a marker"
    assert runnable >= 10


@pytest.fixture(scope="module")
def world(repo_root, docker_client):
    files = {name: LAB / name for name in ("groups", "lifecycle-exemptions.yaml", "user-overrides.yaml")}
    limits = (LAB / "resource-limits.yaml").read_text() + HOST_PART.format(image=IMAGE)
    try:
        with user_world(repo_root, docker_client, USERS, limits, TOPOLOGY, files, prefix="ds01-docs-") as made:
            yield made
    except WorldError as exc:
        pytest.fail(str(exc))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_examples_of_a_page_run_as_shown(world, page):
    failures = []
    try:
        for _lang, marker, line, body in (b for b in blocks(page) if b[0] == "console"):
            if marker is None or not marker.group("user"):
                continue
            user = marker.group("user")
            assert user in USERS, f"{page.name}:{line}: examples run as one of {USERS}"
            for command, expected in examples(body):
                argv = shlex.split(command.replace(DOC_IMAGE, IMAGE))
                run = {"ds01": world.ds01, "docker": world.docker}.get(argv[0])
                assert run is not None, f"{page.name}:{line}: only ds01 and docker commands run: {command}"
                done = run(user, *argv[1:])
                actual = _clean(done.stdout + "\n" + done.stderr)
                want = [ln.rstrip().replace(DOC_IMAGE, IMAGE) for ln in expected if ln.strip()]
                if not output_matches(want, actual):
                    failures.append(
                        f"{page.name}:{line}: $ {command}\n--- expected\n"
                        + "\n".join(want)
                        + "\n--- got\n"
                        + "\n".join(actual)
                    )
    finally:
        for container in world.engine.containers.list(all=True):
            container.remove(force=True, v=True)
    assert failures == [], "\n\n".join(failures)
