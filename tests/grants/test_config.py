"""The grants: section: defaults, bounds, and secrets by reference only."""

from __future__ import annotations

from pathlib import Path

from proxy.grants.config import GrantsConfig, parse_grants
from tests.support.config import parse_yaml, problems_of


def _read(tmp_path: Path, text: str) -> GrantsConfig | None:
    return parse_yaml(tmp_path, text, lambda root: parse_grants(root.mapping("grants"), tmp_path))


def test_no_section_means_no_grants(tmp_path: Path) -> None:
    assert _read(tmp_path, "grants:\n") is None


def test_an_empty_section_takes_every_default(tmp_path: Path) -> None:
    cfg = _read(tmp_path, "grants: {}\n")
    assert cfg == GrantsConfig(file=tmp_path / "grants.json")
    assert (cfg.decide_within, cfg.cache_ttl, cfg.retention) == (86400.0, 0.25, 30 * 86400.0)


def test_the_webhook_needs_a_secret_by_reference(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        grants:
          webhook_url: https://hooks.example.com/services/T0/B0/secretpath
        """,
        lambda root: parse_grants(root.mapping("grants"), tmp_path),
    )
    assert problems == [
        f"{tmp_path}/gatehouse.yaml:3: config.grants: webhook_url needs webhook_secret (env:NAME) "
        "or webhook_secret_file to sign its deliveries"
    ]
    inline = problems_of(
        tmp_path,
        """
        grants:
          webhook_url: https://hooks.example.com/services/T0/B0/secretpath
          webhook_secret: hunter2
        """,
        lambda root: parse_grants(root.mapping("grants"), tmp_path),
    )
    assert any("inline secrets are refused" in p for p in inline)
    assert not any("hunter2" in p or "secretpath" in p for p in inline)


def test_a_decision_cache_longer_than_a_second_is_refused(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        "grants: {cache_ttl: 5s}\n",
        lambda root: parse_grants(root.mapping("grants"), tmp_path),
    )
    assert problems == [
        f"{tmp_path}/gatehouse.yaml:1: config.grants.cache_ttl: at most 1s "
        "(a revocation must reach every replica within it)"
    ]


def test_bad_values_are_reported_with_their_line(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        grants:
          file: /nonexistent-dir/grants.json
          decide_within: 0s
          max_open: 0
          webhook_url: ftp://example.com/x
          webhook_secret: env:HOOK
          colour: blue
        """,
        lambda root: parse_grants(root.mapping("grants"), tmp_path),
    )
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["3", "4", "5", "6", "8"]


def test_a_webhook_secret_file_other_users_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "hook-secret"
    secret.write_text("s3cret")
    secret.chmod(0o644)
    problems = problems_of(
        tmp_path,
        f"""
        grants:
          webhook_url: https://hooks.example.com/services/T0/B0/x
          webhook_secret_file: {secret}
        """,
        lambda root: parse_grants(root.mapping("grants"), tmp_path),
    )
    assert problems == [
        f"{tmp_path}/gatehouse.yaml:4: config.grants.webhook_secret_file: {secret} "
        "is accessible to every user (mode 0644): chmod 600 it"
    ]
    secret.chmod(0o600)
    assert _read(
        tmp_path,
        f"grants: {{webhook_url: https://h.example.com/x, webhook_secret_file: {secret}}}\n",
    )
