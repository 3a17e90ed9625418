"""``gatehouse state new-key`` and ``gatehouse state check``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2


def cmd_new_key(_args: argparse.Namespace) -> int:
    from proxy.identity.session import new_cookie_key

    print(new_cookie_key())
    print(
        "put it first in the file state.encryption_key_file names; keep the old key "
        "below it until the sessions and tokens sealed with it have expired",
        file=sys.stderr,
    )
    return 0


def _state_section(path: Path) -> Any:
    """Only the ``state:`` section, validated; None (problems printed) when unusable."""
    from proxy.config.reader import Mapping, Problems, load_document
    from proxy.state.config import parse_state

    problems = Problems()
    # As the proxy reads it: ${VAR} substituted from the environment.
    doc, node = load_document(path, problems, environ=os.environ)
    root = Mapping.of(doc, node, "config") if node is not None else None
    cfg = parse_state(root.mapping("state")) if root is not None else None
    for problem in problems.items:
        print(problem, file=sys.stderr)
    if problems.items:
        return None
    if cfg is None:
        print(f"{path}: no state: section (single replica, state in memory)", file=sys.stderr)
    return cfg


def _result(as_json: bool, ok: bool, text: str, **fields: object) -> None:
    if as_json:
        print(json.dumps({"result": "ok" if ok else "failed", "detail": text, **fields}, indent=2))
    else:
        print(f"state: {'OK' if ok else 'FAILED'} {text}")


async def _check(cfg: Any, as_json: bool = False) -> int:
    from redis.asyncio import Redis

    from proxy.state.client import StateClient, StateUnreachable

    try:
        client = StateClient(cfg)
    except (OSError, KeyError, ValueError) as exc:
        _result(as_json, False, f"encryption key or password unusable: {exc}")
        return EXIT_FAILED
    key = client.key("check", secrets.token_hex(8))
    sealed = client.codec.seal(key, {"exp": time.time() + 60})

    async def round_trip(redis: Redis) -> bool:
        await redis.set(key, sealed, px=10_000)
        raw = await redis.get(key)
        await redis.delete(key)
        return isinstance(raw, bytes) and client.codec.open(key, raw.decode()) is not None

    try:
        started = time.perf_counter()
        if not await client.ping():
            _result(as_json, False, "Redis unreachable")
            return EXIT_FAILED
        ok = await client.run(round_trip)
        elapsed = (time.perf_counter() - started) * 1000
    except StateUnreachable as exc:
        _result(as_json, False, str(exc))
        return EXIT_FAILED
    finally:
        await client.close()
    if not ok:
        _result(as_json, False, "a sealed value did not read back")
        return EXIT_FAILED
    # Never the URL itself: operators paste this output into tickets.
    _result(
        as_json,
        True,
        f"(write, read, delete under {cfg.key_prefix!r} in {elapsed:.1f} ms)",
        key_prefix=cfg.key_prefix,
        milliseconds=round(elapsed, 1),
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _state_section(Path(args.config))
    if cfg is None:
        return EXIT_USAGE
    return asyncio.run(_check(cfg, args.json))


def add_commands(subparsers: Any) -> None:
    from proxy.cli.common import add_config_argument

    parser = subparsers.add_parser("state", help="shared state for replicas (Redis)")
    sub = parser.add_subparsers(dest="state_command", metavar="ACTION", required=True)

    p = sub.add_parser("new-key", help="print a new state.encryption_key (base64, 32 bytes)")
    p.set_defaults(func=cmd_new_key)

    p = sub.add_parser(
        "check", help="connect to the configured Redis and write, read and delete one sealed value"
    )
    add_config_argument(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_check)
