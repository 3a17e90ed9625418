"""``gatehouse credentials rotate-key`` and ``gatehouse credentials check``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_FAILED = 1


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from proxy.credentials.signing import SigningKeyError, rotate_key_file

    try:
        kid = rotate_key_file(Path(args.keys_file), keep=args.keep)
    except SigningKeyError as exc:
        print(f"{args.keys_file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(kid)
    print(
        "new key published now; it signs after assertions.publish_before_use (default 5m)",
        file=sys.stderr,
    )
    return 0


async def _check(config: Any, only: str | None) -> int:
    from proxy.credentials.broker import CredentialBroker
    from proxy.credentials.config import header_of
    from proxy.errors import GatehouseError
    from proxy.policy.model import Route

    specs = {
        name: b.credentials
        for name, b in config.backends.items()
        if b.credentials and (only is None or name == only)
    }
    if not specs:
        print("no backend with credentials" + (f" named {only}" if only else ""))
        return EXIT_USAGE if only else 0
    broker = CredentialBroker(specs, config.assertions, config.public_url)
    failed = 0
    try:
        await broker.start()
        for name, backend_specs in specs.items():
            kinds = "+".join(s.type for s in backend_specs)
            if any(s.type == "token_exchange" for s in backend_specs):
                print(f"{name}: {kinds}: skipped (token exchange needs a caller)")
                continue
            route = Route(name="check", backend=name, source="cli")
            try:
                headers = await broker.headers(name, route, None)
            except GatehouseError as exc:
                failed += 1
                print(f"{name}: {kinds}: FAILED {exc.reason}: {exc.detail}")
                continue
            # Names and lifetimes only: a token printed here would end up in shell history.
            got = ", ".join(h for h, _ in headers) or ", ".join(header_of(s) for s in backend_specs)
            print(f"{name}: {kinds}: OK ({got}){_expiry(broker, name)}")
    except GatehouseError as exc:
        print(f"credentials: FAILED {exc.reason}: {exc.detail}")
        return EXIT_FAILED
    finally:
        await broker.close()
    return EXIT_FAILED if failed else 0


def _expiry(broker: Any, backend: str) -> str:
    remaining = [
        cred.expires_at - time.time()
        for key, cred in broker.cache.credentials()
        if key.backend == backend
    ]
    return f", expires in {int(min(remaining))}s" if remaining else ""


def cmd_check(args: argparse.Namespace) -> int:
    from proxy.cli import load_everything

    config = load_everything(Path(args.config))
    if config is None:
        return EXIT_USAGE
    return asyncio.run(_check(config, args.backend))


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("credentials", help="upstream credentials and assertion keys")
    sub = parser.add_subparsers(dest="credentials_command", metavar="ACTION", required=True)

    p = sub.add_parser(
        "rotate-key",
        help="put a new assertion signing key first in a JWK set file, keeping older ones",
    )
    p.add_argument("--keys-file", required=True, help="assertions.signing_keys_file")
    p.add_argument("--keep", type=int, default=2, help="older keys kept published (default 2)")
    p.set_defaults(func=cmd_rotate_key)

    p = sub.add_parser(
        "check", help="fetch every backend's credential once and report (never prints tokens)"
    )
    p.add_argument("--config", required=True)
    p.add_argument("--backend", help="only this backend")
    p.set_defaults(func=cmd_check)
