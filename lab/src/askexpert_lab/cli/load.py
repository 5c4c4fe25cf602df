"""The ``askexpert load`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from askexpert.cli._common import log_console, require_positive, table_console
from askexpert.errors import AskExpertError, ConfigError
from askexpert.security import TOKEN_ENV


def cmd_load(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient
    from askexpert.runtime.settings import Connection, Security
    from askexpert.security import read_token
    from askexpert_lab.testbed.competing import CompetingLoad

    require_positive(("--clients", args.clients), ("--seconds", args.seconds))
    token = read_token(args.token_file)
    try:
        security = Security(token=token, ca_file=args.ca_file)
        with HttpExpertClient(args.server, Connection(timeout_s=5), security) as client:
            infos = [x for x in client.experts() if args.experts is None or x.id in args.experts.split(",")]
    except ExpertUnavailable as err:
        raise AskExpertError(f"cannot list the experts of {args.server} ({err})",
                             fix="start the server first (askexpert serve BUNDLE), or check --server") from err
    if not infos:
        raise ConfigError(f"{args.server} serves none of the experts {args.experts}", fix="name experts it lists")
    console = log_console()
    console.log(f"{args.clients} clients, one image at a time to {', '.join(x.id for x in infos)}, "
                f"{args.think_ms:g} ms mean pause between answers, for {args.seconds:g} s ...")
    load = CompetingLoad(args.server, clients=args.clients, experts=[x.id for x in infos],
                         shape=tuple(infos[0].input_shape), think_ms=args.think_ms, token=token, ca_file=args.ca_file)
    with load, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the load early; its count is still said
        time.sleep(args.seconds)
    stats = load.stats
    table_console().print(f"{stats.requests} requests in {stats.seconds:.1f} s ({stats.rate:.0f}/s), "
                          f"{stats.failures} failed")
    return 0


def register(sub) -> None:
    """The ``askexpert load`` command and its flags."""
    p = sub.add_parser("load", help="load an expert server with competing clients (other edges sharing it)",
                       description="Start CLIENTS processes that each send one image at a time to one of the "
                       "server's experts (drawn at random) and pause a random think time (exponential, mean "
                       "--think-ms) between answers: edges that offload a share of their images. Real HTTP; stops "
                       "after --seconds (or Ctrl-C) and says what was sent.",
                       epilog="example: askexpert load http://127.0.0.1:8000 --clients 15 --seconds 120")
    p.add_argument("server", help="the expert server's URL")
    p.add_argument("--clients", type=int, default=15)
    p.add_argument("--think-ms", type=float, default=30.0, help="mean pause between a client's answer and its next "
                   "request (0: a closed loop at full speed)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--experts", help="comma-separated expert ids (default: every expert the server lists)")
    p.add_argument("--token-file", type=Path, help=f"the server's bearer token (default: ${TOKEN_ENV} when set)")
    p.add_argument("--ca-file", type=Path, help="the certificate authority of an https server")
    p.set_defaults(func=cmd_load)
