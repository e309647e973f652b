"""The ``ds01`` command: one entry point for admins, users and the runtime units.

Each feature registers its sub-commands from its own ``cli/<feature>.py`` module (listed in
``COMMAND_MODULES``); this file owns only what they share: finding the config, ``--json``,
and the edge that turns any failure into a sentence and an exit code instead of a traceback.

Exit codes: 0 success, 1 "the answer is no" (a check failed, a request would be refused),
2 usage or configuration error, 3 an infrastructure fault (Docker, NVML, a file) was logged.
While the config files are invalid, commands run on the last good config saved on disk (``config.load_last_good``)
with a one-line warning, and exit as they would otherwise; ``ds01 config check`` still reports the broken files.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Callable, Optional

from .. import config as config_mod
from .. import logs

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_FAULT = 3

# Feature modules that add sub-commands; each defines ``register(subparsers)``. The map from
# command word to module lets ``ds01 limits --brief`` (run at every login) import only what it
# needs instead of every feature and the Docker SDK.
COMMANDS = {
    "config": "config",
    "events": "events",
    "gpu": "gpu",
    "detect": "detect",
    "workloads": "detect",
    "lifecycle": "lifecycle",
    "exporter": "observe",
    "limits": "observe",
    "why": "observe",
    "alerts": "observe",
    "gateway": "gateway",
    "access": "access",
    "docs": "docs",
    "container": "container",
    "doctor": "doctor",
}

COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))

log = logs.get("ds01")


class CommandError(Exception):
    """A failure a command reports as one sentence and an exit code (never a traceback)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAULT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Context:
    """What every command handler gets: the parsed arguments and lazily loaded shared state."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._config: Optional[config_mod.Config] = None

    @property
    def config_path(self) -> str:
        return config_mod.find_config_path(getattr(self.args, "config", None))

    @property
    def config(self) -> config_mod.Config:
        """The validated config, saved as the last good one (where this process may write).

        While the files are invalid, the last good config saved on disk is used instead, with a one-line warning
        naming the broken file and its problem; without one, the ``ConfigError`` is turned into exit 2 by ``main``.
        """
        if self._config is None:
            path = self.config_path
            try:
                self._config = config_mod.load_config(path)
            except config_mod.ConfigError as exc:
                fallback = config_mod.load_last_good(path)
                if fallback is None:
                    raise
                log.warning("%s", config_mod.fallback_warning(path, exc, fallback))
                self._config = fallback
            else:
                config_mod.save_last_good(self._config)
            for warning in self._config.warnings:
                log.warning("%s", warning)
        return self._config

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def emit(self, data: Any, human: Callable[[Any], str]) -> None:
        """Print ``data`` as JSON with ``--json``, else the human rendering of it."""
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        else:
            text = human(data)
            if text:
                sys.stdout.write(text if text.endswith("\n") else text + "\n")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a stable JSON document instead of text")


def _command_word(argv: list[str]) -> Optional[str]:
    """The sub-command named in ``argv`` (skipping global options), if any."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--config":
            skip = True
            continue
        if arg.startswith("-"):
            continue
        return arg
    return None


def _columns() -> int:
    """The help's width as ``shutil.get_terminal_size()`` gives it ($COLUMNS, else the terminal on stdout, else 80),
    without importing shutil: argparse does on every ``add_argument``, and shutil's own imports (bz2, lzma) cost a cold
    command about 3 ms."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, its width taken by ``_columns``."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: Optional[int] = None):
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    """The ``ds01`` parser; its sub-command parsers are of this class too (``add_subparsers`` makes them so)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: Optional[list[str]] = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="ds01",
        description="ds01: fair, safe and visible sharing of a lab GPU server.",
    )
    parser.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    word = _command_word(list(sys.argv[1:] if argv is None else argv))
    names = (COMMANDS[word],) if word in COMMANDS else COMMAND_MODULES
    for name in names:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            # A feature module that is not part of this build is simply absent; anything
            # else missing (a dependency inside a present module) is a real error.
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        module.register(subparsers)
    share_global_options(parser)
    return parser


CONFIG_HELP = "resource-limits.yaml to use (default: $DS01_CONFIG, else /etc/ds01/resource-limits.yaml)"
VERBOSE_HELP = "log more detail to stderr"


def sub_parsers(parser: argparse.ArgumentParser) -> list:
    """``[(words, parser)]`` of every sub-command under ``parser``, depth first (``(("exporter", "serve"), p)``)."""
    out: list = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        seen: set = set()
        for word, sub in action.choices.items():
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            out.append(((word,), sub))
            out.extend(((word, *words), p) for words, p in sub_parsers(sub))
    return out


def share_global_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``-v`` are accepted after the sub-command as well (``ds01 limits --config X``): each
    sub-command gets them with a suppressed default, so one given before the sub-command is kept."""
    for _words, sub in sub_parsers(parser):
        taken = sub._option_string_actions
        if "--config" not in taken:
            sub.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)
        if "-v" not in taken and "--verbose" not in taken:
            sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def main(argv: Optional[list[str]] = None) -> int:
    logs.configure("WARNING", "ds01: %(levelname)s: %(message)s")
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own exit (usage error or --help)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    except Exception as exc:  # the CLI edge: a broken feature module must not print a traceback
        log.debug("could not build the command line", exc_info=True)
        sys.stderr.write(f"ds01: internal error while reading the command line ({type(exc).__name__}: {exc}).\n")
        return EXIT_FAULT
    if getattr(args, "verbose", False):
        logs.set_level("INFO")
    logs.settle()  # a command module that imported logging itself gets the same output
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    ctx = Context(args)
    try:
        return int(handler(ctx) or EXIT_OK)
    except config_mod.ConfigError as exc:
        sys.stderr.write(exc.render() + "\n")
        sys.stderr.write("Fix the file(s) above, then run `ds01 config check`.\n")
        return EXIT_USAGE
    except CommandError as exc:
        sys.stderr.write(f"ds01: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ds01 ... | head` closed the pipe: not an error worth a message.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stop further flush errors at exit
        except OSError:
            pass
        return EXIT_OK
    except Exception as exc:  # the CLI edge: log, answer with a sentence, never a traceback
        log.debug("unexpected failure", exc_info=True)
        sys.stderr.write(
            f"ds01: internal error ({type(exc).__name__}: {exc}). Nothing was changed. "
            "Run again with DS01_DEBUG=1 for details and report it to the admins.\n"
        )
        if os.environ.get("DS01_DEBUG"):
            import traceback

            traceback.print_exc()
        return EXIT_FAULT


if __name__ == "__main__":
    raise SystemExit(main())
