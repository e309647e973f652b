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
    # round-3 attack: spellings moby's parser accepts
    ("FROM x\nADD\thttp://127.0.0.1/x /x\n", "ADD"),
    ("FROM x\nADD\x0bhttp://127.0.0.1/x /x\n", "ADD"),
    ("FROM x\nADD\x0chttp://127.0.0.1/x /x\n", "ADD"),
    ("FROM x\nAD\\\nD http://127.0.0.1/x /x\n", "ADD"),
    ("# escape=`\nFROM x\nAD`\nD http://127.0.0.1/x /x\n", "ADD"),
    ("FROM x\nADD \\  \n# comment inside\n\n  http://127.0.0.1/x /x\n", "ADD"),
    ("FROM\t127.0.0.1:5000/x/y\n", "127.0.0.1:5000"),
    # round-4 attack: a byte-order mark, quotes and escapes the builder's lexer removes
    ("\ufeff# escape=`\nFROM x\nAD`\nD http://127.0.0.1/t /t\n", "ADD"),
    ("\ufeffFROM 127.0.0.1:5000/x/y\n", "127.0.0.1:5000"),
    ('FROM "127.0.0.1:5000/fq/y"\n', "127.0.0.1:5000"),
    ("FROM 127.0.0\\.1:5000/fe/y\n", "127.0.0.1:5000"),
    ("FROM x\nCOPY --from='127.0.0.1:5000/cf/y' /a /b\n", "127.0.0.1:5000"),
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


def test_the_images_a_build_starts_from_are_listed_as_the_daemon_reads_them():
    text = 'FROM "a/b:1" AS one\nFROM one\nCOPY --from=c/d:2 /x /y\nCOPY --from=one /x /z\nFROM scratch\n'
    assert dockerfile.check(text) == ["a/b:1", "c/d:2"]


def test_build_args_fill_variables():
    dockerfile.check("ARG REG\nFROM $REG/x\n", {"REG": "registry.example.org"})
    with pytest.raises(dockerfile.DockerfileRefused):
        dockerfile.check("ARG REG\nFROM ${REG}/x\n", {"REG": "127.0.0.1:5000"})


def test_commit_and_import_changes_are_dockerfile_lines():
    dockerfile.check_changes(["ENV A=1", "CMD sh"], "--change")
    with pytest.raises(dockerfile.DockerfileRefused, match="ONBUILD"):
        dockerfile.check_changes(["ONBUILD ADD http://127.0.0.1/x /x"], "--change")


def _context(*entries) -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


def _read(body: bytes, dockerfile_param: str = ""):
    from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import objects

    reader = objects.BuildContextReader(1000, 1000, dockerfile_param)
    reader.feed(body)
    reader.end()
    return reader


def test_the_build_context_reader_finds_the_dockerfile():
    import tarfile

    reader = _read(_context(("Dockerfile", tarfile.REGTYPE, b"FROM x\n", ""), ("a", tarfile.REGTYPE, b"a", "")))
    assert reader.dockerfiles == {"Dockerfile": "FROM x\n"}
    reader = _read(_context(("sub/Build", tarfile.REGTYPE, b"FROM y\n", "")), "./sub/Build")
    assert reader.dockerfiles == {"sub/Build": "FROM y\n"}


@pytest.mark.parametrize(
    ("body", "param", "phrase"),
    [
        (b"\x1f\x8b\x08\x00" + bytes(100), "", "gzip"),
        (b"BZh91AY&SY" + bytes(100), "", "bzip2"),
        (b"x" * 100, "", "tar"),  # shorter than a header: not a tar the gateway could read
        ("symlinked-dir", "sub/Dockerfile", "link"),
        ("symlinked-file", "", "not a regular file"),
    ],
)
def test_contexts_the_gateway_cannot_read_are_refused(body, param, phrase):
    import tarfile

    from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import objects

    if body == "symlinked-dir":
        body = _context(("real/Dockerfile", tarfile.REGTYPE, b"FROM x\n", ""), ("sub", tarfile.SYMTYPE, b"", "real"))
    elif body == "symlinked-file":
        body = _context(("real", tarfile.REGTYPE, b"FROM x\n", ""), ("Dockerfile", tarfile.SYMTYPE, b"", "real"))
    with pytest.raises(objects.BodyRefused) as caught:
        _read(body, param)
    assert phrase in caught.value.verdict[1]


@pytest.mark.parametrize(
    "line",
    [
        "LABEL ds01.user=victor",
        "LABEL ds01.user victor",  # the old `LABEL key value` form
        'LABEL a=b "ds01.gpu.uuids"=GPU-1',
        "LABEL ds01\\.lifecycle.exempt=true",
        "LABEL ds01.image.maker=victor",
        "LABEL com.docker.compose.project.working_dir=/home/victor",
        "LABEL devcontainer.local_folder=/home/victor/x",
        "LABEL aime.mlc.USER=victor",
        "LABEL $NAME=victor",
        "LABEL ${NAME}=victor",
        "ONBUILD LABEL ds01.user=victor",
    ],
)
def test_labels_only_the_server_sets_are_refused(line):
    with pytest.raises(dockerfile.DockerfileRefused) as err:
        dockerfile.check(f"FROM base\nARG NAME=ds01.user\n{line}\n")
    assert "line 3" in err.value.sentence


@pytest.mark.parametrize(
    "line",
    ['LABEL maintainer="ds01.user=x"', 'LABEL a="b c" d=e', "LABEL ds01.recipe=abc", "LABEL version 1.0 beta"],
)
def test_other_labels_pass(line):
    assert dockerfile.check(f"FROM base\n{line}\n") == ["base"]


def test_commit_and_import_changes_cannot_set_server_labels():
    with pytest.raises(dockerfile.DockerfileRefused):
        dockerfile.check_changes(["LABEL ds01.user=victor"], "--change")
