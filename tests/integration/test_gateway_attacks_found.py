"""The vectors an independent black-box attack got through (round 1), each judged by its effect.

F5 exec -u <uid> took its group from an uploaded /etc/passwd; F8 CpuQuota -1 left the CPU
unlimited; F9 gateway labels inherited from an image spoofed GPU holdings; F10 a user's network
subnet became a host route; F11 docker cp on a stopped container followed a bind source swapped
for a symlink; F6 the classic builder took the caller's --memory. (F1-F4, F7 are in the two
corpus files.) Users atk1 (attacker) and atk2 (victim) through the real gateway on the real engine.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import socket
import subprocess
import tarfile
import threading
import time
from typing import Optional

import pytest
from gwharness import ATTACKER, GPU_UUIDS, IMAGE, MIG_UUIDS, HarnessError

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import identity


@pytest.fixture(autouse=True)
def _own_containers_removed(attack_gw):
    """The attacker's quota is 3: whatever a test made for the attacker goes when it ends."""
    before = {item["Id"] for item in attack_gw.containers_of(ATTACKER)}
    yield
    for item in attack_gw.containers_of(ATTACKER):
        if item["Id"] not in before:
            attack_gw.client.api.remove_container(item["Id"], force=True, v=True)


def _tar(files: dict) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_f5_exec_as_a_bare_uid_never_takes_groups_from_the_image(attack_gw):
    h = attack_gw
    uid, gid = h.uid(ATTACKER), h.gid(ATTACKER)
    name = h.name("f5")
    made = h.cli(ATTACKER, "run", "-d", "--network", "none", "--name", name, IMAGE, "sleep", "300")
    assert made.returncode == 0, made.stderr
    planted = _tar(
        {
            "etc/passwd": f"root:x:0:0::/root:/bin/sh\nevil:x:{uid}:0::/:/bin/sh\n",
            "etc/group": "root:x:0:evil\ndisk:x:6:evil\nshadow:x:42:evil\n",
        }
    )
    status, _h, _b = h.api(
        ATTACKER, "PUT", f"/containers/{name}/archive?path=/", planted, headers={"Content-Type": "application/x-tar"}
    )
    assert status == 200
    run = h.cli(ATTACKER, "exec", "-u", str(uid), name, "sh", "-c", "id -g; id -G")
    assert run.returncode == 0, run.stderr
    primary, groups = run.stdout.split("\n")[:2]
    assert int(primary) == gid  # not the 0 the planted /etc/passwd names
    assert {int(g) for g in groups.split()} <= {gid, *os.getgrouplist(ATTACKER, gid)}  # not 0, 6, 42
    named = h.cli(ATTACKER, "exec", "-u", "evil", name, "id")
    assert named.returncode != 0 and "uid" in named.stderr  # a name is looked up in the image: refused
    stored_user = h.stored(name)["Config"]["User"]
    assert stored_user == f"{uid}:{gid}"


def test_f8_a_negative_cpu_quota_never_lifts_the_cpu_cap(attack_gw):
    h = attack_gw
    name, status, _body = h.create(ATTACKER, {"Image": IMAGE, "HostConfig": {"CpuQuota": -1, "NetworkMode": "none"}})
    info = h.stored(name)
    assert info is not None, status
    host = info["HostConfig"]
    assert host["CpuQuota"] in (0, None)
    assert host["NanoCpus"] == int(1.5e9)  # the student limit of the harness's config


def test_f9_gateway_labels_an_image_carries_are_neutralised(attack_gw):
    h = attack_gw
    uuids = ",".join(GPU_UUIDS + MIG_UUIDS)
    image = h.image_with(
        f"LABEL ds01.gpu.uuids={uuids}",
        "LABEL ds01.gpu.slots=0,1,2.0,2.1",
        "LABEL ds01.lifecycle.exempt=true",
        "LABEL ds01.protected=true",
        "LABEL aime.mlc.USER=atk2",
    )
    name, status, body = h.create(ATTACKER, {"Image": image, "HostConfig": {"NetworkMode": "none"}})
    info = h.stored(name)
    assert info is not None, (status, body)
    labels = info["Config"]["Labels"]
    for key in ("ds01.gpu.uuids", "ds01.gpu.slots", "ds01.lifecycle.exempt", "ds01.protected", "aime.mlc.USER"):
        assert labels.get(key) == "", (key, labels.get(key))
    assert labels["ds01.user"] == ATTACKER
    assert not info["HostConfig"].get("DeviceRequests")


def test_f10_a_users_network_gets_no_subnet_of_their_choosing(attack_gw):
    h = attack_gw
    name = h.name("f10")
    made = h.cli(ATTACKER, "network", "create", "--subnet", "192.0.2.252/30", "--gateway", "192.0.2.253", name)
    assert made.returncode != 0
    assert h.network(name) is None
    assert "subnet" in made.stderr


def test_f11_docker_cp_never_follows_a_bind_source_swapped_after_create(attack_gw, tmp_path):
    h = attack_gw
    os.chmod(tmp_path, 0o755)
    outer = tmp_path / "root-only"
    inner = outer / "pub"
    inner.mkdir(parents=True)
    os.chmod(outer, 0o700)
    token = secrets.token_hex(8)
    (inner / "secret.txt").write_text(token)
    work = h.scratch(ATTACKER)
    src = work / "f"
    src.mkdir()
    os.chown(src, h.uid(ATTACKER), h.gid(ATTACKER))
    name = h.name("f11")
    made = h.cli(ATTACKER, "create", "--network", "none", "--name", name, "-v", f"{src}:/x", IMAGE, "true")
    assert made.returncode == 0, made.stderr
    src.rmdir()
    src.symlink_to(inner)
    os.lchown(src, h.uid(ATTACKER), h.gid(ATTACKER))
    status, _h, body = h.api(ATTACKER, "GET", f"/containers/{name}/archive?path=/x/secret.txt")
    assert token.encode() not in body
    if status == 200:  # whatever came back is not the root-only file
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            assert all(
                token.encode() not in (tar.extractfile(m).read() if tar.extractfile(m) else b"")
                for m in tar.getmembers()
            )
    status, _h, _b = h.api(
        ATTACKER,
        "PUT",
        f"/containers/{name}/archive?path=/x",
        _tar({"planted.txt": "x"}),
        headers={"Content-Type": "application/x-tar"},
    )
    assert not (inner / "planted.txt").exists()
    assert sorted(os.listdir(inner)) == ["secret.txt"]


def test_f6_the_classic_builder_takes_the_callers_limits(attack_gw):
    h = attack_gw
    ctx = h.scratch(ATTACKER)
    limit_files = "/sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"
    (ctx / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN cat {limit_files}\n")
    os.chown(ctx / "Dockerfile", h.uid(ATTACKER), h.gid(ATTACKER))
    tag = h.tag(ATTACKER, "f6")
    built = h.cli(
        ATTACKER,
        "build",
        "--network",
        "none",
        "--memory",
        "8g",
        "--no-cache",
        "-t",
        tag,
        str(ctx),
        debian=True,
        env={"DOCKER_BUILDKIT": "0"},
        timeout=300,
    )
    h.images.append(tag)
    assert built.returncode == 0, built.stderr
    numbers = [int(w) for w in built.stdout.split() if w.isdigit() and len(w) >= 6]
    assert numbers, built.stdout
    assert max(numbers) <= 2 * 1024**3, json.dumps(built.stdout[-400:])  # the student's 2g, never the asked 8g


# -- round 2 -------------------------------------------------------------------------------------


def test_r2_an_endpoint_network_id_cannot_smuggle_in_another_users_network(attack_gw):
    h = attack_gw
    theirs, mine = h.name("f10v"), h.name("f10m")
    assert h.cli("atk2", "network", "create", "--internal", theirs).returncode == 0
    assert h.cli(ATTACKER, "network", "create", "--internal", mine).returncode == 0
    victim_id = h.network(theirs)["Id"]
    body = {
        "Image": IMAGE,
        "HostConfig": {"NetworkMode": mine},
        "NetworkingConfig": {"EndpointsConfig": {mine: {"NetworkID": victim_id, "Aliases": ["db"]}}},
    }
    name, status, answer = h.create(ATTACKER, body, name=h.name("f10"))
    assert h.stored(name) is None, (status, answer)
    assert not h.network(theirs)["Containers"]


def test_r2_docker_cp_never_reads_a_host_directory_as_root(attack_gw):
    h = attack_gw
    work = h.scratch(ATTACKER)
    private = work / "root-only.txt"
    token = secrets.token_hex(8)
    private.write_text(token)
    os.chmod(private, 0o600)  # root's file in the user's directory: the user cannot read it on the host
    assert not h.can_read(ATTACKER, str(private))
    name = h.name("f11")
    made = h.cli(ATTACKER, "create", "--network", "none", "--name", name, "-v", f"{work}:/w", IMAGE, "true")
    assert made.returncode == 0, made.stderr
    for path in ("/w/root-only.txt", "/w", "/"):
        _status, _h, body = h.api(ATTACKER, "GET", f"/containers/{name}/archive?path={path}")
        assert token.encode() not in body, path
    copied = h.cli(ATTACKER, "cp", f"{name}:/w/root-only.txt", "-")
    assert token not in copied.stdout and "exec" in copied.stderr  # the sentence says what to do instead


def test_r2_published_ports_stay_on_loopback_and_unprivileged(attack_gw):
    h = attack_gw
    refused = [
        {"PortBindings": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8099"}]}},
        {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "81"}]}},
        {"PublishAllPorts": True},
    ]
    for host in refused:
        name, status, answer = h.create(ATTACKER, {"Image": IMAGE, "HostConfig": host}, name=h.name("f8"))
        assert h.stored(name) is None, (host, status, answer)
    name, status, answer = h.create(
        ATTACKER,
        {"Image": IMAGE, "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "18099"}]}}},
        name=h.name("f8"),
    )
    stored = h.stored(name)
    assert stored is not None, (status, answer)
    assert stored["HostConfig"]["PortBindings"]["80/tcp"][0]["HostIp"] == "127.0.0.1"


def test_r2_shares_and_log_files_are_bounded(attack_gw):
    h = attack_gw
    body = {
        "Image": IMAGE,
        "HostConfig": {
            "NetworkMode": "none",
            "CpuShares": 262144,
            "BlkioWeight": 1000,
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "100g", "max-file": "1000"}},
        },
    }
    name, status, answer = h.create(ATTACKER, body, name=h.name("f8"))
    stored = h.stored(name)
    assert stored is not None, (status, answer)
    host = stored["HostConfig"]
    assert host["CpuShares"] <= 1024 and host["BlkioWeight"] <= 500
    assert host["LogConfig"]["Config"] == {"max-size": "100m", "max-file": "5"}


# -- round 3 -------------------------------------------------------------------------------------


class _Canary:
    """A TCP listener on the host's loopback that counts connections (the daemon must make none)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def canary():
    c = _Canary()
    yield c
    c.close()


def _context(files: dict, links: Optional[dict] = None, compress: str = "") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w" + (f":{compress}" if compress else "")) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


ROUND3_BUILDS = [
    ("gzip", {"Dockerfile": "FROM {image}\nADD http://127.0.0.1:{port}/t /t\n"}, {}, "gz", ""),
    ("bzip2", {"Dockerfile": "FROM {image}\nADD http://127.0.0.1:{port}/t /t\n"}, {}, "bz2", ""),
    ("tab", {"Dockerfile": "FROM {image}\nADD\thttp://127.0.0.1:{port}/t /t\n"}, {}, "", ""),
    ("vertical-tab", {"Dockerfile": "FROM {image}\nADD\x0bhttp://127.0.0.1:{port}/t /t\n"}, {}, "", ""),
    ("split-keyword", {"Dockerfile": "FROM {image}\nAD\\\nD http://127.0.0.1:{port}/t /t\n"}, {}, "", ""),
    ("from-tab", {"Dockerfile": "FROM\t127.0.0.1:{port}/x/y\n"}, {}, "", ""),
    (
        "symlinked-dir",
        {"real/Dockerfile": "FROM {image}\nADD http://127.0.0.1:{port}/t /t\n"},
        {"sub": "real"},
        "",
        "sub/Dockerfile",
    ),
]


@pytest.mark.parametrize(
    ("vid", "files", "links", "compress", "dockerfile"), ROUND3_BUILDS, ids=[r[0] for r in ROUND3_BUILDS]
)
def test_r3_no_build_context_makes_the_daemon_fetch_from_loopback(
    attack_gw, canary, vid, files, links, compress, dockerfile
):
    h = attack_gw
    tag = h.tag(ATTACKER, "r3b")
    body = _context({k: v.format(image=IMAGE, port=canary.port) for k, v in files.items()}, links, compress)
    query = f"t={tag}&networkmode=none" + (f"&dockerfile={dockerfile}" if dockerfile else "")
    status, _h, answer = h.api(ATTACKER, "POST", f"/build?{query}", body, headers={"Content-Type": "application/x-tar"})
    assert canary.hits == 0, f"{vid}: the daemon connected to the loopback canary"
    assert h.client.images.list(name=tag.split(":", maxsplit=1)[0]) == [], f"{vid}: the build ran: {answer[-300:]!r}"
    assert status == 403, (status, answer[:300])


def test_r3_connect_cannot_name_another_users_network_in_the_endpoint(attack_gw):
    h = attack_gw
    theirs, mine = h.name("r3v"), h.name("r3m")
    assert h.cli("atk2", "network", "create", "--internal", theirs).returncode == 0
    assert h.cli(ATTACKER, "network", "create", "--internal", mine).returncode == 0
    box = h.name("r3c")
    made = h.cli(ATTACKER, "create", "--name", box, "--network", mine, IMAGE, "sleep", "60")
    assert made.returncode == 0, made.stderr
    victim_id = h.network(theirs)["Id"]
    body = {"Container": box, "EndpointConfig": {"NetworkID": victim_id, "Aliases": ["db"]}}
    status, _h, answer = h.api(ATTACKER, "POST", f"/networks/{mine}/connect", body)
    assert not h.network(theirs)["Containers"], (status, answer)
    assert victim_id not in json.dumps(h.stored(box)["NetworkSettings"]["Networks"])


def test_r3_a_network_name_cannot_be_taken_twice(attack_gw):
    h = attack_gw
    theirs = h.name("r3d")
    assert h.cli("atk2", "network", "create", "--internal", theirs).returncode == 0
    status, _h, answer = h.api(ATTACKER, "POST", "/networks/create", {"Name": theirs, "CheckDuplicate": False})
    same = [n for n in h.client.networks.list(names=[theirs]) if n.name == theirs]
    assert len(same) == 1, (status, answer)
    assert h.cli("atk2", "network", "inspect", theirs).returncode == 0


def test_r3_docker_cp_is_refused_through_volumes_from_a_container_with_host_directories(attack_gw):
    h = attack_gw
    work = h.scratch(ATTACKER)
    first, second = h.name("r3p"), h.name("r3q")
    assert (
        h.cli(ATTACKER, "create", "--network", "none", "--name", first, "-v", f"{work}:/w", IMAGE, "true").returncode
        == 0
    )
    made = h.cli(ATTACKER, "create", "--network", "none", "--name", second, "--volumes-from", first, IMAGE, "true")
    assert made.returncode == 0, made.stderr
    status, _h, _b = h.api(
        ATTACKER,
        "PUT",
        f"/containers/{second}/archive?path=/w",
        _tar({"dropped.txt": "x"}),
        headers={"Content-Type": "application/x-tar"},
    )
    assert status == 403
    pins_root = h.root / "run" / "gateway" / "pins"
    dropped = list(pins_root.rglob("dropped.txt")) if pins_root.exists() else []
    assert not dropped and not (work / "dropped.txt").exists()


def test_r3_volumes_from_mounts_the_checked_directory(attack_gw):
    """A container with --volumes-from one that mounts a host directory gets that directory (pinned)."""
    h = attack_gw
    work = h.scratch(ATTACKER)
    (work / "data.txt").write_text("data")
    first, second = h.name("r3p"), h.name("r3q")
    assert (
        h.cli(ATTACKER, "create", "--network", "none", "--name", first, "-v", f"{work}:/w", IMAGE, "true").returncode
        == 0
    )
    made = h.cli(ATTACKER, "create", "--network", "none", "--name", second, "--volumes-from", first, IMAGE, "ls", "/w")
    assert made.returncode == 0, made.stderr
    ran = h.cli(ATTACKER, "start", "-a", second)
    assert "data.txt" in ran.stdout, ran.stderr


def test_r3_builds_run_one_at_a_time_per_user(attack_gw):
    h = attack_gw
    slow = _context({"Dockerfile": f"FROM {IMAGE}\nRUN sleep 4\n"})
    results: list = []

    def build(tag: str) -> None:
        results.append(
            h.api(
                ATTACKER,
                "POST",
                f"/build?t={tag}&networkmode=none&nocache=1",
                slow,
                headers={"Content-Type": "application/x-tar"},
                timeout=120,
            )
        )

    first = threading.Thread(target=build, args=(h.tag(ATTACKER, "r3s"),))
    first.start()
    for _attempt in range(300):  # until the first build's RUN step is running (its lock is held then)
        if any("sleep 4" in str(c.attrs.get("Config", {}).get("Cmd")) for c in h.client.containers.list()):
            break
        time.sleep(0.1)
    second = h.api(
        ATTACKER,
        "POST",
        f"/build?t={h.tag(ATTACKER, 'r3s', '2')}&networkmode=none",
        slow,
        headers={"Content-Type": "application/x-tar"},
    )
    first.join(120)
    assert second[0] == 403 and b"already running" in second[2], second[:2]
    assert results and results[0][0] == 200, results


# -- round 5 -------------------------------------------------------------------------------------


def test_r5_no_user_build_reuses_a_layer_another_user_built(attack_gw):
    h = attack_gw
    text = f"FROM {IMAGE}\nRUN (getent hosts files.example.org | head -1 > /mirror); true\n"
    planted = h.cli(
        ATTACKER,
        "build",
        "--network",
        "none",
        "--add-host",
        "files.example.org:203.0.113.66",
        "-t",
        h.tag(ATTACKER, "r5a"),
        "-",
        input=text,
        env={"DOCKER_BUILDKIT": "0"},
        timeout=180,
    )
    assert planted.returncode == 0, planted.stderr
    tag = h.tag("atk2", "r5v")
    built = h.cli(
        "atk2", "build", "--network", "none", "-t", tag, "-", input=text, env={"DOCKER_BUILDKIT": "0"}, timeout=180
    )
    assert built.returncode == 0, built.stderr
    assert "Using cache" not in built.stdout
    image = h.client.images.get(tag)
    assert image.labels.get("ds01.image.maker") == "atk2" and "ds01.user" not in image.labels
    out = h.client.containers.run(tag, ["cat", "/mirror"], remove=True, network_mode="none").decode()
    assert "203.0.113.66" not in out


def test_r5_another_users_untagged_image_cannot_be_removed(attack_gw):
    h = attack_gw
    built = h.cli(
        "atk2",
        "build",
        "--network",
        "none",
        "-q",
        "-",
        input=f"FROM {IMAGE}\nLABEL r5=1\n",
        env={"DOCKER_BUILDKIT": "0"},
        timeout=180,
    )
    assert built.returncode == 0, built.stderr
    image_id = built.stdout.strip().splitlines()[-1]
    try:
        removed = h.cli(ATTACKER, "rmi", image_id)
        assert removed.returncode != 0
        assert h.client.images.get(image_id).id.startswith(image_id.split(":")[-1][:12]) or h.client.images.get(
            image_id
        )
    finally:
        h.client.api.remove_image(image_id, force=True)


# -- round 6: the daemon's own containers (a classic build's steps) inherit their image's labels --------------


def _build(h, user: str, dockerfile: str, *extra: str, tag: Optional[str] = None):
    args = ["build", "--network", "none", *extra] + (["-t", tag] if tag else ["-q"])
    return h.cli(user, *args, "-", input=dockerfile, env={"DOCKER_BUILDKIT": "0"}, timeout=180)


def _step_containers(h, image_id: str) -> list:
    return [c for c in h.client.containers.list(all=True) if c.attrs.get("Image") == image_id]


def test_r6_a_build_from_a_users_own_image_makes_step_containers_nobody_can_join(attack_gw):
    """R6-1 (host root): the steps of a build FROM the attacker's image ran as root and were 'hers' through the
    inherited ds01.user label, so her container could join one's PID namespace. Images carry only the maker."""
    h = attack_gw
    base = h.tag(ATTACKER, "r6base")
    assert _build(h, ATTACKER, f"FROM {IMAGE}\nRUN true\n", tag=base).returncode == 0
    labels = h.client.images.get(base).labels
    assert labels.get("ds01.image.maker") == ATTACKER and not {k for k in labels if k in ("ds01.user",)}
    done: list = []
    slow = threading.Thread(
        target=lambda: done.append(_build(h, ATTACKER, f"FROM {base}\nRUN sleep 6\n", tag=h.tag(ATTACKER, "r6b")))
    )
    slow.start()
    step = None
    for _attempt in range(300):
        running = [c for c in _step_containers(h, h.client.images.get(base).id) if c.status == "running"]
        if running:
            step = running[0]
            break
        time.sleep(0.1)
    assert step is not None, "the build's RUN step never ran"
    step_labels = step.attrs["Config"]["Labels"] or {}
    assert not step_labels.get("ds01.user"), step_labels
    joined = h.cli(ATTACKER, "run", "-d", "--network", "none", "--pid", f"container:{step.id}", IMAGE, "sleep", "30")
    listed = h.cli(ATTACKER, "ps", "-a", "--no-trunc", "--format", "{{.ID}}").stdout.split()
    slow.join(180)
    # not hers (no owner), named by its id: not there for her (round 13 F3: a refusal names no other's container)
    assert joined.returncode != 0 and f"No such container: {step.id}" in joined.stderr, joined.stdout + joined.stderr
    assert step.id not in listed
    assert not [
        c for c in h.containers_of(ATTACKER) if (c.get("HostConfig") or {}).get("PidMode", "").startswith("container:")
    ]
    assert done and done[0].returncode == 0, done


@pytest.mark.parametrize(
    ("dockerfile", "extra"),
    [
        ("LABEL ds01.user=atk2", ()),
        (f"LABEL ds01.gpu.uuids={GPU_UUIDS[0]} ds01.gpu.slots=0", ()),
        ('LABEL keep=1 "ds01.lifecycle.exempt"=true', ()),
        ("ARG K=ds01.user\nLABEL $K=atk1", ()),
        ("LABEL com.docker.compose.project.working_dir=/home/atk1", ()),
        ("ONBUILD LABEL ds01.user=atk1", ()),
        ("LABEL ok=1", ("--label", "ds01.user=atk2")),
        ("LABEL ok=1", ("--label", "ds01.image.maker=atk2")),
    ],
)
def test_r6_no_build_can_label_its_steps_with_an_owner_gpu_or_exemption(attack_gw, dockerfile, extra):
    """R6-2 (GPU pool blocked, planted containers, over the container limit) and R6-3: a Dockerfile LABEL or a
    build --label with a server label is refused before anything runs; no container or image carries it."""
    h = attack_gw
    tag = h.tag(ATTACKER, "r6l")
    before = {c.id for c in h.client.containers.list(all=True)}
    built = _build(h, ATTACKER, f"FROM {IMAGE}\n{dockerfile}\nRUN true\n", *extra, tag=tag)
    said = built.stderr + built.stdout
    assert built.returncode != 0 and ("only the server sets" in said or "from a variable" in said), said
    assert not h.client.images.list(name=tag.split(":")[0])
    made = [c for c in h.client.containers.list(all=True) if c.id not in before]
    assert not [c for c in made if any(k.startswith(("ds01.", "com.docker.compose")) for k in c.labels)]


def test_r6_failed_build_steps_are_removed(attack_gw):
    h = attack_gw
    image_id = h.client.images.get(IMAGE).id
    before = {c.id for c in _step_containers(h, image_id)}
    failed = _build(h, ATTACKER, f"FROM {IMAGE}\nRUN false\n", "--rm=false", "--force-rm=false")
    assert failed.returncode != 0
    assert {c.id for c in _step_containers(h, image_id)} == before


def test_r6_a_commit_carries_the_maker_not_the_owner_and_a_build_from_it_works(attack_gw):
    h = attack_gw
    name = h.name("r6c")
    assert (
        h.cli(ATTACKER, "create", "--name", name, "--network", "none", "--label", "mine=1", IMAGE, "true").returncode
        == 0
    )
    tag = h.tag(ATTACKER, "r6commit")
    committed = h.cli(ATTACKER, "commit", name, tag)
    assert committed.returncode == 0, committed.stderr
    labels = h.client.images.get(tag).labels
    assert labels["ds01.image.maker"] == ATTACKER and labels["mine"] == "1"
    assert labels["ds01.user"] == "" and labels["ds01.managed"] == ""  # blanked: readers ignore empty values
    assert not [k for k, v in labels.items() if identity.inherited_label_hazard(k, v)], labels
    changed = h.cli(ATTACKER, "commit", "--change", "LABEL ds01.user=atk2", name, h.tag(ATTACKER, "r6commit", "2"))
    assert changed.returncode != 0 and "only the server sets" in changed.stderr
    assert _build(h, ATTACKER, f"FROM {tag}\nRUN true\n", tag=h.tag(ATTACKER, "r6fromcommit")).returncode == 0


def test_r6_a_base_image_that_carries_an_owner_label_is_refused(attack_gw):
    """An image pulled from a registry (here: made by root) may carry any label; a build from it is refused."""
    h = attack_gw
    tag = h.tag(ATTACKER, "r6evil")
    h.client.images.build(fileobj=io.BytesIO(f"FROM {IMAGE}\nLABEL ds01.user=atk2\n".encode()), tag=tag, rm=True)
    before = {c.id for c in h.client.containers.list(all=True)}
    built = _build(h, ATTACKER, f"FROM {tag}\nRUN true\n", tag=h.tag(ATTACKER, "r6evil2"))
    assert built.returncode != 0 and "carries the label ds01.user=atk2" in built.stderr, built.stderr
    assert {c.id for c in h.client.containers.list(all=True)} == before


def test_r6_health_checks_run_at_most_every_five_seconds(attack_gw):
    """R6-4: each check is a runc exec paid for outside the user's slice."""
    h = attack_gw
    before = {c["Id"] for c in h.containers_of(ATTACKER)}
    fast = h.cli(ATTACKER, "create", "--network", "none", "--health-cmd", "true", "--health-interval", "10ms", IMAGE)
    assert fast.returncode != 0 and "--health-interval of 0.01s is too often" in fast.stderr, fast.stderr
    tag = h.tag(ATTACKER, "r6hc")
    h.client.images.build(
        fileobj=io.BytesIO(f"FROM {IMAGE}\nHEALTHCHECK --interval=1s CMD true\n".encode()), tag=tag, rm=True
    )
    inherited = h.cli(ATTACKER, "create", "--network", "none", tag, "sleep", "1")
    assert inherited.returncode != 0 and "the image's HEALTHCHECK --interval of 1s" in inherited.stderr
    assert {c["Id"] for c in h.containers_of(ATTACKER)} == before
    fine = h.cli(ATTACKER, "create", "--network", "none", "--health-interval", "30s", tag, "sleep", "1")
    assert fine.returncode == 0, fine.stderr
    stored = h.client.api.inspect_container(fine.stdout.strip())["Config"]["Healthcheck"]
    assert stored["Interval"] == 30 * 10**9


# -- round 7 --------------------------------------------------------------------------------------


def test_r7_docker_top_cannot_read_another_processs_environment(attack_gw):
    """R7-1: dockerd runs ps on the host as root with the caller's ps_args (-p PID and e read any environment)."""
    h = attack_gw
    secret = f"r7-{secrets.token_hex(6)}"
    holder = subprocess.Popen(["env", f"R7SECRET={secret}", "sleep", "60"])  # root's process on the host
    name = h.name("r7top")
    try:
        assert h.cli(ATTACKER, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "60").returncode == 0
        for args in ([f"-p{holder.pid}", "eww"], ["-e", "-o", "pid,args"], ["axeww"], ["-ef", "-p", str(holder.pid)]):
            out = h.cli(ATTACKER, "top", name, *args)
            assert out.returncode != 0 and secret not in out.stdout + out.stderr, (args, out.stdout, out.stderr)
            assert "not available" in out.stderr, out.stderr
        listed = h.cli(ATTACKER, "top", name, "aux")
        assert listed.returncode == 0 and "sleep 60" in listed.stdout and secret not in listed.stdout
    finally:
        holder.kill()
        holder.wait()


def test_r7_volumes_without_an_owner_cannot_be_removed_or_taken(attack_gw):
    """R7-2: an admin's (or a removed container's anonymous) volume was deletable and could be re-made as the
    attacker's, with the admin's data in it."""
    h = attack_gw
    name = h.name("r7admin")
    h.client.volumes.create(name)
    h.client.containers.run(
        IMAGE,
        ["sh", "-c", "echo admin-creds > /v/creds"],
        volumes={name: {"bind": "/v"}},
        network_mode="none",
        remove=True,
    )
    try:
        removed = h.cli(ATTACKER, "volume", "rm", name)
        assert removed.returncode != 0 and "has no owner" in removed.stderr, removed.stderr
        taken = h.cli(ATTACKER, "volume", "create", name)
        assert taken.returncode != 0 and "already exists and is not yours" in taken.stderr, taken.stderr
        stored = h.client.api.inspect_volume(name)
        assert not (stored.get("Labels") or {}).get("ds01.user")
        out = h.client.containers.run(
            IMAGE, ["cat", "/v/creds"], volumes={name: {"bind": "/v"}}, network_mode="none", remove=True
        )
        assert out.decode().strip() == "admin-creds"
    finally:
        h.client.api.remove_volume(name, force=True)
    # the attacker's own volumes stay theirs to remove
    own = h.name("r7own")
    assert h.cli(ATTACKER, "volume", "create", own).returncode == 0
    assert h.cli(ATTACKER, "volume", "rm", own).returncode == 0
    assert own not in [v.name for v in h.client.volumes.list()]


def test_r7_unstarted_exec_instances_and_large_settings_are_capped(attack_gw):
    """R7-3: exec instances created and never started stay in dockerd's memory until the container stops."""
    h = attack_gw
    name = h.name("r7exec")
    assert h.cli(ATTACKER, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "120").returncode == 0
    cid = h.client.api.inspect_container(name)["Id"]
    body = {"Cmd": ["true"], "AttachStdout": False}
    statuses = [
        h.api(ATTACKER, "POST", f"/containers/{name}/exec", json.dumps(body).encode())[0] for _attempt in range(34)
    ]
    assert statuses[:32] == [201] * 32 and statuses[32:] == [403, 403], statuses
    assert len(h.client.api.inspect_container(cid)["ExecIDs"] or []) == 32
    big = {"Cmd": ["echo", "x" * (2 * 1024 * 1024)]}
    try:  # refused (413) as soon as the head says how large it is; the client may still be sending
        assert h.api(ATTACKER, "POST", f"/containers/{name}/exec", json.dumps(big).encode())[0] in (400, 403, 413)
    except HarnessError as exc:
        assert "Broken pipe" in str(exc) or "reset" in str(exc), exc
    assert len(h.client.api.inspect_container(cid)["ExecIDs"] or []) == 32
    # a started exec no longer counts: `docker exec` keeps working
    h.client.api.stop(cid, timeout=1)
    h.client.api.start(cid)
    ran = h.cli(ATTACKER, "exec", name, "echo", "still-works")
    assert ran.returncode == 0 and "still-works" in ran.stdout, ran.stderr


def test_r7_a_compressed_import_is_refused_before_the_daemon_unpacks_it(attack_gw):
    """R7-4: 2 MB of gzip became 2.15 GB on the shared disk."""
    h = attack_gw
    plain = _tar({"hello.txt": "hi\n"})
    packed = gzip.compress(plain)
    tag = h.tag(ATTACKER, "r7imp")
    refused = h.api(ATTACKER, "POST", f"/images/create?fromSrc=-&repo={tag.split(':')[0]}&tag=1", packed)
    assert refused[0] == 403 and b"gzip-compressed" in refused[2], refused[:2]
    assert not h.client.images.list(name=tag.split(":")[0])
    imported = h.api(ATTACKER, "POST", f"/images/create?fromSrc=-&repo={tag.split(':')[0]}&tag=1", plain)
    assert imported[0] == 200, imported
    assert h.client.images.get(tag).attrs["Size"] < 10_000


def test_r7_a_user_cannot_take_every_network_subnet(attack_gw):
    """R7-5: 29 networks used up the daemon's address pool for everyone."""
    h = attack_gw
    made = []
    try:
        for index in range(5):
            name = h.name(f"r7net{index}")
            out = h.cli(ATTACKER, "network", "create", name)
            if out.returncode == 0:
                made.append(name)
            else:
                assert "the most one user may have" in out.stderr, out.stderr
        assert len(made) == 4
        owned = h.client.networks.list(filters={"label": f"ds01.user={ATTACKER}"})
        assert len(owned) == 4
    finally:
        for name in made:
            h.client.api.remove_network(name)


# -- round 8 --------------------------------------------------------------------------------------


def test_r8_a_non_blocking_log_buffer_is_capped(attack_gw):
    """R8-1: mode=non-blocking keeps output in dockerd's memory up to max-buffer-size (4g and 100g were stored)."""
    h = attack_gw
    name = h.name("r8log")
    made = h.cli(
        ATTACKER,
        "create",
        "--name",
        name,
        "--network",
        "none",
        "--log-opt",
        "mode=non-blocking",
        "--log-opt",
        "max-buffer-size=100g",
        IMAGE,
        "true",
    )
    assert made.returncode == 0, made.stderr
    options = h.client.api.inspect_container(name)["HostConfig"]["LogConfig"]["Config"]
    assert options["mode"] == "non-blocking" and options["max-buffer-size"] == "4m", options


def test_r8_anonymous_volumes_start_empty(attack_gw):
    """R8-2: `-v /usr` made dockerd copy the image's /usr into a new volume nobody could remove, at create."""
    h = attack_gw
    name = h.name("r8anon")
    made = h.cli(
        ATTACKER,
        "create",
        "--name",
        name,
        "--network",
        "none",
        "-v",
        "/usr",
        "--mount",
        "type=volume,dst=/etc",
        IMAGE,
        "true",
    )
    assert made.returncode == 0, made.stderr
    mounts = {m["Destination"]: m for m in h.client.api.inspect_container(name)["Mounts"]}
    assert set(mounts) >= {"/usr", "/etc"}
    for target in ("/usr", "/etc"):
        volume = h.client.api.inspect_volume(mounts[target]["Name"])
        assert os.listdir(volume["Mountpoint"]) == [], (target, os.listdir(volume["Mountpoint"])[:5])
    names = [mounts[t]["Name"] for t in ("/usr", "/etc")]
    assert h.cli(ATTACKER, "rm", "-v", name).returncode == 0
    left = {v.name for v in h.client.volumes.list()}
    assert not set(names) & left  # `docker rm -v` takes them along


def test_r8_a_user_may_own_a_bounded_number_of_volumes(attack_gw):
    h = attack_gw
    made = []
    try:
        while True:
            name = h.name("r8vol")
            out = h.cli(ATTACKER, "volume", "create", name)
            if out.returncode != 0:
                assert "you have 32 volumes and may have 32" in out.stderr or "may have 32" in out.stderr, out.stderr
                break
            made.append(name)
            assert len(made) <= 32
        owned = h.client.volumes.list(filters={"label": f"ds01.user={ATTACKER}"})
        assert len(owned) == 32
    finally:
        for name in made:
            h.client.api.remove_volume(name, force=True)


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "{vol}:/dev"],
        ["--mount", "type=volume,src={vol},dst=/proc/sys"],
        ["-v", "/sys/fs"],
        ["--tmpfs", "/dev/pts"],
        ["-v", "{vol}:/dev/./"],
    ],
)
def test_r8_nothing_is_mounted_over_runcs_own_directories(attack_gw, args):
    """The mechanism of CVE-2025-31133: a volume at /dev with `null` linked elsewhere makes runc mount over the
    files it hides. /dev/shm stays available."""
    h = attack_gw
    vol = h.name("r8dev")
    name = h.name("r8mnt")
    made = h.cli(
        ATTACKER, "create", "--name", name, "--network", "none", *[a.format(vol=vol) for a in args], IMAGE, "true"
    )
    assert made.returncode != 0 and "runc sets up /proc, /sys and /dev itself" in made.stderr, made.stderr
    assert not h.client.containers.list(all=True, filters={"name": name})
    shm = h.cli(ATTACKER, "create", "--network", "none", "--tmpfs", "/dev/shm:size=64m", IMAGE, "true")
    assert shm.returncode == 0, shm.stderr


# -- round 9 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["{{pad .ID 250000000 0}}", "{{.Name}}", "x" * 200])
def test_r9_a_log_tag_template_is_refused(attack_gw, tag):
    """R9-2: dockerd expands the tag template at start and adds it to every log line (a 250 MB tag)."""
    h = attack_gw
    name = h.name("r9tag")
    made = h.cli(ATTACKER, "create", "--name", name, "--network", "none", "--log-opt", f"tag={tag}", IMAGE, "true")
    assert made.returncode != 0 and "plain tag" in made.stderr, made.stderr
    assert not h.client.containers.list(all=True, filters={"name": name})
    plain = h.cli(ATTACKER, "create", "--network", "none", "--log-opt", "tag=myjob", IMAGE, "true")
    assert plain.returncode == 0, plain.stderr
    assert h.client.api.inspect_container(plain.stdout.strip())["HostConfig"]["LogConfig"]["Config"]["tag"] == "myjob"


def test_r9_one_docker_save_at_a_time_per_user(attack_gw):
    """R9-1: dockerd writes a whole copy of the image to its disk for each save and keeps it while the client
    does not read; idle saves held 2 GB. A second save of the same user is refused while one runs."""
    h = attack_gw
    first = socket.socket(socket.AF_UNIX)
    pid = os.fork()
    if pid == 0:  # the attacker's idle save: connect as atk1, send the request, never read
        try:
            import pwd

            entry = pwd.getpwnam(ATTACKER)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            first.connect(h.socket)
            first.sendall(f"GET /v1.41/images/get?names={IMAGE} HTTP/1.1\r\nHost: d\r\n\r\n".encode())
            time.sleep(8)
        finally:
            os._exit(0)
    try:
        time.sleep(1.5)
        second = h.api(ATTACKER, "GET", f"/images/get?names={IMAGE}")
        assert second[0] == 403 and b"one at a time" in second[2], second[:2]
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        first.close()
    for _attempt in range(100):  # the lock goes with the connection
        done = h.api(ATTACKER, "GET", "/images/get?names=local/empty")
        if done[0] == 200:
            break
        time.sleep(0.1)
    assert done[0] == 200 and len(done[2]) > 0


def test_r9_an_import_with_a_sparse_file_is_refused(attack_gw, tmp_path):
    """R9-3 (import): a 10 KB sparse tar became 1.5 GB: the daemon writes the holes out."""
    h = attack_gw
    (tmp_path / "big").write_bytes(b"")
    os.truncate(tmp_path / "big", 200 * 1024 * 1024)
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "-C", str(tmp_path), "--sparse", "-cf", str(archive), "big"], check=True)
    assert archive.stat().st_size < 1024 * 1024
    tag = h.tag(ATTACKER, "r9sparse")
    repo = tag.split(":")[0]
    refused = h.api(ATTACKER, "POST", f"/images/create?fromSrc=-&repo={repo}&tag=1", archive.read_bytes())
    assert refused[0] == 403 and b"sparse file big" in refused[2], refused[:2]
    assert not h.client.images.list(name=repo)


# -- round 10 (observations) ----------------------------------------------------------------------


def test_r10_docker_update_cannot_raise_the_cpu_or_io_weight(attack_gw):
    """The create clamps CpuShares and BlkioWeight; docker update set CpuShares 262144 on the cgroup."""
    h = attack_gw
    name = h.name("r10upd")
    assert h.cli(ATTACKER, "create", "--name", name, "--network", "none", IMAGE, "true").returncode == 0
    updated = h.api(
        ATTACKER, "POST", f"/containers/{name}/update", json.dumps({"CpuShares": 262144, "BlkioWeight": 1000}).encode()
    )
    assert updated[0] == 200, updated[:2]
    host = h.client.api.inspect_container(name)["HostConfig"]
    assert host["CpuShares"] <= 1024 and host["BlkioWeight"] <= 500, (host["CpuShares"], host["BlkioWeight"])
