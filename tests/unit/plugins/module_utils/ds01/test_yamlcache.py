"""yamlcache: parsed YAML kept across processes, keyed by the exact text, used only from a trusted file."""

from __future__ import annotations

import datetime as dt
import os

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import yamlcache
from ansible_collections.ds01.infra.plugins.module_utils.ds01.config import ConfigError, load_config
from ansible_collections.ds01.infra.plugins.module_utils.ds01.config.reader import Reader

MAIN = "default_group: student\ngroups:\n  student: {max_containers_per_user: 3}\n"


def write(path, text: str) -> str:
    path.write_text(text)
    os.chmod(path, 0o644)
    return str(path)


def read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def test_a_kept_file_gives_the_same_data_and_lines_as_parsing(tmp_path):
    source = write(tmp_path / "a.yaml", "when: 2031-02-03\nlist:\n  - x\n  - {n: 1.5, b: true}\n")
    fresh = Reader()
    data = fresh.load_yaml(source, required=True)
    assert yamlcache.remember(
        source, read(source), data, [(k, v) for (f, k), v in fresh.lines.items()], str(tmp_path / "c")
    )
    kept_data, kept_lines = yamlcache.lookup(source, read(source), str(tmp_path / "c"))
    assert kept_data == data == {"when": dt.date(2031, 2, 3), "list": ["x", {"n": 1.5, "b": True}]}
    assert dict(kept_lines) == {k: v for (f, k), v in fresh.lines.items()}


def test_an_edited_file_is_never_answered_from_the_cache(tmp_path):
    cache = str(tmp_path / "c")
    source = write(tmp_path / "a.yaml", "a: 1\n")
    assert yamlcache.remember(source, "a: 1\n", {"a": 1}, [(("a",), 1)], cache)
    stat = os.stat(source)
    write(tmp_path / "a.yaml", "a: 2\n")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime and size: only the text differs
    assert yamlcache.lookup(source, read(source), cache) is None


def test_a_cache_others_may_write_is_ignored(tmp_path):
    cache = str(tmp_path / "c")
    source = write(tmp_path / "a.yaml", "a: 1\n")
    assert yamlcache.remember(source, "a: 1\n", {"a": 1}, [], cache)
    os.chmod(yamlcache.cache_file(source, cache), 0o666)
    assert yamlcache.lookup(source, "a: 1\n", cache) is None
    os.chmod(yamlcache.cache_file(source, cache), 0o644)
    os.chmod(cache, 0o777)
    assert yamlcache.lookup(source, "a: 1\n", cache) is None
    os.chmod(cache, 0o755)
    assert yamlcache.lookup(source, "a: 1\n", cache) == ({"a": 1}, [])


def test_data_json_would_change_and_private_files_are_not_kept(tmp_path):
    cache = str(tmp_path / "c")
    source = write(tmp_path / "a.yaml", "x: 1\n")
    shared = [1]
    for data in ({1: "a"}, {"a": {1, 2}}, {"a": float("inf")}, {"a": shared, "b": shared}, {"a": b"x"}):
        assert not yamlcache.remember(source, "x: 1\n", data, [], cache)
        assert yamlcache.lookup(source, "x: 1\n", cache) is None
    os.chmod(source, 0o600)
    assert not yamlcache.remember(source, "x: 1\n", {"x": 1}, [], cache)


def test_a_config_loads_alike_from_the_cache_and_problems_keep_their_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(yamlcache, "CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(yamlcache.lookup, "__defaults__", (str(tmp_path / "c"),))
    monkeypatch.setattr(yamlcache.remember, "__defaults__", (str(tmp_path / "c"),))
    path = write(tmp_path / "resource-limits.yaml", MAIN + "defaults:\n  max_containers_per_user: -4\n")
    problems = []
    for _round in range(2):  # parsed, then answered from the cache
        try:
            load_config(path)
        except ConfigError as exc:
            problems.append([str(p) for p in exc.problems])
    assert os.listdir(tmp_path / "c")
    assert problems[0] == problems[1] and any(":5:" in p for p in problems[0])
    write(tmp_path / "resource-limits.yaml", MAIN)
    assert load_config(path).resolve("bob").max_containers_per_user == 3


def test_nothing_is_written_where_the_role_made_no_cache_directory(tmp_path):
    """A sandbox, a demo or a test run as root leaves the host alone: no /var/cache/ds01, no cache."""
    source = write(tmp_path / "a.yaml", "a: 1\n")
    cache = tmp_path / "absent" / "yaml"
    assert yamlcache.remember(source, read(source), {"a": 1}, [], str(cache)) is False
    assert not (tmp_path / "absent").exists()
