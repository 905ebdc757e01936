"""``lfr users``: named users and their roles (``add``, ``list``, ``disable``), and the terminal
login that ``lfr run --dashboard`` asks for."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from lfr.cli.output import EXIT_OK, UserError, print_json, stderr
from lfr.textsafe import markup_safe, safe_text

if TYPE_CHECKING:
    from lfr.users import Principal, UserStore


def store_for(args: argparse.Namespace) -> UserStore:
    """``--users-file``, else the ``[web] users_file`` of ``--config``, else the key directory's
    users file."""
    from lfr.config import load_config
    from lfr.users import UserStore

    if getattr(args, "users_file", None):
        return UserStore(Path(args.users_file))
    if getattr(args, "config", None):
        return UserStore(load_config(Path(args.config)).users_file())
    return UserStore()


def read_password(from_stdin: bool, prompt: str = "password: ", confirm: bool = False) -> str:
    """One line of stdin (``--password-stdin``), else typed on the terminal without echo."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UserError("--password-stdin: nothing on stdin")
        return line.rstrip("\r\n")
    try:
        password = getpass.getpass(prompt)
        if confirm and getpass.getpass("again: ") != password:
            raise UserError("the two passwords differ")
    except EOFError:
        raise UserError("no password given (no terminal: use --password-stdin)") from None
    return password


def login(store: UserStore, name: str | None, from_stdin: bool) -> Principal:
    """Authenticate at a terminal: the name (asked when not given) and the password."""
    from lfr.users import AuthError, UsersFileError

    if not name:
        if from_stdin:
            raise UserError("--password-stdin needs --user NAME")
        try:
            name = input("user: ").strip()
        except EOFError:
            raise UserError("no user name given (no terminal: use --user NAME)") from None
    try:
        return store.authenticate(name, read_password(from_stdin))
    except (AuthError, UsersFileError) as exc:
        raise UserError(f"login refused: {exc}") from None


def cmd_add(args: argparse.Namespace) -> int:
    from lfr.users import UsersFileError

    store = store_for(args)
    password = read_password(args.password_stdin, f"password for {args.name}: ", confirm=True)
    try:
        user = store.add(args.name, args.role, password)
    except UsersFileError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print_json({"name": user.name, "role": user.role, "users_file": str(store.path)})
    else:
        stderr.print(f"added {markup_safe(user.name)} ({user.role}) to {markup_safe(store.path)}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from lfr.users import UsersFileError

    store = store_for(args)
    try:
        users = sorted(store.users().values(), key=lambda u: u.name)
    except UsersFileError as exc:
        raise UserError(str(exc)) from None
    if args.json:  # never the hashes
        print_json({"users_file": str(store.path),
                    "users": [{"name": u.name, "role": u.role, "disabled": u.disabled,
                               "created": u.created} for u in users]})
        return EXIT_OK
    table = Table(title=f"{len(users)} users in {markup_safe(store.path)}",
                  title_justify="left")
    for column in ("name", "role", "state", "created"):
        table.add_column(column)
    for u in users:
        table.add_row(safe_text(u.name), u.role, "disabled" if u.disabled else "active", u.created)
    stderr.print(table)
    return EXIT_OK


def cmd_disable(args: argparse.Namespace) -> int:
    from lfr.users import UsersFileError

    store = store_for(args)
    try:
        store.disable(args.name)
    except UsersFileError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print_json({"name": args.name, "disabled": True})
    else:
        stderr.print(f"disabled {markup_safe(args.name)}: refused at the next login or request")
    return EXIT_OK


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--users-file", metavar="FILE",
                       help="the users file (default: users.json in lfr's key directory)")
    where.add_argument("--config", help="use the users file a deployment config names "
                       "([web] users_file)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def register(sub: Any) -> None:
    from lfr.users import ROLES

    users = sub.add_parser("users", help="named users and roles: operators decide, supervisors "
                           "also correct decisions, auditors only read")
    commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", help="add a user (the password is stored as an argon2id hash)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of stdin (else: asked twice)")
    _add_store_options(add)
    add.set_defaults(func=cmd_add)

    listing = commands.add_parser("list", help="users, roles and whether they are disabled")
    _add_store_options(listing)
    listing.set_defaults(func=cmd_list)

    disable = commands.add_parser("disable", help="refuse a user from now on (kept on record)")
    disable.add_argument("name")
    _add_store_options(disable)
    disable.set_defaults(func=cmd_disable)
