"""Through a real gatehouse process: a dead endpoint, health checks, retries, circuit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from fastapi import FastAPI

from tests.conftest import GatehouseFactory
from tests.support.gatehouse import public_route
from tests.support.uvicorn_server import serve_asgi


async def test_a_dead_endpoint_costs_no_request_and_is_reported(
    gatehouse: GatehouseFactory, upstream_url: str, refused_url: Callable[[], str]
) -> None:
    dead = refused_url()
    gh = gatehouse(
        backends={
            "app": {
                "urls": [dead, upstream_url],
                "kind": "fastapi",
                "health_check": {"interval": "300ms", "timeout": "200ms"},
                "load_balancing": "least_request",
            },
            "down": {
                "urls": [refused_url()],
                # One endpoint: its third failure in a row leaves nothing usable.
                "outlier_detection": {"consecutive_failures": 3},
                "circuit_breaker": {"open_for": "30s"},
            },
        },
        routes=[public_route("down", "/down", "down"), public_route("all", "/", "app")],
    )
    async with aiohttp.ClientSession() as s:
        statuses = []
        for i in range(40):
            method = "POST" if i % 2 else "GET"
            async with s.request(method, gh.url + "/echo/x", data=b"y" * (i % 3)) as r:
                statuses.append(r.status)
        assert statuses == [200] * 40
        await asyncio.sleep(0.5)
        async with s.get(gh.admin_url + "/metrics") as r:
            text = await r.text()
        assert f'gatehouse_upstream_healthy{{backend="app",endpoint="{dead}"}} 0.0' in text
        assert f'gatehouse_upstream_healthy{{backend="app",endpoint="{upstream_url}"}} 1.0' in text
        reasons = []
        for _ in range(6):
            async with s.get(gh.url + "/down") as r:
                reasons.append((r.status, (await r.json())["error"]))
        assert reasons[:2] == [(502, "upstream_unavailable")] * 2  # two attempts each
        assert reasons[2:] == [(502, "upstream_circuit_open")] * 4
        async with s.get(gh.admin_url + "/metrics") as r:
            text = await r.text()
        assert 'gatehouse_upstream_circuit_state{backend="down"} 2.0' in text
        assert 'gatehouse_upstream_circuit_state{backend="app"} 0.0' in text
    records = gh.wait_audit(46)
    # The audit counts attempts, the first try included: the second request's
    # first failure opened the circuit, so it was not retried; then nothing is sent.
    assert [r["attempts"] for r in records if r["path"] == "/down"] == [2, 1, 0, 0, 0, 0]
    assert {r["attempts"] for r in records if r["path"] == "/echo/x"} <= {1, 2}


def named_app(name: str) -> FastAPI:
    app = FastAPI()

    @app.get("/{path:path}")
    async def who(path: str) -> dict[str, str]:
        return {"endpoint": name}

    return app


async def test_round_robin_spreads_requests_evenly_over_endpoints(
    gatehouse: GatehouseFactory,
) -> None:
    with serve_asgi(named_app("a")) as port_a, serve_asgi(named_app("b")) as port_b:
        gh = gatehouse(
            backends={
                "two": {
                    "urls": [f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"],
                    "load_balancing": "round_robin",
                }
            },
            routes=[public_route("two", "/", "two")],
        )
        seen: list[str] = []
        async with aiohttp.ClientSession() as s:
            for _ in range(10):
                async with s.get(gh.url + "/x") as r:
                    seen.append((await r.json())["endpoint"])
    assert seen.count("a") == 5 and seen.count("b") == 5


def app_without_docs() -> FastAPI:
    # No /openapi.json, /docs or /redoc, and no route at /: only /items.
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/items")
    async def items() -> list[str]:
        return ["one"]

    return app


async def test_a_fastapi_backend_whose_docs_are_disabled_is_served(
    gatehouse: GatehouseFactory,
) -> None:
    with serve_asgi(app_without_docs()) as port:
        url = f"http://127.0.0.1:{port}"
        gh = gatehouse(
            backends={
                "api": {"urls": [url], "kind": "fastapi", "health_check": {"interval": "300ms"}},
                "strict": {
                    "urls": [url],
                    "kind": "fastapi",
                    "health_check": {"path": "/healthz", "interval": "300ms"},
                },
            },
            routes=[
                public_route("strict", "/strict", "strict"),
                public_route("api", "/", "api"),
            ],
        )
        async with aiohttp.ClientSession() as s:
            await asyncio.sleep(0.7)  # a few probe rounds
            for _ in range(5):
                async with s.get(gh.url + "/items") as r:
                    assert (r.status, await r.json()) == (200, ["one"])
            async with s.get(gh.admin_url + "/metrics") as r:
                text = await r.text()
            assert f'gatehouse_upstream_healthy{{backend="api",endpoint="{url}"}} 1.0' in text
            # A probe path the app does not serve fails, and the log says which and why.
            async with s.get(gh.url + "/strict") as r:
                assert (r.status, (await r.json())["error"]) == (502, "no_healthy_upstream")
        log = gh.stderr()  # while the app still runs: its shutdown fails every probe
    assert f"backend strict: health probe GET {url}/healthz failed: answered 404" in log
    assert log.count("health probe GET") == 1  # once when it starts failing, not every interval
