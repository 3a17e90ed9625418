"""`mfa`: a second factor shown by amr or acr."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller


def test_mfa_from_amr_or_acr(tmp_path: Path) -> None:
    assert holds(tmp_path, "mfa: true", caller(claims={"amr": ["pwd", "mfa"]}))
    assert not holds(tmp_path, "mfa: true", caller(claims={"amr": ["pwd"]}))
    assert not holds(tmp_path, "mfa: true", caller(claims={"amr": "mfa"}))
    rule = "mfa: {amr: [hwk, otp], acr: [urn:example:loa:2]}"
    assert holds(tmp_path, rule, caller(claims={"amr": ["otp"]}))
    assert holds(tmp_path, rule, caller(claims={"acr": "urn:example:loa:2"}))
    assert not holds(tmp_path, rule, caller(claims={"acr": "urn:example:loa:1"}))
    assert outcome(tmp_path, "mfa: true", None) is None


def test_mfa_false_or_empty_is_refused(tmp_path: Path) -> None:
    assert "only 'true' has a meaning" in refused(tmp_path, "mfa: false")
    assert "give 'amr' and/or 'acr'" in refused(tmp_path, "mfa: {}")


def test_mfa_is_unknown_when_amr_was_not_received_and_nothing_else_shows_it(
    tmp_path: Path,
) -> None:
    assert outcome(tmp_path, "mfa: true", caller(unknown_claims=("amr",))) is None
    # acr is not consulted by `mfa: true`, so its absence changes nothing.
    assert outcome(tmp_path, "mfa: true", caller(unknown_claims=("acr",))) is False
    rule = "mfa: {amr: [otp], acr: [loa2]}"
    assert outcome(tmp_path, rule, caller(claims={"acr": "loa2"}, unknown_claims=("amr",)))
    assert outcome(tmp_path, rule, caller(claims={"acr": "loa1"}, unknown_claims=("amr",))) is None
