"""Certificates for TLS tests, issued by a test CA with ``proxy.http.devcert``."""

from __future__ import annotations

from pathlib import Path

from proxy.http.devcert import Issued, issue


def loopback_server(ca: Issued, directory: Path) -> Issued:
    """A server certificate valid for ``localhost`` and ``127.0.0.1``."""
    return issue(
        ca, directory, "server", common_name="localhost", dns=("localhost",), ips=("127.0.0.1",)
    )
