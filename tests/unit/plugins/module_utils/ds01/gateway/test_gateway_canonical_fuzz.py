"""The gateway's canonical body decoder, fuzzed against the real Go ``encoding/json``.

dockerd reads a create body with Go's decoder (case-insensitive field names with long-s and
Kelvin-sign folding, last duplicate wins, nested objects given twice are merged, ``"HostConfig": null`` makes
it read deprecated top-level fields). The oracle in ``tests/fuzz/go_oracle`` is that decoder: moby
20.10's ``ContainerConfigWrapper``, ``getHostConfig`` and a representative subset of its structs,
compiled with the machine's Go. Every generated body is checked for:

(b) either ``canonical.decode`` refuses it, or what the daemon decodes from what the gateway
    forwards (``canonical.encode(model)``) equals what it would have decoded from the original,
    and the model (what the policy reads) agrees with Go on every field;
(c) whenever Go reads the body differently from a naive exact-spelling reading (``json.loads`` and
    exact key lookups: what the old gateway did), ``canonical.decode`` refuses it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import apispec, canonical

REPO_ROOT = Path(__file__).resolve().parents[6]
ORACLE_SRC = REPO_ROOT / "tests" / "fuzz" / "go_oracle"
SHAPE = "containers.create"
EXAMPLES = 600

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# -- the oracle ---------------------------------------------------------------------------------


class GoError:
    """Go's decoder refused the body (dockerd answers 400): equal to any other refusal."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GoError)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"GoError({self.message!r})"


class GoOracle:
    """One long-lived oracle process: a base64 body per line in, one JSON line out."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.schema = json.loads(subprocess.run([str(binary), "-schema"], check=True, capture_output=True).stdout)

    def decode(self, raw: bytes) -> object:
        """What dockerd's decodeContainerConfig makes of ``raw``: {Config, HostConfig, ...} or GoError."""
        self.proc.stdin.write(base64.b64encode(raw) + b"\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if "oracle_error" in reply:
            raise AssertionError(f"the oracle could not read its input: {reply['oracle_error']}")
        if "error" in reply:
            return GoError(reply["error"])
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _build_oracle(out_dir: Path) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "the Go toolchain is missing: the canonical-decoder fuzz test compiles a Go encoding/json oracle; "
            "install it with scripts/system-deps.sh (Debian package golang-go) or `make test`"
        )
    cache = REPO_ROOT / ".cache" / "go-build"
    cache.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GO111MODULE": "on",
        "GOCACHE": str(cache),
        "GOPATH": str(out_dir / "gopath"),
    }
    binary = out_dir / "go_oracle"
    result = subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=ORACLE_SRC, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"building the Go oracle in {ORACLE_SRC} failed:\n{result.stderr}")
    return binary


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> GoOracle:
    proc = GoOracle(_build_oracle(tmp_path_factory.mktemp("go_oracle")))
    yield proc
    proc.close()


# -- JSON text with duplicates and raw tokens ---------------------------------------------------


class Raw:
    """A literal JSON token (or deliberately broken text), written as is."""

    def __init__(self, text: bytes) -> None:
        self.text = text


class Obj:
    """A JSON object as ordered (key token, value) pairs: duplicates allowed."""

    def __init__(self, pairs: list) -> None:
        self.pairs = pairs


def ser(node: object) -> bytes:
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, Obj):
        return b"{" + b",".join(key + b":" + ser(value) for key, value in node.pairs) + b"}"
    if isinstance(node, list):
        return b"[" + b",".join(ser(item) for item in node) + b"]"
    return json.dumps(node, ensure_ascii=False).encode("utf-8", "surrogatepass")


def key_token(spelling: str, escape: frozenset = frozenset()) -> bytes:
    """``spelling`` as a JSON string, the characters at the indexes in ``escape`` as \\uXXXX."""
    out = []
    for i, ch in enumerate(spelling):
        out.append(f"\\u{ord(ch):04x}" if i in escape and ord(ch) < 0x10000 else json.dumps(ch)[1:-1])
    return ('"' + "".join(out) + '"').encode("utf-8")


# -- the generator ------------------------------------------------------------------------------

# Fields the policy reads (or that reach the host): drawn more often than the rest.
HOT = {
    "Privileged", "Binds", "Mounts", "CapAdd", "CapDrop", "Devices", "DeviceRequests", "DeviceCgroupRules",
    "SecurityOpt", "PidMode", "IpcMode", "UsernsMode", "NetworkMode", "CgroupParent", "Memory", "PidsLimit",
    "MaskedPaths", "ReadonlyPaths", "User", "Image", "Labels", "Env", "Cmd", "HostConfig", "Sysctls",
    "BindOptions", "Type", "Source", "Target", "ReadOnly", "Count", "DeviceIDs", "Capabilities", "Driver",
    "ShmSize", "NanoCpus", "CpuShares", "MemorySwap", "StopTimeout", "ConsoleSize", "BlkioWeight",
}  # fmt: skip

STRING_ALPHABET = st.sampled_from([*"abcXYZ019 /:=,._-", "\u017f", "\u212a", "\u00e9", "\u0000", "\U0001f600"])
UNKNOWN_KEYS = [
    "Privileged2", "Privilege", "Bind", "Privileg\u00e9d", "Priv\u0131leged", "PR\u0130VILEGED", "Bi\ufb00s",
    "Privileged ", " Privileged", "Privi\u200dleged", "\uff30rivileged", "Privileged\u0000", "X-Unknown", "",
]  # fmt: skip


class Gen:
    """Draws one adversarial body from the oracle's schema; ``tags`` records what it used."""

    def __init__(self, data, schema: dict, clean: bool) -> None:
        self.data = data
        self.structs = schema["structs"]
        self.deprecated = set(schema["deprecated_top_level"])
        self.clean = clean  # canonical spellings and well-typed values only
        self.tags: set = set()

    def draw(self, strategy):
        return self.data.draw(strategy)

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    # keys
    def spell(self, field: str) -> tuple:
        """A key token that Go reads as ``field`` (and what kind of spelling it is)."""
        if self.clean or self.chance(70):
            escape = (
                frozenset(self.draw(st.sets(st.integers(0, len(field) - 1), max_size=2)))
                if self.chance(10)
                else frozenset()
            )
            return key_token(field, escape), "canonical"
        how = self.draw(st.sampled_from(["lower", "upper", "flip", "fold"]))
        if how == "lower":
            spelled = field.lower()
        elif how == "upper":
            spelled = field.upper()
        elif how == "flip":
            flips = self.draw(st.lists(st.booleans(), min_size=len(field), max_size=len(field)))
            spelled = "".join(c.swapcase() if f else c for c, f in zip(field, flips))
        else:
            spelled = "".join(
                "\u017f" if c in "sS" and self.chance(60) else "\u212a" if c in "kK" and self.chance(60) else c
                for c in field
            )
        if spelled == field:
            return key_token(field), "canonical"
        tag = "fold-char" if ("\u017f" in spelled or "\u212a" in spelled) else "case"
        self.tags.add(tag)
        return key_token(spelled), tag

    def pick_fields(self, fields: list, most: int) -> list:
        hot = [f for f in fields if f in HOT]
        pool = fields + hot * 3
        return self.draw(st.lists(st.sampled_from(pool), max_size=most))

    # values
    def wrong(self):
        self.tags.add("wrong-type")
        return self.draw(
            st.sampled_from(
                [None, True, 1, -1, 1.5, "x", "", [], ["a"], Obj([]), Obj([(b'"a"', 1)]), [1], Raw(b"1.0"), {"": None}]
            )
        )

    def string(self):
        if not self.clean and self.chance(4):
            kind = self.draw(st.sampled_from(["invalid-utf8", "surrogate", "escape"]))
            self.tags.add(kind)
            return Raw({"invalid-utf8": b'"a\xffb"', "surrogate": b'"\\ud800x"', "escape": b'"\\u0061\\/"'}[kind])
        return self.draw(st.text(STRING_ALPHABET, max_size=6))

    def integer(self, unsigned: bool):
        if not self.clean and self.chance(25):
            kind = self.draw(st.sampled_from(["big-int", "float-int", "nan"]))
            self.tags.add(kind)
            pool = {
                "big-int": [b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616", b"1" + b"0" * 30],
                "float-int": [b"1.0", b"1e3", b"1E400", b"-0", b"0.5", b"-0.0"],
                "nan": [b"NaN", b"Infinity", b"-Infinity"],
            }[kind]
            return Raw(self.draw(st.sampled_from(pool)))
        if unsigned:
            return self.draw(st.one_of(st.integers(0, 9), st.integers(0, 2**64 - 1), st.sampled_from([65535, 65536])))
        return self.draw(st.one_of(st.integers(-9, 9), st.integers(-(2**63), 2**63 - 1)))

    def value(self, tspec: str, depth: int = 0):
        if not self.clean and self.chance(3):
            return self.wrong()
        if tspec.startswith("*"):
            if self.chance(15):
                return None
            return self.value(tspec[1:], depth)
        if tspec == "string":
            return self.string()
        if tspec == "bool":
            return self.draw(st.booleans())
        if tspec in ("int", "uint"):
            return self.integer(tspec == "uint")
        if tspec == "float":
            return self.draw(st.floats(allow_nan=False, allow_infinity=False, width=32))
        if tspec == "strslice":
            if self.chance(30):
                return self.string()
            return [self.string() for _unused in range(self.draw(st.integers(0, 3)))]
        if tspec == "set":
            keys = self.draw(st.lists(st.text(STRING_ALPHABET, max_size=4), max_size=3))
            return Obj([(key_token(k), Obj([])) for k in keys])
        if tspec.startswith("[]"):
            return [self.value(tspec[2:], depth + 1) for _unused in range(self.draw(st.integers(0, 3)))]
        if tspec.startswith("map["):
            keys = self.draw(st.lists(st.text(STRING_ALPHABET, max_size=4), max_size=3))
            if not self.clean and keys and self.chance(10):
                self.tags.add("dup-map-key")
                keys.append(keys[0])
            return Obj([(key_token(k), self.value(tspec[4:-1], depth + 1)) for k in keys])
        if tspec.startswith("["):
            size = int(tspec[1 : tspec.index("]")])
            count = size if self.clean else self.draw(st.integers(0, size + 1))
            return [self.value(tspec[tspec.index("]") + 1 :], depth + 1) for _unused in range(count)]
        return self.struct(tspec, depth)

    def struct(self, name: str, depth: int, fields: list | None = None) -> Obj:
        table = self.structs[name]
        fields = sorted(table) if fields is None else fields
        chosen = self.pick_fields(fields, 5 if depth == 0 else 3)
        pairs = []
        seen = set()
        for field in chosen:
            if field in seen and self.clean:
                continue
            if field in seen:
                self.tags.add("dup-exact")
            seen.add(field)
            key, _unused = self.spell(field)
            pairs.append((key, self.value(table[field], depth + 1)))
            if not self.clean and self.chance(8):
                # a twin after it: another spelling of the same field with another value
                twin, kind = self.spell(field)
                self.tags.add("twin" if kind != "canonical" else "dup-exact")
                pairs.append((twin, self.value(table[field], depth + 1)))
        if not self.clean and self.chance(10):
            self.tags.add("unknown")
            pairs.insert(
                self.draw(st.integers(0, len(pairs))), (key_token(self.draw(st.sampled_from(UNKNOWN_KEYS))), 1)
            )
        return Obj(pairs)

    def body(self) -> bytes:
        wrapper = self.structs["ContainerConfigWrapper"]
        config = sorted(self.structs["Config"])
        top = self.struct("Config", 0, config) if self.chance(90) else Obj([])
        if self.chance(80):
            top.pairs.insert(0, (key_token("Image"), "local/empty"))
        extra = []
        if self.chance(75):
            extra.append((self.spell("HostConfig")[0], self.struct("HostConfig", 1)))
        if not self.clean:
            if self.chance(12):
                self.tags.add("hostconfig-null")
                extra.append((self.spell("HostConfig")[0], None))
            if self.chance(12):
                self.tags.add("hostconfig-twice")
                extra.append((self.spell("HostConfig")[0], self.struct("HostConfig", 1)))
            if self.chance(20):
                self.tags.add("top-level-hostconfig")
                deprecated = sorted(self.deprecated)
                for field in self.pick_fields(deprecated, 3):
                    extra.append((self.spell(field)[0], self.value(wrapper[field], 1)))
            if self.chance(5):
                extra.append((self.spell("Cpuset")[0], self.string()))
        if self.chance(10):
            extra.append((self.spell("NetworkingConfig")[0], self.value("*NetworkingConfig", 1)))
        for pair in extra:
            top.pairs.insert(self.draw(st.integers(0, len(top.pairs))), pair)
        raw = ser(top)
        if not self.clean and self.chance(4):
            self.tags.add("trailing")
            raw += self.draw(st.sampled_from([b" {}", b"x", b'{"Privileged":true}', b"\n"]))
        return raw


# -- the naive reading (the old gateway) --------------------------------------------------------


def project(value: object, tspec: str, structs: dict) -> object:
    """``value`` (from json.loads) with only the keys an exact-spelling reader of ``tspec`` sees."""
    if tspec.startswith("*"):
        return project(value, tspec[1:], structs)
    if tspec.startswith("[]") and isinstance(value, list):
        return [project(item, tspec[2:], structs) for item in value]
    if tspec.startswith("map[") and isinstance(value, dict):
        return {k: project(v, tspec[4:-1], structs) for k, v in value.items()}
    if tspec in structs and isinstance(value, dict):
        table = structs[tspec]
        return {k: project(v, table[k], structs) for k, v in value.items() if k in table}
    return value


def naive_body(raw: bytes, schema: dict):
    """What a json.loads + exact-key reader forwards as meaningful, or None if it cannot parse."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    structs = schema["structs"]
    wrapper = structs["ContainerConfigWrapper"]
    keep = set(structs["Config"]) | {"HostConfig", "NetworkingConfig"}
    out = {k: project(v, wrapper[k], structs) for k, v in body.items() if k in keep}
    return json.dumps(out).encode()


# -- the model against Go -----------------------------------------------------------------------


def _zero(value: object) -> bool:
    return value in (None, "", 0, False, [], {})


def agrees(model: object, go: object, tspec: str, structs: dict, path: str) -> list:
    """Where the model (what the policy reads) differs from what Go decoded, as paths."""
    if tspec.startswith("*"):
        tspec = tspec[1:]
    if _zero(model) and _zero(go):
        return []
    if tspec in structs and isinstance(model, dict) and isinstance(go, dict):
        table = structs[tspec]
        out = []
        for key, item in model.items():
            if key in table:  # a field of apispec's that the oracle's subset lacks is not compared
                out += agrees(item, go.get(key), table[key], structs, f"{path}.{key}")
        return out
    if tspec.startswith("[]") and isinstance(model, list) and isinstance(go, list) and len(model) == len(go):
        out = []
        for i, (m, g) in enumerate(zip(model, go)):
            out += agrees(m, g, tspec[2:], structs, f"{path}[{i}]")
        return out
    if tspec.startswith("map[") and isinstance(model, dict) and isinstance(go, dict) and model.keys() == go.keys():
        out = []
        for key in model:
            out += agrees(model[key], go[key], tspec[4:-1], structs, f"{path}.{key}")
        return out
    return [] if model == go else [f"{path}: model {model!r} != Go {go!r}"]


def model_disagreements(model: dict, go: dict, schema: dict) -> list:
    structs = schema["structs"]
    if go["HostConfig"] and go["HostConfig"]["NetworkMode"] == "default" and "HostConfig" in model:
        # getHostConfig's SetDefaultNetModeIfBlank: the daemon reads a blank NetworkMode as "default"
        model = {**model, "HostConfig": {**model["HostConfig"]}}
        if not model["HostConfig"].get("NetworkMode"):
            model["HostConfig"]["NetworkMode"] = "default"
    config = {k: v for k, v in model.items() if k in structs["Config"]}
    out = agrees(config, go["Config"] or {}, "Config", structs, "Config")
    if "HostConfig" in model:
        out += agrees(model["HostConfig"], go["HostConfig"], "HostConfig", structs, "HostConfig")
    if "NetworkingConfig" in model:
        out += agrees(
            model["NetworkingConfig"], go["NetworkingConfig"], "NetworkingConfig", structs, "NetworkingConfig"
        )
    return out


# -- the properties -----------------------------------------------------------------------------


def check_body(raw: bytes, oracle: GoOracle, counts: Counter) -> None:
    """Properties (b) and (c) for one body."""
    go_raw = oracle.decode(raw)
    naive = naive_body(raw, oracle.schema)
    divergent = naive is not None and not isinstance(go_raw, GoError) and oracle.decode(naive) != go_raw
    try:
        model = canonical.decode(raw, SHAPE)
    except canonical.BodyError as exc:
        assert exc.sentence and isinstance(exc.path, str)
        counts["refused"] += 1
        counts["divergent"] += divergent
        return
    counts["accepted"] += 1
    # (c) a body that Go reads differently from an exact-spelling reader is never accepted
    assert not divergent, f"accepted a body Go reads differently from its exact spelling: {raw!r}"
    # (b) what the daemon decodes from what we forward equals what it decodes from the original
    forwarded = canonical.encode(model)
    assert oracle.decode(forwarded) == go_raw, f"{raw!r} forwarded as {forwarded!r}"
    # ... and the model itself (not only its encoding) is what Go read
    assert oracle.decode(json.dumps(model).encode()) == go_raw, f"model {model!r} of {raw!r}"
    if not isinstance(go_raw, GoError):
        assert model_disagreements(model, go_raw, oracle.schema) == [], raw


def test_fuzz_canonical_decode_matches_go(oracle: GoOracle) -> None:
    """(b) and (c) over adversarial bodies; the generator must hit the divergent class often."""
    counts: Counter = Counter()
    tags: Counter = Counter()

    @FUZZ
    @given(st.data())
    def run(data) -> None:
        gen = Gen(data, oracle.schema, clean=data.draw(st.integers(0, 99)) < 25)
        raw = gen.body()
        tags.update(gen.tags)
        check_body(raw, oracle, counts)

    run()
    # The run proves something only if it met both outcomes and the bug class being fixed.
    assert counts["accepted"] >= EXAMPLES // 10, counts
    assert counts["divergent"] >= EXAMPLES // 10, counts
    for tag in ("case", "fold-char", "dup-exact", "twin", "hostconfig-null", "hostconfig-twice",
                "top-level-hostconfig", "unknown", "wrong-type", "big-int", "float-int", "invalid-utf8",
                "surrogate", "nan", "trailing"):  # fmt: skip
        assert tags[tag] >= 3, f"the generator produced too few {tag!r} bodies: {tags}"


# Bodies the old gateway read differently from dockerd (each one a way past an exact-key check).
DIVERGENT = {
    "twin-after-canonical": b'{"Image":"i","HostConfig":{"Privileged":false,"privileged":true}}',
    "long-s-in-Binds": b'{"Image":"i","HostConfig":{"Bind\\u017f":["/:/host"]}}',
    "long-s-raw-utf8": '{"Image":"i","HostConfig":{"Bind\u017f":["/:/host"]}}'.encode(),
    "kelvin-in-MaskedPaths": b'{"Image":"i","HostConfig":{"Mas\\u212aedPaths":[]}}',
    "upper-case-key": b'{"Image":"i","HostConfig":{"PRIVILEGED":true}}',
    "hostconfig-null-top-level-privileged": b'{"Image":"i","HostConfig":null,"Privileged":true}',
    "no-hostconfig-top-level-binds": b'{"Image":"i","Binds":["/:/host"]}',
    "top-level-memory-merged": b'{"Image":"i","HostConfig":{},"Memory":1}',
    "hostconfig-twice-merged": b'{"Image":"i","HostConfig":{"Privileged":true},"HostConfig":{"Binds":[]}}',
    "hostconfig-lowercase-twin": b'{"Image":"i","HostConfig":{},"hostconfig":{"CapAdd":["ALL"]}}',
    "mount-twice-merged": (
        b'{"Image":"i","HostConfig":{"Mounts":[{"Type":"bind","Source":"/","Target":"/h",'
        b'"BindOptions":{"Propagation":"rshared"},"bindoptions":{"NonRecursive":true}}]}}'
    ),
    "null-keeps-earlier-bool": b'{"Image":"i","HostConfig":{"Privileged":true,"Privileged":null}}',
    "device-request-case": b'{"Image":"i","HostConfig":{"DeviceRequests":[{"count":-1,"Driver":"nvidia"}]}}',
    "user-case": b'{"Image":"i","user":"0:0"}',
    "cgroup-parent-fold": b'{"Image":"i","HostConfig":{"CgroupParent":"a","cgroupparent":"/"}}',
    "escaped-twin": b'{"Image":"i","HostConfig":{"CgroupParent":"a","Cgroup\\u0070arent":"/"}}',
}


@pytest.mark.parametrize("raw", DIVERGENT.values(), ids=DIVERGENT.keys())
def test_known_divergent_bodies_are_refused(oracle: GoOracle, raw: bytes) -> None:
    """Each table entry really is read differently by Go (checked), and canonical refuses it."""
    naive = naive_body(raw, oracle.schema)
    assert naive is not None
    go_raw = oracle.decode(raw)
    assert not isinstance(go_raw, GoError), go_raw
    assert oracle.decode(naive) != go_raw, "the table entry is not divergent: Go reads it like json.loads"
    with pytest.raises(canonical.BodyError) as info:
        canonical.decode(raw, SHAPE)
    assert info.value.path and info.value.sentence


def test_fold_is_go_folding(oracle: GoOracle) -> None:
    """canonical.fold agrees with Go on which spellings of a field name it matches."""
    samples = ["Privileged", "privileged", "PRIVILEGED", "Bind\u017f", "BINDS", "Mas\u212aedPaths", "Priv\u0131leged",
               "PR\u0130VILEGED", "Bi\ufb00s", "\uff30rivileged", "Masked Paths", "Mas\u212a\u212aedPaths"]  # fmt: skip
    for spelled in samples:
        for field in ("Privileged", "Binds", "MaskedPaths"):
            value = True if field == "Privileged" else ["x"]
            go = oracle.decode(json.dumps({"HostConfig": {spelled: value}}).encode())
            go_reads = not isinstance(go, GoError) and go["HostConfig"][field] == value
            assert (canonical.fold(spelled) == canonical.fold(field)) == go_reads, (spelled, field)


def test_apispec_agrees_with_docker_types(oracle: GoOracle) -> None:
    """Every field both tables know has the type Go's struct has (apispec is what canonical checks)."""
    structs = oracle.schema["structs"]
    body = apispec.STRUCTS[apispec.BODIES[SHAPE]]
    wrapper = structs["ContainerConfigWrapper"]
    wrong = []
    for field, tspec in body.items():
        known = field in structs["Config"] or field in ("HostConfig", "NetworkingConfig")
        if known and field in wrapper and tspec.lstrip("*") != wrapper[field].lstrip("*"):
            wrong.append(f"{SHAPE}.{field}: apispec {tspec!r}, Docker {wrapper[field]!r}")
    for name in ("Config", "HostConfig", "Mount", "BindOptions", "DeviceRequest", "DeviceMapping"):
        for field, tspec in apispec.STRUCTS.get(name, {}).items():
            if field in structs[name] and tspec.lstrip("*") != structs[name][field].lstrip("*"):
                wrong.append(f"{name}.{field}: apispec {tspec!r}, Docker {structs[name][field]!r}")
    assert wrong == []
