"""``ds01 docs``: the ``ds01`` man page (roff) and bash completion, generated from the argument parser itself.

``ds01 docs man`` and ``ds01 docs bash-completion`` print them; the role ``ds01_common`` installs their output as
``/usr/local/share/man/man1/ds01.1`` and ``/usr/share/bash-completion/completions/ds01``. Generated from
``cli.build_parser([])`` (every feature module), so a new sub-command or option shows up in both without
anyone editing a page. Standard library only; pure functions of the parser.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from .. import cli

PROG = "ds01"


def _actions(parser: argparse.ArgumentParser) -> tuple:
    """(options, positionals, sub-command action or None) of one parser, help and suppressed ones left out."""
    options, positionals, subs = [], [], None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs = action
        elif isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        elif action.option_strings:
            options.append(action)
        else:
            positionals.append(action)
    return options, positionals, subs


def _helps(subs: Any) -> dict:
    """sub-command word → its one-line help."""
    return {choice.dest: choice.help or "" for choice in subs._choices_actions} if subs else {}


# --------------------------------------------------------------------------------------------
# roff
# --------------------------------------------------------------------------------------------


def _roff(text: str) -> str:
    """``text`` safe inside a roff line: backslashes and leading dots/quotes escaped."""
    out = (text or "").replace("\\", "\\e").replace("-", "\\-")
    out = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in out)  # groff reads ASCII: \[u2014] is —
    if out.startswith((".", "'")):
        out = "\\&" + out
    return out


def _option_line(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{_roff(s)}\\fR" for s in action.option_strings)
    if action.nargs != 0:
        names += f" \\fI{_roff(action.metavar or action.dest.upper())}\\fR"
    return names


def render_man(parser: argparse.ArgumentParser, version: str = "") -> str:
    """The man page (section 1) of ``parser``: synopsis, description, global options, every command."""
    out = [
        f'.TH DS01 1 "" "ds01 {_roff(version)}" "ds01 manual"',
        ".SH NAME",
        f"{PROG} \\- {_roff((parser.description or '').split(': ', 1)[-1])}",
        ".SH SYNOPSIS",
        f"\\fB{PROG}\\fR [\\fB\\-\\-config\\fR \\fIPATH\\fR] [\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR...]",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        ".PP",
        "Global options may also be given after the command (\\fBds01 limits \\-\\-config\\fR \\fIPATH\\fR).",
        "Exit status: 0 success, 1 the answer is no (a check failed, a request would be refused),",
        "2 usage or configuration error, 3 an infrastructure fault.",
        ".SH OPTIONS",
    ]
    options, _positionals, _subs = _actions(parser)
    for action in options:
        out += [".TP", _option_line(action), _roff(action.help or "")]
    out.append(".SH COMMANDS")
    for words, sub in cli.sub_parsers(parser):
        out += _command(words, sub, parent_help=_parent_help(parser, words))
    out += [
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBDS01_CONFIG\\fR",
        "the configuration file when \\fB\\-\\-config\\fR is not given (default /etc/ds01/resource\\-limits.yaml).",
        ".TP",
        "\\fBDOCKER_HOST\\fR",
        "the Docker socket (users: the ds01 gateway).",
        ".TP",
        "\\fBDS01_DEBUG\\fR",
        "set to 1 for a traceback of an internal error.",
        ".SH FILES",
        ".TP",
        "/etc/ds01/resource\\-limits.yaml",
        "groups, quotas and limits, with groups/*.members, user\\-overrides.yaml and lifecycle\\-exemptions.yaml.",
    ]
    return "\n".join(out) + "\n"


def _parent_help(parser: argparse.ArgumentParser, words: tuple) -> str:
    node = parser
    for word in words[:-1]:
        node = _actions(node)[2].choices[word]
    return _helps(_actions(node)[2]).get(words[-1], "")


def _command(words: tuple, sub: argparse.ArgumentParser, parent_help: str) -> list:
    options, positionals, subs = _actions(sub)
    usage = " ".join(f"\\fB{_roff(w)}\\fR" for w in words)
    for action in positionals:
        name = f"\\fI{_roff(action.metavar or action.dest.upper())}\\fR"
        usage += f" [{name}]" if action.nargs in ("?", "*") else f" {name}"
    if subs is not None:
        usage += " \\fIACTION\\fR"
    out = [".SS " + usage, _roff(parent_help or sub.description or "")]
    for action in positionals + options:
        label = _option_line(action) if action.option_strings else f"\\fI{_roff(action.metavar or action.dest)}\\fR"
        out += [".TP", label, _roff(action.help or "")]
    return out


# --------------------------------------------------------------------------------------------
# bash completion
# --------------------------------------------------------------------------------------------


def render_bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``ds01``: sub-commands, their actions and options (files after ``--config``)."""
    table = {(): _words(parser)}
    for words, sub in cli.sub_parsers(parser):
        table[words] = _words(sub)
    body = "\n".join(
        f"        {shlex.quote(' '.join(words))}) words={shlex.quote(' '.join(offered))} ;;"
        for words, offered in sorted(table.items())
    )
    return f"""# bash completion for ds01, generated from its argument parser (ds01 docs bash-completion).
_ds01_words() {{
    case "$1" in
{body}
        *) return 1 ;;
    esac
}}
_ds01() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" path="" words="" i
    if [[ "$prev" == "--config" ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0
    fi
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --config) i=$((i + 1)) ;;
            -*) ;;
            *) _ds01_words "${{path:+$path }}${{COMP_WORDS[i]}}" && path="${{path:+$path }}${{COMP_WORDS[i]}}" ;;
        esac
    done
    _ds01_words "$path"
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _ds01 ds01
"""


def _words(parser: argparse.ArgumentParser) -> list:
    options, _positionals, subs = _actions(parser)
    words = list(subs.choices) if subs is not None else []
    for action in options:
        words.extend(s for s in action.option_strings if s.startswith("--"))
    return words


# --------------------------------------------------------------------------------------------
# ``ds01 docs``
# --------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    docs = subparsers.add_parser("docs", help="print the ds01 man page or bash completion (the role installs them)")
    actions = docs.add_subparsers(dest="docs_action", metavar="ACTION")
    man = actions.add_parser("man", help="the man page, roff (man -l -)")
    man.set_defaults(func=cmd_man)
    comp = actions.add_parser("bash-completion", help="the bash completion script")
    comp.set_defaults(func=cmd_completion)
    docs.set_defaults(func=lambda ctx: _usage(docs))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return cli.EXIT_USAGE


def _full_parser() -> argparse.ArgumentParser:
    return cli.build_parser([])


def cmd_man(ctx: cli.Context) -> int:
    import sys

    sys.stdout.write(render_man(_full_parser()))
    return cli.EXIT_OK


def cmd_completion(ctx: cli.Context) -> int:
    import sys

    sys.stdout.write(render_bash_completion(_full_parser()))
    return cli.EXIT_OK
