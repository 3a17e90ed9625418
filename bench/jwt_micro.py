"""JWT (RS256) verification cost through the identity package: cold and hot.

``python -m bench.jwt_micro [--quick]``. Cold: every token is new, so the
signature is verified (cache miss). Hot: the same token again, so the
verified-token cache answers (claims are still re-checked). Also the pure
``verify_token`` function on its own. The JWKS comes from a local HTTP server,
as in production. Prints human lines and ``key=value`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from bench.tokens import AUDIENCE, jwks_server, new_issuer


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


async def _timed(n: int, fn: Callable[[int], Awaitable[object]]) -> list[float]:
    out: list[float] = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        await fn(i)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def _line(name: str, samples: list[float]) -> tuple[str, list[str]]:
    p50, p99 = statistics.median(samples), _pct(samples, 99)
    human = f"{name}: p50 {p50:.1f} us, p99 {p99:.1f} us ({len(samples):,} samples)"
    return human, [f"jwt_{name}_p50_us={p50:.1f}", f"jwt_{name}_p99_us={p99:.1f}"]


async def run(quick: bool) -> int:
    published: dict[str, object] = {}
    try:
        async with jwks_server(published) as url:
            results = await _measure(quick, url, published)
    except ImportError as e:
        print(f"skipped: identity package not available ({e})")
        return 0
    except Exception as e:  # an API that changed must not sink the whole benchmark
        print(f"skipped: identity API not usable here ({type(e).__name__}: {e})")
        return 0
    if results is None:
        print("skipped: the authenticator returned no identity for a valid token")
        return 0
    for human, _ in results:
        print(human)
    for _, machine in results:
        for line in machine:
            print(line)
    return 0


async def _measure(
    quick: bool, url: str, published: dict[str, object]
) -> list[tuple[str, list[str]]] | None:
    from proxy.identity.authenticate import Authenticator
    from proxy.identity.config import IdentityConfig, IssuerConfig
    from proxy.identity.jwt_verify import keys_from_jwks, verify_token
    from proxy.model import RequestFacts

    issuer = new_issuer(url)
    jwks = issuer.jwks()
    published.update(jwks)
    cfg = IssuerConfig(
        issuer=issuer.url,
        audiences=(AUDIENCE,),
        jwks_uri=f"{issuer.url}/jwks.json",
        algorithms=("RS256",),
    )
    auth = Authenticator(IdentityConfig(issuers=(cfg,)))
    await auth.start()
    try:
        n_cold, n_hot = (300, 3000) if quick else (2000, 20000)
        tokens = [issuer.token(jti=f"t{i}") for i in range(n_cold)]

        def facts(token: str) -> RequestFacts:
            return RequestFacts(
                method="GET",
                scheme="http",
                host="bench",
                path="/api/items",
                query="",
                client_ip="127.0.0.1",
                headers={"authorization": f"Bearer {token}"},
            )

        cold_facts = [facts(t) for t in tokens]
        hot = facts(tokens[0])

        async def cold(i: int) -> object:
            return await auth.authenticate(cold_facts[i])

        async def warm(_: int) -> object:
            return await auth.authenticate(hot)

        keys = keys_from_jwks(jwks)

        async def pure(i: int) -> object:
            return verify_token(tokens[i], cfg, keys)

        if await auth.authenticate(hot) is None:
            return None
        return [
            _line("cold", await _timed(n_cold, cold)),
            _line("hot", await _timed(n_hot, warm)),
            _line("verify_token", await _timed(n_cold, pure)),
        ]
    finally:
        await auth.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jwt_micro")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return asyncio.run(run(a.quick))


if __name__ == "__main__":
    raise SystemExit(main())
