"""``gatehouse dev-idp``, ``dev-token``, ``dev-cert`` and ``demo``: development only."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from proxy.cli.apikey import groups_of, parse_lifetime
from proxy.cli.common import EXIT_CONFIG
from proxy.dev import idp as devidp


# -- dev IdP -----------------------------------------------------------------
def cmd_dev_idp(args: argparse.Namespace) -> int:
    try:
        devidp.require_loopback(args.host)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG

    async def serve() -> None:
        issuer, runner = await devidp.start_dev_idp(
            args.host, args.port, Path(args.key_file), args.audience
        )
        print(f"dev IdP (development only) listening: issuer {issuer}", flush=True)
        print(
            "mint a token it accepts with:\n  "
            + devidp.dev_token_command(Path(args.key_file), issuer, args.audience),
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


def cmd_dev_token(args: argparse.Namespace) -> int:
    key_file = Path(args.key_file)
    if not key_file.exists():
        # A token signed by a brand-new key is refused by any dev IdP (or demo)
        # already running with the old one: say so instead of a puzzling 401.
        print(
            f"dev-token: created a new signing key {key_file.resolve()}; a dev IdP or demo "
            "started with another key refuses this token (run dev-token from the directory "
            "you started it in, or pass --key-file)",
            file=sys.stderr,
        )
    key = devidp.load_or_create_key(key_file)
    try:
        token = devidp.mint_token(
            key,
            sub=args.sub,
            groups=groups_of(args.groups),
            issuer=args.issuer,
            audience=args.audience,
            ttl=args.ttl,
            email=args.email,
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print(token)
    return 0


def cmd_dev_cert(args: argparse.Namespace) -> int:
    from proxy.dev.certs import dev_certificates

    hosts = tuple(args.host) or ("localhost",)
    files = dev_certificates(Path(args.dir), hosts)
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.observability import logs

    logs.configure("auto", "debug" if args.verbose else "info")
    from proxy.dev.demo import run_demo
    from proxy.errors import StartupError

    try:
        return run_demo(port=args.port, admin_port=args.admin_port, idp_port=args.idp_port)
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG


def add_commands(sub: Any) -> None:
    p = sub.add_parser("dev-idp", help="development OIDC issuer on loopback (never production)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=devidp.DEFAULT_PORT, help="port (default %(default)s)"
    )
    p.add_argument(
        "--key-file",
        default=str(devidp.DEFAULT_KEY_FILE),
        help="signing key, created on first use (default %(default)s)",
    )
    p.add_argument(
        "--audience", default=devidp.DEFAULT_AUDIENCE, help="aud of tokens (default %(default)s)"
    )
    p.set_defaults(func=cmd_dev_idp)

    p = sub.add_parser("dev-token", help="print a token signed by the dev IdP key")
    p.add_argument("--sub", required=True, help="the subject (sub claim)")
    p.add_argument("--groups", nargs="*", default=[], help="group names (space or comma list)")
    p.add_argument("--email", default=None, help="the email claim")
    p.add_argument(
        "--ttl", type=parse_lifetime, default=600.0, help="lifetime, e.g. 10m (default 10m)"
    )
    p.add_argument(
        "--key-file",
        default=str(devidp.DEFAULT_KEY_FILE),
        help="the dev IdP's signing key (default %(default)s; created, with a warning, if absent)",
    )
    p.add_argument(
        "--issuer", default=devidp.DEFAULT_ISSUER, help="iss of the token (default %(default)s)"
    )
    p.add_argument(
        "--audience", default=devidp.DEFAULT_AUDIENCE, help="aud of the token (default %(default)s)"
    )
    p.set_defaults(func=cmd_dev_token)

    p = sub.add_parser("dev-cert", help="write a development CA, server and client certificate")
    p.add_argument("dir", help="directory to write the certificates and keys to")
    p.add_argument("--host", action="append", default=[], help="server DNS name (repeatable)")
    p.set_defaults(func=cmd_dev_cert)

    p = sub.add_parser("demo", help="dev IdP + sample upstream + proxy, with things to try")
    p.add_argument("--port", type=int, default=8443, help="the proxy's HTTPS port (default 8443)")
    p.add_argument(
        "--admin-port", type=int, default=9901, help="metrics and probes port (default 9901)"
    )
    p.add_argument("--idp-port", type=int, default=9000, help="the dev IdP's port (default 9000)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    p.set_defaults(func=cmd_demo)
