"""The over-quota sentence: it explains GPU-equivalents and advises only what can succeed (issue 16 item 3).

Table-driven over the demo topology (GPUs 0 and 1 whole; 2.0 3g, 2.1 2g, 2.2 and 2.3 1g; 3.0 ... 3.6 1g).
Holdings are built as the engine tests build them (``test_allocator.held``).
"""

from __future__ import annotations

import pytest
from test_allocator import DEMO, held, limits

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import allocator
from ansible_collections.ds01.infra.plugins.module_utils.ds01.allocator import Request

QUOTA_1 = {"max_gpu_equivalents": 1.0, "gpu_limit": None, "max_containers_per_user": None}
SEVEN_SMALLEST = [held(f"m{i}", "alice", f"3.{i}") for i in range(7)]

# (id, limits kwargs, holdings, request, phrases the sentence has, phrases it must not have)
CASES = [
    (
        "already-on-the-smallest-slice-no-smaller-advice",
        {**QUOTA_1, "allow_full_gpu": False},
        SEVEN_SMALLEST,
        Request(),
        ["You hold 1.0 of your 1.0 GPU-equivalents", "needs 0.14 more", "1g = 0.14", "Stop and remove one"],
        ["smaller", "fewer", "MIG slice ("],
    ),
    (
        "whole-gpu-held-a-slice-is-advised-only-if-it-fits",
        {"max_gpu_equivalents": 1.2, "gpu_limit": None, "max_containers_per_user": None},
        [held("big", "alice", "0")],
        Request(count=1, full_gpu=True),
        ["You hold 1.0 of your 1.2 GPU-equivalents", "`docker rm -f big`", "ask for a MIG slice"],
        ["smaller MIG slice", "fewer"],
    ),
    (
        "quota-below-the-lightest-slot-asks-the-admins",
        {"max_gpu_equivalents": 0.1, "gpu_limit": None, "allow_full_gpu": False},
        [],
        Request(),
        ["You hold 0.0 of your 0.1 GPU-equivalents", "lightest slot you may have counts 0.14", "ask the admins"],
        ["docker rm", "smaller", "fewer"],
    ),
    (
        "two-whole-gpus-fewer-or-a-slice",
        {"user": "dave", "max_gpu_equivalents": 1.5, "gpu_limit": None},
        [],
        Request(count=2, full_gpu=True),
        ["needs 2.0 more", "a whole GPU counts 1.0", "Ask for fewer GPUs or a MIG slice"],
        ["docker rm"],
    ),
]


@pytest.mark.parametrize(
    ("holdings_", "request_", "present", "absent", "kw"),
    [pytest.param(c[2], c[3], c[4], c[5], c[1], id=c[0]) for c in CASES],
)
def test_quota_sentence(holdings_, request_, present, absent, kw):
    refusal = allocator.decide(DEMO, holdings_, limits(**kw), request_)
    assert isinstance(refusal, allocator.Refusal) and refusal.code == "USER_AT_LIMIT", refusal
    for phrase in present:
        assert phrase in refusal.sentence, refusal.sentence
    for phrase in absent:
        assert phrase not in refusal.sentence, refusal.sentence
