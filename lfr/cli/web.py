"""``lfr web``: the browser viewer's set-up (``make-cert``: a self-signed TLS pair for trials)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lfr.cli.output import EXIT_OK, UserError, print_json, stderr
from lfr.textsafe import markup_safe


def cmd_make_cert(args: argparse.Namespace) -> int:
    from lfr.web.tls import make_self_signed

    try:
        cert, key = make_self_signed(Path(args.out), args.host or ["localhost", "127.0.0.1"],
                                     args.days)
    except (ValueError, OSError) as exc:
        raise UserError(f"--out {args.out}: {exc}") from None
    if args.json:
        print_json({"tls_cert": str(cert), "tls_key": str(key)})
    else:
        stderr.print(f"self-signed pair written; in the config:\n\\[web]\ntls_cert = "
                     f"\"{markup_safe(cert)}\"\ntls_key = \"{markup_safe(key)}\"",
                     highlight=False)
    return EXIT_OK


def register(sub: Any) -> None:
    web = sub.add_parser("web", help="the browser viewer's set-up: a self-signed TLS pair")
    commands = web.add_subparsers(dest="web_command", required=True, metavar="COMMAND")
    cert = commands.add_parser("make-cert", help="write a self-signed certificate and key "
                               "(web-cert.pem, web-key.pem) for trying [web] tls_cert/tls_key")
    cert.add_argument("--out", required=True, metavar="DIR", help="folder to write them into")
    cert.add_argument("--host", action="append", metavar="NAME",
                      help="a host name or IP address the viewer is reached by (repeatable; "
                      "default: localhost and 127.0.0.1)")
    cert.add_argument("--days", type=int, default=30, help="valid this many days (default 30)")
    cert.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    cert.set_defaults(func=cmd_make_cert)
