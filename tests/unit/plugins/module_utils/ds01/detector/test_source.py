"""detector.source: a full scan survives one container the daemon will not let be read, and not a daemon gone."""

from __future__ import annotations

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.detector import source
from ansible_collections.ds01.infra.plugins.module_utils.ds01.docker import sdk


class Api:
    def __init__(self, failing: dict) -> None:
        self.failing = failing

    def containers(self, all=False):
        return [{"Id": cid, "Names": [f"/{cid}"]} for cid in ("a", "locked", "b")]

    def inspect_container(self, cid):
        if cid in self.failing:
            raise self.failing[cid]
        return {"Id": cid, "Name": f"/{cid}"}


class Client:
    def __init__(self, failing: dict) -> None:
        self.api = Api(failing)

    def close(self) -> None:
        pass


def scan(failing: dict) -> list:
    found = source.DockerSource.__new__(source.DockerSource)
    found.timeout = 1
    found._client = Client(failing)
    return found.list_all()


def test_a_container_whose_inspect_times_out_is_left_out_of_the_scan(caplog):
    with caplog.at_level("WARNING"):
        attrs = scan({"locked": sdk.ReadTimeout("read timed out")})
    assert [a["Id"] for a in attrs] == ["a", "b"]
    assert "left out container ['/locked']" in caplog.text


def test_a_daemon_that_goes_away_mid_scan_is_docker_unavailable():
    with pytest.raises(source.DockerUnavailable):
        scan({"locked": sdk.RequestException("connection refused")})
