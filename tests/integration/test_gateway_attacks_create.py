"""Adversarial corpus, first half: what a non-admin can smuggle into a container create (policy.md C1, C2,
C3, C5 and the create side of C4), plus legitimate work that must still pass.

Every vector is judged by EFFECT, as root on the real daemon socket: the container the request would
have made is looked up (by name and by a per-vector label) and its stored HostConfig/Config/Labels are
checked for the dangerous setting; containers that run are probed for what they could read (canaries,
a host marker file) and who they were; the attacker's home is checked for gained setuid files and
device nodes (``host_gained``). A refusal must also be a sentence, never only that.

The harness (gateway, users atk1/atk2/atkadm, raw requests with the user's kernel credentials) is
tests/integration/gwharness.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from gwharness import (
    ATTACKER,
    DEBIAN_DOCKER_BIN,
    DOCKER_BIN,
    GPU_UUIDS,
    IMAGE,
    MIG_UUIDS,
    REAL_SOCKET,
    VICTIM,
    Harness,
    as_user,
    assert_cli_sentence,
    assert_sentence,
    ids,
)

pytestmark = [pytest.mark.docker, pytest.mark.root, pytest.mark.slow]

A = ATTACKER
VECTOR_LABEL = "atk.vector"
ATK_SLICE = f"ds01-student-{A}.slice"
SAFE_RUNTIMES = (None, "", "runc", "io.containerd.runc.v2")
NVIDIA_DIR = "/var/run/nvidia-container-devices"
# capability numbers (linux/capability.h)
CAPS = {
    "DAC_READ_SEARCH": 2,
    "SETGID": 6,
    "SETUID": 7,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_ADMIN": 21,
    "MKNOD": 27,
}


# ---------------------------------------------------------------------------------------------
# the world the vectors run in


@dataclass
class World:
    h: Harness
    scratch: Path  # in atk1's home, bound at /h in ``box``
    box: str  # atk1's running container (made through the gateway)
    victim: str  # atk2's created container, with ``victim_volume`` at /data
    victim_volume: str
    marker_path: str  # world-readable, root-owned: seen from a container only if it got the host's /
    marker: str
    uid: int
    gid: int
    groups: list

    def fresh(self, what: str = "d") -> Path:
        path = self.scratch / f"{what}-{secrets.token_hex(3)}"
        path.mkdir()
        os.chown(path, self.uid, self.gid)
        return path


@pytest.fixture(scope="module")
def world(attack_gw: Harness):
    h = attack_gw
    uid, gid, groups = ids(A)
    scratch = h.scratch(A)
    box = h.name("box")
    proc = h.cli(A, "run", "-d", "--name", box, "--network", "none", "-v", f"{scratch}:/h", IMAGE, "sleep", "infinity")
    assert proc.returncode == 0, f"atk1 could not run an ordinary container through the gateway:\n{proc.stderr}"
    victim_volume = h.name("vvol")
    proc = h.cli(VICTIM, "volume", "create", victim_volume)
    assert proc.returncode == 0, proc.stderr
    mountpoint = h.client.api.inspect_volume(victim_volume)["Mountpoint"]
    Path(mountpoint, "secret").write_text(h.canaries[f"/home/{VICTIM}/secret"] + "\n")
    victim = h.name("victim")
    proc = h.cli(VICTIM, "create", "--name", victim, "--network", "none", "-v", f"{victim_volume}:/data", IMAGE)
    assert proc.returncode == 0, proc.stderr
    marker_path = f"/var/tmp/{h.prefix}marker"
    marker = f"host-marker-{secrets.token_hex(12)}"
    Path(marker_path).write_text(marker + "\n")
    os.chmod(marker_path, 0o644)
    yield World(h, scratch, box, victim, victim_volume, marker_path, marker, uid, gid, groups)
    # the attacker's container count is shared with the other corpus in the same session
    h.remove(box, victim)
    with contextlib.suppress(Exception):
        h.client.api.remove_volume(victim_volume, force=True)
    with contextlib.suppress(OSError):
        os.unlink(marker_path)


@pytest.fixture(autouse=True)
def _clean_scratch(world):
    """Each vector starts with an empty scratch dir and leaves no container of its own behind."""
    yield
    for entry in world.scratch.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


# ---------------------------------------------------------------------------------------------
# JSON written by hand: duplicate keys, odd spellings, escapes survive byte for byte


class Raw:
    def __init__(self, text: str) -> None:
        self.text = text


class EscKey(str):
    """A key written with its first character as a \\uXXXX escape."""


def jv(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    return json.dumps(value, ensure_ascii=False)


def jk(key: str) -> str:
    if isinstance(key, EscKey):
        return '"' + f"\\u{ord(key[0]):04x}" + json.dumps(key[1:])[1:]
    return json.dumps(key, ensure_ascii=False)


def obj(*pairs: tuple) -> Raw:
    return Raw("{" + ",".join(f"{jk(k)}:{jv(v)}" for k, v in pairs) + "}")


def base_config() -> list:
    return [("Image", IMAGE), ("Cmd", ["sleep", "300"])]


def base_labels(name: str, h: Harness) -> dict:
    return {**h.labels, VECTOR_LABEL: name}


def body_of(*pairs: tuple) -> bytes:
    return obj(*pairs).text.encode()


def simple_body(name: str, h: Harness, host: Optional[dict] = None, **config: Any) -> bytes:
    """A canonical create body: Image, Cmd sleep, the vector label, HostConfig (NetworkMode none + ``host``)."""
    hc = {"NetworkMode": "none", **(host or {})}
    labels = {**base_labels(name, h), **config.pop("Labels", {})}
    return body_of(*base_config(), *config.items(), ("Labels", labels), ("HostConfig", hc))


# ---------------------------------------------------------------------------------------------
# root-side evidence


def find(h: Harness, name: str) -> Optional[dict]:
    info = h.stored(name)
    if info is not None:
        return info
    for c in h.client.api.containers(all=True, filters={"label": f"{VECTOR_LABEL}={name}"}):
        return h.stored(c["Id"])
    return None


def drop(h: Harness, name: str) -> None:
    info = find(h, name)
    while info is not None:
        h.remove(info["Id"])
        info = find(h, name)


def allowed_source(h: Harness, source: str, rw: bool) -> bool:
    real = os.path.realpath(source)
    home = os.path.realpath(h.home(A))
    data = os.path.realpath(h.data)
    if real == home or real.startswith(home + "/"):
        return True
    return (real == data or real.startswith(data + "/")) and not rw


def bad_mounts(info: dict, h: Harness) -> list:
    """Mounts the daemon stored that reach outside the attacker's home (or the read-only data prefix)."""
    bad = []
    for m in info.get("Mounts") or []:
        if m.get("Type") == "bind" and not allowed_source(h, m.get("Source", ""), bool(m.get("RW"))):
            bad.append(f"bind {m.get('Source')} -> {m.get('Destination')} (rw={m.get('RW')})")
        if m.get("Type") == "volume" and m.get("Name"):
            owner = (h.volume(m["Name"]) or {}).get("Labels") or {}
            if owner.get("ds01.user") not in (None, A):
                bad.append(f"volume {m['Name']} of {owner.get('ds01.user')}")
            opts = (h.volume(m["Name"]) or {}).get("Options") or {}
            if opts:
                bad.append(f"volume {m['Name']} with driver options {opts}")
        if m.get("Propagation") in ("shared", "rshared"):
            bad.append(f"{m.get('Destination')} with propagation {m['Propagation']}")
    for bind in (info.get("HostConfig") or {}).get("Binds") or []:
        src = bind.split(":", 1)[0]
        if src.startswith("/"):
            rw = not bind.endswith((":ro", ",ro"))
            if not allowed_source(h, src, rw):
                bad.append(f"Binds {bind}")
    return bad


def env_value(info: dict, key: str) -> Optional[str]:
    value = None
    for item in (info.get("Config") or {}).get("Env") or []:
        if item.split("=", 1)[0] == key:
            value = item.split("=", 1)[1] if "=" in item else ""
    return value


def gpu_bypass(info: dict) -> Optional[str]:
    """How the stored container could reach a GPU the allocator did not grant it (None: it cannot)."""
    hc = info.get("HostConfig") or {}
    labels = (info.get("Config") or {}).get("Labels") or {}
    granted = {u for u in (labels.get("ds01.gpu.uuids") or "").split(",") if u}
    requests = hc.get("DeviceRequests") or []
    if granted and not requests:
        return f"GPU labels {granted} without a DeviceRequest (forged holding)"
    for dr in requests:
        wanted = set(dr.get("DeviceIDs") or [])
        if dr.get("Count") not in (0, None) or not wanted or not wanted <= granted:
            return f"DeviceRequest {dr} not granted by the allocator (granted: {granted or 'none'})"
    for dev in hc.get("Devices") or []:
        path = dev.get("PathOnHost", "")
        if "nvidia" in path or "=" in path:
            return f"device {path}"
    for rule in hc.get("DeviceCgroupRules") or []:
        return f"device cgroup rule {rule!r}"
    if hc.get("Runtime") not in SAFE_RUNTIMES:
        return f"runtime {hc.get('Runtime')!r}"
    env = env_value(info, "NVIDIA_VISIBLE_DEVICES")
    if granted:
        if env is not None and set(env.split(",")) - granted:
            return f"NVIDIA_VISIBLE_DEVICES={env} beyond the grant {granted}"
    elif env != "void":
        return f"NVIDIA_VISIBLE_DEVICES={env!r} on a container without a grant (policy: void)"
    for m in info.get("Mounts") or []:
        if str(m.get("Destination", "")).startswith(NVIDIA_DIR):
            return f"mount at {m['Destination']}"
    for m in hc.get("Mounts") or []:
        if str(m.get("Target", "")).startswith(NVIDIA_DIR):
            return f"mount at {m['Target']}"
    for key in hc.get("Tmpfs") or {}:
        if key.startswith(NVIDIA_DIR):
            return f"tmpfs at {key}"
    return None


def judge_create(
    h: Harness,
    name: str,
    status: int,
    answer: bytes,
    danger: Callable[[dict], Optional[str]],
    must_refuse: bool,
    why: str = "",
) -> None:
    """Nothing dangerous stored (and, where the policy refuses, nothing stored at all); refusals are sentences."""
    info = find(h, name)
    try:
        if info is None:
            assert status >= 400, f"the gateway answered {status} but nothing was stored: {answer[:300]!r}"
            assert_sentence(status, answer)
            return
        found = danger(info)
        assert found is None, f"DANGEROUS: the daemon stored {found} (answer {status})"
        assert not must_refuse, f"created (answer {status}), but policy says it is refused: {why}"
    finally:
        drop(h, name)


def caps_of(status_text: str, field: str) -> set:
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            bits = int(line.split()[1], 16)
            return {name for name, bit in CAPS.items() if bits >> bit & 1}
    raise AssertionError(f"no {field} in {status_text!r}")


# ---------------------------------------------------------------------------------------------
# C1: every dangerous field, every spelling


def _is(key: str, bad: Any) -> Callable[[dict], Optional[str]]:
    def check(info: dict) -> Optional[str]:
        value = (info.get("HostConfig") or {}).get(key)
        return f"HostConfig.{key}={value!r}" if value == bad else None

    return check


def _nonempty(key: str) -> Callable[[dict], Optional[str]]:
    def check(info: dict) -> Optional[str]:
        value = (info.get("HostConfig") or {}).get(key)
        return f"HostConfig.{key}={value!r}" if value else None

    return check


def _caps(info: dict) -> Optional[str]:
    added = {c.upper().removeprefix("CAP_") for c in (info["HostConfig"].get("CapAdd") or [])}
    bad = added & {"SYS_ADMIN", "ALL", "SETUID", "MKNOD", "SETGID"}
    return f"CapAdd {sorted(bad)}" if bad else None


def _masked(key: str, must: str) -> Callable[[dict], Optional[str]]:
    def check(info: dict) -> Optional[str]:
        value = info["HostConfig"].get(key)
        return f"HostConfig.{key}={value!r} (no {must})" if value is not None and must not in value else None

    return check


def _secopt(info: dict) -> Optional[str]:
    opts = info["HostConfig"].get("SecurityOpt") or []
    bad = [o for o in opts if "unconfined" in o or o.replace("=", ":") == "no-new-privileges:false"]
    return f"SecurityOpt {bad}" if bad else None


def _slice(info: dict) -> Optional[str]:
    value = info["HostConfig"].get("CgroupParent")
    return None if value == ATK_SLICE else f"CgroupParent={value!r}"


def _memory(info: dict) -> Optional[str]:
    value = info["HostConfig"].get("Memory")
    return None if value == 2 << 30 else f"Memory={value}"


def _pids(info: dict) -> Optional[str]:
    value = info["HostConfig"].get("PidsLimit")
    return None if value == 300 else f"PidsLimit={value}"


def _netmode(info: dict) -> Optional[str]:
    value = info["HostConfig"].get("NetworkMode")
    return f"NetworkMode={value!r}" if value == "host" or str(value).startswith("container:") else None


def _user_of(uid: int, gid: int) -> Callable[[dict], Optional[str]]:
    def check(info: dict) -> Optional[str]:
        value = info["Config"].get("User")
        return None if value == f"{uid}:{gid}" else f"Config.User={value!r}"

    return check


def _labels(info: dict) -> Optional[str]:
    labels = info["Config"].get("Labels") or {}
    if labels.get("ds01.user") != A:
        return f"ds01.user={labels.get('ds01.user')!r}"
    forged = {k: v for k, v in labels.items() if k == "ds01.protected" or k.startswith("ds01.gpu")}
    if forged and not info["HostConfig"].get("DeviceRequests"):
        return f"forged labels {forged}"
    return None


@dataclass(frozen=True)
class Field:
    key: str
    section: str  # "host" (HostConfig) or "config" (top level)
    danger: Any
    safe: Any
    check: Callable[[dict], Optional[str]]


def fields(uid: int, gid: int) -> list[Field]:
    return [
        Field("Privileged", "host", True, False, _is("Privileged", True)),
        Field("CapAdd", "host", ["SYS_ADMIN"], [], _caps),
        Field("PidMode", "host", "host", "", _is("PidMode", "host")),
        Field("IpcMode", "host", "host", "private", _is("IpcMode", "host")),
        Field("UTSMode", "host", "host", "", _is("UTSMode", "host")),
        Field("UsernsMode", "host", "host", "", _is("UsernsMode", "host")),
        Field("CgroupnsMode", "host", "host", "private", _is("CgroupnsMode", "host")),
        Field(
            "Devices",
            "host",
            [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem", "CgroupPermissions": "rwm"}],
            [],
            _nonempty("Devices"),
        ),
        Field("DeviceCgroupRules", "host", ["b 8:* rwm"], [], _nonempty("DeviceCgroupRules")),
        Field("MaskedPaths", "host", [], None, _masked("MaskedPaths", "/proc/kcore")),
        Field("ReadonlyPaths", "host", [], None, _masked("ReadonlyPaths", "/proc/sys")),
        Field("SecurityOpt", "host", ["seccomp=unconfined", "apparmor=unconfined"], [], _secopt),
        Field("CgroupParent", "host", "/", "", _slice),
        Field("Binds", "host", ["/:/host"], [], None),  # check filled per world (needs the harness)
        Field("Mounts", "host", [{"Type": "bind", "Source": "/", "Target": "/host"}], [], None),
        Field("VolumesFrom", "host", ["{victim}"], [], _nonempty("VolumesFrom")),
        Field("Memory", "host", 64 << 30, 1 << 30, _memory),
        Field("PidsLimit", "host", -1, 100, _pids),
        Field(
            "DeviceRequests",
            "host",
            [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}],
            [],
            gpu_bypass,
        ),
        Field("NetworkMode", "host", "host", "none", _netmode),
        Field("User", "config", "0", f"{uid}:{gid}", _user_of(uid, gid)),
        Field("Env", "config", ["NVIDIA_VISIBLE_DEVICES=all"], [], gpu_bypass),
        Field(
            "Labels",
            "config",
            {"ds01.user": VICTIM, "ds01.protected": "true", "ds01.gpu.uuids": GPU_UUIDS[0]},
            {},
            _labels,
        ),
    ]


def _mixed(key: str) -> str:
    return "".join(c.lower() if i % 2 == 0 else c.upper() for i, c in enumerate(key))


def _swap_first(key: str, letters: str, into: str) -> Optional[str]:
    for i, c in enumerate(key):
        if c in letters:
            return key[:i] + into + key[i + 1 :]
    return None


SPELLINGS = ("canonical", "lower", "upper", "mixed", "long_s", "kelvin", "dup", "dup_fold", "null_hc", "two_hc", "esc")


def spelled_pairs(field: Field, spelling: str, name: str, h: Harness, danger: Any) -> Optional[list]:
    """The top-level (key, value) pairs of a create body carrying ``field`` spelled ``spelling``; None if n/a."""
    key = field.key
    config = base_config()
    labels = base_labels(name, h)
    hc = [] if key == "NetworkMode" else [("NetworkMode", "none")]
    variant = {
        "canonical": key,
        "lower": key.lower(),
        "upper": key.upper(),
        "mixed": _mixed(key),
        "long_s": _swap_first(key, "sS", "\u017f"),
        "kelvin": _swap_first(key, "kK", "\u212a"),
        "esc": EscKey(key),
    }
    if field.section == "host":
        if spelling in ("canonical", "lower", "upper", "mixed", "kelvin", "esc") or (
            spelling == "long_s" and variant["long_s"]
        ):
            if variant[spelling] is None:
                return None
            return [*config, ("Labels", labels), ("HostConfig", obj(*hc, (variant[spelling], danger)))]
        if spelling == "long_s":  # no s in the key: the s of HostConfig, as a second (merged) object
            return [*config, ("Labels", labels), ("HostConfig", obj(*hc)), ("Ho\u017ftConfig", obj((key, danger)))]
        if spelling == "dup":
            return [*config, ("Labels", labels), ("HostConfig", obj(*hc, (key, field.safe), (key, danger)))]
        if spelling == "dup_fold":
            return [*config, ("Labels", labels), ("HostConfig", obj(*hc, (key, field.safe), (key.lower(), danger)))]
        if spelling == "null_hc":
            return [*config, ("Labels", labels), ("HostConfig", None), *hc, (key, danger)]
        if spelling == "two_hc":  # Python keeps the second, Go merges both
            return [
                *config,
                ("Labels", labels),
                ("HostConfig", obj((key, danger))),
                ("HostConfig", obj(*hc, ("AutoRemove", False))),
            ]
        return None
    # top-level (Config) fields
    hcobj = ("HostConfig", obj(*hc))
    if spelling in ("null_hc", "two_hc"):
        return None
    if key == "Labels":
        merged = {**labels, **danger}
        if spelling == "canonical":
            return [*config, ("Labels", merged), hcobj]
        if spelling == "dup":
            return [*config, ("Labels", labels), ("Labels", merged), hcobj]
        if spelling == "dup_fold":
            return None  # the same as "lower" for a key that the base body always carries
        if variant.get(spelling) is None:
            return None
        return [*config, ("Labels", labels), (variant[spelling], danger), hcobj]
    if spelling == "dup":
        return [*config, (key, field.safe), (key, danger), ("Labels", labels), hcobj]
    if spelling == "dup_fold":
        return [*config, (key, field.safe), (key.lower(), danger), ("Labels", labels), hcobj]
    if variant.get(spelling) is None:
        return None
    return [*config, (variant[spelling], danger), ("Labels", labels), hcobj]


def _spelled_ids() -> list:
    out = []
    for field in fields(1, 1):
        for spelling in SPELLINGS:
            if spelled_pairs(field, spelling, "n", _FakeH(), field.danger) is not None:
                out.append(pytest.param(field.key, spelling, id=f"{field.key}-{spelling}"))
    return out


class _FakeH:
    labels: dict = {}


@pytest.mark.parametrize(("key", "spelling"), _spelled_ids())
def test_c1_dangerous_field_in_any_spelling_is_not_stored(world, key, spelling):
    h = world.h
    field = next(f for f in fields(world.uid, world.gid) if f.key == key)
    check = field.check or (lambda info: "; ".join(bad_mounts(info, h)) or None)
    danger = json.loads(json.dumps(field.danger).replace("{victim}", world.victim))
    name = h.name("c1")
    pairs = spelled_pairs(field, spelling, name, h, danger)
    name, status, answer = h.create(A, body_of(*pairs), name=name)
    judge_create(
        h,
        name,
        status,
        answer,
        check,
        must_refuse=spelling not in ("canonical", "esc"),
        why=f"C1: {key} spelled {spelling} (Go reads it) must be refused",
    )


# malformed bodies: C1 says refused, nothing created
def _malformed(world: World, name: str) -> list:
    h = world.h
    lab = json.dumps(base_labels(name, h))
    head = f'{{"Image": "{IMAGE}", "Cmd": ["sleep", "300"], "Labels": {lab}'
    return [
        ("unknown_field", head + ', "Bogus": 1, "HostConfig": {"NetworkMode": "none"}}'),
        ("unknown_hostconfig_field", head + ', "HostConfig": {"NetworkMode": "none", "Bogus": true}}'),
        ("nan_memory", head + ', "HostConfig": {"NetworkMode": "none", "Memory": NaN}}'),
        ("infinity_pids", head + ', "HostConfig": {"NetworkMode": "none", "PidsLimit": Infinity}}'),
        ("wrong_type_privileged", head + ', "HostConfig": {"NetworkMode": "none", "Privileged": "true"}}'),
        ("wrong_type_memory", head + ', "HostConfig": {"NetworkMode": "none", "Memory": "68719476736"}}'),
        ("lone_surrogate", head + ', "Env": ["X=\\ud800"], "HostConfig": {"NetworkMode": "none"}}'),
        (
            "deprecated_top_level_binds",
            head + ', "Binds": ["/:/host"], "Privileged": true, "HostConfig": {"NetworkMode": "none"}}',
        ),
        ("deprecated_top_level_memory", head + ', "Memory": 68719476736, "HostConfig": {"NetworkMode": "none"}}'),
        ("deprecated_cpuset", head + ', "Cpuset": "0", "HostConfig": {"NetworkMode": "none"}}'),
        ("hostconfig_null_only", head + ', "HostConfig": null, "NetworkMode": "none"}'),
        ("hostconfig_array", head + ', "HostConfig": [], "NetworkMode": "none"}'),
    ]


MALFORMED = [
    "unknown_field",
    "unknown_hostconfig_field",
    "lone_surrogate",
    "invalid_utf8",
    "deprecated_top_level_binds",
    "deprecated_top_level_memory",
    "deprecated_cpuset",
    "hostconfig_null_only",
]


@pytest.mark.parametrize("what", MALFORMED)
def test_c1_malformed_body_creates_nothing(world, what):
    h = world.h
    name = h.name("mal")
    if what == "invalid_utf8":
        lab = json.dumps(base_labels(name, h)).encode()
        body = (
            b'{"Image": "'
            + IMAGE.encode()
            + b'", "Cmd": ["sleep", "300"], "Labels": '
            + lab
            + b', "Env": ["X=\xff\xfe"],'
            b' "HostConfig": {"NetworkMode": "none"}}'
        )
    else:
        body = dict(_malformed(world, name))[what].encode()
    name, status, answer = h.create(A, body, name=name)

    def danger(info: dict) -> Optional[str]:
        return _memory(info) or _pids(info) or _is("Privileged", True)(info) or ("; ".join(bad_mounts(info, h)) or None)

    judge_create(h, name, status, answer, danger, must_refuse=True, why=f"C1: {what} is refused")


# exec create bodies (C1 + C2): judged by running the exec and reading who it was
EXEC_BODIES = {
    "user_root_canonical": {"User": "root"},
    "user_0_lower_key": {"user": "0"},
    "user_root_long_s": {"U\u017fer": "root"},
    "user_dup_fold": "dup",
    "privileged_lower_key": {"privileged": True},
    "privileged_canonical": {"Privileged": True},
}


@pytest.mark.parametrize("what", list(EXEC_BODIES))
def test_c2_exec_create_cannot_be_root_or_privileged(world, what):
    h = world.h
    cmd = ["sh", "-c", "id -u; grep -E '^Cap(Eff|Bnd)' /proc/self/status"]
    extra = EXEC_BODIES[what]
    pairs = [("AttachStdout", True), ("AttachStderr", True), ("Tty", True), ("Cmd", cmd)]
    if extra == "dup":
        pairs += [("User", f"{world.uid}:{world.gid}"), ("user", "0")]
    else:
        pairs += list(extra.items())
    status, _hd, answer = h.api(A, "POST", f"/containers/{world.box}/exec", body_of(*pairs))
    if status >= 400:
        assert_sentence(status, answer)
        return
    exec_id = json.loads(answer)["Id"]
    stored = h.client.api.exec_inspect(exec_id)
    assert stored["ProcessConfig"].get("privileged") is not True, f"DANGEROUS: exec stored privileged: {stored}"
    out = h.client.api.exec_start(exec_id).decode(errors="replace")
    lines = out.split()
    assert lines and lines[0] == str(world.uid), f"DANGEROUS: the exec ran as uid {lines[:1]} ({what}): {out}"
    assert not caps_of(out, "CapEff") & {"SYS_ADMIN", "SETUID", "MKNOD"}, out


# ---------------------------------------------------------------------------------------------
# C2: container root is never host root


def _run(world: World, *args: str, cmd: tuple = ("id", "-u"), image: str = IMAGE, debian: bool = False):
    name = world.h.name("run")
    proc = world.h.cli(
        A, "run", "--rm", "--name", name, "--network", "none", *args, image, *cmd, debian=debian, timeout=90
    )
    return name, proc


def _ran_as_caller_or_refused(world: World, *args: str, image: str = IMAGE) -> None:
    name, proc = _run(world, *args, image=image, cmd=("sh", "-c", "id -u; id -G"))
    try:
        if proc.returncode != 0 and world.h.stored(name) is None:
            assert_cli_sentence(proc)
            return
        assert proc.returncode == 0, proc.stderr
        uid, *gids = proc.stdout.split()
        assert uid == str(world.uid), f"DANGEROUS: {' '.join(args) or image} ran as uid {uid}, not {world.uid}"
        assert set(map(int, gids)) <= set(world.groups), f"DANGEROUS: gained groups {gids} (own: {world.groups})"
    finally:
        drop(world.h, name)


def _group_add(group: str) -> Callable[[World], None]:
    def vector(world: World) -> None:
        gid = str(world.h.gid(VICTIM)) if group == "victim" else group
        _ran_as_caller_or_refused(world, "--group-add", gid)

    return vector


def _cap_add(cap: str) -> Callable[[World], None]:
    """Created (what the daemon stored), then started through the gateway (what the process holds)."""

    def vector(world: World) -> None:
        h = world.h
        name, proc = _create_cli(world, "--cap-add", cap)
        info = find(h, name)
        try:
            if info is None:
                assert_cli_sentence(proc)
                return
            wanted = set(CAPS) if cap == "ALL" else {cap}
            added = {c.upper().removeprefix("CAP_") for c in info["HostConfig"].get("CapAdd") or []}
            assert not added & (wanted | {"ALL"}), f"DANGEROUS: the daemon stored CapAdd {sorted(added)}"
            out = h.probe(name, "grep -E '^Cap(Eff|Bnd)' /proc/self/status")
            if out is not None:
                eff, bnd = caps_of(out, "CapEff"), caps_of(out, "CapBnd")
                assert not eff & wanted, f"DANGEROUS: effective capabilities {eff & wanted}"
                assert not bnd & wanted, f"DANGEROUS: the bounding set keeps {bnd & wanted}"
        finally:
            drop(h, name)

    return vector


def _nnp_false(world: World) -> None:
    name, proc = _run(
        world, "--security-opt", "no-new-privileges:false", cmd=("grep", "NoNewPrivs", "/proc/self/status")
    )
    try:
        if proc.returncode != 0 and world.h.stored(name) is None:
            assert_cli_sentence(proc)
            return
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["NoNewPrivs:", "1"], f"DANGEROUS: {proc.stdout}"
    finally:
        drop(world.h, name)


def _exec_user(*flags: str) -> Callable[[World], None]:
    def vector(world: World) -> None:
        proc = world.h.cli(A, "exec", *flags, world.box, "sh", "-c", "id -u; grep CapEff /proc/self/status")
        if proc.returncode != 0:
            assert_cli_sentence(proc)
            return
        lines = proc.stdout.split()
        assert lines[0] == str(world.uid), f"DANGEROUS: exec {' '.join(flags)} ran as uid {lines[0]}"
        assert not caps_of(proc.stdout, "CapEff") & {"SYS_ADMIN", "SETUID", "MKNOD"}, proc.stdout

    return vector


def _host_run(world: World, path: Path) -> str:
    """As atk1 on the host: run ``path -p -c 'id -u'`` (bash keeps a setuid euid with -p)."""
    proc = world.h.run_as(A, [str(path), "-p", "-c", "id -u"], timeout=30)
    return proc.stdout.strip()


def _in_box(world: World, script: str) -> subprocess.CompletedProcess:
    """atk1 runs ``script`` in their own container through the gateway (exec, the container's user)."""
    return world.h.cli(A, "exec", world.box, "sh", "-c", script)


def _assert_host_clean(world: World, planted: list) -> None:
    gained = world.h.host_gained(A)
    assert not gained, f"DANGEROUS: the attacker gained on the host: {gained}"
    for path in planted:
        if path.exists() and os.access(path, os.X_OK):
            out = _host_run(world, path)
            assert out != "0", f"DANGEROUS: {path} gives uid 0 on the host"


def _setuid_shell(world: World) -> None:
    _in_box(world, "cp /bin/bash /h/x && chmod 4755 /h/x")
    _assert_host_clean(world, [world.scratch / "x"])


def _setuid_chown_existing(world: World) -> None:
    shutil.copy("/bin/bash", world.scratch / "y")
    os.chown(world.scratch / "y", world.uid, world.gid)
    _in_box(world, "chown 0:0 /h/y; chmod 6755 /h/y")
    _assert_host_clean(world, [world.scratch / "y"])


def _setgid_shadow(world: World) -> None:
    _in_box(world, "cp /bin/bash /h/g && chgrp 42 /h/g && chmod 2755 /h/g")
    _assert_host_clean(world, [world.scratch / "g"])


def _mknod(kind: str, major: int, minor: int) -> Callable[[World], None]:
    def vector(world: World) -> None:
        _in_box(world, f"mknod /h/node {kind} {major} {minor}; chmod 666 /h/node")
        _assert_host_clean(world, [])

    return vector


def _tar(*entries: tarfile.TarInfo, data: Optional[dict] = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info in entries:
            payload = (data or {}).get(info.name)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0, size: int = 0, dev=(0, 0)):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.size = kind, mode, uid, gid, size
    info.devmajor, info.devminor = dev
    return info


BASH = Path("/bin/bash").read_bytes()


def _archive(what: str) -> tuple[bytes, str]:
    if what == "setuid_root":
        return _tar(_entry("su", tarfile.REGTYPE, 0o4755, size=len(BASH)), data={"su": BASH}), "su"
    if what == "setgid_root":
        return _tar(_entry("sg", tarfile.REGTYPE, 0o2755, size=len(BASH)), data={"sg": BASH}), "sg"
    if what == "block_device":
        return _tar(_entry("disk", tarfile.BLKTYPE, 0o666, dev=(8, 0))), "disk"
    if what == "char_device":
        return _tar(_entry("mem", tarfile.CHRTYPE, 0o666, dev=(1, 1))), "mem"
    if what == "fifo":
        return _tar(_entry("pipe", tarfile.FIFOTYPE, 0o666)), "pipe"
    raise AssertionError(what)


def _put_archive(what: str, via: str = "raw") -> Callable[[World], None]:
    def vector(world: World) -> None:
        data, entry = _archive(what)
        target = world.scratch / entry
        if via == "raw":
            status, _hd, answer = world.h.api(
                A,
                "PUT",
                f"/containers/{world.box}/archive?path=/h",
                data,
                headers={"Content-Type": "application/x-tar"},
            )
            if status >= 400:
                assert_sentence(status, answer)
        else:
            proc = subprocess.run(
                [
                    "runuser",
                    "-u",
                    A,
                    "--",
                    "env",
                    f"DOCKER_HOST={world.h.host}",
                    f"HOME={world.h.home(A)}",
                    DEBIAN_DOCKER_BIN if via == "cli_debian" else DOCKER_BIN,
                    "cp",
                    "-",
                    f"{world.box}:/h",
                ],
                input=data,
                capture_output=True,
                timeout=60,
                check=False,
            )
            if proc.returncode != 0:
                assert_cli_sentence(
                    subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.decode(errors="replace"))
                )
        _assert_host_clean(world, [target] if what.startswith("set") else [])
        if os.path.lexists(target):
            st = os.lstat(target)
            assert what not in ("block_device", "char_device", "fifo"), f"{what} entry was extracted (policy: refused)"
            assert st.st_uid == world.uid, f"extracted {entry} is owned by uid {st.st_uid}, not the caller"
            assert not st.st_mode & 0o6000, f"extracted {entry} kept mode {oct(st.st_mode)}"

    return vector


C2_VECTORS = {
    "run_u_0": lambda w: _ran_as_caller_or_refused(w, "-u", "0"),
    "run_u_root": lambda w: _ran_as_caller_or_refused(w, "-u", "root"),
    "run_user_0_0": lambda w: _ran_as_caller_or_refused(w, "--user", "0:0"),
    "run_u_victim_uid": lambda w: _ran_as_caller_or_refused(w, "-u", str(w.h.uid(VICTIM))),
    "run_debian_cli_u_0": lambda w: _ran_as_caller_or_refused_debian(w),  # pylint: disable=unnecessary-lambda
    "image_user_root": lambda w: _ran_as_caller_or_refused(w, image=w.h.image_with("USER root")),
    "group_add_0": _group_add("0"),
    "group_add_disk": _group_add("disk"),
    "group_add_shadow": _group_add("shadow"),
    "group_add_victim_group": _group_add("victim"),
    "nnp_false": _nnp_false,
    "cap_add_setuid": _cap_add("SETUID"),
    "cap_add_mknod": _cap_add("MKNOD"),
    "cap_add_sys_admin": _cap_add("SYS_ADMIN"),
    "cap_add_all": _cap_add("ALL"),
    "exec_u_root": _exec_user("-u", "root"),
    "exec_u_0_0": _exec_user("-u", "0:0"),
    "exec_privileged": _exec_user("--privileged"),
    "setuid_shell_via_home_bind": _setuid_shell,
    "setuid_chown_own_file_in_home_bind": _setuid_chown_existing,
    "setgid_shadow_via_home_bind": _setgid_shadow,
    "mknod_host_disk_in_home_bind": _mknod("b", 8, 0),
    "mknod_dev_mem_in_home_bind": _mknod("c", 1, 1),
    "cp_archive_setuid_root_file": _put_archive("setuid_root"),
    "cp_archive_setgid_root_file": _put_archive("setgid_root"),
    "cp_archive_block_device": _put_archive("block_device"),
    "cp_archive_char_device": _put_archive("char_device"),
    "cp_archive_fifo": _put_archive("fifo"),
    "cp_cli_stdin_setuid_root_file": _put_archive("setuid_root", via="cli"),
    "cp_debian_cli_stdin_block_device": _put_archive("block_device", via="cli_debian"),
}


def _ran_as_caller_or_refused_debian(world: World) -> None:
    name, proc = _run(world, "-u", "0", debian=True)
    try:
        if proc.returncode != 0 and world.h.stored(name) is None:
            assert_cli_sentence(proc)
            return
        assert proc.stdout.strip() == str(world.uid), f"DANGEROUS: ran as uid {proc.stdout.strip()}"
    finally:
        drop(world.h, name)


@pytest.mark.parametrize("what", list(C2_VECTORS))
def test_c2_container_root_is_never_host_root(world, what):
    C2_VECTORS[what](world)


# ---------------------------------------------------------------------------------------------
# C3: mount sources


def _probe_sees_host(world: World, name: str, path: str) -> None:
    """Start ``name`` through the gateway; it must not see the host marker or any canary under ``path``."""
    out = world.h.probe(
        name,
        f"cat {path}{world.marker_path} {path}/root/ds01-canary {path}/home/{VICTIM}/secret "
        f"{path}/tmp{world.marker_path} 2>/dev/null; true",
    )
    if out is None:
        return
    assert world.marker not in out, f"DANGEROUS: the container saw the host's / at {path}: {out[:200]}"
    assert not world.h.leaks(out), f"DANGEROUS: the container read {world.h.leaks(out)}"


def _create_cli(world: World, *args: str) -> tuple[str, subprocess.CompletedProcess]:
    name = world.h.name("c3")
    proc = world.h.cli(
        A, "create", "--name", name, "--label", world.h.label, "--network", "none", *args, IMAGE, "sleep", "300"
    )
    return name, proc


def _judge_cli_create(world: World, name: str, proc: subprocess.CompletedProcess, probe_path: str = "") -> None:
    h = world.h
    info = find(h, name)
    try:
        if info is None:
            assert_cli_sentence(proc)
            return
        bad = bad_mounts(info, h)
        assert not bad, f"DANGEROUS: stored mounts {bad}"
        if probe_path:
            _probe_sees_host(world, name, probe_path)
    finally:
        drop(h, name)


def _bind(src: Callable[[World], str], dst: str = "/s", mode: str = "") -> Callable[[World], None]:
    def vector(world: World) -> None:
        name, proc = _create_cli(world, "-v", f"{src(world)}:{dst}{mode}")
        _judge_cli_create(world, name, proc)

    return vector


def _swap(depth: str) -> Callable[[World], None]:
    """Create with a real dir in the home, swap it (or its parent) for a symlink to /, start through the gateway."""

    def vector(world: World) -> None:
        h = world.h
        d = world.fresh("sw")
        if depth == "leaf":
            src = d / "leaf"
            link_at, link_to, probe = src, "/", "/s"
        else:
            src = d / "p" / "var"
            link_at, link_to, probe = d / "p", "/", "/s/.."
        os.makedirs(src)
        subprocess.run(["chown", "-R", f"{world.uid}:{world.gid}", str(d)], check=True)
        name, proc = _create_cli(world, "-v", f"{src}:/s")
        try:
            if find(h, name) is None:
                assert_cli_sentence(proc)
                return

            def swap() -> bytes:
                os.rename(link_at, str(link_at) + ".old")
                os.symlink(link_to, link_at)
                return b""

            as_user(A, swap)
            if depth == "leaf":
                _probe_sees_host(world, name, probe)
            else:  # the source now is /var: the marker is /var/tmp/... == /s/tmp/...
                out = h.probe(name, f"cat /s/tmp/{Path(world.marker_path).name} 2>/dev/null; true")
                assert out is None or world.marker not in out, f"DANGEROUS: the container got the host's /var: {out}"
        finally:
            drop(h, name)

    return vector


def _volume_opts(opts: dict, key: str = "DriverOpts", swap: bool = False) -> Callable[[World], None]:
    def vector(world: World) -> None:
        h = world.h
        vname = h.name("vol")
        real_opts = dict(opts)
        src = None
        if swap:
            src = world.fresh("vsrc")
            real_opts["device"] = str(src)
        body = body_of(("Name", vname), ("Driver", "local"), (key, real_opts), ("Labels", h.labels))
        status, _hd, answer = h.api(A, "POST", "/volumes/create", body)
        vol = h.volume(vname)
        try:
            if vol is None:
                assert_sentence(status, answer)
                return
            stored_opts = vol.get("Options") or {}
            if swap and stored_opts:

                def do_swap() -> bytes:
                    os.rename(src, str(src) + ".old")
                    os.symlink("/", src)
                    return b""

                as_user(A, do_swap)
                name = h.name("c3v")
                h.cli(A, "create", "--name", name, "--network", "none", "-v", f"{vname}:/s", IMAGE, "sleep", "300")
                try:
                    _probe_sees_host(world, name, "/s")
                finally:
                    drop(h, name)
            assert not stored_opts, f"DANGEROUS: a user's volume was stored with driver options {stored_opts}"
        finally:
            with contextlib.suppress(Exception):
                h.client.api.remove_volume(vname, force=True)

    return vector


def _raw_mounts(mounts: Callable[[World, str], list]) -> Callable[[World], None]:
    def vector(world: World) -> None:
        h = world.h
        name = h.name("c3m")
        vname = h.name("mvol")
        body = simple_body(name, h, {"Mounts": mounts(world, vname)})
        name, status, answer = h.create(A, body, name=name)
        try:
            vol = h.volume(vname)
            assert vol is None or not vol.get("Options"), f"DANGEROUS: volume stored with options {vol['Options']}"

            def danger(info: dict) -> Optional[str]:
                return "; ".join(bad_mounts(info, h)) or None

            info = find(h, name)
            if info is not None and danger(info) is None:
                _probe_sees_host(world, name, "/v")
            judge_create(h, name, status, answer, danger, must_refuse=False)
        finally:
            with contextlib.suppress(Exception):
                h.client.api.remove_volume(vname, force=True)

    return vector


def _victim_volume(world: World) -> None:
    name, proc = _create_cli(world, "-v", f"{world.victim_volume}:/v")
    info = find(world.h, name)
    try:
        if info is None:
            assert_cli_sentence(proc)
            return
        names = [m.get("Name") for m in info.get("Mounts") or []]
        assert world.victim_volume not in names, f"DANGEROUS: atk1's container mounts {VICTIM}'s volume"
    finally:
        drop(world.h, name)


def _victim_volume_mounts(world: World) -> None:
    h = world.h
    name = h.name("c3vv")
    body = simple_body(name, h, {"Mounts": [{"Type": "volume", "Source": world.victim_volume, "Target": "/v"}]})
    name, status, answer = h.create(A, body, name=name)
    info = find(h, name)
    if info is not None:
        out = h.probe(name, "cat /v/secret 2>/dev/null; true")
        assert not h.leaks(out), f"DANGEROUS: read {VICTIM}'s volume: {out}"

    def danger(info: dict) -> Optional[str]:
        names = [m.get("Name") for m in info.get("Mounts") or []]
        return f"mounts {VICTIM}'s volume" if world.victim_volume in names else None

    judge_create(h, name, status, answer, danger, must_refuse=False)


def _symlink_in_home(target: str, sub: str = "") -> Callable[[World], str]:
    def src(world: World) -> str:
        link = world.scratch / f"ln-{secrets.token_hex(3)}"
        os.symlink(target, link)
        os.lchown(link, world.uid, world.gid)
        return f"{link}{sub}"

    return src


C3_VECTORS = {
    "swap_bind_source_for_symlink_to_root": _swap("leaf"),
    "swap_bind_parent_for_symlink_to_root": _swap("parent"),
    "local_volume_o_bind_device_root": _volume_opts({"type": "none", "o": "bind", "device": "/"}),
    "local_volume_o_bind_in_home_swapped_later": _volume_opts({"type": "none", "o": "bind"}, swap=True),
    "local_volume_driveropts_lowercase_key": _volume_opts({"type": "none", "o": "bind", "device": "/"}, "driveropts"),
    "local_volume_driveropts_long_s_key": _volume_opts({"type": "none", "o": "bind", "device": "/"}, "DriverOpt\u017f"),
    "local_volume_type_nfs": _volume_opts({"type": "nfs", "o": "addr=127.0.0.1", "device": ":/"}),
    "local_volume_type_tmpfs_o_bind_device_root": _volume_opts({"type": "tmpfs", "o": "bind", "device": "/"}),
    "bind_dotdot_to_victim_home": _bind(lambda w: f"{w.h.home(A)}/../{VICTIM}"),
    "bind_dotdot_to_root": _bind(lambda w: f"{w.h.home(A)}/../.."),
    "bind_dotdot_inside_scratch": _bind(lambda w: f"{w.scratch}/../../../etc"),
    "bind_docker_socket": _bind(lambda w: REAL_SOCKET),
    "bind_gateway_socket": _bind(lambda w: w.h.socket),
    "bind_run_ds01": _bind(lambda w: "/run/ds01"),
    "bind_proc": _bind(lambda w: "/proc"),
    "bind_etc_via_symlink_in_home": _bind(_symlink_in_home("/etc")),
    "bind_root_via_symlinked_component": _bind(_symlink_in_home("/", "/etc")),
    "bind_victim_home_via_symlink": _bind(_symlink_in_home(f"/home/{VICTIM}")),
    "bind_victim_home": _bind(lambda w: f"/home/{VICTIM}"),
    "bind_data_prefix_read_write": _bind(lambda w: str(w.h.data)),
    "mounts_bind_propagation_rshared": _raw_mounts(
        lambda w, v: [
            {"Type": "bind", "Source": str(w.scratch), "Target": "/v", "BindOptions": {"Propagation": "rshared"}}
        ]
    ),
    "mounts_bind_root_readonly": _raw_mounts(
        lambda w, v: [{"Type": "bind", "Source": "/", "Target": "/v", "ReadOnly": True}]
    ),
    "mounts_volume_driverconfig_bind_root": _raw_mounts(
        lambda w, v: [
            {
                "Type": "volume",
                "Source": v,
                "Target": "/v",
                "VolumeOptions": {
                    "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}
                },
            }
        ]
    ),
    "mounts_volume_driverconfig_lowercase_options": _raw_mounts(
        lambda w, v: [
            {
                "Type": "volume",
                "Source": v,
                "Target": "/v",
                "volumeoptions": {
                    "driverconfig": {"name": "local", "options": {"type": "none", "o": "bind", "device": "/"}}
                },
            }
        ]
    ),
    "victim_named_volume_via_v": _victim_volume,
    "victim_named_volume_via_mounts": _victim_volume_mounts,
}


@pytest.mark.parametrize("what", list(C3_VECTORS))
def test_c3_mount_sources(world, what):
    C3_VECTORS[what](world)


# ---------------------------------------------------------------------------------------------
# C4 (create side): old API versions, start with a body


def _old_version_create(version: str) -> Callable[[World], None]:
    def vector(world: World) -> None:
        h = world.h
        name = h.name("c4")
        body = body_of(
            *base_config(),
            ("Labels", base_labels(name, h)),
            ("HostConfig", None),
            ("NetworkMode", "none"),
            ("Binds", ["/:/host"]),
            ("Privileged", True),
        )
        status, _hd, answer = h.raw(A, "POST", f"/{version}/containers/create?name={name}", body)

        def danger(info: dict) -> Optional[str]:
            return _is("Privileged", True)(info) or ("; ".join(bad_mounts(info, h)) or None)

        judge_create(h, name, status, answer, danger, must_refuse=True, why=f"C4: API {version} is refused")

    return vector


def _start_with_body(version: str) -> Callable[[World], None]:
    def vector(world: World) -> None:
        h = world.h
        name = h.name("c4s")
        proc = h.cli(A, "create", "--name", name, "--network", "none", IMAGE, "sleep", "300")
        assert proc.returncode == 0, proc.stderr
        try:
            body = {"Binds": ["/:/host"], "Privileged": True, "PidMode": "host", "CapAdd": ["ALL"]}
            prefix = f"/{version}" if version else ""
            status, _hd, answer = h.raw(A, "POST", f"{prefix}/containers/{name}/start", body)
            info = h.stored(name)
            hc = info["HostConfig"]
            assert not hc.get("Privileged") and hc.get("PidMode") != "host", f"DANGEROUS: start applied {hc}"
            assert not bad_mounts(info, h), f"DANGEROUS: start added mounts {bad_mounts(info, h)}"
            assert not _caps(info), _caps(info)
            if info["State"]["Running"]:
                exec_id = h.client.api.exec_create(info["Id"], ["sh", "-c", f"cat /host{world.marker_path}; true"])
                out = h.client.api.exec_start(exec_id["Id"]).decode(errors="replace")
                assert world.marker not in out, f"DANGEROUS: the container got the host's /: {out}"
            assert status >= 400, f"C4: a start with a body is refused (answer {status})"
            assert_sentence(status, answer)
        finally:
            drop(h, name)

    return vector


C4_VECTORS = {
    "create_api_v1_23_hostconfig_null_top_level_binds": _old_version_create("v1.23"),
    "create_api_v1_18_top_level_privileged": _old_version_create("v1.18"),
    "create_api_v1_12": _old_version_create("v1.12"),
    "start_with_body_v1_23": _start_with_body("v1.23"),
    "start_with_body_v1_19": _start_with_body("v1.19"),
    "start_with_body_v1_12": _start_with_body("v1.12"),
}


@pytest.mark.parametrize("what", list(C4_VECTORS))
def test_c4_create_side_routes(world, what):
    C4_VECTORS[what](world)


# ---------------------------------------------------------------------------------------------
# C5: every way of naming a GPU goes through the allocator


def _gpu_raw(host: Optional[dict] = None, image: Optional[str] = None, **config: Any) -> Callable[[World], None]:
    def vector(world: World) -> None:
        h = world.h
        name = h.name("c5")
        host_ = json.loads(json.dumps(host or {}).replace("{scratch}", str(world.scratch)))
        if image:
            body = json.loads(simple_body(name, h, host_, **config))
            body["Image"] = image if image != "nvidia-env" else world_images(world)["nvidia-env"]
            body = json.dumps(body).encode()
        else:
            body = simple_body(name, h, host_, **config)
        name, status, answer = h.create(A, body, name=name)
        judge_create(h, name, status, answer, gpu_bypass, must_refuse=False)

    return vector


_IMAGES: dict = {}


def world_images(world: World) -> dict:
    if "nvidia-env" not in _IMAGES:
        _IMAGES["nvidia-env"] = world.h.image_with("ENV NVIDIA_VISIBLE_DEVICES=all")
    return _IMAGES


def _gpus_all_cli(world: World) -> None:
    name, proc = _create_cli(world, "--gpus", "all")
    info = find(world.h, name)
    try:
        if info is None:
            assert_cli_sentence(proc)
            return
        # --gpus all from a user is "the GPUs I may have" (issue 16): exactly the allocator's grant
        assert gpu_bypass(info) is None, f"DANGEROUS: {gpu_bypass(info)}"
    finally:
        drop(world.h, name)


def _image_env(world: World) -> None:
    h = world.h
    name = h.name("c5i")
    proc = h.cli(A, "create", "--name", name, "--network", "none", world_images(world)["nvidia-env"], "sleep", "1")
    info = find(h, name)
    try:
        if info is None:
            assert_cli_sentence(proc)
            return
        assert gpu_bypass(info) is None, f"DANGEROUS: {gpu_bypass(info)}"
    finally:
        drop(h, name)


C5_VECTORS = {
    "devreq_caps_nvidia_compute_without_gpu": _gpu_raw(
        {"DeviceRequests": [{"Driver": "", "Count": 1, "Capabilities": [["nvidia", "compute"]]}]}
    ),
    "devreq_driver_nvidia_count_all": _gpu_raw(
        {"DeviceRequests": [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}]}
    ),
    "devreq_driver_nvidia_no_capabilities": _gpu_raw({"DeviceRequests": [{"Driver": "nvidia", "Count": 2}]}),
    "devreq_driver_cdi_all": _gpu_raw({"DeviceRequests": [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]}]}),
    "devreq_uuid_of_a_gpu": _gpu_raw(
        {"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": [GPU_UUIDS[1], MIG_UUIDS[0]], "Capabilities": [["gpu"]]}]}
    ),
    "devices_cdi_name": _gpu_raw(
        {"Devices": [{"PathOnHost": "nvidia.com/gpu=all", "PathInContainer": "", "CgroupPermissions": "rwm"}]}
    ),
    "devices_dev_nvidia0": _gpu_raw(
        {"Devices": [{"PathOnHost": "/dev/nvidia0", "PathInContainer": "/dev/nvidia0", "CgroupPermissions": "rwm"}]}
    ),
    "devices_dev_nvidiactl": _gpu_raw(
        {"Devices": [{"PathOnHost": "/dev/nvidiactl", "PathInContainer": "/dev/x", "CgroupPermissions": "rw"}]}
    ),
    "device_cgroup_rule_195": _gpu_raw({"DeviceCgroupRules": ["c 195:* rwm"]}),
    # dockerd here knows no nvidia runtime and refuses it itself: this one bites on GPU hosts only
    "runtime_nvidia": _gpu_raw({"Runtime": "nvidia"}),
    "env_nvidia_all": _gpu_raw(Env=["NVIDIA_VISIBLE_DEVICES=all"]),
    "env_nvidia_index_0": _gpu_raw(Env=["NVIDIA_VISIBLE_DEVICES=0"]),
    "env_nvidia_uuid": _gpu_raw(Env=[f"NVIDIA_VISIBLE_DEVICES={GPU_UUIDS[1]}"]),
    "env_nvidia_void_then_all": _gpu_raw(Env=["NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_VISIBLE_DEVICES=all"]),
    "image_env_nvidia_all_raw": _gpu_raw(image="nvidia-env"),
    "image_env_nvidia_all_cli": _image_env,
    "bind_into_nvidia_container_devices": _gpu_raw({"Binds": ["{scratch}:" + NVIDIA_DIR + "/all"]}),
    "tmpfs_into_nvidia_container_devices": _gpu_raw({"Tmpfs": {f"{NVIDIA_DIR}/{GPU_UUIDS[0]}": ""}}),
    "mounts_tmpfs_into_nvidia_container_devices": _gpu_raw(
        {"Mounts": [{"Type": "tmpfs", "Target": f"{NVIDIA_DIR}/all"}]}
    ),
    "gpus_all_cli": _gpus_all_cli,
}


@pytest.mark.parametrize("what", list(C5_VECTORS))
def test_c5_every_gpu_name_goes_through_the_allocator(world, what):
    C5_VECTORS[what](world)


# ---------------------------------------------------------------------------------------------
# legitimate work still passes


def _legit_run_it(world: World) -> None:
    h = world.h
    cmd = (
        f"DOCKER_HOST={h.host} {DOCKER_BIN} run -it --rm --name {h.name('it')} --network none {IMAGE} "
        "sh -c 'tty; id -u; read line; echo got:$line'"
    )
    proc = subprocess.run(
        ["runuser", "-u", A, "--", "script", "-qec", cmd, "/dev/null"],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(h.home(A))},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "/dev/pts/" in proc.stdout and "got:hello" in proc.stdout


def _legit_exec(world: World) -> None:
    proc = world.h.cli(A, "exec", world.box, "cat", "/etc/hostname")
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr


def _legit_exec_own_uid(world: World) -> None:
    proc = world.h.cli(A, "exec", "-u", f"{world.uid}:{world.gid}", world.box, "id", "-u")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(world.uid)


def _legit_logs(world: World) -> None:
    h = world.h
    name = h.name("logs")
    proc = h.cli(A, "run", "--name", name, "--network", "none", IMAGE, "sh", "-c", "echo line1; echo line2")
    try:
        assert proc.returncode == 0, proc.stderr
        logs = h.cli(A, "logs", name)
        assert logs.returncode == 0 and logs.stdout.split() == ["line1", "line2"], logs.stderr
    finally:
        drop(h, name)


def _plain_box(world: World) -> str:
    """A running container of the attacker's with no host directory mounted (docker cp is refused
    on containers that mount host directories: the daemon would read and write them as root)."""
    name = world.h.name("cpbox")
    proc = world.h.cli(A, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "infinity")
    assert proc.returncode == 0, proc.stderr
    return name


def _legit_cp_out(world: World) -> None:
    box = _plain_box(world)
    try:
        out = world.scratch / "hostname.out"
        proc = world.h.cli(A, "cp", f"{box}:/etc/hostname", str(out))
        assert proc.returncode == 0, proc.stderr
        assert out.read_text().strip() and out.stat().st_uid == world.uid
    finally:
        drop(world.h, box)


def _legit_cp_in(world: World) -> None:
    src = world.h.home(A) / f"{world.h.prefix}in.txt"
    src.write_text("copied in\n")
    os.chown(src, world.uid, world.gid)
    box = _plain_box(world)
    try:
        proc = world.h.cli(A, "cp", str(src), f"{box}:/tmp/in.txt")
        assert proc.returncode == 0, proc.stderr
        stat = world.h.cli(A, "exec", box, "stat", "-c", "%u %s", "/tmp/in.txt")
        assert stat.returncode == 0, stat.stderr
        assert stat.stdout.split() == [str(world.uid), str(len("copied in\n"))], stat.stdout
    finally:
        src.unlink()
        drop(world.h, box)


def _legit_cp_refused_with_host_directories(world: World) -> None:
    proc = world.h.cli(A, "cp", f"{world.box}:/etc/hostname", "-")
    assert proc.returncode != 0
    assert "docker exec" in proc.stderr  # the sentence says what to do instead


def _legit_named_volume(world: World) -> None:
    h = world.h
    vol = h.name("own")
    assert h.cli(A, "volume", "create", vol).returncode == 0
    try:
        name = h.name("vol")
        proc = h.cli(A, "run", "--rm", "--name", name, "--network", "none", "-v", f"{vol}:/v", IMAGE, "sh", "-c",
                     "echo ok > /v/f && cat /v/f")  # fmt: skip
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    finally:
        with contextlib.suppress(Exception):
            h.client.api.remove_volume(vol, force=True)


def _legit_home_bind_rw(world: World) -> None:
    h = world.h
    d = world.fresh("rw")
    proc = h.cli(A, "run", "--rm", "--name", h.name("rw"), "--network", "none", "-v", f"{d}:/w", "-v",
                 f"{h.data}:/data:ro", IMAGE, "sh", "-c", "cat /data/shared.txt; echo hi > /w/f")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["shared"]
    assert (d / "f").read_text() == "hi\n"
    assert (d / "f").stat().st_uid == world.uid, "a file the container wrote in the home is not the caller's"


def _legit_gpus_1(world: World) -> None:
    h = world.h
    name = h.name("gpu")
    proc = h.cli(A, "create", "--name", name, "--network", "none", "--gpus", "1", IMAGE)
    try:
        assert proc.returncode == 0, proc.stderr
        info = h.stored(name)
        requests = info["HostConfig"]["DeviceRequests"]
        assert len(requests) == 1 and len(requests[0]["DeviceIDs"]) == 1, requests
        assert requests[0]["DeviceIDs"][0] in GPU_UUIDS + MIG_UUIDS
        assert info["Config"]["Labels"]["ds01.gpu.uuids"] == requests[0]["DeviceIDs"][0]
        assert gpu_bypass(info) is None
    finally:
        drop(h, name)


def _legit_sdk_run(world: World) -> None:
    h = world.h
    name = h.name("sdk")
    sock = h.socket
    labels = h.labels

    def go() -> bytes:
        import docker

        client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41")
        try:
            return client.containers.run(
                IMAGE, ["sh", "-c", "echo sdk-ok; id -u"], name=name, remove=True, network_mode="none", labels=labels
            )
        finally:
            client.close()

    try:
        out = as_user(A, go, timeout=120).decode().split()
    finally:
        drop(h, name)
    assert out == ["sdk-ok", str(world.uid)]


def _legit_compose(world: World) -> None:
    h = world.h
    project = world.fresh("compose")
    (project / "docker-compose.yml").write_text(
        textwrap.dedent(
            f"""
            version: "2.4"
            services:
              app:
                image: {IMAGE}
                command: sleep infinity
                network_mode: none
            """
        )
    )
    os.chown(project / "docker-compose.yml", world.uid, world.gid)
    pname = h.name("cmp")  # compose keeps [-_a-z0-9]: its containers start with the harness prefix
    up = h.run_as(A, ["docker-compose", "-p", pname, "up", "-d"], cwd=str(project), timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        made = h.client.api.containers(all=True, filters={"label": f"com.docker.compose.project={pname}"})
        assert len(made) == 1 and made[0]["Labels"]["ds01.user"] == A
        down = h.run_as(A, ["docker-compose", "-p", pname, "down"], cwd=str(project), timeout=120)
        assert down.returncode == 0, down.stderr
        assert not h.client.api.containers(all=True, filters={"label": f"com.docker.compose.project={pname}"})
    finally:
        for c in h.client.api.containers(all=True, filters={"label": f"com.docker.compose.project={pname}"}):
            h.remove(c["Id"])


def _legit_debian_cli_run(world: World) -> None:
    name, proc = _run(world, cmd=("echo", "debian-ok"), debian=True)
    drop(world.h, name)
    assert proc.returncode == 0 and proc.stdout.strip() == "debian-ok", proc.stderr


def _legit_image_env_void(world: World) -> None:
    h = world.h
    name = h.name("void")
    proc = h.cli(A, "create", "--name", name, "--network", "none", "-e", "NVIDIA_VISIBLE_DEVICES=void",
                 world_images(world)["nvidia-env"], "true")  # fmt: skip
    try:
        assert proc.returncode == 0, proc.stderr
        assert gpu_bypass(h.stored(name)) is None
    finally:
        drop(h, name)


def _legit_canonical_create_is_stamped(world: World) -> None:
    h = world.h
    name = h.name("stamp")
    name, status, answer = h.create(A, simple_body(name, h), name=name)
    try:
        assert status == 201, answer
        info = h.stored(name)
        assert info["Config"]["Labels"]["ds01.user"] == A
        assert info["Config"]["User"] == f"{world.uid}:{world.gid}", info["Config"]["User"]
        assert {"MKNOD", "SETUID", "SETGID"} <= {
            c.upper().removeprefix("CAP_") for c in info["HostConfig"]["CapDrop"] or []
        }
        assert "no-new-privileges" in (info["HostConfig"]["SecurityOpt"] or [])
        assert env_value(info, "NVIDIA_VISIBLE_DEVICES") == "void" and not info["HostConfig"]["DeviceRequests"]
        out = h.probe(name, "id -u")
        assert out is not None and out.split()[0] == str(world.uid), out
    finally:
        drop(h, name)


LEGIT = {
    "run_it_create_start_attach": _legit_run_it,
    "exec": _legit_exec,
    "exec_as_own_uid": _legit_exec_own_uid,
    "logs": _legit_logs,
    "cp_out": _legit_cp_out,
    "cp_in_keeps_caller_as_owner": _legit_cp_in,
    "cp_with_host_directories_says_what_to_do": _legit_cp_refused_with_host_directories,
    "own_named_volume": _legit_named_volume,
    "own_home_bind_rw_and_data_ro": _legit_home_bind_rw,
    "gpus_1_created_not_started": _legit_gpus_1,
    "docker_sdk_containers_run": _legit_sdk_run,
    "docker_compose_up_down": _legit_compose,
    "debian_cli_run": _legit_debian_cli_run,
    "image_gpu_env_with_void_request": _legit_image_env_void,
    "canonical_create_is_stamped_and_runs_as_caller": _legit_canonical_create_is_stamped,
}


@pytest.mark.parametrize("what", list(LEGIT))
def test_legitimate_work_still_passes(world, what):
    LEGIT[what](world)


def test_nothing_was_gained_and_the_gateway_survived(world):
    """After the whole corpus: the attacker holds nothing on the host, and the gateway still answers."""
    h = world.h
    assert not h.host_gained(A), h.host_gained(A)
    assert h.proc.poll() is None, "the gateway died during the corpus"
    status, _hd, body = h.api(A, "GET", "/_ping")
    assert (status, body) == (200, b"OK")
