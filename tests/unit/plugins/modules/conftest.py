"""AnsibleModule harness: run a module's main() in-process and catch what it would print.

The community.general pattern (``AnsibleExitJson``/``AnsibleFailJson``), with ansible-core 2.19's
``patch_module_args`` to hand the module its arguments.
"""

from __future__ import annotations

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args


class AnsibleExitJson(Exception):
    """The module called exit_json; ``result`` holds its keyword arguments."""

    def __init__(self, result: dict) -> None:
        super().__init__(result)
        self.result = result


class AnsibleFailJson(Exception):
    """The module called fail_json; ``result`` holds its keyword arguments."""

    def __init__(self, result: dict) -> None:
        super().__init__(result)
        self.result = result


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise AnsibleExitJson(kwargs)


def _fail_json(self, msg, **kwargs):
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise AnsibleFailJson(kwargs)


@pytest.fixture
def run_module(monkeypatch, tmp_path):
    """``run_module(module, args, check=False, diff=False, fails=False)`` → the module's result.

    Asserts the module ended the expected way: ``exit_json``, or ``fail_json`` with ``fails=True``.
    """
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail_json)
    remote_tmp = tmp_path / "remote-tmp"
    remote_tmp.mkdir()

    def run(module, args, check=False, diff=False, fails=False):
        full = dict(args)
        full.update(_ansible_check_mode=check, _ansible_diff=diff, _ansible_remote_tmp=str(remote_tmp))
        with patch_module_args(full):
            try:
                module.main()
            except AnsibleExitJson as done:
                assert not fails, f"expected fail_json, got exit_json: {done.result}"
                return done.result
            except AnsibleFailJson as failed:
                assert fails, f"expected exit_json, got fail_json: {failed.result}"
                return failed.result
        raise AssertionError("the module returned without exit_json or fail_json")

    return run
