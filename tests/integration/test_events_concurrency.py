"""Many processes appending to one event log at once: every line whole, every event exactly once.

50 separate Python processes (the plain ``ds01`` package, as on a host) each write 1000 events as fast as they
can, released together; sizes vary from a few bytes of details to just under the 4000-byte line limit, and some
are over it (truncated, so their identity travels in the ``container`` key the truncation keeps). Every line
carries the hash chain, and the chain verifies afterwards: no writer gave up on the chain lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import events

WRITERS = 50
EVENTS_EACH = 1000
CORE_PARENT = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "module_utils")

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from ds01 import events

path, writer, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
log = events.EventLog(path)
sys.stdin.buffer.read(1)  # blocks until the parent releases every writer at once
failed = 0
for seq in range(count):
    kind = (writer * 7 + seq) % 20
    if kind == 0:
        pad = events.MAX_BODY_BYTES - 300 + (seq % 150)  # around the limit: some kept whole, some truncated
    elif kind == 1:
        pad = 5000 + seq            # always truncated
    elif kind < 5:
        pad = 1000 + (seq * 13) % 2500
    else:
        pad = (seq * 31) % 300
    ok = log.write("test.concurrency", user=f"writer{writer}", source="stress",
                   container=f"w{writer}-s{seq}", writer=writer, seq=seq, pad="x" * pad)
    failed += not ok
sys.exit(1 if failed else (2 if log.unlocked else 0))
"""


def test_fifty_processes_never_interleave(tmp_path):
    path = str(tmp_path / "events.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    children = [
        subprocess.Popen(
            [sys.executable, "-S", "-c", CHILD, os.path.abspath(CORE_PARENT), path, str(w), str(EVENTS_EACH)],
            env=env,
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(WRITERS)
    ]
    for child in children:  # all started (and blocked on stdin): release them together
        child.stdin.write(b"g")
        child.stdin.close()
    failures = []
    for w, child in enumerate(children):
        child.wait(timeout=120)
        err = child.stderr.read()
        child.stderr.close()
        if child.returncode != 0:
            failures.append((w, child.returncode, err.decode(errors="replace")[-500:]))
    assert failures == []

    with open(path, "rb") as handle:
        data = handle.read()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == WRITERS * EVENTS_EACH

    seen: Counter = Counter()
    truncated = near_limit = switches = 0
    previous_writer = None
    for line in lines:
        assert len(line) + 1 <= events.MAX_LINE_BYTES
        record = json.loads(line)  # a torn or interleaved line would not parse
        assert record["event_type"] == "test.concurrency" and record["schema_version"] == "1"
        details = record["details"]
        writer, seq = details["container"][1:].split("-s")
        switches += writer != previous_writer
        previous_writer = writer
        assert record["user"] == f"writer{writer}"
        if details.get("truncated"):
            truncated += 1
            assert details["original_size"] > events.MAX_BODY_BYTES  # the line before its chain header
        else:
            assert (details["writer"], details["seq"]) == (int(writer), int(seq))
            assert details["pad"] == "x" * len(details["pad"])
            near_limit += len(line) + 1 > 3900
        seen[(int(writer), int(seq))] += 1

    assert set(seen.values()) == {1}
    assert set(seen) == {(w, s) for w in range(WRITERS) for s in range(EVENTS_EACH)}
    assert truncated > 2000 and near_limit > 500  # the sizes really straddled the limit
    assert switches > 1000  # the writers really ran at the same time (lines of many writers alternate)

    # the chain holds across all 50 000 lines: each links to the one before it, numbered 1 to 50 000
    report = events.verify_chain(path)
    assert report.ok, report.message()
    assert (report.status, report.lines, report.chained, report.unlocked) == ("intact", len(lines), len(lines), 0)
    assert [events.chain_header(line)[1] for line in lines] == list(range(1, len(lines) + 1))

    # the reader agrees, and filters by writer through the container key
    stream = events.EventLog(path).read(events.EventFilter(container="w7-s999"))
    assert [e["user"] for e in stream] == ["writer7"] and stream.skipped_lines == 0
