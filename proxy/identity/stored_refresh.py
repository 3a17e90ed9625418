"""Refreshing a session kept in the shared store, so that one replica spends its
rotating refresh token and a logout is never undone.

The replica that takes the session's refresh lock refreshes. While its request
to the IdP runs it renews the lock (a heartbeat every third of the lock's
lifetime), so a slow IdP cannot let the lock lapse and a second replica spend
the same refresh token. The result is written with
:meth:`~proxy.identity.session.SessionStore.replace`, which checks, in the
same step as the write, that the session still exists (a logout meanwhile
wins) and that the lock's fence still names this refresh (a replica that
stalled past its lock never overwrites the one that took over).

Other replicas carry on with the session as it is while its access token is
still valid; otherwise they wait for the holder's result, polling the store,
for at most the refresh's deadline plus the lock's lifetime, then 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from proxy.errors import IdentityProviderUnavailable
from proxy.identity.session import SessionStore

Session = dict[str, Any]
# How often a replica waiting for another's refresh of the same session looks again.
POLL = 0.05


async def refresh_stored(
    store: SessionStore,
    session: Session,
    refresh: Callable[[Session], Awaitable[Session | None]],
    *,
    due: Callable[[Mapping[str, Any]], bool],
    usable: Callable[[Mapping[str, Any]], bool],
    deadline: float,
) -> Session | None:
    """The refreshed session (or the latest stored one), None when it ended.

    ``due``: the session still needs a refresh; ``usable``: its access token is
    still valid; ``deadline``: the longest ``refresh`` takes.
    """
    sid = str(session["sid"])
    give_up = time.monotonic() + deadline + store.lock_ttl
    current = session
    while True:
        token = await store.lock(sid, float(current["exp"]))
        if token is not None:
            return await _refresh_holding(store, sid, token, refresh, due)
        if usable(current):
            return current  # another replica is refreshing; this token still works
        if time.monotonic() >= give_up:
            raise IdentityProviderUnavailable(detail="session refresh elsewhere did not finish")
        await asyncio.sleep(POLL)
        latest = await store.load(sid)
        if latest is None or not due(latest):
            return latest  # logged out meanwhile, or refreshed by the other replica
        current = latest


async def _refresh_holding(
    store: SessionStore,
    sid: str,
    token: str,
    refresh: Callable[[Session], Awaitable[Session | None]],
    due: Callable[[Mapping[str, Any]], bool],
) -> Session | None:
    heartbeat = asyncio.get_running_loop().create_task(_keep_lock(store, sid, token))
    try:
        latest = await store.load(sid)
        if latest is None or not due(latest):
            return latest  # logged out meanwhile, or refreshed by another replica
        refreshed = await refresh(latest)
        if refreshed is latest:
            return latest  # nothing new (IdP away, access token still valid)
        if refreshed is None:
            # The IdP refused the refresh token: the session is over (unless another
            # replica took over and refreshed it meanwhile).
            await store.delete(sid, token)
            return await store.load(sid)
        outcome = await store.replace(sid, refreshed, token)
        if outcome == "written":
            return refreshed
        if outcome == "ended":
            return None  # a logout won the race: the session stays gone
        return await store.load(sid)  # fenced: the replica that took over decides
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        await store.unlock(sid, token)


async def _keep_lock(store: SessionStore, sid: str, token: str) -> None:
    """Renew the refresh lock while the refresh runs; stop once it is not ours."""
    while True:
        await asyncio.sleep(store.lock_ttl / 3)
        if not await store.extend(sid, token):
            return
