"""``ds01`` behaves like a Unix tool: global options after the sub-command, a man page, bash completion.

The man page and completion are what ``ds01 docs man`` / ``ds01 docs bash-completion`` print (the role installs
exactly that output); they are rendered by the real ``man -l`` (groff) and sourced into a real bash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import cli

REPO = Path(__file__).resolve().parents[2]
DS01 = str(REPO / ".venv" / "bin" / "ds01")
LIMITS = """
default_group: student
groups:
  student:
    members: [root]
    max_gpu_equivalents: 2
paths: {state_dir: state, log_dir: log, run_dir: run}
"""


def ds01(*args, env=None):
    environ = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "DOCKER_HOST": "unix:///nonexistent.sock", **(env or {})}
    return subprocess.run([DS01, *args], capture_output=True, text=True, check=False, env=environ, cwd="/")


def commands():
    """Every sub-command path of the full parser, e.g. ("exporter", "serve")."""
    return [words for words, _sub in cli.sub_parsers(cli.build_parser([]))]


@pytest.fixture
def sandbox(tmp_path):
    for sub in ("state", "log", "run"):
        (tmp_path / sub).mkdir()
    (tmp_path / "resource-limits.yaml").write_text(LIMITS)
    return tmp_path


def test_config_after_the_subcommand(sandbox):
    cfg = str(sandbox / "resource-limits.yaml")
    after = ds01("limits", "--config", cfg, "--json")
    assert after.returncode == 0, after.stderr
    report = json.loads(after.stdout)
    assert report["user"] == "root" and report["gpu"]["quota_gpueq"] == 2
    before = ds01("--config", cfg, "limits", "--json")
    assert json.loads(before.stdout)["gpu"] == report["gpu"]
    brief = ds01("limits", "--brief", "-v", "--config", cfg)
    assert brief.returncode == 0 and brief.stdout.startswith("root (student) | GPU 0/2 gpueq")
    # the one after the sub-command wins; a config that does not exist is named, with what to do
    wrong = ds01("--config", cfg, "limits", "--config", str(sandbox / "missing.yaml"))
    assert wrong.returncode == 2 and "missing.yaml" in wrong.stderr and "ds01 config check" in wrong.stderr
    # a nested sub-command takes it too
    nested = ds01("alerts", "run", "--dry-run", "--json", "--config", cfg)
    assert json.loads(nested.stdout)["dry_run"] is True


def test_man_page_renders_and_lists_every_command(tmp_path):
    made = ds01("docs", "man")
    assert made.returncode == 0, made.stderr
    page = tmp_path / "ds01.1"
    page.write_text(made.stdout)
    if shutil.which("man"):
        shown = subprocess.run(
            ["man", "-l", str(page)], capture_output=True, text=True, check=False, env={**os.environ, "MANWIDTH": "200"}
        )
    else:
        shown = subprocess.run(["groff", "-man", "-Tascii", str(page)], capture_output=True, text=True, check=False)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    text = shown.stdout
    assert "SYNOPSIS" in text and "ds01 [--config PATH] [-v] COMMAND" in text
    headings = {line.strip() for line in text.splitlines() if line.startswith("   ") and not line.startswith("    ")}
    for words in commands():
        assert any(h == " ".join(words) or h.startswith(" ".join(words) + " ") for h in headings), words
    lint = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0 and lint.stderr == "", lint.stderr


def complete(script, *words):
    """What the completion offers for ``ds01 WORDS...`` (the last word being typed) in a real bash."""
    words_q = " ".join(f"'{w}'" for w in ("ds01", *words))
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({words_q}); COMP_CWORD={len(words)}; COMP_LINE='ds01 {' '.join(words)}'\n"
        "complete -p ds01\n_ds01\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == "complete -F _ds01 ds01"
    return lines[1:]


def test_bash_completion_offers_the_subcommands(tmp_path):
    made = ds01("docs", "bash-completion")
    assert made.returncode == 0, made.stderr
    script = tmp_path / "ds01"
    script.write_text(made.stdout)
    top = complete(script, "")
    assert {words[0] for words in commands()} <= set(top) and "--config" in top
    assert complete(script, "lim") == ["limits"] and complete(script, "li") == ["lifecycle", "limits"]
    assert complete(script, "--config", "/etc/x.yaml", "exporter", "") == ["serve", "--config", "--verbose"]
    assert set(complete(script, "limits", "--")) == {"--brief", "--json", "--config", "--verbose"}
    (tmp_path / "lab.yaml").write_text("")
    assert complete(script, "limits", "--config", str(tmp_path / "la")) == [str(tmp_path / "lab.yaml")]
