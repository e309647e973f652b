"""The canonical request model: a body read exactly the way dockerd's Go decoder reads it.

dockerd decodes request bodies with Go's ``encoding/json``. Its rules differ from a Python dict
lookup in ways that matter to a policy that must see what the daemon will do:

- struct field names match **case-insensitively**, with Unicode simple folding: ``privileged``,
  ``PRIVILEGED`` and ``Privileged`` are one field, and so are ``Binds`` and ``Bind\\u017f``
  (U+017F, the long s, folds to ``s``) or ``MaskedPaths`` with the Kelvin sign ``K`` (U+212A) for ``k``;
- when a field appears twice the **last** value wins, and a nested object given twice is **merged**
  into the same struct;
- ``"HostConfig": null`` on a create makes dockerd read the deprecated top-level HostConfig fields;
- unknown fields are ignored, so a field the policy does not know is a field it cannot check.

So the gateway never decides on the bytes a user sent. ``decode`` parses a body into a model that
has exactly one spelling of every key (Docker's own, from ``apispec``), refusing with a sentence
that names the key anything that Go could read differently: a key spelled other than the
canonical spelling, a key twice (after folding), a key no Docker version defines, ``null`` for a
top-level struct, a value of the wrong JSON type, NaN/Infinity, invalid UTF-8, a lone surrogate,
data after the body. ``encode`` writes the model back; that is what the gateway forwards, so what
was checked is byte for byte what the daemon decodes.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from . import apispec

INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
# A body nests a handful of levels (HostConfig → Mounts → VolumeOptions → DriverConfig → Options).
MAX_DEPTH = 32

# Struct-valued keys whose ``null`` changes what the daemon reads (not merely "unset").
TOP_LEVEL_STRUCTS = {"containers.create": ("HostConfig", "NetworkingConfig")}

_ARRAY = re.compile(r"\[([0-9]+)\](.+)")
_SURROGATE = re.compile("[\ud800-\udfff]")


class BodyError(Exception):
    """A body the gateway refuses to forward: ``path`` names the key, ``sentence`` says what to do."""

    def __init__(self, path: str, sentence: str) -> None:
        super().__init__(f"{path}: {sentence}" if path else sentence)
        self.path = path
        self.sentence = sentence


def fold(name: str) -> str:
    """Go's field-name folding: ASCII case, U+017F (long s) → ``s``, U+212A (Kelvin sign) → ``k``.

    These two are the only non-ASCII runes whose simple-fold orbit holds an ASCII letter, so they
    are the only ones that can make a non-ASCII key match one of Docker's (ASCII) field names.
    """
    return name.replace("\u017f", "s").replace("\u212a", "k").lower()


class _Pairs(list):
    """A JSON object as the ordered list of its (key, value) pairs, duplicates kept."""


def _constant(name: str) -> Any:
    raise BodyError("", f"the body contains {name}, which is not JSON; send numbers as numbers")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BodyError("", f"the number {text[:40]} is out of range; send a smaller number")
    return value


def parse(raw: bytes) -> Any:
    """JSON text → Python values with objects as ``_Pairs`` (duplicates kept), strictly."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError("", f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    try:
        value = json.loads(text, object_pairs_hook=_Pairs, parse_constant=_constant, parse_float=_float)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError("", "the body nests too deeply to be a Docker request") from None
    except ValueError as exc:
        raise BodyError("", f"the body is not valid JSON ({exc}); send a single JSON object") from None
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, _Pairs):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _type_error(path: str, expected: str, value: Any) -> BodyError:
    return BodyError(path, f"{path} must be {expected}, not {_kind(value)}; fix that value and send it again")


def _string(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error(path, "a string", value)
    if _SURROGATE.search(value):
        raise BodyError(
            path, f"{path} contains a lone UTF-16 surrogate escape, which Docker reads differently; send valid text"
        )
    return value


def _model(tspec: str, value: Any, path: str, depth: int) -> Any:
    """One value of type ``tspec`` (apispec's grammar) → its canonical form, or BodyError."""
    if depth > MAX_DEPTH:
        raise BodyError(path, "the body nests too deeply to be a Docker request")
    if tspec.startswith("*"):
        tspec = tspec[1:]
    if value is None:
        # Go leaves a field it reads null as if the key were absent, whatever its type; a null
        # inside a list or map is something no client sends, and is refused by the callers.
        return None
    if tspec == "string":
        return _string(path, value)
    if tspec == "bool":
        if not isinstance(value, bool):
            raise _type_error(path, "true or false", value)
        return value
    if tspec in ("int", "uint"):
        low, high = INT64 if tspec == "int" else UINT64
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(path, "a whole number", value)
        if not low <= value <= high:
            raise BodyError(path, f"{path} must be between {low} and {high}; send a number in that range")
        return value
    if tspec == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(path, "a number", value)
        return value
    if tspec == "strslice":
        if isinstance(value, str):
            return [_string(path, value)]
        return _model("[]string", value, path, depth)
    if tspec == "set":
        if not isinstance(value, _Pairs):
            raise _type_error(path, "an object", value)
        out = {}
        for key, item in _unique(value, path):
            if not (isinstance(item, _Pairs) and len(item) == 0):
                raise _type_error(_join(path, key), "{}", item)
            out[_string(path, key)] = {}
        return out
    if tspec.startswith("[]"):
        if not isinstance(value, list) or isinstance(value, _Pairs):
            raise _type_error(path, "a list", value)
        return [_element(tspec[2:], item, f"{path}[{i}]", depth) for i, item in enumerate(value)]
    if tspec.startswith("map["):
        if not isinstance(value, _Pairs):
            raise _type_error(path, "an object", value)
        inner = tspec[4:-1]
        return {
            _string(path, key): _element(inner, item, _join(path, key), depth) for key, item in _unique(value, path)
        }
    match = _ARRAY.fullmatch(tspec)
    if match:
        size = int(match.group(1))
        if not isinstance(value, list) or isinstance(value, _Pairs) or len(value) != size:
            raise BodyError(path, f"{path} must be a list of exactly {size} values")
        return [_model(match.group(2), item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if tspec in apispec.STRUCTS:
        return _struct(tspec, value, path, depth)
    raise BodyError(path, f"{path} has a type the gateway does not know ({tspec}); ask an admin")


def _element(tspec: str, item: Any, path: str, depth: int) -> Any:
    """One element of a list or map: ``null`` there is refused (no client sends it)."""
    if item is None:
        raise BodyError(path, f"{path} is null; leave the element out instead")
    return _model(tspec, item, path, depth + 1)


def _unique(pairs: _Pairs, path: str) -> list:
    """The pairs of a map-typed object; the same key twice is refused (Go keeps the last silently)."""
    seen = set()
    for key, _item in pairs:
        if key in seen:
            raise BodyError(_join(path, key), f"{_join(path, key)} appears twice; send each key once")
        seen.add(key)
    return list(pairs)


def _top_level_host_fields() -> frozenset:
    return frozenset(fold(f) for f in apispec.DEPRECATED_TOP_LEVEL_HOSTCONFIG)


def _struct(name: str, value: Any, path: str, depth: int) -> dict:
    if not isinstance(value, _Pairs):
        raise _type_error(path or "the body", "a JSON object", value)
    fields = apispec.STRUCTS[name]
    by_fold = {fold(field): field for field in fields}
    out: dict = {}
    spelled: dict = {}
    for key, item in value:
        folded = fold(key)
        field = by_fold.get(folded)
        where = _join(path, key)
        if field is None and name == "ContainerCreate" and folded in _top_level_host_fields():
            raise BodyError(
                where,
                f"{where} belongs inside HostConfig; dockerd still reads it at the top level of a create body "
                '(a deprecated form), so the gateway refuses it there. Move it into "HostConfig".',
            )
        if field is None:
            raise BodyError(
                where,
                f"{where} is not a field Docker defines here; remove it (field names are case-sensitive in "
                "the ds01 gateway, e.g. 'Privileged', 'HostConfig')",
            )
        if key != field:
            raise BodyError(
                where,
                f"{where!r} is spelled differently from Docker's field {_join(path, field)!r}; the daemon would "
                "read it as that field, so the gateway only accepts Docker's own spelling",
            )
        if field in spelled:
            raise BodyError(where, f"{where} appears twice; send each field once")
        spelled[field] = key
        out[field] = _model(fields[field], item, where, depth + 1)
    return out


def decode(raw: bytes, shape: str) -> Optional[dict]:
    """A request body of ``shape`` (a key of ``apispec.BODIES``) → its canonical model.

    An empty body is an empty model; a body of ``null`` is None (forwarded as ``null``). Raises
    BodyError with a sentence naming the key.
    """
    struct = apispec.BODIES[shape]
    if not raw.strip():
        return {}
    value = parse(raw)
    if value is None:
        return None  # ``null``: e.g. docker 20.10's commit without changes (a {} would mean "empty config")
    model = _struct(struct, value, "", 0)
    for key in TOP_LEVEL_STRUCTS.get(shape, ()):
        if key in model and model[key] is None:
            raise BodyError(
                key,
                f'"{key}": null makes Docker read older top-level fields instead; send an object (or leave it out)',
            )
    return model


def encode(model: Any) -> bytes:
    """The model as the JSON the daemon receives (canonical keys, ASCII-escaped, no spaces)."""
    return json.dumps(model, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def get(model: Optional[dict], *keys: str, default: Any = None) -> Any:
    """``model[k1][k2]…`` where every level may be missing or None."""
    value: Any = model
    for key in keys:
        if not isinstance(value, dict):
            return default
        value = value.get(key)
    return default if value is None else value
