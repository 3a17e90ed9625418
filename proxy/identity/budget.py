"""Token buckets for calls Gatehouse spends on a caller's behalf (pure: time is passed in).

One bucket bounds the introspection calls an issuer receives per second; a
bounded table of them bounds the wrong secrets tried per API key id.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """Up to ``capacity`` takes at once, refilled at ``rate`` a second."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.last = now

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def give_back(self, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + 1.0)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.capacity


class BucketTable:
    """A bucket per key, at most ``maxsize`` of them.

    When full, a full bucket (indistinguishable from a fresh one) is dropped
    first; if none is full the least recently used goes, which errs towards
    admitting: this is a cost bound, never an authorisation.
    """

    __slots__ = ("_by_key", "capacity", "maxsize", "rate")

    def __init__(self, capacity: float, rate: float, maxsize: int) -> None:
        self.capacity = capacity
        self.rate = rate
        self.maxsize = maxsize
        self._by_key: OrderedDict[str, TokenBucket] = OrderedDict()

    def bucket(self, key: str, now: float) -> TokenBucket:
        found = self._by_key.get(key)
        if found is not None:
            self._by_key.move_to_end(key)
            return found
        if len(self._by_key) >= self.maxsize:
            self._evict(now)
        created = TokenBucket(self.capacity, self.rate, now)
        self._by_key[key] = created
        return created

    def _evict(self, now: float) -> None:
        for key, bucket in self._by_key.items():
            if bucket.full(now):
                del self._by_key[key]
                return
        self._by_key.popitem(last=False)
