"""API keys for callers that cannot do OIDC.

A key looks like ``gh_<id>_<secret>``: the id selects one entry, so a request
costs at most one scrypt; the key file stores only a salted scrypt hash of the
secret, compared in constant time. Revocation is removing the entry: the file
is re-read when its mtime/size/inode change (checked at most once a second).
Successful verifications are cached briefly (bounded) so hot keys skip scrypt;
a cache hit is only honoured while the entry's hash is unchanged.

Key file format (written by ``gatehouse apikey create``)::

    keys:
      - id: 3f9a1c2b7d4e
        name: ci
        subject: svc-ci
        groups: [deployers]
        hash: scrypt$16384$8$1$<salt>$<digest>
        created: "2026-11-21T17:00:00+00:00"
        expires: "2027-02-19T17:00:00+00:00"
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from cachetools import TTLCache

from proxy.config.reader import ConfigError, Mapping, Problems, each_mapping, load_document
from proxy.errors import AuthenticationError
from proxy.identity.model import Identity

log = logging.getLogger(__name__)

APIKEY_ISSUER = "apikey"
KEY_PREFIX = "gh_"
_KEY = re.compile(r"^gh_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})$")
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
_MAX_KEY_CHARS = 200


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


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


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
        reload_interval: float = 1.0,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._reload_interval = reload_interval
        self._clock = clock
        self._entries: dict[str, ApiKeyEntry] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked_at: float | None = None
        # sha256(full key) -> the hash string it verified against.
        self._verified: TTLCache[bytes, str] = TTLCache(cache_size, cache_ttl, timer=clock)

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
            raise AuthenticationError("invalid_api_key", detail="unknown API key id")
        entry, secret = found
        if entry.expires_at is not None and self._clock() >= entry.expires_at:
            raise AuthenticationError("expired_api_key", detail=f"API key {entry.id} expired")
        fingerprint = hashlib.sha256(presented.encode()).digest()
        cached = self._verified.get(fingerprint)
        if cached is None or not hmac.compare_digest(cached, entry.hash):
            # scrypt is deliberately slow; keep it off the event loop.
            if not await asyncio.to_thread(secret_matches, secret, entry.hash):
                raise AuthenticationError("invalid_api_key", detail=f"bad secret for {entry.id}")
            self._verified[fingerprint] = entry.hash
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


# -- management (CLI) ------------------------------------------------------
def create_key(
    path: Path,
    *,
    name: str,
    subject: str,
    groups: list[str],
    expires_in: float | None = None,
    now: float | None = None,
) -> str:
    """Add a key to ``path`` (created 0600 if absent) and return it; only the hash is stored."""
    moment = time.time() if now is None else now
    data: dict[str, Any] = {}
    if path.exists():
        load_key_file(path)  # refuse to rewrite a file we cannot read back
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    keys = data.setdefault("keys", [])
    taken = {k.get("id") for k in keys if isinstance(k, dict)}
    key_id = secrets.token_hex(6)
    while key_id in taken:
        key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    entry: dict[str, Any] = {
        "id": key_id,
        "name": name,
        "subject": subject,
        "groups": groups,
        "hash": hash_secret(secret),
        "created": datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds"),
    }
    if expires_in is not None:
        expires = datetime.fromtimestamp(moment + expires_in, UTC)
        entry["expires"] = expires.isoformat(timespec="seconds")
    keys.append(entry)
    write_key_file(path, data)
    return f"{KEY_PREFIX}{key_id}_{secret}"


def revoke_key(path: Path, key_id: str) -> bool:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    keys = data.get("keys") or []
    kept = [k for k in keys if not (isinstance(k, dict) and k.get("id") == key_id)]
    if len(kept) == len(keys):
        return False
    data["keys"] = kept
    write_key_file(path, data)
    return True


def write_key_file(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace, owner-only permissions (hashes are still worth protecting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".apikeys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("# Managed by `gatehouse apikey`: only scrypt hashes are stored.\n")
            yaml.safe_dump(data, fh, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
