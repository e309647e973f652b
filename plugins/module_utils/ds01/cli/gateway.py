"""``ds01 gateway serve``: run the Docker API gateway (the ds01-gateway.service runs this).

``--listen PATH`` (default ``gateway.listen``, /var/run/docker.sock), ``--upstream PATH`` (default
``gateway.upstream``, /run/ds01/dockerd.sock), ``--socket-group NAME`` (default
``gateway.socket_group``, docker), ``--socket-mode 0666|0660`` (default ``gateway.socket_mode``, 0666:
every login may connect; the gateway identifies each caller by SO_PEERCRED and refuses system accounts).
The config is read through the last-good-config store: a
broken or missing file does not stop the gateway (limits fall back as ARCHITECTURE.md says).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from .. import cli, logs

log = logs.get(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("gateway", help="the Docker API gateway in front of the daemon's socket")
    actions = parser.add_subparsers(dest="gateway_action", metavar="ACTION")
    serve = actions.add_parser("serve", help="listen on the users' Docker socket and forward checked requests")
    serve.add_argument("--listen", metavar="PATH", help="socket users talk to (default: gateway.listen)")
    serve.add_argument("--upstream", metavar="PATH", help="the daemon's own socket (default: gateway.upstream)")
    serve.add_argument(
        "--socket-group", metavar="NAME", help="group allowed to connect (default: gateway.socket_group)"
    )
    serve.add_argument(
        "--socket-mode",
        choices=("0666", "0660"),
        help="0666: every login may connect (each is identified by the kernel); 0660: the group only "
        "(default: gateway.socket_mode, 0666)",
    )
    serve.set_defaults(func=cmd_serve)
    parser.set_defaults(func=lambda ctx: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return cli.EXIT_USAGE


def cmd_serve(ctx: cli.Context) -> int:
    from ..gateway import server

    if os.geteuid() != 0:
        log.warning("not running as root: callers' containers and /proc of other users may be unreadable")
    if ctx.args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    try:
        server.run(ctx.config_path, ctx.args.listen, ctx.args.upstream, ctx.args.socket_group, ctx.args.socket_mode)
    except OSError as exc:
        raise cli.CommandError(f"the gateway could not start: {exc}", cli.EXIT_FAULT) from None
    return cli.EXIT_OK
