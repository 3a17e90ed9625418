"""API keys: create (CLI), verify, expiry, revocation by removal, hash-only storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.errors import AuthenticationError
from proxy.identity.apikeys import (
    ApiKeyStore,
    create_key,
    hash_secret,
    load_key_file,
    revoke_key,
    secret_matches,
)
from proxy.identity.authenticate import Authenticator
from proxy.identity.config import ApiKeysConfig, IdentityConfig
from tests.identity.conftest import bearer, facts

REPO = Path(__file__).resolve().parents[2]


def test_cli_create_prints_the_key_once_and_stores_only_a_hash(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    cmd = [sys.executable, "-m", "proxy", "apikey", "create", "--file", str(keys)]
    cmd += ["--name", "ci", "--subject", "svc-ci", "--groups", "deployers", "--expires", "90d"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True, timeout=60)
    key = out.stdout.strip()
    assert key.startswith("gh_")
    stored = keys.read_text()
    secret = key.split("_", 2)[2]
    assert secret not in stored and key not in stored
    assert "scrypt$" in stored
    assert os.stat(keys).st_mode & 0o077 == 0
    (entry,) = load_key_file(keys).values()
    assert entry.subject == "svc-ci" and entry.groups == frozenset({"deployers"})
    assert entry.expires_at is not None


async def test_created_key_authenticates_with_its_subject_and_groups(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="ci", subject="svc-ci", groups=["deployers"])
    store = ApiKeyStore(keys)
    identity = await store.authenticate(key)
    assert identity.subject == "svc-ci"
    assert identity.method == "apikey"
    assert identity.groups == frozenset({"deployers"})
    assert "gh_" not in repr(identity.claims)


async def test_wrong_secret_unknown_id_and_malformed_keys_are_rejected(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="ci", subject="svc-ci", groups=[])
    store = ApiKeyStore(keys)
    prefix, key_id, secret = key.split("_", 2)
    wrong_secret = f"{prefix}_{key_id}_{'A' * len(secret)}"
    unknown_id = f"{prefix}_{'0' * 12}_{secret}"
    for candidate in (wrong_secret, unknown_id, "gh_short", key + "x" * 200, ""):
        with pytest.raises(AuthenticationError):
            await store.authenticate(candidate)


def test_secret_check_uses_scrypt_and_constant_time_compare() -> None:
    stored = hash_secret("correct horse")
    assert secret_matches("correct horse", stored)
    assert not secret_matches("correct horsf", stored)
    assert not secret_matches("correct horse", stored.replace("scrypt$", "md5$"))
    assert not secret_matches("correct horse", "garbage")
    # Two hashes of one secret differ: the salt is random.
    assert hash_secret("correct horse") != stored


async def test_expired_key_is_rejected(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="old", subject="svc", groups=[], expires_in=60, now=1_000_000)
    with pytest.raises(AuthenticationError) as info:
        await ApiKeyStore(keys).authenticate(key)
    assert info.value.reason == "expired_api_key"
    live = ApiKeyStore(keys, clock=lambda: 1_000_030)
    assert (await live.authenticate(key)).subject == "svc"


async def test_removed_key_is_revoked_after_reload_even_when_cached(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="ci", subject="svc-ci", groups=[])
    other = create_key(keys, name="other", subject="svc-other", groups=[])
    store = ApiKeyStore(keys, reload_interval=0)
    assert (await store.authenticate(key)).subject == "svc-ci"
    assert revoke_key(keys, key.split("_", 2)[1])
    with pytest.raises(AuthenticationError):
        await store.authenticate(key)
    assert (await store.authenticate(other)).subject == "svc-other"


async def test_deleted_key_file_revokes_every_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="ci", subject="svc-ci", groups=[])
    store = ApiKeyStore(keys, reload_interval=0)
    assert await store.authenticate(key)
    keys.unlink()
    with pytest.raises(AuthenticationError):
        await store.authenticate(key)


async def test_reload_is_checked_at_most_once_per_interval(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="ci", subject="svc-ci", groups=[])
    clock = [100.0]
    store = ApiKeyStore(keys, clock=lambda: clock[0])
    assert await store.authenticate(key)
    keys.unlink()
    assert await store.authenticate(key)  # within the interval: file not re-checked
    clock[0] += 1.0
    with pytest.raises(AuthenticationError):
        await store.authenticate(key)


async def test_broken_key_file_keeps_the_last_good_set(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="ci", subject="svc-ci", groups=[])
    store = ApiKeyStore(keys, reload_interval=0)
    assert await store.authenticate(key)
    keys.write_text("keys: [ {id: broken\n")
    assert (await store.authenticate(key)).subject == "svc-ci"


async def test_authenticator_reads_the_header_and_bearer_form(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="ci", subject="svc-ci", groups=["deployers"])
    auth = Authenticator(IdentityConfig(api_keys=ApiKeysConfig(file=keys)))
    await auth.start()
    try:
        by_header = await auth.authenticate(facts({"X-Api-Key": key}))
        by_bearer = await auth.authenticate(bearer(key))
        assert by_header is not None and by_header.subject == "svc-ci"
        assert by_bearer is not None and by_bearer.subject == "svc-ci"
        with pytest.raises(AuthenticationError):
            await auth.authenticate(facts({"X-Api-Key": key[:-1] + "#"}))
    finally:
        await auth.close()
