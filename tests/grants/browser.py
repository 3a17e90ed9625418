"""Headless Chromium from the system packages, driven by Playwright.

Never ``playwright install``: the browser is Debian's ``/usr/bin/chromium``
(``make test`` installs it). A missing browser fails the test that needs it.
The test CA is not in the browser's trust store; the server certificate is
trusted by its public key (``--ignore-certificate-errors-spki-list``), which
trusts exactly that certificate and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.async_api import BrowserContext, async_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def spki_pin(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@asynccontextmanager
async def chromium(
    profile: Path, server_cert: Path, *, width: int = 1100, height: int = 900
) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile in ``profile``; the context closes with the block."""
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (make test does)")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=[*ARGS, f"--ignore-certificate-errors-spki-list={spki_pin(server_cert)}"],
            viewport={"width": width, "height": height},
        )
        try:
            yield context
        finally:
            await context.close()


def keep(screenshot: Path, name: str) -> Path:
    """Copy a screenshot to tests/artifacts/ (git-ignored) and say where it is."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    shutil.copyfile(screenshot, target)
    print(f"screenshot: {target}")
    return target
