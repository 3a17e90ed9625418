"""Parsing ``backends.<name>.credentials`` and ``assertions:``: every problem as file:line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from proxy.config.reader import ConfigError
from proxy.credentials.config import (
    TOKEN_TYPE_JWT,
    AssertionSpec,
    AzureSpec,
    ClientCredentialsSpec,
    GcpSpec,
    StaticSpec,
    TokenExchangeSpec,
)
from proxy.credentials.signing import rotate_key_file
from tests.credentials.conftest import parse_backends


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_backends(tmp_path, text)
    return [f"{p.line}: {p.message}" for p in err.value.problems]


def test_a_list_of_credentials_combines_providers(tmp_path: Path) -> None:
    key = tmp_path / "sa.json"
    key.write_text("{}", encoding="utf-8")
    specs, _ = parse_backends(
        tmp_path,
        f"""
backends:
  fn:
    credentials:
      - type: gcp
        audience: https://fn.example.run.app
        service_account_key_file: {key}
        send_as: serverless
      - type: assertion
""",
    )
    gcp, assertion = specs["fn"]
    assert isinstance(gcp, GcpSpec)
    assert gcp.mode == "service_account_key"
    assert gcp.key_file == key
    assert gcp.send_as == "serverless"
    assert isinstance(assertion, AssertionSpec)
    assert assertion.audience == "fn"  # the backend name by default
    assert assertion.source.endswith("gatehouse.yaml:9")


def test_every_provider_type_parses_with_its_options(tmp_path: Path) -> None:
    specs, _ = parse_backends(
        tmp_path,
        """
backends:
  s:
    credentials: {type: static, value: env:API_KEY, header: X-Api-Key}
  cc:
    credentials:
      type: client_credentials
      token_url: https://idp.test/token
      client_id: gh
      client_secret: env:GH_SECRET
      auth_method: client_secret_post
      scope: "a b"
      resource: urn:x
  az:
    credentials: {type: azure, app_id: 0000-app}
  te:
    credentials:
      type: token_exchange
      token_url: https://idp.test/token
      client_id: gh
      client_secret: env:GH_SECRET
      audience: api
      requested_token_type: jwt
""",
    )
    (static,) = specs["s"]
    assert isinstance(static, StaticSpec)
    assert (static.value.kind, static.value.name, static.header) == ("env", "API_KEY", "X-Api-Key")
    (cc,) = specs["cc"]
    assert isinstance(cc, ClientCredentialsSpec)
    assert cc.scope == ("a", "b")
    assert cc.auth_method == "client_secret_post"
    (az,) = specs["az"]
    assert isinstance(az, AzureSpec)
    assert az.scope == "api://0000-app/.default"
    assert az.mode == "managed_identity"
    (te,) = specs["te"]
    assert isinstance(te, TokenExchangeSpec)
    assert te.requested_token_type == TOKEN_TYPE_JWT


def test_inline_secrets_are_refused_without_echoing_them(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
backends:
  cc:
    credentials:
      type: client_credentials
      token_url: https://idp.test/token
      client_id: gh
      client_secret: hunter2-super-secret
""",
    )
    assert any(p.startswith("8: ") and "inline secrets are refused" in p for p in found)
    assert not any("hunter2" in p for p in found)


def test_unknown_type_unknown_key_and_missing_options_are_all_reported(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
backends:
  a:
    credentials:
      - type: kerberos
      - type: client_credentials
        client_id: gh
        client_secret: env:S
        scopes: [x]
      - type: gcp
      - type: azure
        mode: client_secret
        scope: api://x/.default
""",
    )
    text = "\n".join(found)
    assert "5: backends.a.credentials[0].type: must be one of" in text
    assert "6: backends.a.credentials[1]: missing required key 'token_url'" in text
    assert "9: backends.a.credentials[1]: unknown key 'scopes'" in text
    assert "10: backends.a.credentials[2]: missing required key 'audience'" in text
    assert "11: backends.a.credentials[3]: missing required key 'client_id'" in text
    assert "missing 'client_secret_file: PATH' or 'client_secret: env:NAME'" in text


def test_two_providers_writing_the_same_header_are_refused(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
backends:
  a:
    credentials:
      - {type: static, value: env:K}
      - {type: gcp, audience: https://x}
""",
    )
    assert any("both write the Authorization header" in p for p in found)


def test_assertion_lifetime_over_five_minutes_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    rotate_key_file(keys)
    found = problems(
        tmp_path,
        f"""
assertions:
  signing_keys_file: {keys}
  lifetime: 10m
""",
    )
    assert found == ["4: config.assertions.lifetime: must be between 10s and 5m"]


def test_assertion_signing_keys_are_validated_at_load(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"kty": "RSA", "kid": "r"}]}), encoding="utf-8")
    found = problems(tmp_path, f"assertions:\n  signing_keys_file: {keys}\n")
    assert found == [
        "2: config.assertions.signing_keys_file: keys[0] must be an EC P-256 key (ES256)"
    ]
    found = problems(tmp_path, "assertions:\n  signing_keys_file: /nonexistent/keys.json\n")
    assert found[0].startswith("2: ") and "file not found" in found[0]


def test_assertion_section_parses_with_default_lifetime(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    rotate_key_file(keys)
    _, signing = parse_backends(tmp_path, f"assertions:\n  signing_keys_file: {keys}\n")
    assert signing is not None
    assert signing.lifetime == 300
    assert signing.signing_keys_file == keys


def test_gcp_impersonation_options_are_checked(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
backends:
  a:
    credentials:
      type: gcp
      audience: https://fn.test
      impersonate_service_account: not-an-email
  b:
    credentials:
      type: gcp
      audience: https://fn.test
      iam_endpoint: https://iam.test
""",
    )
    assert found == [
        "7: backends.a.credentials.impersonate_service_account: expected a service account email",
        "12: backends.b.credentials.iam_endpoint: only used with impersonate_service_account",
    ]


@pytest.mark.parametrize(
    ("provider", "key"),
    [
        ("{type: static, value_file: F}", "value_file"),
        ("{type: client_credentials, token_url: https://i.test/t, client_id: c, "
         "client_secret_file: F}", "client_secret_file"),
        ("{type: client_credentials, token_url: https://i.test/t, client_id: c, "
         "auth_method: private_key_jwt, private_key_file: F}", "private_key_file"),
        ("{type: token_exchange, token_url: https://i.test/t, client_id: c, "
         "client_secret_file: F}", "client_secret_file"),
        ("{type: azure, mode: client_secret, tenant_id: t, client_id: c, scope: s, "
         "client_secret_file: F}", "client_secret_file"),
        ("{type: azure, mode: certificate, tenant_id: t, client_id: c, scope: s, "
         "certificate_file: F}", "certificate_file"),
        ("{type: gcp, audience: https://fn.test, service_account_key_file: F}",
         "service_account_key_file"),
    ],
)  # fmt: skip
def test_a_secret_file_other_users_can_read_is_refused_at_its_line(
    tmp_path: Path, provider: str, key: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n", encoding="utf-8")
    text = f"backends:\n  a:\n    credentials: {provider.replace('F', str(secret))}\n"
    secret.chmod(0o644)
    assert problems(tmp_path, text) == [
        f"3: backends.a.credentials.{key}: {secret} is accessible to every user "
        "(mode 0644): chmod 600 it"
    ]
    os.chown(secret, 10001, 10001)
    secret.chmod(0o640)  # a group may read a key only when root owns the file
    [problem] = problems(tmp_path, text)
    assert "is accessible to its group (mode 0640)" in problem
    os.chown(secret, 0, 10001)  # a Kubernetes Secret volume: root:fsGroup, 0440
    secret.chmod(0o440)
    parse_backends(tmp_path, text)


def test_a_group_readable_signing_key_file_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    rotate_key_file(keys)
    os.chown(keys, 10001, 10001)
    keys.chmod(0o640)
    assert problems(tmp_path, f"assertions:\n  signing_keys_file: {keys}\n") == [
        f"2: config.assertions.signing_keys_file: {keys} is accessible to its group "
        "(mode 0640): chmod 600 it (a group may only read a key file that root owns)"
    ]
