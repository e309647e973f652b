"""The request-body tables of gateway/apispec.py: well-formed, and true to what real clients send.

The fixtures under tests/fixtures/gateway/client-bodies/ are request bodies captured from the real
clients (docker CLI 28 and 20.10, docker SDK for Python 7.1, docker-compose 1.29, the Dev Containers
CLI) through a logging proxy in front of dockerd 20.10; capture.py beside them re-creates them.
Every key of every captured body must be in the tables with its exact spelling and a value of the
type the table gives, or the gateway's canonical model would refuse a legitimate client.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import apispec

FIXTURES = Path(__file__).resolve().parents[5] / "fixtures" / "gateway" / "client-bodies"
SCALARS = {"string", "bool", "int", "uint", "float", "strslice", "set"}
NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)


def parse_type(text: str) -> tuple:
    """The type grammar of apispec.py, as a tree: ("scalar", s) | ("list", T) | ("array", n, T) |
    ("map", T) | ("pointer", T) | ("struct", name, pointer). Raises ValueError on anything else."""
    if text in SCALARS:
        return ("scalar", text)
    if text.startswith("[]"):
        return ("list", parse_type(text[2:]))
    match = re.match(r"^\[([1-9][0-9]*)\](.+)$", text)
    if match:
        return ("array", int(match.group(1)), parse_type(match.group(2)))
    if text.startswith("map[") and text.endswith("]"):
        return ("map", parse_type(text[4:-1]))
    if text.startswith("*") and not text.startswith("**"):
        inner = parse_type(text[1:])
        return ("struct", inner[1], True) if inner[0] == "struct" else ("pointer", inner)
    if NAME.match(text):
        return ("struct", text, False)
    raise ValueError(f"not a type of the apispec grammar: {text!r}")


def struct_names(tree: tuple) -> list:
    if tree[0] == "struct":
        return [tree[1]]
    if tree[0] == "scalar":
        return []
    return struct_names(tree[-1])


ALL_FIELDS = [(struct, field, kind) for struct, fields in apispec.STRUCTS.items() for field, kind in fields.items()]


@pytest.mark.parametrize(("struct", "field", "kind"), ALL_FIELDS, ids=[f"{s}.{f}" for s, f, _unused in ALL_FIELDS])
def test_every_type_parses_and_names_an_existing_struct(struct: str, field: str, kind: str) -> None:
    tree = parse_type(kind)
    for name in struct_names(tree):
        assert name in apispec.STRUCTS, f"{struct}.{field} names {name}, which STRUCTS lacks"


@pytest.mark.parametrize(
    "text", ["", "str", "[]", "map[string", "[0]uint", "**Mount", "**int", "*", "[2]", "map[]", "mount", "*mount"]
)
def test_the_grammar_checker_refuses_what_is_not_a_type(text: str) -> None:
    with pytest.raises(ValueError):
        parse_type(text)


def test_field_names_are_unique_ignoring_case() -> None:
    # Go matches JSON keys case-insensitively; two fields equal but for case would make the
    # canonical spelling ambiguous.
    for struct, fields in apispec.STRUCTS.items():
        folded = [name.lower() for name in fields]
        assert len(folded) == len(set(folded)), struct


def test_bodies_point_at_existing_structs() -> None:
    for route, struct in apispec.BODIES.items():
        assert struct in apispec.STRUCTS, f"BODIES[{route!r}] = {struct!r} is not in STRUCTS"


def test_since_names_existing_fields_newer_than_1_41() -> None:
    for (struct, field), version in apispec.SINCE.items():
        assert field in apispec.STRUCTS.get(struct, {}), f"SINCE names {struct}.{field}, which is not in STRUCTS"
        major, minor = (int(part) for part in version.split("."))
        assert (major, minor) > (1, 41), f"{struct}.{field} since {version} is not newer than the daemon's 1.41"


def test_client_only_fields_are_in_the_tables_and_seen_in_a_capture() -> None:
    seen = set()

    def walk(value: object, kind: str) -> None:
        tree = parse_type(kind)
        if tree[0] == "pointer":
            tree, kind = parse_type(kind[1:]), kind[1:]
        if value is None or tree[0] == "scalar":
            return
        if tree[0] in ("list", "array") and isinstance(value, list):
            for item in value:
                walk(item, kind[kind.index("]") + 1 :])
        elif tree[0] == "map" and isinstance(value, dict):
            for item in value.values():
                walk(item, kind[4:-1])
        elif tree[0] == "struct" and isinstance(value, dict):
            for key, item in value.items():
                seen.add((tree[1], key))
                walk(item, apispec.STRUCTS[tree[1]].get(key, "string"))

    for param in CAPTURED:
        request = param.values[1]
        walk(request["body"], apispec.BODIES[route_of(request["method"], request["target"])])
    for struct, field in apispec.CLIENT_ONLY:
        assert field in apispec.STRUCTS[struct]
        assert (struct, field) not in apispec.SINCE
        assert (struct, field) in seen, f"{struct}.{field} is in CLIENT_ONLY but no captured client sends it"


def test_no_create_field_is_also_a_top_level_hostconfig_name() -> None:
    create = set(apispec.STRUCTS["ContainerCreate"])
    assert not create & apispec.DEPRECATED_TOP_LEVEL_HOSTCONFIG
    # …and the set is what dockerd 20.10 promotes: every HostConfig field, plus the wrapper's Cpuset.
    assert set(apispec.STRUCTS["HostConfig"]) | {"Cpuset"} == apispec.DEPRECATED_TOP_LEVEL_HOSTCONFIG


def test_create_is_config_plus_hostconfig_and_networkingconfig() -> None:
    config = apispec.STRUCTS["ContainerConfig"]
    create = apispec.STRUCTS["ContainerCreate"]
    assert create == {**config, "HostConfig": "*HostConfig", "NetworkingConfig": "*NetworkingConfig"}


def test_update_is_hostconfig_resources_and_restart_policy() -> None:
    update = apispec.STRUCTS["UpdateConfig"]
    host = apispec.STRUCTS["HostConfig"]
    assert "RestartPolicy" in update
    assert all(host[name] == kind for name, kind in update.items()), "an update field the create body types otherwise"
    for name in ("Privileged", "Binds", "Mounts", "CapAdd", "NetworkMode", "SecurityOpt", "Init"):
        assert name not in update, f"{name} is not a Resources field; dockerd's update does not read it"


# ---- the checker: walk a captured body and its table together ----


def no_duplicates(pairs: list) -> dict:
    keys = [key for key, _value in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(f"duplicate keys {duplicated}")
    return dict(pairs)


def check(value: object, kind: str, where: str) -> list:
    """Every way ``value`` departs from ``kind``; [] when it fits. JSON null fits any type, as in Go."""
    if value is None:
        return []
    tree = parse_type(kind)
    tag = tree[0]
    if tag == "pointer":
        return check(value, kind[1:], where)
    if tag == "scalar":
        scalar = tree[1]
        if scalar == "string":
            ok = isinstance(value, str)
        elif scalar == "bool":
            ok = isinstance(value, bool)
        elif scalar in ("int", "uint"):
            low, high = INT64 if scalar == "int" else UINT64
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        elif scalar == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif scalar == "strslice":
            ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        else:  # set
            ok = isinstance(value, dict) and all(v == {} for v in value.values())
        return [] if ok else [f"{where}: {value!r} is not a {scalar}"]
    if tag in ("list", "array"):
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        if tag == "array" and len(value) != tree[1]:
            return [f"{where}: {value!r} does not have {tree[1]} elements"]
        element = kind[kind.index("]") + 1 :]
        return [problem for i, item in enumerate(value) for problem in check(item, element, f"{where}[{i}]")]
    if tag == "map":
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        return [problem for key, item in value.items() for problem in check(item, kind[4:-1], f"{where}[{key!r}]")]
    fields = apispec.STRUCTS[tree[1]]
    if not isinstance(value, dict):
        return [f"{where}: {value!r} is not a {tree[1]} object"]
    problems = []
    for key, item in value.items():
        if key not in fields:
            spelled = [name for name in fields if name.lower() == key.lower()]
            hint = f" (the table spells it {spelled[0]!r})" if spelled else ""
            problems.append(f"{where}.{key}: not a field of {tree[1]}{hint}")
            continue
        problems.extend(check(item, fields[key], f"{where}.{key}"))
    return problems


ROUTES = [
    ("POST", re.compile(r"^/containers/create$"), "containers.create"),
    ("POST", re.compile(r"^/containers/[^/]+/update$"), "containers.update"),
    ("POST", re.compile(r"^/containers/[^/]+/exec$"), "exec.create"),
    ("POST", re.compile(r"^/exec/[^/]+/start$"), "exec.start"),
    ("POST", re.compile(r"^/volumes/create$"), "volumes.create"),
    ("POST", re.compile(r"^/networks/create$"), "networks.create"),
    ("POST", re.compile(r"^/networks/[^/]+/connect$"), "networks.connect"),
    ("POST", re.compile(r"^/networks/[^/]+/disconnect$"), "networks.disconnect"),
    ("POST", re.compile(r"^/commit$"), "commit"),
    ("POST", re.compile(r"^/auth$"), "auth"),
]


def route_of(method: str, target: str) -> str:
    path = re.sub(r"^/v[0-9.]+(?=/)", "", target.split("?", maxsplit=1)[0])
    for want, pattern, route in ROUTES:
        if method == want and pattern.match(path):
            return route
    raise AssertionError(f"no route in the test's table for a captured {method} {target}")


def captured() -> list:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        record = json.loads(path.read_text())
        for i, request in enumerate(record["requests"]):
            out.append(
                pytest.param(
                    record["client"], request, id=f"{path.stem}-{i}-{route_of(request['method'], request['target'])}"
                )
            )
    return out


CAPTURED = captured()


@pytest.mark.parametrize(("client", "request_"), CAPTURED)
def test_captured_body_fits_the_tables(client: str, request_: dict) -> None:
    route = route_of(request_["method"], request_["target"])
    body = json.loads(request_["raw"], object_pairs_hook=no_duplicates)
    assert body == request_["body"], "the fixture's parsed body is not its raw body"
    struct = apispec.BODIES[route]
    problems = check(body, struct, struct)
    assert not problems, f"{client} {request_['method']} {request_['target']}:\n" + "\n".join(problems)
    if route == "containers.create":
        assert not set(body) & apispec.DEPRECATED_TOP_LEVEL_HOSTCONFIG


def test_the_captures_cover_every_client_and_route() -> None:
    clients = {param.values[0] for param in CAPTURED}
    assert {c.split(" (")[0] for c in clients} >= {
        "docker CLI 28",
        "docker CLI 20.10",
        "docker SDK for Python 7.1",
        "docker-compose 1.29",
    }
    routes = {route_of(param.values[1]["method"], param.values[1]["target"]) for param in CAPTURED}
    assert routes >= set(apispec.BODIES) - {"auth", "images.push", "volumes.update"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"Image": "x", "HostConfig": {"Privileged": True}}, []),
        ({"Image": "x", "Privileged": True}, ["ContainerCreate.Privileged: not a field of ContainerCreate"]),
        (
            {"HostConfig": {"privileged": True}},
            ["ContainerCreate.HostConfig.privileged: not a field of HostConfig (the table spells it 'Privileged')"],
        ),
        ({"Cmd": "sleep 1", "Entrypoint": ["sh"]}, []),
        ({"Cmd": [1]}, ["ContainerCreate.Cmd: [1] is not a strslice"]),
        ({"ExposedPorts": {"80/tcp": {"x": 1}}}, ["ContainerCreate.ExposedPorts: {'80/tcp': {'x': 1}} is not a set"]),
        (
            {"HostConfig": {"ConsoleSize": [1, 2, 3]}},
            ["ContainerCreate.HostConfig.ConsoleSize: [1, 2, 3] does not have 2 elements"],
        ),
        ({"HostConfig": {"Memory": True}}, ["ContainerCreate.HostConfig.Memory: True is not a int"]),
        ({"HostConfig": {"BlkioWeight": -1}}, ["ContainerCreate.HostConfig.BlkioWeight: -1 is not a uint"]),
        (
            {"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": 80}]}}},
            ["ContainerCreate.HostConfig.PortBindings['80/tcp'][0].HostPort: 80 is not a string"],
        ),
        (
            {"NetworkingConfig": {"EndpointsConfig": {"n": {"Aliases": ["a"], "Bogus": 1}}}},
            ["ContainerCreate.NetworkingConfig.EndpointsConfig['n'].Bogus: not a field of EndpointSettings"],
        ),
        ({"HostConfig": {"Mounts": [{"Type": "bind", "BindOptions": None}]}, "Env": None}, []),
        ({"StopTimeout": None, "HostConfig": {"PidsLimit": -1, "Init": True}}, []),
        ({"HostConfig": {"PidsLimit": "100"}}, ["ContainerCreate.HostConfig.PidsLimit: '100' is not a int"]),
    ],
)
def test_the_checker_catches_what_the_canonical_model_must_refuse(body: dict, expected: list) -> None:
    assert check(body, "ContainerCreate", "ContainerCreate") == expected
