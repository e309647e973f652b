"""The one username sanitiser (reference §6.1, without its divergences)."""

from __future__ import annotations

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import identity


@pytest.mark.parametrize(
    ("login", "expected"),
    [
        ("alice", "alice"),
        ("first.last@hertie-school.lan", "first_last"),
        ("123456@hertie-school.lan", "123456"),
        ("jean-luc", "jean_luc"),
        ("a..b__c", "a_b_c"),
        ("_x_", "x"),
        ("Mixed.Case", "Mixed_Case"),
        ("user+tag", "user_tag"),
    ],
)
def test_sanitize_table(login, expected):
    assert identity.sanitize_username(login) == expected


def test_long_names_are_cut_and_stay_distinct():
    a = identity.sanitize_username("a" * 40 + ".one")
    b = identity.sanitize_username("a" * 40 + ".two")
    assert len(a) == len(b) == identity.SLICE_NAME_MAX
    assert a != b
    assert "-" not in a


def test_no_hyphen_ever_reaches_a_slice_name():
    for login in ("x-y", "x--y@z-w", "-lead", "trail-"):
        token = identity.sanitize_username(login)
        assert "-" not in token and token and not token.startswith("_")
    assert identity.slice_unit("student", identity.sanitize_username("first.last@x")) == "ds01-student-first_last.slice"


def test_punctuation_only_login_gets_a_hash_token():
    token = identity.sanitize_username("...")
    assert token.startswith("u_") and len(token) == 8


@pytest.mark.parametrize(
    ("login", "ok"),
    [
        ("alice", True),
        ("a@b.c", True),
        ("bad user", False),
        ("", False),
        ("../x", False),
        ("x/y", False),
        ("-x", False),
    ],
)
def test_valid_login(login, ok):
    assert identity.valid_login(login) is ok
