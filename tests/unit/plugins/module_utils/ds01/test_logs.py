"""logs: loggers that import ``logging`` when they first log, in a fresh interpreter each (the point is the import)."""

from __future__ import annotations

import os
import subprocess
import sys

CORE_PARENT = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "plugins", "module_utils")
)


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": CORE_PARENT},
    )


def test_nothing_imports_logging_until_a_logger_logs_then_the_command_format_applies():
    proc = run(
        "import sys\n"
        "from ds01 import logs\n"
        "log = logs.get('ds01.test')\n"
        "logs.configure('WARNING', 'ds01: %(levelname)s: %(message)s')\n"
        "print('logging' in sys.modules)\n"
        "log.info('not shown')\n"
        "print('logging' in sys.modules)\n"
        "log.warning('shown %s', 1)\n"
        "import logging\n"
        "print(log.name, log.getEffectiveLevel() == logging.WARNING, logs.get('ds01.test')._real is None)\n"
        "print(logging.getLogger('ds01.test') is log._real)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:4] == ["False", "True", "ds01.test True True", "True"]
    assert proc.stderr == "ds01: WARNING: shown 1\n"


def test_the_cold_gpu_plan_path_does_not_import_logging():
    proc = run(
        "import sys\n"
        "from ds01 import cli, allocator, config, docker, gpu, intents\n"
        "from ds01.cli import gpu as cli_gpu\n"
        "heavy = ('logging', 'dataclasses', 'inspect', 'urllib.parse', 'shutil')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_settle_applies_the_settings_when_another_module_imported_logging():
    proc = run(
        "from ds01 import logs\n"
        "logs.configure('WARNING', 'ds01: %(levelname)s: %(message)s')\n"
        "logs.set_level('INFO')\n"
        "import logging\n"
        "logs.settle()\n"
        "logging.getLogger('other').info('from a module that logs itself')\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "ds01: INFO: from a module that logs itself\n"
