"""gateway/dockerfile.py: what a Dockerfile would make the daemon fetch, table-driven."""

from __future__ import annotations

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import dockerfile

FINE = [
    "FROM local/debian-min:bookworm\nRUN echo hi\nCOPY a /a\nADD local.tar /x\n",
    "FROM python:3.11 AS build\nFROM build\nCOPY --from=build /a /b\nCOPY --from=0 /a /c\n",
    "ARG BASE=local/empty\nFROM $BASE\n",
    "FROM registry.example.org/team/img:1\n",
    "# a comment\n\nFROM x\nRUN echo \\\n  http://127.0.0.1/ is text here\n",
]
REFUSED = [
    ("FROM x\nADD http://127.0.0.1:8888/token /t\n", "line 2"),
    ("FROM x\nADD --chown=1:1 https://example.org/f /t\n", "ADD"),
    ('FROM x\nADD ["http://127.0.0.1/a", "/a"]\n', "ADD"),
    ("FROM x\nARG U=http://127.0.0.1/x\nADD $U /x\n", "ADD"),
    ("FROM x\nADD \\\n  http://127.0.0.1/x \\\n  /x\n", "line 2"),
    ("# escape=`\nFROM x\nADD `\n  http://127.0.0.1/x /x\n", "ADD"),
    ("FROM x\nADD git@github.com:a/b.git /src\n", "ADD"),
    ("FROM 127.0.0.1:5000/x\n", "127.0.0.1:5000"),
    ("FROM localhost/x:1\n", "localhost"),
    ("FROM [::1]:5000/x\n", "[::1]:5000"),
    ("FROM 10.0.0.5:5000/x\n", "10.0.0.5:5000"),
    ("FROM x\nCOPY --from=127.0.0.1:5000/y /a /b\n", "COPY --from"),
    ("FROM x\nRUN --mount=type=bind,from=localhost:5000/y,target=/m true\n", "RUN --mount"),
    ("ARG REG\nFROM $REG/x\n", "build argument"),
    ("FROM x\nONBUILD ADD http://127.0.0.1/x /x\n", "ONBUILD"),
    ("from x\nadd http://127.0.0.1/x /x\n", "ADD"),
]


@pytest.mark.parametrize("text", FINE)
def test_ordinary_dockerfiles_pass(text):
    dockerfile.check(text)


@pytest.mark.parametrize(("text", "phrase"), REFUSED)
def test_fetches_from_the_host_or_private_networks_are_refused(text, phrase):
    with pytest.raises(dockerfile.DockerfileRefused) as caught:
        dockerfile.check(text)
    assert phrase in caught.value.sentence
    assert ";" in caught.value.sentence  # what was wrong; what to do


def test_build_args_fill_variables():
    dockerfile.check("ARG REG\nFROM $REG/x\n", {"REG": "registry.example.org"})
    with pytest.raises(dockerfile.DockerfileRefused):
        dockerfile.check("ARG REG\nFROM ${REG}/x\n", {"REG": "127.0.0.1:5000"})


def test_commit_and_import_changes_are_dockerfile_lines():
    dockerfile.check_changes(["ENV A=1", "CMD sh"], "--change")
    with pytest.raises(dockerfile.DockerfileRefused, match="ONBUILD"):
        dockerfile.check_changes(["ONBUILD ADD http://127.0.0.1/x /x"], "--change")
