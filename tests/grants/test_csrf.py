"""CSRF tokens for the access page: bound to the browser's nonce and the person (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.grants import csrf

KEYS = csrf.derive_keys([b"k" * 32])
T = 1_800_000_000.0


def test_a_token_is_valid_for_its_browser_and_person_only() -> None:
    nonce = csrf.new_nonce()
    token = csrf.token(KEYS, nonce, "iss", "bob", T)
    assert csrf.valid(KEYS, token, nonce, "iss", "bob", T + 5)
    assert not csrf.valid(KEYS, token, csrf.new_nonce(), "iss", "bob", T)
    assert not csrf.valid(KEYS, token, nonce, "iss", "alice", T)
    assert not csrf.valid(KEYS, token, nonce, "other-iss", "bob", T)
    assert not csrf.valid(KEYS, token, None, "iss", "bob", T)


def test_a_token_ages_out_and_one_from_the_future_is_refused() -> None:
    nonce = csrf.new_nonce()
    token = csrf.token(KEYS, nonce, "iss", "bob", T)
    assert not csrf.valid(KEYS, token, nonce, "iss", "bob", T + csrf.MAX_AGE + 1)
    assert not csrf.valid(KEYS, token, nonce, "iss", "bob", T - 3600)


def test_keys_rotate_old_tokens_still_verify_and_new_ones_use_the_first_key() -> None:
    old = csrf.derive_keys([b"o" * 32])
    rotated = csrf.derive_keys([b"n" * 32, b"o" * 32])
    nonce = csrf.new_nonce()
    assert csrf.valid(rotated, csrf.token(old, nonce, "i", "s", T), nonce, "i", "s", T)
    assert not csrf.valid(old, csrf.token(rotated, nonce, "i", "s", T), nonce, "i", "s", T)


def test_the_csrf_key_is_not_the_cookie_key() -> None:
    assert KEYS[0] != b"k" * 32


@given(st.text(max_size=200))
def test_no_forged_token_is_valid(forged: str) -> None:
    assert not csrf.valid(KEYS, forged, "nonce", "iss", "bob", T)
