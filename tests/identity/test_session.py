"""Encrypted session cookies: tamper detection, key rotation, chunking, attributes."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.identity.session import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    CookieAttrs,
    CookieCodec,
    clearing_cookies,
    cookie_budget,
    cookie_header_bytes,
    load_cookie_keys,
    parse_cookie_header,
    read_chunked,
    render_set_cookie,
    write_chunked,
)

K1, K2 = os.urandom(32), os.urandom(32)
NAME = "__Host-gatehouse"
NOW = 1_800_000_000.0


def test_sealed_payload_round_trips_and_hides_its_content() -> None:
    codec = CookieCodec([K1])
    sealed = codec.seal(NAME, {"sub": "alice", "exp": NOW + 60})
    assert "alice" not in sealed
    assert codec.open(NAME, sealed, now=NOW) == {"sub": "alice", "exp": NOW + 60}


def test_tampered_or_foreign_cookies_are_refused() -> None:
    codec = CookieCodec([K1])
    sealed = codec.seal(NAME, {"sub": "alice", "exp": NOW + 60})
    version, kid, body = sealed.split(".")
    flipped = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    assert codec.open(NAME, f"{version}.{kid}.{flipped}", now=NOW) is None
    assert codec.open(NAME, "v1.deadbeef." + body, now=NOW) is None
    assert codec.open(NAME, "garbage", now=NOW) is None
    assert CookieCodec([K2]).open(NAME, sealed, now=NOW) is None


def test_cookie_name_is_bound_so_a_login_cookie_is_no_session() -> None:
    codec = CookieCodec([K1])
    sealed = codec.seal(f"{NAME}-login", {"state": "s", "exp": NOW + 60})
    assert codec.open(NAME, sealed, now=NOW) is None


def test_expired_payload_is_refused() -> None:
    codec = CookieCodec([K1])
    sealed = codec.seal(NAME, {"exp": NOW})
    assert codec.open(NAME, sealed, now=NOW) is None
    assert codec.open(NAME, codec.seal(NAME, {}), now=NOW) is None


def test_old_keys_still_decrypt_after_rotation_and_new_key_encrypts() -> None:
    old = CookieCodec([K1]).seal(NAME, {"sub": "alice", "exp": NOW + 60})
    rotated = CookieCodec([K2, K1])
    assert rotated.open(NAME, old, now=NOW) is not None
    fresh = rotated.seal(NAME, {"sub": "bob", "exp": NOW + 60})
    assert CookieCodec([K2]).open(NAME, fresh, now=NOW) is not None
    assert CookieCodec([K1]).open(NAME, fresh, now=NOW) is None


def test_key_file_lists_current_key_first(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    text = "\n".join(base64.urlsafe_b64encode(k).decode() for k in (K2, K1))
    path.write_text(f"# newest first\n{text}\n")
    assert load_cookie_keys(path) == [K2, K1]
    path.write_text("c2hvcnQ=\n")
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        load_cookie_keys(path)


def test_large_values_are_chunked_below_4kb_and_reassembled() -> None:
    value = "x" * (CHUNK_SIZE * 2 + 10)
    headers = write_chunked(NAME, value, {}, CookieAttrs(max_age=60))
    assert len(headers) == 3
    assert all(len(h) < 4096 for h in headers)
    jar = {h.split("=", 1)[0]: h.split("=", 1)[1].split(";")[0] for h in headers}
    assert set(jar) == {f"{NAME}-0", f"{NAME}-1", f"{NAME}-2"}
    assert read_chunked(NAME, jar) == value


def test_shrinking_session_clears_leftover_chunks() -> None:
    present = {f"{NAME}-0": "a", f"{NAME}-1": "b", f"{NAME}-2": "c"}
    headers = write_chunked(NAME, "small", present, CookieAttrs(max_age=60))
    assert headers[0].startswith(f"{NAME}=small;")
    cleared = {h.split("=", 1)[0] for h in headers[1:]}
    assert cleared == set(present)
    assert all("Max-Age=0" in h for h in headers[1:])


def test_set_cookie_carries_host_prefix_requirements() -> None:
    header = render_set_cookie(NAME, "v", CookieAttrs(max_age=10))
    parts = [p.strip() for p in header.split(";")]
    assert "Secure" in parts and "HttpOnly" in parts and "Path=/" in parts
    assert "SameSite=Lax" in parts
    assert not any(p.lower().startswith("domain") for p in parts)


def test_cookie_header_parsing_keeps_the_first_value() -> None:
    cookies = parse_cookie_header('a=1; b="2"; a=3; junk; =x')
    assert cookies == {"a": "1", "b": "2"}


@given(st.integers(min_value=1, max_value=CHUNK_SIZE * MAX_CHUNKS))
def test_cookie_header_bytes_is_what_the_chunks_take_in_a_cookie_header(length: int) -> None:
    value = "v" * length
    pairs = [c.split(";")[0] for c in write_chunked(NAME, value, {}, CookieAttrs())]
    header = "; ".join(pairs)
    # Each of our cookies also brings the "; " that separates it from the next one.
    assert cookie_header_bytes(NAME, value) == len(header) + 2


def test_the_cookie_budget_leaves_the_header_line_room_for_the_sites_other_cookies() -> None:
    assert cookie_budget(8190) == 8190 - len("Cookie") - 1024
    assert cookie_budget(4096) < 4096 - 1000


def test_a_431_clears_the_session_its_chunks_and_the_login_cookie() -> None:
    cleared = clearing_cookies(NAME)
    names = [c.split("=")[0] for c in cleared]
    assert names == [NAME, *(f"{NAME}-{i}" for i in range(MAX_CHUNKS)), f"{NAME}-login"]
    assert all("Max-Age=0" in c and "Path=/" in c and "Secure" in c for c in cleared)
