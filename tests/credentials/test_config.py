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


def test_endpoints_that_receive_secrets_or_return_tokens_must_be_https_off_loopback(
    tmp_path: Path,
) -> None:
    found = problems(
        tmp_path,
        """
backends:
  cc:
    credentials: {type: client_credentials, token_url: "http://idp.test/token", client_id: c,
                  client_secret: env:S}
  te:
    credentials: {type: token_exchange, token_url: "http://10.0.0.5/token", client_id: c,
                  client_secret: env:S}
  az:
    credentials: {type: azure, mode: client_secret, tenant_id: t, client_id: c, scope: s,
                  client_secret: env:S, authority: "http://login.test"}
  gcp:
    credentials: {type: gcp, audience: "https://fn.test", impersonate_service_account: a@b.c,
                  iam_endpoint: "http://iam.test", metadata_host: 127.0.0.1:8080}
""",
    )
    https_only = "must use https:// (plain http is only allowed for loopback addresses)"
    assert found == [
        f"4: backends.cc.credentials.token_url {https_only}",
        f"7: backends.te.credentials.token_url {https_only}",
        f"11: backends.az.credentials.authority {https_only}",
        f"14: backends.gcp.credentials.iam_endpoint {https_only}",
    ]
    specs, _ = parse_backends(
        tmp_path,
        """
backends:
  cc:
    credentials: {type: client_credentials, token_url: "http://127.0.0.1:8080/token",
                  client_id: c, client_secret: env:S}
""",
    )
    assert isinstance(specs["cc"][0], ClientCredentialsSpec)


@pytest.mark.parametrize(
    ("host", "accepted"),
    [
        ("metadata.google.internal", True),
        ("169.254.169.254", True),
        ("127.0.0.1:8080", True),
        ("[fe80::1]:80", True),
        ("metadata.example.com", False),
        ("10.0.0.1", False),
    ],
)
def test_plain_http_metadata_hosts_are_only_link_local_loopback_or_googles_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, accepted: bool
) -> None:
    config = f"""
backends:
  fn:
    credentials: {{type: gcp, audience: "https://fn.test", metadata_host: "{host}"}}
"""
    rule = (
        "must use https:// (plain http only to the metadata server: "
        "a link-local or loopback address, or metadata.google.internal)"
    )
    if accepted:
        parse_backends(tmp_path, config)
    else:
        assert problems(tmp_path, config) == [f"4: backends.fn.credentials.metadata_host {rule}"]
    # The same rule for the environment variable google-auth and gatehouse honour.
    monkeypatch.setenv("GCE_METADATA_HOST", host)
    config = 'backends:\n  fn:\n    credentials: {type: gcp, audience: "https://fn.test"}\n'
    if accepted:
        parse_backends(tmp_path, config)
    else:
        assert problems(tmp_path, config) == [
            f"3: backends.fn.credentials: environment GCE_METADATA_HOST={host!r} {rule}"
        ]


@pytest.mark.parametrize(
    ("endpoint", "accepted"),
    [
        ("http://169.254.255.2:8081/msi/token", True),  # App Service for containers
        ("http://localhost:42356/msi/token", True),  # App Service
        ("https://10.0.0.4:2377/metadata/identity/oauth2/token", True),  # Service Fabric
        ("http://identity.example.com/msi/token", False),
    ],
)
def test_azure_managed_identity_endpoints_follow_the_metadata_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, accepted: bool
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint)
    config = "backends:\n  app:\n    credentials: {type: azure, app_id: a}\n"
    if accepted:
        parse_backends(tmp_path, config)
    else:
        [problem] = problems(tmp_path, config)
        assert problem.startswith(
            f"3: backends.app.credentials: environment IDENTITY_ENDPOINT={endpoint!r} "
            "must use https://"
        )
