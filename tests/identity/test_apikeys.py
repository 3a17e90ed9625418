"""API keys: create (CLI), verify, expiry, revocation by removal, HMAC-only storage
under a pepper, old scrypt entries migrated, wrong secrets throttled per key id."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.errors import AuthenticationError, RateLimited
from proxy.identity.apikeys import (
    ApiKeyStore,
    create_key,
    hash_secret,
    hmac_matches,
    load_key_file,
    pepper_id,
    revoke_key,
    scrypt_hash,
    secret_matches,
)
from proxy.identity.authenticate import Authenticator
from proxy.identity.config import ApiKeysConfig, IdentityConfig
from tests.conftest import GatehouseFactory
from tests.identity.conftest import bearer, facts
from tests.identity.proxy_env import Reply, call, counter, metrics, started
from tests.support.gatehouse import Gatehouse

REPO = Path(__file__).resolve().parents[2]


PEPPER = b"p" * 40
OTHER_PEPPER = b"q" * 40


def cli_create(keys: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "proxy", "apikey", "create", "--file", str(keys)]
    cmd += ["--name", "ci", "--subject", "svc-ci", "--groups", "deployers", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)


def legacy_entry(keys: Path, key_id: str, subject: str, secret: str) -> str:
    """Add an entry in the old scrypt form, as files written before HMAC hold; the key."""
    data = yaml.safe_load(keys.read_text()) if keys.exists() else None
    data = data or {"keys": []}
    data["keys"].append({"id": key_id, "subject": subject, "hash": scrypt_hash(secret)})
    keys.write_text(yaml.safe_dump(data))
    return f"gh_{key_id}_{secret}"


def test_cli_create_prints_the_key_once_and_stores_only_an_hmac_under_the_pepper(
    tmp_path: Path,
) -> None:
    keys, pepper = tmp_path / "keys.yaml", tmp_path / "pepper"
    pepper.write_bytes(PEPPER + b"\n")
    out = cli_create(keys, "--expires", "90d", "--pepper-file", str(pepper))
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("gh_")
    stored = keys.read_text()
    secret = key.split("_", 2)[2]
    assert secret not in stored and key not in stored
    (entry,) = load_key_file(keys).values()
    assert entry.hash.startswith(f"hmac-sha256${pepper_id(PEPPER)}$")
    assert hmac_matches(secret, entry.hash, PEPPER)
    assert not hmac_matches(secret, entry.hash, None)
    assert os.stat(keys).st_mode & 0o077 == 0
    assert entry.subject == "svc-ci" and entry.groups == frozenset({"deployers"})
    assert entry.expires_at is not None


def test_cli_create_without_a_pepper_stores_an_unpeppered_hmac(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    out = cli_create(keys)
    assert out.returncode == 0, out.stderr
    (entry,) = load_key_file(keys).values()
    assert entry.hash.startswith("hmac-sha256$none$")
    assert hmac_matches(out.stdout.strip().split("_", 2)[2], entry.hash, None)


def test_cli_create_refuses_a_short_pepper_and_a_file_hashed_under_another_pepper(
    tmp_path: Path,
) -> None:
    keys, short, other, none_yet = (tmp_path / n for n in ("k.yaml", "s", "o", "n.yaml"))
    short.write_bytes(b"x" * 31)
    other.write_bytes(OTHER_PEPPER)
    create_key(keys, name="a", subject="a", groups=[], pepper=PEPPER)
    refused = cli_create(keys, "--pepper-file", str(short))
    assert refused.returncode == 2 and "at least 32" in refused.stderr
    for extra in (("--pepper-file", str(other)), ()):
        refused = cli_create(keys, *extra)
        assert refused.returncode == 2 and "another pepper" in refused.stderr
    assert len(load_key_file(keys)) == 1
    assert cli_create(none_yet, "--pepper-file", str(other)).returncode == 0


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


def test_hmac_check_is_bound_to_the_pepper_it_was_made_under() -> None:
    peppered, bare = hash_secret("s" * 43, PEPPER), hash_secret("s" * 43, None)
    assert hmac_matches("s" * 43, peppered, PEPPER)
    assert not hmac_matches("s" * 42 + "t", peppered, PEPPER)
    assert not hmac_matches("s" * 43, peppered, OTHER_PEPPER)  # another pepper: never
    assert not hmac_matches("s" * 43, peppered, None)
    assert hmac_matches("s" * 43, bare, None)
    assert hmac_matches("s" * 43, bare, PEPPER)  # made before a pepper: still verifies
    for broken in ("garbage", "hmac-sha256$none$!!", peppered.replace("hmac", "hmak")):
        assert not hmac_matches("s" * 43, broken, PEPPER)
    assert not hmac_matches("s" * 43, scrypt_hash("s" * 43), PEPPER)


def test_old_scrypt_entries_still_verify_in_constant_time() -> None:
    stored = scrypt_hash("correct horse")
    assert secret_matches("correct horse", stored)
    assert not secret_matches("correct horsf", stored)
    assert not secret_matches("correct horse", stored.replace("scrypt$", "md5$"))
    assert not secret_matches("correct horse", "garbage")
    # Two hashes of one secret differ: the salt is random.
    assert scrypt_hash("correct horse") != stored


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


async def test_a_scrypt_entry_is_rewritten_as_an_hmac_on_first_successful_use(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.yaml"
    fresh = create_key(keys, name="new", subject="svc-new", groups=[], pepper=PEPPER)
    old = legacy_entry(keys, "0123456789ab", "svc-old", "o" * 43)
    store = ApiKeyStore(keys, pepper=PEPPER, reload_interval=0)
    with pytest.raises(AuthenticationError):
        await store.authenticate(old[:-1] + "x")  # a wrong secret migrates nothing
    assert load_key_file(keys)["0123456789ab"].hash.startswith("scrypt$")
    assert (await store.authenticate(old)).subject == "svc-old"
    entries = load_key_file(keys)
    assert entries["0123456789ab"].hash.startswith(f"hmac-sha256${pepper_id(PEPPER)}$")
    assert "o" * 43 not in keys.read_text()
    assert store.scrypt_checks == 2
    assert (await store.authenticate(old)).subject == "svc-old"
    assert (await store.authenticate(fresh)).subject == "svc-new"
    assert store.scrypt_checks == 2  # reloaded: the rewritten entry costs an HMAC
    assert os.stat(keys).st_mode & 0o077 == 0


async def test_an_unpeppered_entry_is_rewritten_under_a_newly_configured_pepper(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="ci", subject="svc-ci", groups=[])
    store = ApiKeyStore(keys, pepper=PEPPER, reload_interval=0)
    assert (await store.authenticate(key)).subject == "svc-ci"
    (entry,) = load_key_file(keys).values()
    assert entry.hash.startswith(f"hmac-sha256${pepper_id(PEPPER)}$")
    assert (await ApiKeyStore(keys, pepper=PEPPER).authenticate(key)).subject == "svc-ci"
    with pytest.raises(AuthenticationError):
        await ApiKeyStore(keys, pepper=OTHER_PEPPER).authenticate(key)


async def test_a_key_file_that_cannot_be_rewritten_keeps_its_scrypt_entries_working(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.yaml"
    old = legacy_entry(keys, "0123456789ab", "svc-old", "o" * 43)
    (tmp_path / "keys.yaml.lock").mkdir()  # the writers' lock cannot be taken
    store = ApiKeyStore(keys, pepper=PEPPER, reload_interval=0)
    assert (await store.authenticate(old)).subject == "svc-old"
    assert load_key_file(keys)["0123456789ab"].hash.startswith("scrypt$")
    assert (await store.authenticate(old)).subject == "svc-old"


async def test_concurrent_writers_never_lose_a_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    old = legacy_entry(keys, "0123456789ab", "svc-old", "o" * 43)
    store = ApiKeyStore(keys, pepper=PEPPER, reload_interval=0)

    def create_many() -> list[str]:
        return [create_key(keys, name=f"k{i}", subject="s", groups=[]) for i in range(15)]

    created, identity = await asyncio.gather(
        asyncio.to_thread(create_many), store.authenticate(old)
    )
    assert identity.subject == "svc-old"
    entries = load_key_file(keys)
    assert len(entries) == 16
    assert entries["0123456789ab"].hash.startswith("hmac-sha256$")
    assert all(key.split("_", 2)[1] in entries for key in created)


@pytest.mark.parametrize("scheme", ["hmac", "scrypt"])
async def test_wrong_secrets_past_the_limit_are_throttled_without_any_check(
    tmp_path: Path, scheme: str
) -> None:
    keys = tmp_path / "keys.yaml"
    if scheme == "hmac":
        victim = create_key(keys, name="v", subject="svc-victim", groups=[], pepper=PEPPER)
    else:
        victim = legacy_entry(keys, "0123456789ab", "svc-victim", "v" * 43)
    bystander = create_key(keys, name="b", subject="svc-b", groups=[], pepper=PEPPER)
    clock = [1000.0]
    store = ApiKeyStore(keys, pepper=PEPPER, max_failures_per_minute=3, clock=lambda: clock[0])
    assert (await store.authenticate(victim)).subject == "svc-victim"  # remembered
    wrong = victim[:-4] + "AAAA"
    results = await asyncio.gather(
        *(store.authenticate(wrong) for _ in range(50)), return_exceptions=True
    )
    reasons: list[str] = [
        r.reason for r in results if isinstance(r, AuthenticationError | RateLimited)
    ]
    assert reasons.count("invalid_api_key") == 3
    assert reasons.count("api_key_throttled") == 47
    assert all(r.status == 429 for r in results if isinstance(r, RateLimited))
    assert store.scrypt_checks == (4 if scheme == "scrypt" else 0)
    # The holder already verified keeps working; other ids are untouched.
    assert (await store.authenticate(victim)).subject == "svc-victim"
    assert (await store.authenticate(bystander)).subject == "svc-b"
    # A first use of the right key while throttled is not checked either ...
    cold = ApiKeyStore(keys, pepper=PEPPER, max_failures_per_minute=3, clock=lambda: clock[0])
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await cold.authenticate(wrong)
    with pytest.raises(RateLimited):
        await cold.authenticate(victim)
    # ... until a try has refilled (one per 60 s / 3).
    clock[0] += 20
    assert (await cold.authenticate(victim)).subject == "svc-victim"


# -- through a real gatehouse ---------------------------------------------------------
async def _api_key_gatehouse(
    gatehouse: GatehouseFactory, upstream_url: str, keys: Path, pepper: Path | None
) -> Gatehouse:
    options: dict[str, Any] = {"file": str(keys)}
    if pepper is not None:
        options["pepper_file"] = str(pepper)
    return await started(gatehouse, upstream_url, api_keys=options)


async def test_a_flood_of_wrong_secrets_costs_at_most_the_failure_limit(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    keys, pepper = tmp_path / "keys.yaml", tmp_path / "pepper"
    pepper.write_bytes(PEPPER)
    victim = legacy_entry(keys, "0000000000aa", "svc-victim", "v" * 43)
    first_use = legacy_entry(keys, "0000000000bb", "svc-old", "o" * 43)
    fresh = create_key(keys, name="new", subject="svc-new", groups=[], pepper=PEPPER)
    gh = await _api_key_gatehouse(gatehouse, upstream_url, keys, pepper)
    wrong = victim[:-4] + "AAAA"
    started_at = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def attempt(key: str) -> Reply:
            return await call(gh, headers={"X-Api-Key": key}, session=s)

        flood = [asyncio.ensure_future(attempt(wrong)) for _ in range(400)]
        good = await asyncio.gather(attempt(first_use), attempt(fresh))
        bad = await asyncio.gather(*flood)
    elapsed = time.monotonic() - started_at
    assert [(r.status, r.subject) for r in good] == [(200, "svc-old"), (200, "svc-new")]
    checked = [r for r in bad if (r.status, r.error) == (401, "invalid_api_key")]
    throttled = [r for r in bad if (r.status, r.error) == (429, "api_key_throttled")]
    assert len(checked) + len(throttled) == 400
    # Each checked wrong secret is one scrypt; 10 a minute refill at 1/6 a second.
    assert 10 <= len(checked) <= 10 + elapsed / 6 + 1
    text = await metrics(gh)
    labels = {"issuer": "apikey", "method": "apikey"}
    assert counter(text, "gatehouse_auth_total", result="invalid_api_key", **labels) == len(checked)
    assert counter(text, "gatehouse_auth_total", result="api_key_throttled", **labels) == len(
        throttled
    )
    records = gh.wait_audit(402)
    assert len(records) == 402
    assert wrong not in gh.audit_path.read_text() + gh.stderr()


@pytest.mark.parametrize("with_pepper", [True, False])
async def test_a_scrypt_entry_is_rewritten_on_first_use_and_keeps_working(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path, with_pepper: bool
) -> None:
    keys, pepper = tmp_path / "keys.yaml", tmp_path / "pepper"
    pepper.write_bytes(PEPPER)
    old = legacy_entry(keys, "0123456789ab", "svc-old", "o" * 43)
    other = legacy_entry(keys, "0123456789cd", "svc-other", "t" * 43)
    gh = await _api_key_gatehouse(gatehouse, upstream_url, keys, pepper if with_pepper else None)
    assert (await call(gh, headers={"X-Api-Key": old})).subject == "svc-old"
    entries = load_key_file(keys)
    expected = pepper_id(PEPPER) if with_pepper else "none"
    assert entries["0123456789ab"].hash.startswith(f"hmac-sha256${expected}$")
    assert entries["0123456789cd"].hash.startswith("scrypt$")  # not used yet: untouched
    await asyncio.sleep(1.1)  # the key file is re-read at most once a second
    for key, subject in ((old, "svc-old"), (other, "svc-other"), (old, "svc-old")):
        assert (await call(gh, headers={"X-Api-Key": key})).subject == subject
    assert all(e.hash.startswith("hmac-sha256$") for e in load_key_file(keys).values())
    assert revoke_key(keys, "0123456789ab")
    deadline = time.monotonic() + 10  # revoked once the file is re-read (1 s interval)
    while (reply := await call(gh, headers={"X-Api-Key": old})).status == 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert reply.error == "invalid_api_key"
