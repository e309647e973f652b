"""The codes and the verdict ``(code, sentence[, HTTP status])`` every object decision answers with."""

from __future__ import annotations

POLICY_DENIED = "POLICY_DENIED"
NOT_OWNER = "NOT_OWNER"
NOT_FOUND = "NOT_FOUND"

Verdict = tuple  # (code, sentence[, HTTP status]): the arguments of policy.Refusal


def denied(sentence: str) -> Verdict:
    return (POLICY_DENIED, sentence)
