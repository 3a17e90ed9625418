"""``gatehouse state new-key`` and ``gatehouse state check``."""

from __future__ import annotations

import argparse
import asyncio
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
    doc, node = load_document(path, problems)
    root = Mapping.of(doc, node, "config") if node is not None else None
    cfg = parse_state(root.mapping("state")) if root is not None else None
    for problem in problems.items:
        print(problem, file=sys.stderr)
    if problems.items:
        return None
    if cfg is None:
        print(f"{path}: no state: section (single replica, state in memory)", file=sys.stderr)
    return cfg


async def _check(cfg: Any) -> int:
    from redis.asyncio import Redis

    from proxy.state.client import StateClient, StateUnreachable

    try:
        client = StateClient(cfg)
    except (OSError, KeyError, ValueError) as exc:
        print(f"state: FAILED encryption key or password unusable: {exc}")
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
            print("state: FAILED Redis unreachable")
            return EXIT_FAILED
        ok = await client.run(round_trip)
        elapsed = (time.perf_counter() - started) * 1000
    except StateUnreachable as exc:
        print(f"state: FAILED {exc}")
        return EXIT_FAILED
    finally:
        await client.close()
    if not ok:
        print("state: FAILED a sealed value did not read back")
        return EXIT_FAILED
    # Never the URL itself: operators paste this output into tickets.
    print(f"state: OK (write, read, delete under {cfg.key_prefix!r} in {elapsed:.1f} ms)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _state_section(Path(args.config))
    if cfg is None:
        return EXIT_USAGE
    return asyncio.run(_check(cfg))


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("state", help="shared state for replicas (Redis)")
    sub = parser.add_subparsers(dest="state_command", metavar="ACTION", required=True)

    p = sub.add_parser("new-key", help="print a new state.encryption_key (base64, 32 bytes)")
    p.set_defaults(func=cmd_new_key)

    p = sub.add_parser(
        "check", help="connect to the configured Redis and write, read and delete one sealed value"
    )
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_check)
