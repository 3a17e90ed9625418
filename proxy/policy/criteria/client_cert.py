"""``client_cert``: a verified client certificate with a listed SAN or fingerprint.

The certificate is the one the TLS layer verified against the configured
client CA (or the mTLS identity's). SANs are compared exactly (URI or DNS);
fingerprints are SHA-256 hex digests, colons and case ignored.
"""

from __future__ import annotations

import re

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import Leaf, Outcome, Rules, fmt, register
from proxy.policy.criteria.operand import Operand

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ClientCert(Leaf):
    __slots__ = ("fingerprints", "sans")
    # Falls back to the mTLS identity's certificate: it can differ between callers.
    reads_caller = True

    def __init__(self, sans: frozenset[str], fingerprints: frozenset[str]) -> None:
        self.sans = sans
        self.fingerprints = fingerprints

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        cert = facts.client_cert
        if cert is None and identity is not None:
            cert = identity.client_cert
        if cert is None:
            return False
        if cert.fingerprint_sha256 in self.fingerprints:
            return True
        return any(s in self.sans for s in cert.san_uris) or any(
            s in self.sans for s in cert.san_dns
        )

    def describe(self) -> str:
        parts = []
        if self.sans:
            parts.append(f"san in {fmt(self.sans)}")
        if self.fingerprints:
            parts.append(f"fingerprint in {fmt(self.fingerprints)}")
        return "client_cert " + " or ".join(parts)


def _fingerprints(operand: Operand) -> frozenset[str] | None:
    texts = operand.strings()
    if texts is None:
        return None
    digests = frozenset(text.replace(":", "").strip().lower() for text in texts)
    if not all(_SHA256.fullmatch(digest) for digest in digests):
        operand.fail("expected a SHA-256 hex digest")
        return None
    return digests


def parse(operand: Operand, rules: Rules) -> ClientCert | None:
    fields = operand.fields(("san", "fingerprint"))
    if fields is None:
        return None
    if not fields:
        operand.fail("give 'san' and/or 'fingerprint'")
        return None
    sans: frozenset[str] | None = frozenset()
    fingerprints: frozenset[str] | None = frozenset()
    if "san" in fields:
        names = fields["san"].strings()
        sans = frozenset(names) if names is not None else None
    if "fingerprint" in fields:
        fingerprints = _fingerprints(fields["fingerprint"])
    if sans is None or fingerprints is None:
        return None
    return ClientCert(sans, fingerprints)


register(
    "client_cert",
    parse,
    about="request",
    syntax="client_cert: {san: [spiffe://partners.example.com/acme], fingerprint: [HEX]}",
    holds="a verified client certificate names a listed SAN (URI or DNS) "
    "or has a listed SHA-256 fingerprint",
)
