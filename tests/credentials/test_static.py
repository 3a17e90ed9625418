"""Static header values from a file (re-read when it changes) or an environment variable."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from proxy.errors import UpstreamCredentialsUnavailable
from tests.credentials.conftest import make_broker, parse_backends, route


async def test_file_value_is_re_read_when_the_file_changes(tmp_path: Path) -> None:
    value = tmp_path / "api_key"
    value.write_text("key-one\n", encoding="utf-8")
    specs, _ = parse_backends(
        tmp_path,
        f"""
backends:
  legacy:
    credentials: {{type: static, value_file: {value}, header: X-Api-Key}}
""",
    )
    broker = await make_broker(specs)
    try:
        assert await broker.headers("legacy", route("legacy"), None) == [("X-Api-Key", "key-one")]
        value.write_text("key-two\n", encoding="utf-8")
        st = value.stat()
        os.utime(value, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        await asyncio.sleep(1.05)  # the provider looks at the mtime at most once a second
        assert await broker.headers("legacy", route("legacy"), None) == [("X-Api-Key", "key-two")]
        value.unlink()  # a rotation briefly removing the file keeps the last good value
        await asyncio.sleep(1.05)
        assert await broker.headers("legacy", route("legacy"), None) == [("X-Api-Key", "key-two")]
    finally:
        await broker.close()


async def test_env_value_with_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEGACY_TOKEN", "abc123")
    specs, _ = parse_backends(
        tmp_path,
        """
backends:
  legacy:
    credentials: {type: static, value: env:LEGACY_TOKEN, prefix: "Token "}
""",
    )
    broker = await make_broker(specs)
    try:
        assert await broker.headers("legacy", route("legacy"), None) == [
            ("Authorization", "Token abc123")
        ]
    finally:
        await broker.close()


async def test_missing_value_fails_closed_naming_the_reference_not_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSET_TOKEN", raising=False)
    specs, _ = parse_backends(
        tmp_path,
        "backends:\n  legacy:\n    credentials: {type: static, value: env:UNSET_TOKEN}\n",
    )
    broker = await make_broker(specs)
    try:
        with pytest.raises(UpstreamCredentialsUnavailable) as err:
            await broker.headers("legacy", route("legacy"), None)
    finally:
        await broker.close()
    assert "env:UNSET_TOKEN" in err.value.detail
    assert await broker.headers("unknown-backend", route("x"), None) == []


async def test_a_value_with_line_breaks_is_never_sent(tmp_path: Path) -> None:
    value = tmp_path / "api_key"
    value.write_text("key\r\nX-Injected: 1\n", encoding="utf-8")
    specs, _ = parse_backends(
        tmp_path, f"backends:\n  legacy:\n    credentials: {{type: static, value_file: {value}}}\n"
    )
    broker = await make_broker(specs)
    try:
        with pytest.raises(UpstreamCredentialsUnavailable):
            await broker.headers("legacy", route("legacy"), None)
    finally:
        await broker.close()
