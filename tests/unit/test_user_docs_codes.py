"""docs/users/refusals.md lists exactly the refusal codes the code defines: each under its own heading.

The codes come from the modules that refuse (imported, not grepped): the allocator's ``CODES``, the
gateway policy's and object decisions' code constants. Two codes the gateway sends have no constant in the
core yet, only a literal where they are raised (``NAME_IN_USE`` in gateway/creates.py, ``BAD_REQUEST`` in
gateway/connection.py); they are named here, and ``NAME_IN_USE`` is also seen from the real gateway by an
example of the page (tests/integration/test_user_docs.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from ds01 import allocator
from ds01.gateway import objects, policy

PAGE = Path(__file__).resolve().parents[2] / "docs" / "users" / "refusals.md"
HEADING = re.compile(r"^### `([A-Z][A-Z_]+)`\s*$", re.MULTILINE)
LITERAL_ONLY = ("NAME_IN_USE", "BAD_REQUEST")


def defined_codes() -> set:
    gateway = {policy.POLICY_DENIED, policy.NOT_OWNER, policy.CONTAINER_LIMIT, objects.NOT_FOUND, objects.NOT_OWNER}
    return set(allocator.CODES) | gateway | set(LITERAL_ONLY)


def test_the_refusals_page_lists_every_code_once_and_no_other():
    documented = HEADING.findall(PAGE.read_text())
    assert len(documented) == len(set(documented)), "a code has two headings"
    assert set(documented) == defined_codes()
