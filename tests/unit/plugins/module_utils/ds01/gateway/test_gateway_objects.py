"""objects/: build parameters, image references and tag claims, networks, and the docker cp tar rewriter.

The tar tests build archives with Python's tarfile in every header form (ustar, GNU, PAX), run
them through ``ArchiveRewriter`` in small pieces, and read the result back with tarfile: what a
reader sees is what dockerd's untar would extract.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from ds01.gateway import objects
from ds01.gateway.objects.archive import _pax_record
from ds01.gateway.policy import classify

UID, GID = 4242, 4343
FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


# --------------------------------------------------------------------------------------------
# tar helpers
# --------------------------------------------------------------------------------------------


def member(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, link="", pax=None):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname, info.gname = "root", "root"
    info.linkname = link
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    if pax:
        info.pax_headers = pax
    return info, data


def archive(fmt, *members):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=FORMATS[fmt]) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def rewrite(raw, piece=61):
    rewriter = objects.ArchiveRewriter(UID, GID)
    out = b"".join(rewriter.filter(raw[i : i + piece]) for i in range(0, len(raw), piece))
    return rewriter, out + rewriter.filter(None)


def read_back(raw):
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def refused(raw):
    rewriter = objects.ArchiveRewriter(UID, GID)
    outputs = [rewriter.filter(raw[i : i + 100]) for i in range(0, len(raw), 100)]
    with pytest.raises(objects.BodyRefused) as caught:
        rewriter.filter(None)
    return caught.value.verdict, b"".join(outputs)


def block(name, kind=b"0", size=0, mode=0o644, magic=b"ustar\x0000"):
    header = bytearray(512)
    header[0 : len(name)] = name
    header[100:108] = b"%07o\x00" % mode
    header[108:116] = b"%07o\x00" % 0
    header[116:124] = b"%07o\x00" % 0
    header[124:136] = b"%011o\x00" % size
    header[136:148] = b"%011o\x00" % 0
    header[156:157] = kind
    header[257:265] = magic
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def pad(data):
    return data + bytes(-len(data) % 512)


# --------------------------------------------------------------------------------------------
# tar: ownership, modes, extended attributes, every header form
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("piece", [1, 61, 512, 100000])
def test_every_entry_is_reowned_and_loses_setuid_setgid_sticky(fmt, piece):
    long_name = "deep/" + "n" * 120 if fmt != "ustar" else "deep/name"
    raw = archive(
        fmt,
        member("deep/", tarfile.DIRTYPE, mode=0o3777),
        member("deep/suid", data=b"#!/bin/sh\nid\n", mode=0o4755),
        member(long_name, data=b"x" * 700, mode=0o6711, uid=123456, gid=7),
        member("deep/link", tarfile.SYMTYPE, link="/etc/shadow", mode=0o777),
        member("deep/hard", tarfile.LNKTYPE, link="deep/suid"),
    )
    rewriter, out = rewrite(raw, piece)
    assert rewriter.verdict is None
    assert len(out) == len(raw)  # a Content-Length stays true
    members = read_back(out)
    assert [m.name for m, _unused in members] == ["deep", "deep/suid", long_name, "deep/link", "deep/hard"]
    for m, _data in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (UID, GID, "", "")
        assert m.mode & 0o7000 == 0
    assert members[1][1] == b"#!/bin/sh\nid\n"
    assert members[2][1] == b"x" * 700
    assert members[2][0].mode == 0o711
    assert members[3][0].linkname == "/etc/shadow"


def test_pax_owner_records_and_privileged_xattrs_are_dropped():
    pax = {
        "uid": "0",
        "gid": "0",
        "uname": "root",
        "gname": "root",
        "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
        "SCHILY.xattr.trusted.x": "t",
        "LIBARCHIVE.xattr.security.capability": "AQAAAg",
        "SCHILY.xattr.user.note": "kept",
        "mtime": "1700000000.5",
    }
    raw = archive("pax", member("f", data=b"data", pax=pax, uid=5, gid=6))
    _rewriter, out = rewrite(raw)
    assert len(out) == len(raw)
    (m, data), *_unused = read_back(out)
    assert data == b"data"
    assert (m.uid, m.gid) == (UID, GID)
    assert m.pax_headers == {"SCHILY.xattr.user.note": "kept", "mtime": "1700000000.5"}


def test_pax_global_header_is_sanitised_too():
    raw = archive("pax", member("f", data=b"1"))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"uid": "0", "comment": "c"}) as t:
        info, data = member("g", data=b"2")
        t.addfile(info, io.BytesIO(data))
    raw = out.getvalue()
    _rewriter, result = rewrite(raw)
    assert len(result) == len(raw)
    with tarfile.open(fileobj=io.BytesIO(result)) as tar:
        assert tar.pax_headers == {"comment": "c"}
        assert [(m.name, m.uid) for m in tar.getmembers()] == [("g", UID)]


def test_large_uid_is_written_base256():
    rewriter = objects.ArchiveRewriter(3_000_000, 3_000_001)
    raw = archive("gnu", member("f", data=b"1"))
    out = rewriter.filter(raw) + rewriter.filter(None)
    (m, _unused), *_unused = read_back(out)
    assert (m.uid, m.gid) == (3_000_000, 3_000_001)


def test_gnu_long_link_hard_link_to_an_earlier_long_name_is_allowed():
    name = "d/" + "l" * 200
    raw = archive("gnu", member(name, data=b"z"), member("h", tarfile.LNKTYPE, link=name))
    rewriter, out = rewrite(raw)
    assert rewriter.verdict is None
    assert [m.linkname for m, _unused in read_back(out)] == ["", name]


# --------------------------------------------------------------------------------------------
# tar: refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize(
    ("kind", "phrase"),
    [(tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device"), (tarfile.FIFOTYPE, "FIFO")],
)
def test_device_nodes_and_fifos_are_refused_from_their_first_header_on(fmt, kind, phrase):
    raw = archive(fmt, member("ok.txt", data=b"fine" * 300), member("dev/mem", kind))
    verdict, emitted = refused(raw)
    assert verdict[0] == "POLICY_DENIED" and phrase in verdict[1] and "dev/mem" in verdict[1]
    # the same length; the complete entry before it, then zeros: an end of archive to any reader
    assert len(emitted) == len(raw)
    assert b"dev/mem" not in emitted
    [(m, data)] = read_back(emitted)
    assert (m.name, data, m.uid) == ("ok.txt", b"fine" * 300, UID)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("link", ["/etc/shadow", "../outside", "notinarchive", "a/../../x"])
def test_hard_links_outside_the_archive_are_refused(fmt, link):
    raw = archive(fmt, member("a", data=b"1"), member("h", tarfile.LNKTYPE, link=link))
    verdict, _unused = refused(raw)
    assert "hard link" in verdict[1]


def test_hard_link_with_a_pax_linkpath_is_checked_on_the_pax_value():
    raw = archive("pax", member("a", data=b"1"), member("h", tarfile.LNKTYPE, link="a", pax={"linkpath": "/etc/x"}))
    verdict, _unused = refused(raw)
    assert "/etc/x" in verdict[1]


def test_entries_outside_the_destination_are_refused():
    raw = archive("pax", member("../../etc/cron.d/x", data=b"1"))
    verdict, _unused = refused(raw)
    assert "outside the destination" in verdict[1]


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        # a directory with a size: Go reads no data for it, so the "data" is the next header (a device)
        (block(b"d", b"5", size=512) + block(b"dev", b"3") + bytes(1024), "character device"),
        # a symlink with a size, hiding a FIFO the same way
        (block(b"s", b"2", size=512) + block(b"fifo", b"6") + bytes(1024), "FIFO"),
        # an old-style entry whose name ends in "/" is a directory to Go: no data either
        (block(b"old/", b"\x00", size=512) + block(b"dev", b"4") + bytes(1024), "block device"),
        (block(b"a") + bytes(512) + block(b"b") + bytes(1024), "zero block"),
        (block(b"a")[:148] + b"0000000\x00" + block(b"a")[156:], "checksum"),
        (block(b"a", b"S", size=0) + bytes(1024), "'S'"),
        (block(b"a", b"7", size=0) + bytes(1024), "'7'"),
        (block(b"p", b"x", size=2 << 20), "1 MiB"),
    ],
)
def test_what_go_reads_differently_is_refused(raw, phrase):
    verdict, _unused = refused(raw)
    assert phrase in verdict[1]


def test_pax_size_decides_where_the_next_header_is():
    # header size 0, PAX size 512: Go reads 512 bytes of data, which here hold a device header
    records = _pax_record(b"size", b"512")
    raw = block(b"x", b"x", size=len(records)) + pad(records) + block(b"f", b"0", size=0) + block(b"dev", b"3")
    rewriter, out = rewrite(raw + bytes(1024))
    assert rewriter.verdict is None  # the "device" is file data, as Go reads it
    assert len(out) == len(raw) + 1024


def test_malformed_pax_and_sparse_are_refused():
    bad = b"99 path=x\n"
    verdict, _unused = refused(block(b"p", b"x", size=len(bad)) + pad(bad) + block(b"f") + bytes(1024))
    assert "not a tar stream" in verdict[1]
    sparse = _pax_record(b"GNU.sparse.map", b"0,1")
    verdict, _unused = refused(block(b"p", b"x", size=len(sparse)) + pad(sparse) + block(b"f") + bytes(1024))
    assert "sparse" in verdict[1]


def test_after_a_refusal_the_rest_of_the_body_is_zeros():
    rewriter = objects.ArchiveRewriter(UID, GID)
    assert rewriter.filter(block(b"dev", b"3")[:100]) == b""  # not a whole header yet
    assert rewriter.filter(block(b"dev", b"3")[100:]) == bytes(512)
    assert rewriter.filter(b"x" * 4096) == bytes(4096)
    with pytest.raises(objects.BodyRefused):
        rewriter.filter(None)


def test_data_after_the_end_marker_is_blanked():
    raw = archive("ustar", member("a", data=b"1")) + block(b"dev", b"3")
    rewriter, out = rewrite(raw)
    assert rewriter.verdict is None and len(out) == len(raw)
    assert out.endswith(bytes(512))


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------

CLI_BUILD = (
    ("t", "alice/app:1"),
    ("rm", "0"),
    ("networkmode", "none"),
    ("cpushares", "0"),
    ("memory", "0"),
    ("cgroupparent", ""),
    ("shmsize", "0"),
    ("dockerfile", "Dockerfile"),
    ("ulimits", "null"),
    ("buildargs", "{}"),
    ("labels", "null"),
    ("cachefrom", "null"),
    ("version", "1"),
)
# What DOCKER_BUILDKIT=1 docker build adds: BuildKit is refused for users (objects.GRPC_SENTENCE)
BUILDKIT = (("session", "abc"), ("remote", "client-session"), ("version", "2"))


@pytest.mark.parametrize("extra", BUILDKIT, ids=[k for k, _v in BUILDKIT])
def test_buildkit_builds_are_refused_saying_how_to_build(extra):
    verdict, _query, _tags = objects.check_build((*CLI_BUILD[:-1], extra), "s")
    assert verdict and "DOCKER_BUILDKIT=0" in verdict[1]


def test_build_as_the_cli_sends_it_is_allowed_with_the_slice_forced():
    verdict, query, tags = objects.check_build(CLI_BUILD, "ds01-alice.slice")
    assert verdict is None
    assert tags == ["docker.io/alice/app:1"]
    assert dict(query)["cgroupparent"] == "ds01-alice.slice"
    assert [k for k, _unused in query].count("cgroupparent") == 1


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (("remote", "http://127.0.0.1:8888/ctx.tar"), "URL"),
        (("networkmode", "host"), "--network host"),
        (("networkmode", "container:abc"), "--network container:abc"),
        (("networkmode", "bobnet"), "--network bobnet"),
        (("outputs", '[{"Type":"image","Attrs":{"name":"x"}}]'), "--output"),
        (("pull", "1"), "--pull"),
        (("securityopt", "seccomp=unconfined"), "--security-opt"),
        (("devices", "/dev/mem"), "'devices'"),
        (("t", "UPPER"), "lowercase"),
        (("isolation", "hyperv"), "isolation"),
        (("memory", "1e9"), "whole number"),
        (("buildargs", "[1]"), "JSON dict"),
        (("version", "3"), "builder version"),
    ],
)
def test_build_parameters_are_refused(extra, phrase):
    query = (*(kv for kv in CLI_BUILD if kv[0] != extra[0]), extra)
    verdict, _query, _tags = objects.check_build(query, "s")
    assert verdict and phrase in verdict[1]


def test_build_parameter_twice_is_refused_but_tags_repeat():
    verdict, _q, _t = objects.check_build((("networkmode", "none"), ("networkmode", "host")), "s")
    assert "twice" in verdict[1]
    verdict, _q, tags = objects.check_build((("t", "a"), ("t", "b:2")), "s")
    assert verdict is None and tags == ["docker.io/library/a:latest", "docker.io/library/b:2"]


def test_form_bodies_are_recognised():
    assert objects.form_content_type("Application/X-WWW-Form-Urlencoded; charset=utf-8")
    assert objects.form_content_type("multipart/form-data; boundary=x")
    assert not objects.form_content_type("application/x-tar")
    assert not objects.form_content_type(None)


# --------------------------------------------------------------------------------------------
# routes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "kind", "ref"),
    [
        ("POST", "/v1.41/grpc", "grpc", None),
        ("POST", "/session", "grpc", None),  # BuildKit sessions are refused for users
        ("POST", "/images/create?fromImage=x", "images.create", None),
        ("POST", "/images/load", "images.load", None),
        ("POST", "/images/alice/app:1/tag?repo=y", "images.tag", "alice/app:1"),
        ("POST", "/images/alice%2Fapp/tag?repo=y", "images.tag", "alice/app"),
        ("POST", "/images/create/tag?repo=y", "images.tag", "create"),
        ("POST", "/images/x/push", "open", None),
        ("DELETE", "/v1.41/images/alice/app:1", "images.delete", "alice/app:1"),
        ("GET", "/images/x/json", "open", None),
        ("GET", "/images/get?names=x", "images.save", None),
        ("GET", "/images/alice/app:1/get", "images.save", None),
        ("POST", "/images/x/other", "unknown", None),
        ("POST", "/images/prun%65", "unknown", None),
        ("POST", "/images/%2e%2e/tag", "unknown", None),
    ],
)
def test_image_routes(method, target, kind, ref):
    route = classify(method, target)
    assert route.kind == kind
    if ref is not None:
        assert route.ref == ref


# --------------------------------------------------------------------------------------------
# references and tags
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "tag", "expected"),
    [
        ("x", "", "docker.io/library/x:latest"),
        ("docker.io/library/x:latest", "", "docker.io/library/x:latest"),
        ("index.docker.io/x", "", "docker.io/library/x:latest"),
        ("library/x", "1", "docker.io/library/x:1"),
        ("alice/app:2", "", "docker.io/alice/app:2"),
        ("alice/app:2", "3", "docker.io/alice/app:3"),
        ("localhost/x", "", "localhost/x:latest"),
        ("localhost:5000/a/b:c", "", "localhost:5000/a/b:c"),
        ("Registry.Example/x", "", "Registry.Example/x:latest"),
    ],
)
def test_tag_targets_have_one_normal_form(repo, tag, expected):
    assert objects.tag_target(repo, tag) == expected


@pytest.mark.parametrize("repo", ["UPPER", "x::1", "", "a" * 64, "x@sha256:" + "a" * 64, "ünï"])
def test_invalid_tag_targets(repo):
    with pytest.raises(ValueError):
        objects.tag_target(repo, "")


CLAIMS = {"docker.io/alice/app:1": "alice", "docker.io/alice/gone:1": "bob"}
LOGINS = ("alice", "bob")


@pytest.mark.parametrize(
    ("login", "ref", "present", "pending", "pull", "code"),
    [
        ("alice", "docker.io/alice/app:1", True, {}, False, None),
        ("bob", "docker.io/alice/app:1", True, {}, False, "POLICY_DENIED"),  # not in bob's namespace
        ("bob", "docker.io/library/debian:12", True, {}, False, "POLICY_DENIED"),  # a shared name
        ("bob", "docker.io/library/ubuntu:22.04", False, {}, False, "POLICY_DENIED"),  # squatting a shared name
        ("bob", "docker.io/bob/new:1", False, {}, False, None),
        ("alice", "docker.io/alice/new:1", False, {"docker.io/alice/new:1": "bob"}, False, "NOT_OWNER"),
        ("alice", "docker.io/alice/gone:1", False, {}, False, None),  # a stale claim of a removed tag
        ("bob", "docker.io/library/debian:12", True, {}, True, None),  # a pull refreshes a shared name
        ("bob", "docker.io/alice/app:1", True, {}, True, "NOT_OWNER"),  # never someone's tag
        ("bob", "docker.io/alice/other:1", False, {}, True, "NOT_OWNER"),  # nor their namespace
        ("bob", "docker.io/bob/x:1", False, {}, True, None),
    ],
)
def test_tag_verdicts(login, ref, present, pending, pull, code):
    verdict = objects.tag_verdict(login, ref, present, CLAIMS, pending, pull, LOGINS.__contains__)
    assert (verdict[0] if verdict else None) == code


IMAGE_ID = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("login", "name", "tags", "code", "dropped"),
    [
        ("alice", "alice/app:1", ["alice/app:1", "debian:12"], None, ["docker.io/alice/app:1"]),
        ("bob", "alice/app:1", ["alice/app:1"], "NOT_OWNER", []),
        ("bob", "debian:12", ["debian:12"], "NOT_OWNER", []),
        ("alice", "abab", ["alice/app:1"], None, ["docker.io/alice/app:1"]),
        ("alice", "sha256:abab", ["alice/app:1", "debian:12"], "NOT_OWNER", []),
        ("alice", "alice/app@sha256:" + "cd" * 32, ["alice/app:1", "debian:12"], "NOT_OWNER", []),
    ],
)
def test_delete_verdicts(login, name, tags, code, dropped):
    verdict, refs = objects.delete_verdict(login, name, IMAGE_ID, tags, CLAIMS)
    assert (verdict[0] if verdict else None) == code
    assert refs == dropped


@pytest.mark.parametrize(
    ("query", "code", "targets"),
    [
        ((("fromImage", "debian"), ("tag", "12")), None, ["docker.io/library/debian:12"]),
        ((("fromImage", "debian:12"),), None, ["docker.io/library/debian:12"]),
        ((("fromImage", "debian:"), ("tag", "12")), None, ["docker.io/library/debian:12"]),
        ((("fromImage", "debian"), ("tag", "sha256:" + "a" * 64)), None, []),
        ((("fromImage", "debian"),), "POLICY_DENIED", []),  # --all-tags
        ((("fromSrc", "-"), ("repo", "alice/imp"), ("tag", "1")), None, ["docker.io/alice/imp:1"]),
        ((("fromSrc", "-"),), None, []),
        ((("fromSrc", "http://127.0.0.1:8888/x.tar"), ("repo", "a")), "POLICY_DENIED", []),
        ((("fromSrc", ""),), "POLICY_DENIED", []),
        ((("fromSrc", "-"), ("repo", "a"), ("repo", "b")), "POLICY_DENIED", []),
        ((("fromImage", "x"), ("fromSrc", "-"), ("tag", "1")), "POLICY_DENIED", []),
        ((("fromSrc", "-"), ("evil", "1")), "POLICY_DENIED", []),
    ],
)
def test_images_create(query, code, targets):
    verdict, refs = objects.check_images_create(query)
    assert (verdict[0] if verdict else None) == code
    assert refs == targets


def test_retag_and_commit_targets():
    assert objects.check_retag((("repo", "alice/x"), ("tag", "2")), "docker tag") == (None, ["docker.io/alice/x:2"])
    assert objects.check_retag((("container", "c"),), "docker commit") == (None, [])
    assert objects.check_retag((), "docker tag")[0][0] == "POLICY_DENIED"
    assert objects.check_retag((("repo", "a"), ("repo", "b")), "docker tag")[0][0] == "POLICY_DENIED"


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------

MINE = {"Id": "n1", "Name": "alicenet", "Labels": {"ds01.user": "alice"}}
BOBS = {"Id": "n2", "Name": "bobnet", "Labels": {"ds01.user": "bob"}}
ADMINS = {"Id": "n3", "Name": "shared", "Labels": {}}


@pytest.mark.parametrize(
    ("action", "info", "code"),
    [
        ("connect", MINE, None),
        ("disconnect", MINE, None),
        ("connect", BOBS, "NOT_OWNER"),
        ("disconnect", BOBS, "NOT_OWNER"),
        ("connect", ADMINS, "NOT_OWNER"),
        ("connect", {"Id": "b", "Name": "bridge"}, "POLICY_DENIED"),
        ("connect", {"Id": "h", "Name": "host"}, "POLICY_DENIED"),
        ("connect", {"Id": "z", "Name": "none"}, None),
        ("disconnect", {"Id": "b", "Name": "bridge"}, None),
        ("connect", None, "NOT_FOUND"),
    ],
)
def test_network_connect(action, info, code):
    verdict = objects.network_connect_verdict("alice", action, "ref", info)
    assert (verdict[0] if verdict else None) == code


def test_network_delete_is_owner_only():
    assert objects.network_delete_verdict("alice", "alicenet", MINE) is None
    assert objects.network_delete_verdict("alice", "bobnet", BOBS)[0] == "NOT_OWNER"
    assert objects.network_delete_verdict("alice", "shared", ADMINS)[0] == "NOT_OWNER"
    assert objects.network_delete_verdict("alice", "x", None)[2] == 404


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"HostConfig": {"NetworkMode": "bobnet"}}, ["bobnet"]),
        ({"HostConfig": {"NetworkMode": "none"}, "NetworkingConfig": {"EndpointsConfig": {"none": {}}}}, ["none"]),
        ({"HostConfig": {"NetworkMode": "host"}, "NetworkingConfig": {"EndpointsConfig": {"host": {}}}}, []),
        (
            {"HostConfig": {"NetworkMode": "none"}, "NetworkingConfig": {"EndpointsConfig": {"host": {}}}},
            ["none", "host"],
        ),
        ({"HostConfig": {"NetworkMode": "container:x"}}, []),
        ({"NetworkingConfig": {"EndpointsConfig": {"bobnet": {}}}}, ["", "bobnet"]),
    ],
)
def test_network_names_of_a_create(body, names):
    assert objects.network_names(body) == names


@pytest.mark.parametrize(
    ("names", "code"),
    [
        (["", "default", "none", "bridge"], None),
        (["alicenet"], None),
        (["n1"], None),
        (["bobnet"], "NOT_OWNER"),
        (["shared"], "NOT_OWNER"),
        (["host"], "POLICY_DENIED"),
        (["missing"], "POLICY_DENIED"),
    ],
)
def test_network_refusal_for_creates(names, code):
    owners = {
        "alicenet": MINE,
        "n1": MINE,
        "bobnet": BOBS,
        "shared": ADMINS,
        "host": {"Id": "h", "Name": "host"},
        "missing": None,
    }
    verdict = objects.network_refusal(names, owners, "alice")
    assert (verdict[0] if verdict else None) == code
