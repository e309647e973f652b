"""docker cp uploads, image tags and networks through the real gateway, real docker CLI, real users.

Judged by effect: root reads the host file the upload produced (owner, mode, type), what the
daemon stored for a tag (which image it names) and for a network (which containers joined it).
Uses the shared attack harness (tests/integration/gwharness.py, fixture ``attack_gw``):
``atk1`` is the attacker, ``atk2`` the victim.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from gwharness import ATTACKER, DOCKER_BIN, EMPTY_IMAGE, IMAGE, VICTIM

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]


def _tar(*members) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data, mode in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.uname, info.gname = kind, mode, 0, 0, "root", "root"
            if kind == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 1, 1  # /dev/mem
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


def _cp_stdin(h, user: str, target: str, data: bytes) -> subprocess.CompletedProcess:
    """``docker cp - CONTAINER:PATH`` with the tar on stdin, as ``user`` through the gateway."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(h.home(user)), "DOCKER_HOST": h.host}
    cmd = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()], DOCKER_BIN, "cp", "-", target]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=120, check=False)


@pytest.fixture
def box(attack_gw):
    """A running container of the attacker's with its /tmp, and that directory as root sees it on
    the host (the container's merged overlay): what ``docker cp`` wrote is judged there. (A container
    that mounts host directories gets no docker cp at all: the daemon would write them as root.)"""
    h = attack_gw
    name = h.name("cp")
    made = h.cli(
        ATTACKER, "run", "-d", "--name", name, "--network", "none", IMAGE, "sh", "-c", "mkdir -p /h; sleep 600"
    )
    assert made.returncode == 0, made.stderr
    merged = Path(h.stored(name)["GraphDriver"]["Data"]["MergedDir"]) / "tmp"
    yield name, merged
    h.remove(name)


def test_cp_of_setuid_root_file_and_device_node_leaves_a_user_file_and_no_device(attack_gw, box):
    h = attack_gw
    name, home_dir = box
    payload = b"#!/bin/sh\nid -u\n"
    data = _tar(("suid", tarfile.REGTYPE, payload, 0o4755), ("mem", tarfile.CHRTYPE, b"", 0o666))
    proc = _cp_stdin(h, ATTACKER, f"{name}:/tmp", data)
    assert proc.returncode != 0, "the archive with a device node was accepted"
    assert b"device" in proc.stderr, proc.stderr
    assert not os.path.lexists(home_dir / "mem"), "a device node reached the host"
    # the entry before the refusal point landed, complete and re-owned, without its setuid bit
    st = os.lstat(home_dir / "suid")
    assert (st.st_uid, st.st_gid) == (h.uid(ATTACKER), h.gid(ATTACKER))
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert (home_dir / "suid").read_bytes() == payload

    # the same file alone is copied: owned by the user, without the setuid bit
    proc = _cp_stdin(h, ATTACKER, f"{name}:/tmp", _tar(("suid2", tarfile.REGTYPE, payload, 0o6755)))
    assert proc.returncode == 0, proc.stderr
    st = os.lstat(home_dir / "suid2")
    assert (st.st_uid, st.st_gid) == (h.uid(ATTACKER), h.gid(ATTACKER))
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert (home_dir / "suid2").read_bytes() == payload


def test_refused_upload_leaves_no_partial_file(attack_gw, box):
    """A big file, then a device: the daemon never sees the device, and the big file is whole or absent."""
    h = attack_gw
    name, home_dir = box
    big = os.urandom(24 * 1024 * 1024)
    data = _tar(("big.bin", tarfile.REGTYPE, big, 0o644), ("fifo", tarfile.FIFOTYPE, b"", 0o644))
    proc = _cp_stdin(h, ATTACKER, f"{name}:/tmp", data)
    assert proc.returncode != 0
    assert b"FIFO" in proc.stderr, proc.stderr
    assert not os.path.lexists(home_dir / "fifo")
    assert (home_dir / "big.bin").read_bytes() == big, "a partial file was left behind"


def test_cp_with_a_hard_link_to_a_container_file_is_refused(attack_gw, box):
    h = attack_gw
    name, _home_dir = box
    # a hard link to /etc/shadow inside the container, which is not an entry of the archive
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("shadow")
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/shadow"
        tar.addfile(info)
    proc = _cp_stdin(h, ATTACKER, f"{name}:/tmp", out.getvalue())
    assert proc.returncode != 0 and b"hard link" in proc.stderr, proc.stderr
    assert h.probe(name, "test -e /tmp/shadow && echo present || echo absent").strip() == "absent"


def _image_id(h, ref: str):
    import docker

    try:
        return h.client.images.get(ref).id
    except docker.errors.ImageNotFound:
        return None


def test_tags_belong_to_their_maker(attack_gw):
    h = attack_gw
    victim_tag = h.tag(VICTIM, "vtag")
    made = h.cli(VICTIM, "tag", IMAGE, victim_tag)
    assert made.returncode == 0, made.stderr
    victims = _image_id(h, victim_tag)
    assert victims == _image_id(h, IMAGE)

    # the attacker cannot move it, commit onto it, import onto it or delete it
    assert h.cli(ATTACKER, "tag", EMPTY_IMAGE, victim_tag).returncode != 0
    imported = subprocess.run(
        ["runuser", "-u", ATTACKER, "--", "env", f"DOCKER_HOST={h.host}", DOCKER_BIN, "import", "-", victim_tag],
        input=_tar(("f", tarfile.REGTYPE, b"x", 0o644)),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert imported.returncode != 0
    removed = h.cli(ATTACKER, "rmi", victim_tag)
    assert removed.returncode != 0 and "belongs to" in removed.stderr
    by_id = h.cli(ATTACKER, "rmi", "-f", victims.split(":", 1)[1][:12])
    assert by_id.returncode != 0
    assert _image_id(h, victim_tag) == victims, "the victim's tag was moved or removed"

    # a tag nobody claimed (made by root) is read-only to users
    assert h.cli(ATTACKER, "tag", EMPTY_IMAGE, IMAGE).returncode != 0
    assert _image_id(h, IMAGE) == victims

    # the attacker's own tag: made, moved and removed by the attacker; never made by anyone else
    own = h.tag(ATTACKER, "atag", "2")
    assert h.cli(ATTACKER, "tag", IMAGE, own).returncode == 0
    assert h.cli(ATTACKER, "tag", EMPTY_IMAGE, own).returncode == 0
    assert _image_id(h, own) == _image_id(h, EMPTY_IMAGE)
    assert h.cli(VICTIM, "tag", IMAGE, own).returncode != 0
    assert h.cli(ATTACKER, "rmi", own).returncode == 0
    assert _image_id(h, own) is None
    squat = h.cli(VICTIM, "tag", IMAGE, own)  # the name stays in the attacker's namespace
    assert squat.returncode != 0 and "under your own name" in squat.stderr
    assert _image_id(h, own) is None
    # names outside one's own namespace are never made, so nobody can plant an image for others
    for shared in ("ubuntu:22.04", f"{VICTIM}/app:2", "local/debian-min:trixie"):
        planted = h.cli(ATTACKER, "tag", IMAGE, shared)
        assert planted.returncode != 0, shared
        assert _image_id(h, shared) is None, shared
    assert h.cli(VICTIM, "rmi", victim_tag).returncode == 0
    assert _image_id(h, victim_tag) is None


def test_image_sources_that_reach_the_host_network_are_refused(attack_gw):
    h = attack_gw
    ref = f"{h.name('url')}:1"
    proc = h.cli(ATTACKER, "import", "http://127.0.0.1:1/x.tar", ref)
    assert proc.returncode != 0 and "URL" in proc.stderr
    saved = subprocess.run(["docker", "save", EMPTY_IMAGE], capture_output=True, check=True).stdout
    loaded = subprocess.run(
        ["runuser", "-u", ATTACKER, "--", "env", f"DOCKER_HOST={h.host}", DOCKER_BIN, "load"],
        input=saved,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert loaded.returncode != 0 and b"docker import" in loaded.stderr
    assert _image_id(h, ref) is None


def test_networks_belong_to_their_maker(attack_gw):
    h = attack_gw
    net = h.name("vnet")
    assert h.cli(VICTIM, "network", "create", "--internal", net).returncode == 0
    mine = h.name("an")
    assert h.cli(ATTACKER, "create", "--name", mine, "--network", "none", IMAGE, "true").returncode == 0
    try:
        proc = h.cli(ATTACKER, "network", "connect", net, mine)
        assert proc.returncode != 0 and "belongs to" in proc.stderr
        assert h.network(net)["Containers"] == {}
        assert h.cli(ATTACKER, "network", "rm", net).returncode != 0
        assert h.network(net) is not None
        # the victim's own network stays usable by the victim
        theirs = h.name("vn")
        assert h.cli(VICTIM, "create", "--name", theirs, "--network", "none", IMAGE, "true").returncode == 0
        h.remove(theirs)
        assert h.cli(VICTIM, "network", "rm", net).returncode == 0
        assert h.network(net) is None
    finally:
        h.remove(mine)


def test_classic_build_tags_are_claimed(attack_gw):
    h = attack_gw
    context = h.scratch(VICTIM)
    (context / "Dockerfile").write_text(f"FROM {EMPTY_IMAGE}\nLABEL who={uuid.uuid4().hex}\n")
    tag = h.tag(VICTIM, "built")
    built = h.cli(VICTIM, "build", "--network", "none", "-t", tag, str(context), env={"DOCKER_BUILDKIT": "0"})
    assert built.returncode == 0, built.stderr
    victims = _image_id(h, tag)
    attacker_ctx = h.scratch(ATTACKER)
    (attacker_ctx / "Dockerfile").write_text(f"FROM {EMPTY_IMAGE}\nLABEL evil=1\n")
    again = h.cli(ATTACKER, "build", "--network", "none", "-t", tag, str(attacker_ctx), env={"DOCKER_BUILDKIT": "0"})
    assert again.returncode != 0 and "under your own name" in again.stderr
    assert _image_id(h, tag) == victims


def test_uploads_over_the_limit_are_refused_with_the_answer_and_leave_nothing(attack_gw):
    """A build context or an import tar over ``gateway.max_upload_bytes`` (8 MiB in this harness): the docker CLI
    reads the refusal sentence (the gateway reads on and drops the rest in the same pass over the body, instead
    of leaving the client to a broken pipe), and the daemon made nothing: no image under the tag, no build step
    container of the user's."""
    h = attack_gw
    before = {c["Id"] for c in h.containers_of(VICTIM)}
    context = h.scratch(VICTIM)
    (context / "Dockerfile").write_text(f"FROM {EMPTY_IMAGE}\nCOPY big /big\n")
    (context / "big").write_bytes(os.urandom(12 << 20))  # random: the CLI's context tar does not shrink it
    tag = h.tag(VICTIM, "huge")
    built = h.cli(VICTIM, "build", "--network", "none", "-t", tag, str(context), env={"DOCKER_BUILDKIT": "0"})
    assert built.returncode != 0
    assert "the build context is larger than 8M (gateway.max_upload_bytes)" in built.stderr, built.stderr
    assert _image_id(h, tag) is None
    tar_path = h.scratch(VICTIM) / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        data = os.urandom(12 << 20)
        info = tarfile.TarInfo("big")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    os.chmod(tar_path, 0o644)
    itag = h.tag(VICTIM, "hugeimport")
    imported = h.cli(VICTIM, "import", str(tar_path), itag)
    assert imported.returncode != 0
    assert "the import is larger than 8M (gateway.max_upload_bytes)" in imported.stderr, imported.stderr
    assert _image_id(h, itag) is None
    assert {c["Id"] for c in h.containers_of(VICTIM)} == before


def test_other_users_volumes_and_networks_are_not_listed_or_inspected(attack_gw):
    """Round-11 observation: ``docker volume ls`` and ``docker network inspect`` showed another user's volume
    names, labels and mount points, and which containers sit on a network. A user now sees their own volumes and
    networks, the unowned networks without anyone's containers, and is refused another user's by name; the
    daemon itself still holds both (root-side)."""
    h = attack_gw
    vol, net, box = h.tag(VICTIM, "vol").split(":")[0].replace("/", "-"), f"net-{uuid.uuid4().hex[:8]}", None
    assert h.cli(VICTIM, "volume", "create", vol).returncode == 0
    assert h.cli(VICTIM, "network", "create", "--internal", net).returncode == 0
    box = f"box-{uuid.uuid4().hex[:8]}"
    assert h.cli(VICTIM, "run", "-d", "--name", box, "--network", "none", IMAGE, "sleep", "300").returncode == 0
    try:
        assert h.client.api.inspect_volume(vol)["Labels"]["ds01.user"] == VICTIM  # the daemon holds them
        assert h.network(net) is not None
        assert vol in h.cli(VICTIM, "volume", "ls", "--format", "{{.Name}}").stdout.split()
        assert net in h.cli(VICTIM, "network", "ls", "--format", "{{.Name}}").stdout.split()

        assert vol not in h.cli(ATTACKER, "volume", "ls", "--format", "{{.Name}}").stdout.split()
        listed = h.cli(ATTACKER, "network", "ls", "--format", "{{.Name}}").stdout.split()
        assert net not in listed and "none" in listed
        for what, name in (("volume", vol), ("network", net)):
            peek = h.cli(ATTACKER, what, "inspect", name)
            assert peek.returncode != 0 and f"belongs to {VICTIM}" in peek.stderr, peek.stderr
            assert name not in peek.stdout
        # round 12 (F4): a network named like the victim's short id (what `docker network ls` prints) would take
        # that id from them, the daemon finding an exact name first; refused, and the daemon made none
        short = h.network(net)["Id"][:12]
        squat = h.cli(ATTACKER, "network", "create", "--internal", short)
        assert squat.returncode != 0 and "hex digits" in squat.stderr, squat.stderr
        assert [n["Name"] for n in h.client.api.networks() if n["Name"] == short] == []
        found = h.cli(VICTIM, "network", "inspect", short, "--format", "{{.Name}}")
        assert found.returncode == 0 and found.stdout.strip() == net, found.stderr
        # round 12 (F2): `docker system df -v` listed every user's volumes (names, labels, sizes) and the daemon's
        # whole build cache; it now shows the caller's own volumes and containers only, and no build cache
        df = h.cli(VICTIM, "system", "df", "-v", "--format", "{{json .}}")
        assert df.returncode == 0 and vol in df.stdout, df.stdout[-2000:]
        df = h.cli(ATTACKER, "system", "df", "-v", "--format", "{{json .}}")
        assert df.returncode == 0, df.stderr
        seen = json.loads(df.stdout)
        assert vol not in df.stdout and box not in df.stdout
        assert not seen.get("BuildCache") and all(v.get("Name") != vol for v in seen.get("Volumes") or [])
        none = h.cli(ATTACKER, "network", "inspect", "none", "--format", "{{json .Containers}}")
        assert none.returncode == 0 and none.stdout.strip() in ("{}", "null"), none.stdout
        box_id = h.client.api.inspect_container(box)["Id"]
        assert box_id in h.client.api.inspect_network("none")["Containers"]  # the victim's is on it, root-side
    finally:
        h.remove(box)
        h.cli(VICTIM, "network", "rm", net)
        h.cli(VICTIM, "volume", "rm", vol)


def test_a_user_error_found_on_the_way_is_answered_as_one_not_as_a_fault(attack_gw):
    """Round 12 (goal e): a network path without a name and an image reference the daemon cannot parse were
    answered 503 "... Nothing was changed; try again", as if the daemon had failed, and logged as faults."""
    h = attack_gw
    status, _headers, raw = h.api(ATTACKER, "GET", "/networks/")
    said = json.loads(raw)["message"]
    assert status == 404 and "NOT_FOUND" in said and "try again" not in said, said
    name = h.name("badref")
    body = {"Image": "localhost.:5999/x", "HostConfig": {"NetworkMode": "none"}}
    status, _headers, raw = h.api(ATTACKER, "POST", f"/containers/create?name={name}", body)
    said = json.loads(raw)["message"]
    assert status == 400 and "the Docker daemon says" in said and "try again" not in said, said
    assert h.stored(name) is None  # root's side: nothing was made


def test_container_references_reach_the_daemon_as_the_ids_that_were_checked(attack_gw):
    """Round 13 (F1): mallory named a container like a 4-digit prefix of victor's id, passed it as --volumes-from
    and renamed it away while the create was in flight; the daemon then read the name as victor's id prefix and
    mounted his volume in her container. Hex names are refused, and the daemon gets the full id the gateway
    checked (root's side: what it stored). Another user's container named by a prefix is NOT_FOUND (F3)."""
    h = attack_gw
    mine, theirs, made = h.name("mine"), h.name("theirs"), h.name("from")
    assert h.cli(ATTACKER, "create", "--name", mine, "--network", "none", IMAGE, "true").returncode == 0
    assert h.cli(VICTIM, "create", "--name", theirs, "--network", "none", IMAGE, "true").returncode == 0
    try:
        squat = h.cli(ATTACKER, "create", "--name", "57ec", "--network", "none", IMAGE, "true")
        assert squat.returncode != 0 and "hex digits" in squat.stderr, squat.stderr
        assert h.stored("57ec") is None
        made_ok = h.cli(
            ATTACKER, "create", "--name", made, "--volumes-from", f"{mine}:ro", "--network", "none", IMAGE, "true"
        )
        assert made_ok.returncode == 0, made_ok.stderr
        assert h.stored(made)["HostConfig"]["VolumesFrom"] == [h.stored(mine)["Id"] + ":ro"]
        h.remove(made)  # the attacker's container count stays under the limit for the next create
        prefix = h.stored(theirs)["Id"][:6]
        peek = h.cli(ATTACKER, "create", "--volumes-from", prefix, "--network", "none", IMAGE, "true")
        assert peek.returncode != 0 and f"No such container: {prefix}" in peek.stderr, peek.stderr
        assert theirs not in peek.stderr and VICTIM not in peek.stderr
    finally:
        for name in (made, mine, theirs):
            h.remove(name)
