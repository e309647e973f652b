"""gateway/canonical.py: bodies read the way dockerd's Go decoder reads them.

Table-driven: bodies Go reads differently from an exact-key reading are refused with a sentence naming
the key; every body captured from the real clients (tests/fixtures/gateway/client-bodies, see
test_gateway_apispec.py beside this file) is accepted, and its model re-serialised decodes to the same value.
The property-based comparison with real Go is test_gateway_canonical_fuzz.py, beside this file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import canonical

CLIENT_BODIES = Path(__file__).resolve().parents[5] / "fixtures" / "gateway" / "client-bodies"

# route (method, path without the version) → body shape
SHAPES = (
    ("POST", re.compile(r"/containers/create"), "containers.create"),
    ("POST", re.compile(r"/containers/[^/]+/update"), "containers.update"),
    ("POST", re.compile(r"/containers/[^/]+/exec"), "exec.create"),
    ("POST", re.compile(r"/exec/[^/]+/start"), "exec.start"),
    ("POST", re.compile(r"/volumes/create"), "volumes.create"),
    ("POST", re.compile(r"/networks/create"), "networks.create"),
    ("POST", re.compile(r"/networks/[^/]+/connect"), "networks.connect"),
    ("POST", re.compile(r"/networks/[^/]+/disconnect"), "networks.disconnect"),
    ("POST", re.compile(r"/commit"), "commit"),
)


def shape_of(method: str, target: str) -> str:
    path = re.sub(r"^/v[0-9.]+", "", target.split("?", 1)[0])
    for want, pattern, shape in SHAPES:
        if method == want and pattern.fullmatch(path):
            return shape
    raise AssertionError(f"no shape for {method} {target}")


def captured() -> list:
    out = []
    for path in sorted(CLIENT_BODIES.glob("*.json")):
        for i, request in enumerate(json.loads(path.read_text())["requests"]):
            out.append(pytest.param(request, id=f"{path.stem}-{i}-{request['method']}"))
    return out


@pytest.mark.parametrize("request_", captured())
def test_real_clients_bodies_are_accepted_and_round_trip(request_):
    shape = shape_of(request_["method"], request_["target"])
    model = canonical.decode(request_["raw"].encode(), shape)
    again = canonical.decode(canonical.encode(model), shape)
    assert again == model
    original = json.loads(request_["raw"]) if request_["raw"].strip() else {}
    if isinstance(original, dict):  # same keys, same spelling: nothing a client sent was renamed
        assert set(model) == set(original)


def test_captured_bodies_cover_every_client():
    clients = {p.stem for p in CLIENT_BODIES.glob("*.json")}
    assert {
        "docker-cli-28",
        "docker-cli-20.10",
        "docker-sdk-7.1",
        "docker-compose-1.29",
        "devcontainers-cli",
    } <= clients


REFUSED = [
    ("lower-case twin", b'{"Image":"x","HostConfig":{"Privileged":false,"privileged":true}}', "HostConfig.privileged"),
    ("upper case", b'{"Image":"x","HostConfig":{"PRIVILEGED":true}}', "HostConfig.PRIVILEGED"),
    ("long s", b'{"Image":"x","HostConfig":{"Bind\\u017f":["/:/h"]}}', "HostConfig.Bind\u017f"),
    ("kelvin", b'{"Image":"x","HostConfig":{"Mas\\u212aedPaths":[]}}', "HostConfig.Mas\u212aedPaths"),
    ("exact duplicate", b'{"Image":"x","HostConfig":{"CapAdd":[],"CapAdd":["SYS_ADMIN"]}}', "HostConfig.CapAdd"),
    ("two HostConfigs", b'{"Image":"x","HostConfig":{"Memory":1},"HostConfig":{"Privileged":true}}', "HostConfig"),
    ("hostconfig twin", b'{"Image":"x","HostConfig":{},"hostconfig":{"Privileged":true}}', "hostconfig"),
    ("null HostConfig", b'{"Image":"x","HostConfig":null}', "HostConfig"),
    ("top-level Privileged", b'{"Image":"x","Privileged":true}', "Privileged"),
    ("top-level Binds", b'{"Image":"x","HostConfig":{},"Binds":["/:/h"]}', "Binds"),
    ("unknown field", b'{"Image":"x","HostConfig":{"Privileged2":true}}', "HostConfig.Privileged2"),
    ("label twin", b'{"Image":"x","Labels":{"ds01.user":"a","ds01.user":"b"}}', "Labels.ds01.user"),
    ("wrong type", b'{"Image":"x","HostConfig":{"Privileged":"true"}}', "HostConfig.Privileged"),
    ("float for int", b'{"Image":"x","HostConfig":{"Memory":1.0}}', "HostConfig.Memory"),
    ("int64 overflow", b'{"Image":"x","HostConfig":{"Memory":9223372036854775808}}', "HostConfig.Memory"),
    ("negative uint", b'{"Image":"x","HostConfig":{"BlkioWeight":-1}}', "HostConfig.BlkioWeight"),
    ("lone surrogate", b'{"Image":"x","Labels":{"a":"\\ud800"}}', "Labels"),
    ("null in a list", b'{"Image":"x","HostConfig":{"Binds":[null]}}', "HostConfig.Binds[0]"),
    ("mount field case", b'{"Image":"x","HostConfig":{"Mounts":[{"type":"bind","Source":"/","Target":"/h"}]}}', "type"),
    ("device request twin", b'{"Image":"x","HostConfig":{"DeviceRequests":[{"Count":0,"count":-1}]}}', "count"),
]


@pytest.mark.parametrize(("raw", "where"), [pytest.param(r, w, id=n) for n, r, w in REFUSED])
def test_bodies_go_could_read_differently_are_refused_naming_the_key(raw, where):
    with pytest.raises(canonical.BodyError) as caught:
        canonical.decode(raw, "containers.create")
    assert where in caught.value.path or where in caught.value.sentence
    assert ";" in caught.value.sentence  # what was wrong; what to do


@pytest.mark.parametrize(
    "raw",
    [
        b'{"Image":"x","HostConfig":{"Memory":NaN}}',
        b'{"Image":"x","HostConfig":{"Memory":1e999}}',
        b"\xff{}",
        b'{"Image":"x"} trailing',
        b"[1]",
        b"\xef\xbb\xbf{}",
    ],
    ids=["nan", "inf", "utf8", "trailing", "not an object", "bom"],
)
def test_what_is_not_plain_json_is_refused(raw):
    with pytest.raises(canonical.BodyError):
        canonical.decode(raw, "containers.create")


def test_null_fields_read_as_absent_and_null_bodies_stay_null():
    model = canonical.decode(
        b'{"Image":"x","Healthcheck":{"Timeout":null},"HostConfig":{"Binds":null}}', "containers.create"
    )
    assert model == {"Image": "x", "Healthcheck": {"Timeout": None}, "HostConfig": {"Binds": None}}
    assert canonical.decode(b"null\n", "commit") is None
    assert canonical.encode(None) == b"null"
    assert canonical.decode(b"", "containers.create") == {}


def test_strslice_takes_a_string_or_a_list_and_the_model_is_what_is_forwarded():
    model = canonical.decode(b'{"Image":"x","Cmd":"sleep 1","Entrypoint":["sh","-c"]}', "containers.create")
    assert model == {"Image": "x", "Cmd": ["sleep 1"], "Entrypoint": ["sh", "-c"]}
    assert canonical.encode(model) == b'{"Image":"x","Cmd":["sleep 1"],"Entrypoint":["sh","-c"]}'


@pytest.mark.parametrize(
    ("name", "folded"), [("Privileged", "privileged"), ("Bind\u017f", "binds"), ("Mas\u212aedPaths", "maskedpaths")]
)
def test_fold_is_gos(name, folded):
    assert canonical.fold(name) == folded
