"""Hot reload in a running gatehouse: swaps under load, and bad files that never widen access."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy.policy.load import load_policies
from tests.conftest import GatehouseFactory
from tests.support.gatehouse import Gatehouse


def routes(generation: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "slow",
            "path": "/slow",
            "backend": "up",
            "allow": [{"name": f"gen-{generation}", "public": True}],
        },
        {
            "name": "admin",
            "path": "/echo/admin",
            "backend": "up",
            "allow": [{"name": "admins", "groups": ["admins"]}],
        },
        {
            "name": "site",
            "path": "/echo",
            "backend": "up",
            "allow": [{"name": "anyone", "public": True}],
        },
    ]


def text(generation: int) -> str:
    return yaml.safe_dump({"routes": routes(generation)}, sort_keys=False)


def version_of(content: str, scratch: Path) -> str:
    scratch.mkdir(exist_ok=True)
    (scratch / "routes.yaml").write_text(content)
    return load_policies(scratch).version


def start(gatehouse: GatehouseFactory, upstream_url: str) -> Gatehouse:
    return gatehouse(backends={"up": {"urls": [upstream_url]}}, routes=routes(0))


async def status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


async def reloads(gh: Gatehouse, result: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{gh.admin_url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(f'gatehouse_config_reload_total{{result="{result}"}}'):
                return float(line.split()[-1])
    return 0.0


async def reload_errors(gh: Gatehouse) -> float:
    return await reloads(gh, "error")


async def reload_ok(gh: Gatehouse) -> float:
    return await reloads(gh, "ok")


async def test_reload_under_load_each_request_is_decided_by_one_version(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    gh = start(gatehouse, upstream_url)
    policy_file = gh.workdir / "policies" / "routes.yaml"
    expected = {version_of(text(0), tmp_path / "v0"): "allowed:gen-0"}
    for generation in range(1, 21):
        expected[version_of(text(generation), tmp_path / f"v{generation}")] = (
            f"allowed:gen-{generation}"
        )
    total = 1000
    done = asyncio.Event()
    finished = 0

    async def one(session: aiohttp.ClientSession) -> int:
        nonlocal finished
        code = await status(session, f"{gh.url}/slow?seconds=0.05")
        finished += 1
        if finished >= 50:
            done.set()
        return code

    async def swap() -> None:
        await done.wait()  # swap while requests are in flight
        for generation in range(1, 21):
            policy_file.write_text(text(generation))
            gh.signal(signal.SIGHUP)
            await asyncio.sleep(0.04)

    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as session:
        results, _ = await asyncio.gather(
            asyncio.gather(*(one(session) for _ in range(total))), swap()
        )
    assert results == [200] * total
    records = [r for r in gh.wait_audit(total) if r.get("path") == "/slow"]
    assert len(records) == total
    for record in records:
        # The reason comes from the same policy set as the version: never a mix.
        assert expected.get(record["policy_version"]) == record["reason"], record
    assert len({r["policy_version"] for r in records}) >= 3


async def test_broken_or_deleted_policy_never_widens_access(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = start(gatehouse, upstream_url)
    policy_dir = gh.workdir / "policies"
    # A second file whose strict route, if dropped, would leave /echo/admin to the public /echo.
    (policy_dir / "routes.yaml").write_text(
        yaml.safe_dump({"routes": [r for r in routes(0) if r["name"] != "admin"]}, sort_keys=False)
    )
    (policy_dir / "z-admin.yaml").write_text(
        yaml.safe_dump({"routes": [r for r in routes(0) if r["name"] == "admin"]}, sort_keys=False)
    )
    async with aiohttp.ClientSession() as session:
        # Picked up by the directory watcher (no SIGHUP this early: the signal
        # handlers may not be installed yet in a process that just started).
        for _ in range(100):
            if await reload_ok(gh) >= 1:
                break
            await asyncio.sleep(0.05)
        assert await reload_ok(gh) >= 1
        assert await status(session, f"{gh.url}/echo/admin") == 401
        errors = await reload_errors(gh)

        (policy_dir / "z-admin.yaml").write_text("routes: [ {name: admin")
        gh.signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        assert await status(session, f"{gh.url}/echo/admin") == 401
        assert await status(session, f"{gh.url}/echo/public") == 200
        assert await reload_errors(gh) >= errors + 1

        errors = await reload_errors(gh)
        (policy_dir / "z-admin.yaml").unlink()
        for _ in range(60):  # the directory watcher polls every second
            if await reload_errors(gh) > errors:
                break
            await asyncio.sleep(0.1)
        assert await reload_errors(gh) >= errors + 1
        assert await status(session, f"{gh.url}/echo/admin") == 401
