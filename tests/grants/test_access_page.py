"""The access page in a real browser (headless system Chromium via Playwright), through
a real gatehouse, the real OpenID provider and the FastAPI upstream."""

from __future__ import annotations

import html
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from playwright.async_api import Page, expect

from tests.conftest import GatehouseFactory
from tests.grants.access_env import ACCESS, Deployment, deployment
from tests.grants.browser import chromium, keep


@asynccontextmanager
async def attacker_site(target: str, token: str) -> AsyncIterator[str]:
    """Another origin serving a form that posts to ``target`` (a CSRF attempt)."""
    body = (
        f'<form method="post" action="{html.escape(target)}">'
        f'<input type="hidden" name="csrf" value="{html.escape(token)}">'
        '<input type="hidden" name="reason" value="pwned">'
        "<button>win a prize</button></form>"
    )

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        await runner.cleanup()


async def _sign_in(page: Page, d: Deployment, user: str) -> None:
    await page.goto(f"{d.base}{ACCESS}/")
    # The provider's login form (devInteractions), then back through the callback.
    await page.fill("input[name=login]", user)
    await page.fill("input[name=password]", "pw")
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{d.base}{ACCESS}/")


async def test_an_approver_signs_in_sees_the_request_approves_it_and_the_call_succeeds(
    gatehouse: GatehouseFactory, tmp_path: Path, upstream_url: str, certs: dict[str, Path]
) -> None:
    async with deployment(gatehouse, tmp_path, upstream_url=upstream_url, certs=certs) as d:
        token = d.service_token()
        async with d.browser() as pipeline:
            status, _ = await d.call(pipeline, "GET", "/echo/prod/orders", token=token)
            assert status == 403
            status, grant = await d.call(
                pipeline,
                "POST",
                f"{ACCESS}/api/requests",
                token=token,
                body={
                    "route": "prod",
                    "duration": "2h",
                    "justification": "Backfill orders_daily for 2026-11-02 <b>(OPS-12)</b>",
                },
            )
            assert status == 201

            async with chromium(tmp_path / "profile", certs["server_cert"]) as browser:
                page = await browser.new_page()
                response = await page.goto(f"{d.base}{ACCESS}/")
                assert response is not None
                await _sign_in(page, d, "bob")
                card = page.locator(f"article#{grant['id']}")
                await expect(card).to_be_visible()
                await expect(card).to_contain_text("svc-ci")
                # People's text is shown as text, never as markup.
                await expect(card).to_contain_text("<b>(OPS-12)</b>")
                assert await card.locator("b").count() == 0
                shot = tmp_path / "access-page.png"
                await page.screenshot(path=str(shot), full_page=True)
                keep(shot, "access-page.png")

                await card.locator("textarea[name=reason]").fill("OPS-12 signed off by on-call")
                await card.locator("button.approve").click()
                await page.wait_for_url(re.compile(r".*done=approved.*"))
                await expect(page.locator(".flash.ok")).to_contain_text("Approved")
                overseen = page.locator(f"section[aria-labelledby=overseen] article#{grant['id']}")
                await expect(overseen).to_contain_text("active")
                await expect(overseen.locator(".remaining")).to_contain_text(
                    re.compile(r"in 1h5\dm|in 2h")
                )
                after = tmp_path / "access-page-approved.png"
                await page.screenshot(path=str(after), full_page=True)
                keep(after, "access-page-approved.png")

                # The grant's own page shows its audit trail.
                await page.click(f"section[aria-labelledby=overseen] a[href$='{grant['id']}']")
                trail = page.locator("table.trail tbody tr")
                await expect(trail).to_have_count(3)
                await expect(trail.nth(1)).to_contain_text("OPS-12 signed off by on-call")

                # At phone width nothing overflows sideways.
                await page.set_viewport_size({"width": 360, "height": 780})
                await page.goto(f"{d.base}{ACCESS}/")
                overflow = await page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0
                narrow = tmp_path / "access-page-narrow.png"
                await page.screenshot(path=str(narrow), full_page=True)
                keep(narrow, "access-page-narrow.png")

            status, echoed = await d.call(pipeline, "GET", "/echo/prod/orders", token=token)
            assert status == 200, echoed
        records = d.replicas[0].wait_audit(1)
        approved = [r for r in records if r["reason"] == "grant_approved"]
        assert [(r["subject"], r["auth"], r["grant_id"]) for r in approved] == [
            ("bob", "session", grant["id"])
        ]


async def test_forms_without_or_with_a_forged_csrf_token_are_refused(
    gatehouse: GatehouseFactory, tmp_path: Path, upstream_url: str, certs: dict[str, Path]
) -> None:
    async with deployment(gatehouse, tmp_path, upstream_url=upstream_url, certs=certs) as d:
        token = d.service_token()
        async with d.browser() as pipeline:
            _, grant = await d.call(
                pipeline,
                "POST",
                f"{ACCESS}/api/requests",
                token=token,
                body={"route": "prod", "justification": "replay job 4411"},
            )
            async with chromium(tmp_path / "profile", certs["server_cert"]) as browser:
                page = await browser.new_page()
                response = await page.goto(f"{d.base}{ACCESS}/")
                await _sign_in(page, d, "carol")
                response = await page.goto(f"{d.base}{ACCESS}/")
                assert response is not None
                headers = await response.all_headers()
                assert headers["content-security-policy"].startswith(
                    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                    "frame-ancestors 'none'"
                )
                assert "<script" not in (await response.text()).lower()
                card = page.locator(f"article#{grant['id']}")
                real = await card.locator("input[name=csrf]").get_attribute("value")
                assert real
                # The page's real form, submitted by the browser, without its token or
                # with a forged one.
                for forged in (None, real.split(".")[0] + ".AAAAforged", "1800000000.bm90"):
                    await page.goto(f"{d.base}{ACCESS}/")
                    field = card.locator("input[name=csrf]")
                    if forged is None:
                        await field.evaluate("input => input.remove()")
                    else:
                        await field.evaluate("(input, value) => { input.value = value }", forged)
                    await card.locator("textarea[name=reason]").fill("sure")
                    async with page.expect_navigation() as sent:
                        await card.locator("button.approve").click()
                    refused = await sent.value
                    assert refused is not None and refused.status == 403
                    assert (await refused.json())["error"] == "csrf_failed"
                # Another site's form carrying the real token: the browser withholds the
                # session (SameSite) and says where the form came from; refused either way.
                async with attacker_site(
                    f"{d.base}{ACCESS}/requests/{grant['id']}/approve", real
                ) as evil:
                    await page.goto(evil)
                    async with page.expect_navigation() as sent:
                        await page.click("button")
                    cross = await sent.value
                    assert cross is not None and cross.status in (401, 403)
                status, seen = await d.call(
                    pipeline, "GET", f"{ACCESS}/api/requests/{grant['id']}", token=token
                )
                assert (status, seen["state"]) == (200, "pending")
                # The untouched form works.
                await page.goto(f"{d.base}{ACCESS}/")
                await card.locator("textarea[name=reason]").fill("fine")
                await card.locator("button.approve").click()
                await page.wait_for_url(re.compile(r".*done=approved.*"))
        records = d.replicas[0].wait_audit(1)
        assert len([r for r in records if r["reason"] == "csrf_failed"]) == 3
