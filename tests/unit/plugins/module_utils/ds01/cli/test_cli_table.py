"""cli/table.py: the one text-table layout of the ds01 command's human output."""

from __future__ import annotations

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.cli import table


@pytest.mark.parametrize(
    ("headers", "rows", "options", "expected"),
    [
        pytest.param(
            ("NAME", "STATE"),
            [("box", "running"), ("a-much-longer-name", "exited")],
            {},
            ["NAME                STATE", "box                 running", "a-much-longer-name  exited"],
            id="columns-fit-their-widest-cell",
        ),
        pytest.param(
            ("SLOT", "GPUEQ", "USER"),
            [("0", "1.0", "ana"), ("1.2", "0.14", "-")],
            {"align": "lr"},
            ["SLOT  GPUEQ  USER", "0       1.0  ana", "1.2    0.14  -"],
            id="right-aligned-numbers-and-header",
        ),
        pytest.param(
            ("A", "LAST"),
            [("x", ""), ("y", "z")],
            {},
            ["A  LAST", "x", "y  z"],
            id="no-trailing-spaces",
        ),
        pytest.param(
            None,
            [("ok", "docker", "reachable"), ("FAIL", "gpu", "no NVML")],
            {},
            ["ok    docker  reachable", "FAIL  gpu     no NVML"],
            id="headerless",
        ),
        pytest.param(
            ("IMAGE", "AGE"),
            [("registry.example/very/long/image:tag", "5s")],
            {"max_width": [10, None]},
            ["IMAGE       AGE", "registr...  5s"],
            id="long-cell-cut-with-an-ascii-ellipsis",
        ),
        pytest.param(
            ("C",),
            [("abcdef",)],
            {"max_width": 2},
            ["C", ".."],
            id="a-limit-narrower-than-the-ellipsis",
        ),
        pytest.param(
            ("N", "V"),
            [(3, None), (12.5, 0)],
            {"align": "r"},
            ["   N  V", "   3", "12.5  0"],
            id="numbers-and-none-become-text",
        ),
        pytest.param(
            ("USER", "NOTE"),
            [("eve\nroot", "tab\there\x1b[2J")],
            {},
            ["USER      NOTE", "eve root  tab here [2J"],
            id="control-characters-cannot-break-a-row",
        ),
        pytest.param(
            ("WHO", "WHAT"),
            [("did", "stop"), ("would", "remove")],
            {"gap": " "},
            ["WHO   WHAT", "did   stop", "would remove"],
            id="a-narrower-gap",
        ),
        pytest.param(("A", "B"), [], {}, ["A  B"], id="header-only"),
        pytest.param(None, [], {}, [], id="nothing"),
    ],
)
def test_lines(headers, rows, options, expected):
    assert table.lines(headers, rows, **options) == expected


def test_render_joins_the_lines_after_an_indent():
    text = table.render(("NAME", "GPU"), [("box", "0"), ("cpu-only", "")], indent="  ")
    assert text == "  NAME      GPU\n  box       0\n  cpu-only"
    assert all(line == line.rstrip() for line in text.splitlines())
    assert table.render(None, []) == ""


def test_non_ascii_cells_are_kept_and_only_ascii_is_added():
    text = table.render(("USER", "LIMIT"), [("jürgen", "∞"), ("a" * 30, "2")], max_width=[12, None])
    assert text.splitlines() == ["USER          LIMIT", "jürgen        ∞", "aaaaaaaaa...  2"]
    added = text.replace("jürgen", "").replace("∞", "")
    assert added.isascii()


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        pytest.param([("a",)], {}, "every row of a table needs 2 cells", id="short-row"),
        pytest.param([("a", "b")], {"align": "lrr"}, "align 'lrr'", id="align-too-long"),
        pytest.param([("a", "b")], {"align": "c"}, "align 'c'", id="align-unknown-letter"),
        pytest.param([("a", "b")], {"max_width": [3]}, "one limit for each of 2 columns", id="max-width-count"),
        pytest.param([("a", "b")], {"max_width": 0}, "at least 1", id="max-width-zero"),
    ],
)
def test_a_callers_mistake_is_a_value_error(rows, options, message):
    with pytest.raises(ValueError, match=message):
        table.lines(("H1", "H2"), rows, **options)
