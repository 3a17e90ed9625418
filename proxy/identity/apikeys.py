"""API keys for callers that cannot do OIDC.

A key looks like ``gh_<id>_<secret>``: the id selects one entry, and the
secret is 256 random bits, so the key file stores an HMAC-SHA256 of it under a
server pepper (``identity.api_keys.pepper_file``) and checking a key costs
microseconds, compared in constant time. A slow password hash buys nothing
for a secret nobody can guess, and made every wrong guess a lever: one scrypt
(16 MiB, ~25 ms) per attempt.

* Without a pepper the HMAC key is empty: a stolen key file still yields no
  usable key (the secrets cannot be guessed), but it is enough to confirm a
  key found elsewhere. An entry hashed under another pepper never matches.
* Entries in the old scrypt format still verify, on one dedicated thread
  (never the shared default executor), and are rewritten in the new format on
  their first successful use (atomically, under a lock the CLI takes too).
* Wrong secrets are counted per key id: ``max_failures_per_minute`` tries
  (in flight or failed), then that id is answered 429 ``api_key_throttled``
  without any check until the budget refills. A key verified in the last
  minute keeps working meanwhile (its digest is remembered), so a flood aimed
  at one id does not lock out the clients already using it.

Revocation is removing the entry: the file is re-read when its
mtime/size/inode change (checked at most once a second).

Key file format (written by ``gatehouse apikey create``)::

    keys:
      - id: 3f9a1c2b7d4e
        name: ci
        subject: svc-ci
        groups: [deployers]
        hash: hmac-sha256$<pepper id>$<digest>
        created: "2026-11-21T17:00:00+00:00"
        expires: "2027-02-19T17:00:00+00:00"
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from cachetools import TTLCache

from proxy.config.reader import ConfigError, Mapping, Problems, each_mapping, load_document
from proxy.errors import AuthenticationError, RateLimited, Reason
from proxy.files import replace_file
from proxy.identity.budget import BucketTable
from proxy.identity.config import API_KEY_PREFIX
from proxy.model import Identity

log = logging.getLogger(__name__)

APIKEY_ISSUER = "apikey"
KEY_PREFIX = API_KEY_PREFIX
_KEY = re.compile(r"^gh_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})$")
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
_MAX_KEY_CHARS = 200
HMAC_SCHEME = "hmac-sha256"
NO_PEPPER = "none"
_FAILURE_WINDOW = 60.0
_MAX_TRACKED_IDS = 10000


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    id: str
    name: str
    subject: str
    groups: frozenset[str]
    hash: str
    expires_at: float | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pepper_id(pepper: bytes | None) -> str:
    """Names the pepper an entry was hashed under, revealing nothing about it."""
    if not pepper:
        return NO_PEPPER
    return hashlib.sha256(b"gatehouse api key pepper\0" + pepper).hexdigest()[:16]


def hash_secret(secret: str, pepper: bytes | None) -> str:
    """The stored form of a new secret: HMAC-SHA256 under the pepper (empty: none)."""
    digest = hmac.new(pepper or b"", secret.encode(), hashlib.sha256).digest()
    return f"{HMAC_SCHEME}${pepper_id(pepper)}${_b64(digest)}"


def is_current(stored: str, pepper: bytes | None) -> bool:
    """Whether ``stored`` is in the form new keys get now (else it is migrated)."""
    return stored.startswith(f"{HMAC_SCHEME}${pepper_id(pepper)}$")


def hmac_matches(secret: str, stored: str, pepper: bytes | None) -> bool:
    """Constant-time check of an ``hmac-sha256`` entry (False for any other form)."""
    scheme, _, rest = stored.partition("$")
    entry_pepper, _, digest = rest.partition("$")
    if scheme != HMAC_SCHEME:
        return False
    # An entry hashed without a pepper still verifies once one is configured
    # (and is then rewritten); one hashed under another pepper never does.
    key = b"" if entry_pepper == NO_PEPPER else pepper
    if key is None or entry_pepper != pepper_id(key):
        return False
    expected = hmac.new(key, secret.encode(), hashlib.sha256).digest()
    try:
        return hmac.compare_digest(expected, _unb64(digest))
    except ValueError:
        return False


def scrypt_hash(secret: str, salt: bytes | None = None) -> str:
    """The old stored form (still verified, never written for new keys)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def is_scrypt(stored: str) -> bool:
    return stored.startswith("scrypt$")


def secret_matches(secret: str, stored: str) -> bool:
    """scrypt the presented secret with the stored parameters; constant-time compare."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        derived = hashlib.scrypt(
            secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(derived, expected)


def parse_key(presented: str) -> tuple[str, str] | None:
    if len(presented) > _MAX_KEY_CHARS:
        return None
    m = _KEY.match(presented)
    return (m.group(1), m.group(2)) if m else None


def _timestamp(m: Mapping, key: str) -> float | None:
    text = m.text(key)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        m.error(key, f"{m.where}.{key}: expected an ISO 8601 timestamp")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _entry(m: Mapping, _index: int) -> ApiKeyEntry | None:
    key_id = m.text("id", required=True)
    name = m.text("name", "")
    subject = m.text("subject", required=True)
    listed: Any = m.str_list("groups")
    groups = frozenset(str(g) for g in listed)
    digest = m.text("hash", required=True)
    m.text("created")
    expires = _timestamp(m, "expires")
    m.close()
    if key_id is None or subject is None or digest is None:
        return None
    if not re.fullmatch(r"[0-9a-f]{12}", key_id):
        m.error("id", f"{m.where}.id must be 12 lower-case hex digits")
        return None
    return ApiKeyEntry(key_id, name, subject, groups, digest, expires)


def load_key_file(path: Path) -> dict[str, ApiKeyEntry]:
    """Entries by id; raises ConfigError listing every problem."""
    problems = Problems()
    doc, node = load_document(path, problems)
    entries: dict[str, ApiKeyEntry] = {}
    root = Mapping.of(doc, node, "api key file") if node is not None else None
    if root is not None:
        for entry in each_mapping(doc, root.nodes("keys"), "keys", _entry):
            if entry.id in entries:
                root.error("keys", f"keys: duplicate id {entry.id}")
            entries[entry.id] = entry
        root.close()
    problems.raise_if_any()
    return entries


class ApiKeyStore:
    def __init__(
        self,
        path: Path,
        *,
        pepper: bytes | None = None,
        max_failures_per_minute: int = 10,
        reload_interval: float = 1.0,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._pepper = pepper or None
        self._reload_interval = reload_interval
        self._clock = clock
        self._entries: dict[str, ApiKeyEntry] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked_at: float | None = None
        # sha256(full key) -> the hash string it verified against.
        self._verified: TTLCache[bytes, str] = TTLCache(cache_size, cache_ttl, timer=clock)
        limit = float(max_failures_per_minute)
        self._attempts = BucketTable(limit, limit / _FAILURE_WINDOW, _MAX_TRACKED_IDS)
        # Old scrypt entries only: one thread of its own, so a flood of them
        # never queues ahead of anything else the process runs in threads.
        self._slow_hashes = ThreadPoolExecutor(1, thread_name_prefix="gatehouse-apikey")
        self._unmigratable: set[str] = set()
        self.scrypt_checks = 0

    def close(self) -> None:
        self._slow_hashes.shutdown(wait=False, cancel_futures=True)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self._reload_interval:
            return
        self._checked_at = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._entries:
                log.warning("API key file %s is gone: all API keys revoked", self.path)
            self._entries, self._signature = {}, None
            return
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return
        try:
            self._entries = load_key_file(self.path)
        except ConfigError as exc:
            # Keep the last good set: a half-written edit must not lock everyone out.
            log.error("API key file not reloaded:\n%s", exc)
            return
        self._signature = signature
        self._verified.clear()
        self._warn_foreign_peppers()

    def _warn_foreign_peppers(self) -> None:
        mine = {NO_PEPPER, pepper_id(self._pepper)}
        foreign = [
            e.id
            for e in self._entries.values()
            if e.hash.startswith(f"{HMAC_SCHEME}$") and e.hash.split("$")[1] not in mine
        ]
        if foreign:
            log.warning(
                "API key file %s: %d key(s) hashed under another pepper can never match: %s",
                self.path,
                len(foreign),
                ", ".join(sorted(foreign)),
            )

    def entry_for(self, presented: str) -> tuple[ApiKeyEntry, str] | None:
        self._maybe_reload()
        parsed = parse_key(presented)
        if parsed is None:
            return None
        entry = self._entries.get(parsed[0])
        return (entry, parsed[1]) if entry is not None else None

    async def authenticate(self, presented: str) -> Identity:
        found = self.entry_for(presented)
        if found is None:
            raise AuthenticationError(Reason.INVALID_API_KEY, detail="unknown API key id")
        entry, secret = found
        now = self._clock()
        if entry.expires_at is not None and now >= entry.expires_at:
            raise AuthenticationError(Reason.EXPIRED_API_KEY, detail=f"API key {entry.id} expired")
        fingerprint = hashlib.sha256(presented.encode()).digest()
        cached = self._verified.get(fingerprint)
        if cached is None or not hmac.compare_digest(cached, entry.hash):
            await self._verify(entry, secret, now)
            self._verified[fingerprint] = entry.hash
        return _identity(entry)

    async def _verify(self, entry: ApiKeyEntry, secret: str, now: float) -> None:
        """Check ``secret`` against ``entry`` within the id's attempt budget."""
        attempts = self._attempts.bucket(entry.id, now)
        if not attempts.take(now):
            raise RateLimited(
                Reason.API_KEY_THROTTLED,
                detail=f"API key {entry.id}: over max_failures_per_minute, not checked",
            )
        if is_scrypt(entry.hash):
            self.scrypt_checks += 1
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._slow_hashes, secret_matches, secret, entry.hash)
        else:
            ok = hmac_matches(secret, entry.hash, self._pepper)
        if not ok:
            raise AuthenticationError(Reason.INVALID_API_KEY, detail=f"bad secret for {entry.id}")
        attempts.give_back(self._clock())
        if not is_current(entry.hash, self._pepper) and entry.id not in self._unmigratable:
            await self._migrate(entry, hash_secret(secret, self._pepper))

    async def _migrate(self, entry: ApiKeyEntry, new_hash: str) -> None:
        """Rewrite one verified entry in the current form; the file reload picks it up."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._slow_hashes, replace_hash, self.path, entry.id, entry.hash, new_hash
            )
        except (OSError, ConfigError, yaml.YAMLError) as exc:
            self._unmigratable.add(entry.id)
            log.warning(
                "API key %s verified but not rewritten in the new format (%s): "
                "it keeps costing a slow hash until the key file is writable",
                entry.id,
                type(exc).__name__,
            )
            return
        log.info("API key %s rewritten as %s", entry.id, HMAC_SCHEME)


def _identity(entry: ApiKeyEntry) -> Identity:
    return Identity(
        subject=entry.subject,
        issuer=APIKEY_ISSUER,
        method="apikey",
        groups=entry.groups,
        claims=MappingProxyType(
            {"sub": entry.subject, "api_key_id": entry.id, "api_key_name": entry.name}
        ),
        expires_at=entry.expires_at,
    )


# -- management (CLI, and the migration of verified entries) ------------------
@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialises writers of one key file (the CLI, every worker's migration)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_raw(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    load_key_file(path)  # refuse to rewrite a file we cannot read back
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return data if isinstance(data, dict) else {}


def peppers_in(path: Path) -> set[str]:
    """The pepper ids the file's HMAC entries were hashed under."""
    if not path.exists():
        return set()
    return {
        e.hash.split("$")[1]
        for e in load_key_file(path).values()
        if e.hash.startswith(f"{HMAC_SCHEME}$")
    }


def create_key(
    path: Path,
    *,
    name: str,
    subject: str,
    groups: list[str],
    pepper: bytes | None = None,
    expires_in: float | None = None,
    now: float | None = None,
) -> str:
    """Add a key to ``path`` (created 0600 if absent) and return it; only the hash is stored."""
    moment = time.time() if now is None else now
    secret = secrets.token_urlsafe(32)
    with _locked(path):
        data = _read_raw(path)
        keys = data.setdefault("keys", [])
        taken = {k.get("id") for k in keys if isinstance(k, dict)}
        key_id = secrets.token_hex(6)
        while key_id in taken:
            key_id = secrets.token_hex(6)
        entry: dict[str, Any] = {
            "id": key_id,
            "name": name,
            "subject": subject,
            "groups": groups,
            "hash": hash_secret(secret, pepper),
            "created": datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds"),
        }
        if expires_in is not None:
            expires = datetime.fromtimestamp(moment + expires_in, UTC)
            entry["expires"] = expires.isoformat(timespec="seconds")
        keys.append(entry)
        write_key_file(path, data)
    return f"{KEY_PREFIX}{key_id}_{secret}"


def revoke_key(path: Path, key_id: str) -> bool:
    with _locked(path):
        data = _read_raw(path)
        keys = data.get("keys") or []
        kept = [k for k in keys if not (isinstance(k, dict) and k.get("id") == key_id)]
        if len(kept) == len(keys):
            return False
        data["keys"] = kept
        write_key_file(path, data)
    return True


def replace_hash(path: Path, key_id: str, old_hash: str, new_hash: str) -> bool:
    """Swap one entry's hash, only if it still holds ``old_hash`` (several workers
    may migrate the same key; an edit made meanwhile wins)."""
    with _locked(path):
        data = _read_raw(path)
        for item in data.get("keys") or []:
            if isinstance(item, dict) and item.get("id") == key_id:
                if item.get("hash") != old_hash:
                    return False
                item["hash"] = new_hash
                write_key_file(path, data)
                return True
    return False


def write_key_file(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace, owner-only permissions (hashes are still worth protecting).

    Called under the key file's lock: a temporary left behind can only be an
    interrupted writer's, so it is taken over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Managed by `gatehouse apikey`: only HMACs of the secrets are stored.\n"
    text += yaml.safe_dump(data, sort_keys=False)
    replace_file(path, text.encode("utf-8"), take_over=True)
