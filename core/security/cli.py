"""``polymq users add|delete|passwd|list|set-permissions|clear-permissions|set-tags|...``.

The commands edit the users file named by the config (``security.users_file``, by default
``users.toml`` in the store's data directory); a running broker picks the change up within
``security.reload_interval`` seconds.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from .passwords import SCRAM_ITERATIONS
from .users import (
    KNOWN_TAGS,
    Permission,
    User,
    UsersFileError,
    check_pattern,
    read_users,
    set_password,
    write_users,
)


def add_parser(sub: Any, add_config_options: Any) -> None:
    users = sub.add_parser("users", help="manage users, passwords, tags and permissions")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = users_sub.add_parser(name, help=help_text)
        add_config_options(p)
        return p

    p = command("list", help_text="list users, tags and permissions")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    def password_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--password", help="the password (visible in the process list: prefer a prompt)"
        )
        p.add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input"
        )
        p.add_argument(
            "--no-scram",
            action="store_true",
            help="store no SCRAM secrets (the user cannot log in with Kafka SASL/SCRAM)",
        )

    p = command("add", help_text="add a user")
    p.add_argument("name")
    password_options(p)
    p.add_argument("--tags", default="", help=f"comma-separated, of: {', '.join(KNOWN_TAGS)}")
    p.add_argument("--vhost", default=None, help="vhost of the permissions given (default vhost)")
    for action in ("configure", "write", "read"):
        p.add_argument(f"--{action}", default=None, metavar="REGEX", help=f"{action} permission")

    p = command("delete", help_text="delete a user")
    p.add_argument("name")

    p = command("passwd", help_text="change a user's password")
    p.add_argument("name")
    password_options(p)

    p = command("set-permissions", help_text="set a user's configure/write/read regexes on a vhost")
    p.add_argument("name")
    p.add_argument("configure")
    p.add_argument("write")
    p.add_argument("read")
    p.add_argument("--vhost", default=None)

    p = command("clear-permissions", help_text="remove a user's permissions on a vhost")
    p.add_argument("name")
    p.add_argument("--vhost", default=None)

    p = command(
        "set-max-connections", help_text="connections the user may hold at once (-1: default)"
    )
    p.add_argument("name")
    p.add_argument("limit", type=int)

    p = command("set-tags", help_text="replace a user's tags")
    p.add_argument("name")
    p.add_argument("tags", nargs="*")


def users_file(cfg: dict) -> str:
    path = cfg["security"]["users_file"]
    if path:
        return os.path.abspath(path)
    return os.path.join(os.path.abspath(cfg["store"]["data_dir"]), "users.toml")


def _password(args: Any) -> str:
    if args.password is not None:
        return args.password
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsersFileError("the two passwords differ")
    return first


def _tags(items: list[str]) -> list[str]:
    tags = [t for t in (x.strip() for x in items) if t]
    unknown = [t for t in tags if t not in KNOWN_TAGS]
    if unknown:
        raise UsersFileError(f"unknown tag {unknown[0]!r} (known: {', '.join(KNOWN_TAGS)})")
    return tags


def run(args: Any, cfg: dict) -> int:
    """Run one ``polymq users`` action; returns the exit status."""
    path = users_file(cfg)
    vhost_default = cfg["broker"]["default_vhost"]
    users = read_users(path, vhost_default)
    action = args.users_command
    if action == "list":
        return _list(users, args.json)
    name = args.name
    if action != "add" and name not in users:
        raise UsersFileError(f"no user {name!r} in {path}")
    if action == "add":
        if name in users:
            raise UsersFileError(f"user {name!r} exists already (passwd changes its password)")
        if not name or ":" in name or any(c in name for c in "+#\0"):
            raise UsersFileError("a user name must be non-empty and contain no ':', '+', '#'")
        user = User(name, tags=_tags(args.tags.split(",")))
        set_password(
            user, _password(args), scram=not args.no_scram, scram_iterations=SCRAM_ITERATIONS
        )
        perms = [args.configure, args.write, args.read]
        if any(p is not None for p in perms):
            perm = Permission(*(p or "" for p in perms))
            for p in perms:
                check_pattern(p or "")
            user.permissions[args.vhost or vhost_default] = perm
        users[name] = user
        message = f"user {name!r} added"
    elif action == "delete":
        del users[name]
        message = f"user {name!r} deleted"
    elif action == "passwd":
        set_password(
            users[name], _password(args), scram=not args.no_scram, scram_iterations=SCRAM_ITERATIONS
        )
        message = f"password of {name!r} changed"
    elif action == "set-permissions":
        for p in (args.configure, args.write, args.read):
            check_pattern(p)
        vhost = args.vhost or vhost_default
        users[name].permissions[vhost] = Permission(args.configure, args.write, args.read)
        message = f"permissions of {name!r} on vhost {vhost!r} set"
    elif action == "clear-permissions":
        vhost = args.vhost or vhost_default
        users[name].permissions.pop(vhost, None)
        message = f"permissions of {name!r} on vhost {vhost!r} cleared"
    elif action == "set-max-connections":
        users[name].max_connections = None if args.limit < 0 else args.limit
        message = f"connection limit of {name!r} set"
    elif action == "set-tags":
        users[name].tags = _tags(args.tags)
        message = f"tags of {name!r} set"
    else:
        raise UsersFileError("an action is needed: add, delete, passwd, list, set-permissions ...")
    write_users(path, users)
    print(f"{message} ({path})")
    return 0


def _list(users: dict[str, User], as_json: bool) -> int:
    if as_json:
        out = {
            n: {
                "tags": u.tags,
                "scram": sorted(u.scram),
                "permissions": {v: p.as_dict() for v, p in u.permissions.items()},
            }
            for n, u in sorted(users.items())
        }
        print(json.dumps(out, indent=2))
        return 0
    for name, user in sorted(users.items()):
        tags = ",".join(user.tags) or "-"
        print(f"{name}\ttags={tags}")
        for vhost, p in sorted(user.permissions.items()):
            print(f"\tvhost {vhost}: configure={p.configure!r} write={p.write!r} read={p.read!r}")
    return 0
