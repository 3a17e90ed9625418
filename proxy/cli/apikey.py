"""``gatehouse apikey``: create, list and revoke API keys."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from proxy.config.reader import ConfigError, parse_duration
from proxy.identity.config import MIN_PEPPER_BYTES

EXIT_USAGE = 2


def groups_of(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out += [g.strip() for g in value.split(",") if g.strip()]
    return out


def parse_lifetime(text: str) -> float:
    seconds = parse_duration(text)
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(f"not a duration like 10m or 90d: {text!r}")
    return seconds


# -- apikey ------------------------------------------------------------------
def _pepper(args: argparse.Namespace) -> bytes | None:
    """The pepper the proxy hashes with (``identity.api_keys.pepper_file``), if any."""
    if args.pepper_file is None:
        return None
    pepper = Path(args.pepper_file).read_text(encoding="utf-8").strip().encode()
    if len(pepper) < MIN_PEPPER_BYTES:
        raise ValueError(f"the pepper has {len(pepper)} bytes; at least {MIN_PEPPER_BYTES}")
    return pepper


def cmd_apikey_create(args: argparse.Namespace) -> int:
    from proxy.identity.apikeys import NO_PEPPER, create_key, pepper_id, peppers_in

    path = Path(args.file)
    try:
        pepper = _pepper(args)
        others = peppers_in(path) - {NO_PEPPER, pepper_id(pepper)}
        if others:
            print(
                f"{args.file} holds keys hashed under another pepper: pass the "
                "--pepper-file the proxy uses (identity.api_keys.pepper_file)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        key = create_key(
            path,
            name=args.name,
            subject=args.subject,
            groups=groups_of(args.groups),
            pepper=pepper,
            expires_in=args.expires,
        )
    except ConfigError as exc:
        print(f"{args.file} is not a valid key file:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"cannot create the key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # The only time the key is ever shown: the file keeps just its hash.
    print(key)
    print("store this key now: it cannot be shown again", file=sys.stderr)
    return 0


def cmd_apikey_list(args: argparse.Namespace) -> int:
    from proxy.identity.apikeys import load_key_file

    try:
        entries = load_key_file(Path(args.file))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    now = time.time()
    for entry in entries.values():
        if entry.expires_at is None:
            state = "no expiry"
        elif entry.expires_at > now:
            state = f"expires {time.strftime('%Y-%m-%d', time.gmtime(entry.expires_at))}"
        else:
            state = "EXPIRED"
        groups = ",".join(sorted(entry.groups)) or "-"
        print(f"{entry.id}  {entry.name or '-'}  subject={entry.subject}  groups={groups}  {state}")
    return 0


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    from proxy.identity.apikeys import revoke_key

    if not revoke_key(Path(args.file), args.id):
        print(f"no key with id {args.id}", file=sys.stderr)
        return 1
    print(f"revoked {args.id}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("apikey", help="manage API keys (only HMACs of the secrets are stored)")
    apikey = p.add_subparsers(dest="apikey_command", metavar="ACTION", required=True)

    c = apikey.add_parser("create", help="create a key and print it once")
    c.add_argument("--file", required=True, help="API key file (created if absent)")
    c.add_argument("--name", required=True, help="a name for the key, shown by list")
    c.add_argument("--subject", required=True, help="the subject the key authenticates as")
    c.add_argument("--groups", nargs="*", default=[], help="group names (space or comma list)")
    c.add_argument("--expires", type=parse_lifetime, default=None, help="lifetime, e.g. 90d")
    c.add_argument(
        "--pepper-file",
        default=None,
        help="the proxy's identity.api_keys.pepper_file (the key is hashed under it)",
    )
    c.set_defaults(func=cmd_apikey_create)

    c = apikey.add_parser("list", help="list keys (never the secrets)")
    c.add_argument("--file", required=True, help="API key file (identity.api_keys.file)")
    c.set_defaults(func=cmd_apikey_list)

    c = apikey.add_parser("revoke", help="remove a key by id")
    c.add_argument("--file", required=True, help="API key file (identity.api_keys.file)")
    c.add_argument("--id", required=True, help="the key's id, as list shows it")
    c.set_defaults(func=cmd_apikey_revoke)
