"""Reading YAML with line numbers, and the problems found on the way.

``Reader`` reads one directory's files and collects every ``Problem`` (file, line, key path, what was wrong
and what was expected) and every deprecation warning, so ``load`` can report them all at once in one
``ConfigError``. ``check_keys`` checks one mapping against a key table of ``schema``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Optional

from .. import yamlcache
from ..record import record
from .schema import UNIT_IN_OLD_NAME
from .units import SECONDS, UNIT_WORD, Kind, parse_duration_text

# PyYAML ships with ansible and with the runtime venv. It is imported on first use (``yaml_module``): a command
# whose files are all kept in ``yamlcache`` never pays for importing it.
HAS_YAML = importlib.util.find_spec("yaml") is not None


def yaml_module() -> Any:
    """PyYAML (imported on the first call; callers check ``HAS_YAML`` first)."""
    import yaml

    return yaml


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


@record(frozen=True)
class Problem:
    """One thing wrong with the config, said so that an admin can fix it without reading code."""

    file: str
    key: str
    message: str
    line: Optional[int] = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "key": self.key, "message": self.message}


class ConfigError(Exception):
    """The config cannot be used; ``problems`` lists every reason at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        head = f"ds01: the configuration has {count} problem{'s' if count != 1 else ''}:"
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


# --------------------------------------------------------------------------------------------
# YAML reading with line numbers
# --------------------------------------------------------------------------------------------


class Reader:
    """Collects problems and warnings while reading one directory's files."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.lines: dict[tuple[str, tuple], int] = {}
        self.texts: dict[str, str] = {}  # file -> the text that was validated (for the last good config)

    def problem(self, file: str, path: tuple, message: str) -> None:
        self.problems.append(Problem(file, dotted(path), message, self.line(file, path)))

    def warn(self, file: str, path: tuple, message: str) -> None:
        line = self.line(file, path)
        where = f"{file}:{line}" if line else file
        self.warnings.append(f"{where}: {dotted(path)}: {message}")

    def line(self, file: str, path: tuple) -> Optional[int]:
        while path:
            if (file, path) in self.lines:
                return self.lines[(file, path)]
            path = path[:-1]
        return None

    def load_yaml(self, file: str, required: bool) -> Any:
        try:
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            if required:
                self.problems.append(Problem(file, "", "file not found"))
            return None
        except PermissionError:
            self.problems.append(
                Problem(file, "", "cannot be read (permission denied); it must be readable (mode 0644)")
            )
            return None
        except IsADirectoryError:
            self.problems.append(Problem(file, "", "is a directory, not a YAML file"))
            return None
        except OSError as exc:
            self.problems.append(Problem(file, "", f"cannot be read: {exc.strerror}"))
            return None
        except UnicodeDecodeError:
            self.problems.append(Problem(file, "", "is not UTF-8 text"))
            return None
        self.texts[file] = text
        kept = yamlcache.lookup(file, text)
        if kept is not None:  # parsed before, from exactly this text, with no problem found on the way
            data, lines = kept
            self.lines.update(((file, key), line) for key, line in lines)
            return data
        if not HAS_YAML:
            self.problems.append(Problem(file, "", "PyYAML is not installed in this Python"))
            return None
        yaml = yaml_module()
        try:
            node, data = parse_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            self.problems.append(Problem(file, "", f"is not valid YAML: {problem}", line))
            return None
        before = len(self.problems)
        if node is not None:
            self._index(file, node, ())
        if len(self.problems) == before:
            yamlcache.remember(
                file, text, data, [(key, line) for (name, key), line in self.lines.items() if name == file]
            )
        return data

    def _index(self, file: str, node: Any, path: tuple) -> None:
        yaml = yaml_module()
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, value_node in node.value:
                key = key_node.value
                sub = (*path, key)
                if key in seen:
                    self.problems.append(
                        Problem(
                            file,
                            dotted(sub),
                            "duplicate key (YAML keeps only the last one)",
                            key_node.start_mark.line + 1,
                        )
                    )
                seen.add(key)
                self.lines.setdefault((file, sub), key_node.start_mark.line + 1)
                self._index(file, value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                sub = (*path, index)
                self.lines[(file, sub)] = item.start_mark.line + 1
                self._index(file, item, sub)


def parse_yaml(text: str) -> tuple:
    """``(node, data)`` of one YAML document: its node tree (for line numbers) and what ``yaml.safe_load`` gives,
    from one parse (the data is constructed from the node tree, as ``safe_load`` does)."""
    yaml = yaml_module()
    # libyaml's parser where PyYAML was built with it (Debian's python3-yaml, the PyPI wheels): the same safe
    # constructor and resolver, so the same data and node marks, parsed several times faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def dotted(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    import difflib  # deferred: only a config with a wrong key needs it

    close = difflib.get_close_matches(str(key), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_section(reader: Reader, file: str, path: tuple, value: Any) -> dict:
    """A section that is empty or comments-only (YAML null) is ``{}``; anything else must be a mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        reader.problem(file, path, f"got {show(value)}, expected a mapping of keys to values")
        return {}
    return value


def check_keys(
    reader: Reader,
    file: str,
    path: tuple,
    raw: dict,
    keys: Mapping[str, tuple[Kind, Any]],
    aliases: Mapping[str, str] = MappingProxyType({}),
    ignored: Mapping[str, str] = MappingProxyType({}),
    extra: Iterable[str] = (),
) -> dict:
    """Validate ``raw`` against ``keys``; return {canonical key: normalised value} for keys present."""
    out: dict = {}
    extra = tuple(extra)
    for key, value in raw.items():
        sub = (*path, key)
        if key in extra:
            continue
        if not isinstance(key, str):
            reader.problem(file, sub, f"key {show(key)} is not a name")
            continue
        if key in ignored:
            reader.warn(file, sub, f"is deprecated and ignored: {ignored[key]}")
            continue
        canonical = aliases.get(key)
        if canonical is not None:
            if canonical in raw:
                reader.problem(
                    file, sub, f"both '{canonical}' and its old name '{key}' are set; keep only '{canonical}'"
                )
                continue
            value = _convert_alias(reader, file, sub, key, canonical, value)
            if value is _INVALID:
                continue
            reader.warn(file, sub, f"is deprecated; use '{canonical}' (read as {canonical}: {show(value)})")
            key = canonical
        elif key not in keys:
            reader.problem(file, sub, "unknown key" + did_you_mean(key, [*keys, *extra]))
            continue
        kind, _default = keys[key]
        if value is None or (value == "unlimited" and kind.nullable):
            if not kind.nullable:
                reader.problem(file, sub, "must be set (null is not allowed here)")
                continue
            out[key] = None
            continue
        try:
            out[key] = kind.check(value)
        except ValueError as exc:
            reader.problem(file, sub, f"got {show(value)}, expected {exc}{kind.expected_suffix()}")
    return out


_INVALID = object()


def _convert_alias(reader: Reader, file: str, path: tuple, old: str, new: str, value: Any) -> Any:
    """Old duration keys carry no unit in their name, so the value must carry one."""
    unit = new.rsplit("_", 1)[-1] if new.endswith(("_h", "_m", "_s")) else None
    if unit is None or value is None or old in UNIT_IN_OLD_NAME:
        return value
    if isinstance(value, str) and value != "unlimited":
        try:
            seconds = parse_duration_text(value)
        except ValueError:
            reader.problem(
                file, path, f"got {show(value)}, expected a duration with a unit such as '24h', '30m' or '60s'"
            )
            return _INVALID
        return round(seconds / SECONDS[unit], 6)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        reader.problem(
            file,
            path,
            f"got {value!r}: a bare number is ambiguous here (the old system read it as seconds); "
            f"write '{new}: {value}' if you mean {UNIT_WORD[unit]}, or give a unit such as '{value}h'",
        )
        return _INVALID
    return value
