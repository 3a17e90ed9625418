"""The identity: section: defaults, every field, and file:line problems."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from proxy.config.reader import Mapping
from proxy.identity.config import ASYMMETRIC_ALGORITHMS, IdentityConfig, parse_identity
from tests.support.cli import gatehouse_command
from tests.support.config import parse_yaml
from tests.support.config import problems_of as config_problems
from tests.support.gatehouse import public_route, write_config


def read_identity(root: Mapping) -> IdentityConfig:
    return parse_identity(root.mapping("identity"))


def parse(tmp_path: Path, text: str) -> IdentityConfig:
    return parse_yaml(tmp_path, text, read_identity)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    return config_problems(tmp_path, text, read_identity)


def test_absent_section_means_identity_disabled(tmp_path: Path) -> None:
    assert parse_identity(None) == IdentityConfig()
    assert not parse_identity(None).enabled
    assert parse(tmp_path, "identity: {}\n") == IdentityConfig()


def test_full_section_parses_every_field(tmp_path: Path) -> None:
    (tmp_path / "hs").write_text("s" * 32)
    (tmp_path / "pepper").write_text("p" * 32)
    (tmp_path / "cookie-keys").write_text("x")
    config = parse(
        tmp_path,
        """
        identity:
          max_token_bytes: 16KiB
          token_cache_size: 500
          issuers:
            - issuer: https://login.example.test/realms/main
              audiences: [gatehouse, api]
              jwks_uri: https://keys.example.test/jwks.json
              algorithms: [RS256, HS256]
              clock_skew: 30s
              required_claims: [email]
              claims: {subject: oid, email: upn, groups: [groups, realm_access.roles]}
              hs256_secret_file: hs
              token_types: [at+jwt, Application/JWT, untyped]
              introspection:
                endpoint: https://login.example.test/introspect
                client_id: gatehouse
                client_secret: env:INTROSPECTION_SECRET
                cache_ttl: 2m
                negative_cache_ttl: 5s
                token_prefix: "main_"
                max_requests_per_second: 20
                require_aud: false
                require_iss: false
              jwks_cache: {min_ttl: 30s, max_ttl: 1h, default_ttl: 5m, stale_max_age: 12h}
            - issuer: http://127.0.0.1:9000
              audiences: gatehouse
          api_keys:
            file: keys.yaml
            header: X-Api-Key
            pepper_file: pepper
            max_failures_per_minute: 3
          mtls: {enabled: true}
          browser:
            issuer: https://login.example.test/realms/main
            client_id: gatehouse
            client_secret_file: hs
            cookie_keys_file: cookie-keys
            scopes: [openid, email, groups]
            allowed_redirect_hosts: [app.example.test]
            session_lifetime: 1h
        """,
    )
    first, second = config.issuers
    assert first.audiences == ("gatehouse", "api")
    assert first.algorithms == ("RS256", "HS256")
    assert first.clock_skew == 30
    assert first.claims.groups == ("groups", "realm_access.roles")
    assert first.hs256_secret is not None and first.hs256_secret.kind == "file"
    assert first.introspection is not None
    assert first.introspection.client_secret is not None
    assert first.introspection.client_secret.describe() == "env:INTROSPECTION_SECRET"
    assert first.introspection.cache_ttl == 120
    assert first.introspection.negative_cache_ttl == 5
    assert first.introspection.token_prefix == "main_"
    assert first.introspection.max_requests_per_second == 20
    assert not first.introspection.require_aud and not first.introspection.require_iss
    assert first.token_types == ("at+jwt", "jwt", "")
    assert first.jwks_cache.max_ttl == 3600
    assert second.algorithms == ASYMMETRIC_ALGORITHMS
    assert second.clock_skew == 60
    assert second.token_types == ("jwt", "at+jwt", "")
    assert config.max_token_bytes == 16384
    assert config.api_keys is not None and config.api_keys.header == "x-api-key"
    assert config.api_keys.pepper is not None and config.api_keys.pepper.kind == "file"
    assert config.api_keys.max_failures_per_minute == 3
    assert config.mtls.enabled
    assert config.browser is not None
    assert config.browser.allowed_redirect_hosts == ("app.example.test",)
    assert config.browser.session_lifetime == 3600
    assert first.cache_identity != second.cache_identity


def test_problems_are_reported_with_file_and_line(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """
        identity:
          issuers:
            - issuer: http://idp.example.test
              audiences: [a]
            - audiences: [a]
            - issuer: https://ok.example.test
              audiences: [a]
              algorithms: [HS256, none]
              introspection:
                endpoint: https://ok.example.test/i
                client_id: x
                client_secret: hunter2-inline
              mystery: 1
          max_token_bytes: 10
        """,
    )
    text = "\n".join(found)
    assert "gatehouse.yaml:4:" in text and "plain http is only allowed for loopback" in text
    assert "missing required key 'issuer'" in text
    assert "HS256 needs 'hs256_secret_file'" in text
    assert "unsupported algorithm 'none'" in text
    assert "inline secrets are refused" in text and "hunter2" not in text
    assert "unknown key 'mystery'" in text
    assert "max_token_bytes must be between" in text


def test_duplicate_issuer_and_missing_audiences_are_refused(tmp_path: Path) -> None:
    found = "\n".join(
        problems_of(
            tmp_path,
            """
            identity:
              issuers:
                - {issuer: "https://a.test", audiences: [x]}
                - {issuer: "https://a.test", audiences: [x]}
                - {issuer: "https://b.test"}
            """,
        )
    )
    assert "listed twice" in found
    assert "missing required key 'audiences'" in found


def test_browser_redirect_hosts_must_be_exact_names(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("x")
    found = "\n".join(
        problems_of(
            tmp_path,
            """
            identity:
              browser:
                issuer: https://a.test
                client_id: gh
                cookie_keys_file: keys
                allowed_redirect_hosts: [.example.test]
                scopes: [email]
            """,
        )
    )
    assert "must be an exact host name" in found
    assert "scopes must include openid" in found


# -- refused by `gatehouse check` and `gatehouse run` (file:line, exit 2) ------------
def gatehouse_cli(
    command: str, tmp_path: Path, identity: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    config, *_ = write_config(
        tmp_path,
        backends={"up": {"urls": ["http://127.0.0.1:9"]}},
        routes=[public_route("all", "/", "up")],
        extra={"identity": identity},
    )
    result = gatehouse_command(command, "--config", str(config), env={**os.environ, **(env or {})})
    return config, result


def hmac_issuer(tmp_path: Path, algorithms: list[str], secret: bytes) -> dict[str, Any]:
    (tmp_path / "hs").write_bytes(secret)
    return {
        "issuer": "https://hs.example.test",
        "audiences": ["api"],
        "algorithms": algorithms,
        "hs256_secret_file": str(tmp_path / "hs"),
    }


@pytest.mark.parametrize(
    ("algorithms", "length", "needed"),
    [
        (["HS256"], 31, "HS256 needs at least 32"),
        (["HS256"], 8, "HS256 needs at least 32"),
        (["HS384"], 47, "HS384 needs at least 48"),
        (["HS512"], 63, "HS512 needs at least 64"),
        (["HS256", "HS512"], 40, "HS512 needs at least 64"),
    ],
)
@pytest.mark.parametrize("command", ["check", "run"])
def test_short_hmac_secrets_are_refused_at_start_up(
    tmp_path: Path, command: str, algorithms: list[str], length: int, needed: str
) -> None:
    secret = b"k" * length
    config, result = gatehouse_cli(
        command, tmp_path, {"issuers": [hmac_issuer(tmp_path, algorithms, secret)]}
    )
    assert result.returncode == 2, result.stderr
    [line] = [x for x in result.stderr.splitlines() if "hs256_secret_file" in x]
    assert re.match(rf"{re.escape(str(config))}:\d+: ", line)
    assert needed in line and f"has {length} bytes" in line
    assert secret.decode() not in result.stderr
    assert "Traceback" not in result.stderr


def test_hmac_secrets_of_the_hash_length_pass_and_an_env_secret_is_measured_too(
    tmp_path: Path,
) -> None:
    for algorithms, length in ((["HS256"], 32), (["HS384"], 48), (["HS256", "HS512"], 64)):
        _, result = gatehouse_cli(
            "check", tmp_path, {"issuers": [hmac_issuer(tmp_path, algorithms, b"k" * length)]}
        )
        assert result.returncode == 0, result.stderr
    by_env = {"issuer": "https://hs.example.test", "audiences": ["api"], "algorithms": ["HS256"]}
    by_env["hs256_secret"] = "env:GATEHOUSE_TEST_HS"
    _, short = gatehouse_cli(
        "check", tmp_path, {"issuers": [by_env]}, {"GATEHOUSE_TEST_HS": "x" * 20}
    )
    assert short.returncode == 2 and "has 20 bytes" in short.stderr
    _, unset = gatehouse_cli("check", tmp_path, {"issuers": [by_env]})
    assert unset.returncode == 2 and "cannot be read" in unset.stderr


def introspecting(name: str, **options: Any) -> dict[str, Any]:
    return {
        "issuer": f"https://{name}.example.test",
        "audiences": ["api"],
        "introspection": {
            "endpoint": f"https://{name}.example.test/introspect",
            "client_id": "gatehouse",
            "client_secret": "env:HOME",
            **options,
        },
    }


@pytest.mark.parametrize(
    ("issuers", "message"),
    [
        ([introspecting("a"), introspecting("b")], "2 issuers introspect opaque tokens without"),
        (
            [introspecting("a"), introspecting("b"), introspecting("c", token_prefix="c_")],
            "2 issuers introspect opaque tokens without",
        ),
        (
            [introspecting("a", token_prefix="tok_"), introspecting("b", token_prefix="tok_b")],
            "'tok_' also begins 'tok_b'",
        ),
        ([introspecting("a", token_prefix="gh_x")], "not start with the API key prefix"),
    ],
)
def test_introspection_that_cannot_choose_one_issuer_per_token_is_refused(
    tmp_path: Path, issuers: list[dict[str, Any]], message: str
) -> None:
    config, result = gatehouse_cli("check", tmp_path, {"issuers": issuers})
    assert result.returncode == 2
    assert re.search(rf"{re.escape(str(config))}:\d+: .*{re.escape(message)}", result.stderr)


def test_introspection_routed_by_prefixes_with_one_fallback_is_accepted(tmp_path: Path) -> None:
    issuers = [
        introspecting("a"),
        introspecting("b", token_prefix="b_"),
        introspecting("c", token_prefix="c_"),
    ]
    _, result = gatehouse_cli("check", tmp_path, {"issuers": issuers})
    assert result.returncode == 0, result.stderr


def test_a_short_or_unreadable_pepper_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pepper").write_bytes(b"p" * 31)
    keys = {"file": str(tmp_path / "keys.yaml"), "pepper_file": str(tmp_path / "pepper")}
    config, result = gatehouse_cli("check", tmp_path, {"api_keys": keys})
    assert result.returncode == 2
    assert re.search(rf"{re.escape(str(config))}:\d+: .*pepper has 31 bytes", result.stderr)
    unset = {"file": keys["file"], "pepper": "env:GATEHOUSE_TEST_UNSET_PEPPER"}
    _, result = gatehouse_cli("check", tmp_path, {"api_keys": unset})
    assert result.returncode == 2 and "pepper cannot be read" in result.stderr
    (tmp_path / "pepper").write_bytes(b"p" * 32)
    _, result = gatehouse_cli("check", tmp_path, {"api_keys": keys})
    assert result.returncode == 0, result.stderr
