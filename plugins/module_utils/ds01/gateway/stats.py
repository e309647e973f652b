"""Request counters and a latency histogram the gateway publishes for the ds01 exporter.

The gateway and the exporter are separate processes, so the gateway writes its counters to
``<paths.run_dir>/gateway/metrics.json`` (atomic replace, every ``PUBLISH_EVERY_S``):
``{"requests": {outcome: n}, "latency": {"buckets": [[le, cumulative count], ..., ["+Inf", n]],
"sum": seconds}, "published_at": epoch}``. Outcomes: ``forwarded``, ``refused``, ``bad_request``,
``upstream_error``. Latency is from a request's head being read to the daemon's answer head
arriving (or the refusal being sent): the time a client waits for the first byte.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from typing import Optional

from .. import fsutil, logs

log = logs.get(__name__)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("forwarded", "refused", "bad_request", "upstream_error")
PUBLISH_EVERY_S = 10.0
RELATIVE_PATH = os.path.join("gateway", "metrics.json")


class RequestStats:
    def __init__(self) -> None:
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self._counts = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0

    def count(self, outcome: str, seconds: Optional[float] = None) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1
        if seconds is not None:
            self._counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sum += seconds

    def snapshot(self) -> dict:
        cumulative, running = [], 0
        for le, count in zip((*BUCKETS, "+Inf"), self._counts):
            running += count
            cumulative.append([le, running])
        return {
            "requests": dict(self.requests),
            "latency": {"buckets": cumulative, "sum": round(self._sum, 6)},
            "published_at": time.time(),
        }

    def publish(self, run_dir: str) -> bool:
        """Write the snapshot for the exporter; False (logged) when it cannot."""
        path = os.path.join(run_dir, RELATIVE_PATH)
        try:
            fsutil.atomic_write(path, json.dumps(self.snapshot()))
        except OSError as exc:
            log.warning("could not publish gateway counters to %s: %s", path, exc)
            return False
        return True
