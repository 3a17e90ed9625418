"""`client_cert`: a verified client certificate by SAN or fingerprint."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import holds, refused
from tests.policy.support import caller, cert, facts


def test_client_cert_by_san_or_fingerprint(tmp_path: Path) -> None:
    fp = "AB:" * 31 + "AB"
    mtls = caller("spiffe://ex/a", method="mtls")
    rule = f"client_cert: {{san: [spiffe://ex/a, svc.example.com], fingerprint: ['{fp}']}}"
    assert holds(
        tmp_path, rule, mtls, facts(client_cert=cert(uris=("spiffe://ex/a",), fp="00" * 32))
    )
    assert holds(
        tmp_path, rule, mtls, facts(client_cert=cert(dns=("svc.example.com",), fp="00" * 32))
    )
    assert holds(tmp_path, rule, mtls, request=facts(client_cert=cert(fp="ab" * 32)))
    assert not holds(
        tmp_path, rule, mtls, facts(client_cert=cert(uris=("spiffe://ex/b",), fp="00" * 32))
    )
    assert not holds(tmp_path, rule, mtls, request=facts())


def test_malformed_certificate_criteria_are_refused(tmp_path: Path) -> None:
    assert "expected a SHA-256 hex digest" in refused(tmp_path, "client_cert: {fingerprint: [abc]}")
    assert "give 'san' and/or 'fingerprint'" in refused(tmp_path, "client_cert: {}")
    assert "unknown key 'cn'" in refused(tmp_path, "client_cert: {cn: x}")
