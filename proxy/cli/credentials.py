"""``gatehouse credentials rotate-key`` and ``gatehouse credentials check``."""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def _check(config: Any, only: str | None, as_json: bool = False) -> int:
    from proxy.credentials.broker import CredentialBroker
    from proxy.credentials.config import header_of
    from proxy.errors import GatehouseError
    from proxy.policy.model import Route

    specs = {
        name: b.credentials
        for name, b in config.backends.items()
        if b.credentials and (only is None or name == only)
    }
    results: list[dict[str, Any]] = []
    if not specs:
        _report(
            results, as_json, "no backend with credentials" + (f" named {only}" if only else "")
        )
        return EXIT_USAGE if only else 0
    broker = CredentialBroker(specs, config.assertions, config.public_url)
    try:
        await broker.start()
        for name, backend_specs in specs.items():
            kinds = "+".join(s.type for s in backend_specs)
            result: dict[str, Any] = {"backend": name, "types": kinds}
            results.append(result)
            if any(s.type == "token_exchange" for s in backend_specs):
                result.update(result="skipped", detail="token exchange needs a caller")
                continue
            route = Route(name="check", backend=name, source="cli")
            try:
                headers = await broker.headers(name, route, None)
            except GatehouseError as exc:
                result.update(result="failed", reason=exc.reason, detail=exc.detail)
                continue
            # Names and lifetimes only: a token printed here would end up in shell history.
            names = [h for h, _ in headers] or [header_of(s) for s in backend_specs]
            result.update(result="ok", headers=names, expires_in=_expires_in(broker, name))
    except GatehouseError as exc:
        results.append(
            {"backend": None, "result": "failed", "reason": exc.reason, "detail": exc.detail}
        )
        _report(results, as_json)
        return EXIT_FAILED
    finally:
        await broker.close()
    _report(results, as_json)
    return EXIT_FAILED if any(r["result"] == "failed" for r in results) else 0


def _report(results: list[dict[str, Any]], as_json: bool, note: str = "") -> None:
    if as_json:
        out: dict[str, Any] = {"backends": results}
        if note:
            out["note"] = note
        print(json.dumps(out, indent=2))
        return
    if note:
        print(note)
    for r in results:
        if r["backend"] is None:
            print(f"credentials: FAILED {r['reason']}: {r['detail']}")
        elif r["result"] == "skipped":
            print(f"{r['backend']}: {r['types']}: skipped ({r['detail']})")
        elif r["result"] == "failed":
            print(f"{r['backend']}: {r['types']}: FAILED {r['reason']}: {r['detail']}")
        else:
            expiry = "" if r["expires_in"] is None else f", expires in {r['expires_in']}s"
            print(f"{r['backend']}: {r['types']}: OK ({', '.join(r['headers'])}){expiry}")


def _expires_in(broker: Any, backend: str) -> int | None:
    """Seconds until the first of the backend's cached credentials expires."""
    remaining = [
        cred.expires_at - time.time()
        for key, cred in broker.cache.credentials()
        if key.backend == backend
    ]
    return int(min(remaining)) if remaining else None


def cmd_check(args: argparse.Namespace) -> int:
    from proxy.cli.common import load_everything

    config = load_everything(Path(args.config))
    if config is None:
        return EXIT_USAGE
    return asyncio.run(_check(config, args.backend, args.json))


def add_commands(subparsers: Any) -> None:
    from proxy.cli.common import add_config_argument

    parser = subparsers.add_parser("credentials", help="upstream credentials and assertion keys")
    sub = parser.add_subparsers(dest="credentials_command", metavar="ACTION", required=True)

    p = sub.add_parser(
        "rotate-key",
        help="put a new assertion signing key first in a JWK set file, keeping older ones",
    )
    p.add_argument(
        "--keys-file", required=True, help="the JWK set file (assertions.signing_keys_file)"
    )
    p.add_argument("--keep", type=int, default=2, help="older keys kept published (default 2)")
    p.set_defaults(func=cmd_rotate_key)

    p = sub.add_parser(
        "check", help="fetch every backend's credential once and report (never prints tokens)"
    )
    add_config_argument(p)
    p.add_argument("--backend", help="only this backend")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_check)
