"""The gateway's published counters: outcomes and a cumulative latency histogram."""

from __future__ import annotations

import json

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import stats


def test_histogram_is_cumulative_and_published_atomically(tmp_path):
    counters = stats.RequestStats()
    for seconds in (0.0005, 0.003, 0.003, 0.2, 30.0):
        counters.count("forwarded", seconds)
    counters.count("refused", 0.002)
    counters.count("bad_request")  # refused before a request existed: counted, not timed
    assert counters.publish(str(tmp_path))
    data = json.loads((tmp_path / "gateway" / "metrics.json").read_text())
    assert data["requests"] == {"forwarded": 5, "refused": 1, "bad_request": 1, "upstream_error": 0}
    buckets = {str(le): count for le, count in data["latency"]["buckets"]}
    assert buckets["0.001"] == 1 and buckets["0.0025"] == 2 and buckets["0.005"] == 4
    assert buckets["0.25"] == 5 and buckets["10.0"] == 5 and buckets["+Inf"] == 6
    assert abs(data["latency"]["sum"] - 30.2085) < 1e-6
    assert [p.name for p in (tmp_path / "gateway").iterdir()] == ["metrics.json"]


def test_unwritable_run_dir_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert stats.RequestStats().publish(str(blocker)) is False
