"""Idle keep-alive connections: ``python -m bench.idle_client HOST PORT N``.

Opens N connections, completes one GET on each so every one is a real keep-alive
HTTP connection, prints ``{"open": k, "failed": f, "statuses": {...}}`` and then
holds them all, idle, until its standard input closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter


async def _one(host: str, port: int, sem: asyncio.Semaphore) -> tuple[asyncio.StreamWriter, int]:
    # A busy shared machine occasionally drops a SYN or times out; retry before counting it.
    for attempt in range(3):
        try:
            return await _attempt(host, port, sem)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            if attempt == 2:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def _attempt(
    host: str, port: int, sem: asyncio.Semaphore
) -> tuple[asyncio.StreamWriter, int]:
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        try:
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    await asyncio.wait_for(reader.readexactly(int(line[15:])), 10)
        except BaseException:
            writer.close()
            raise
        return writer, status


async def hold(host: str, port: int, n: int) -> None:
    sem = asyncio.Semaphore(256)
    results = await asyncio.gather(
        *(_one(host, port, sem) for _ in range(n)), return_exceptions=True
    )
    writers = [r[0] for r in results if isinstance(r, tuple)]
    statuses = Counter(str(r[1]) for r in results if isinstance(r, tuple))
    failed = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    still_open = sum(1 for w in writers if not w.is_closing())
    report = {"open": still_open, "failed": sum(failed.values()), "statuses": dict(statuses)}
    report["errors"] = dict(failed)
    print(json.dumps(report), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for w in writers:
        w.close()


def main(argv: list[str] | None = None) -> int:
    host, port, n = sys.argv[1:] if argv is None else argv
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(hold(host, int(port), int(n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
