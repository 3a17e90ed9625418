"""Configuration from the environment: ``${VAR}``, ``GATEHOUSE_CONFIG``, and no
``env:NAME`` taken literally where a plain value belongs."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.load import load_config
from proxy.config.reader import expand_variables
from tests.peers.cloud.azure import TENANT, AzurePeer
from tests.peers.cloud.keys import Issuer
from tests.peers.cloud.tls import LocalTls, make_tls
from tests.support.cli import gatehouse_async, gatehouse_command

APP_ID = "5e7a0c1d-0000-4000-8000-00000000a11d"
ROUTE = (
    "routes:\n  - name: r\n    path: /api\n    backend: up\n    allow: [{name: a, groups: [eng]}]\n"
)


def gatehouse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "GATEHOUSE_CONFIG"}
    return gatehouse_command(*args, env={**base, **(env or {})})


@pytest.fixture
async def entra_peer(tmp_path: Path) -> AsyncIterator[tuple[AzurePeer, LocalTls]]:
    """A local Entra ID token endpoint over TLS (tests/peers/cloud/azure.py)."""
    tls = make_tls(tmp_path)
    entra = await AzurePeer(ssl_context=tls.server_context()).start()
    yield entra, tls
    await entra.stop()


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "r.yaml").write_text(ROUTE)
    path = tmp_path / "gatehouse.yaml"
    path.write_text(text)
    return path


# -- the substitution itself ---------------------------------------------------
def test_variables_defaults_and_escapes_expand_like_the_shell() -> None:
    env = {"HOST": "10.0.0.1", "EMPTY": ""}
    assert expand_variables("${HOST}:8443", env) == ("10.0.0.1:8443", [])
    assert expand_variables("${PORT:-9901}", env) == ("9901", [])
    assert expand_variables("${EMPTY:-fallback}", env) == ("fallback", [])
    assert expand_variables("${EMPTY}", env) == ("", [])
    assert expand_variables("$${HOST} ${HOST}", env) == ("${HOST} 10.0.0.1", [])
    assert expand_variables("${NOPE}/${ALSO}", env) == ("/", ["NOPE", "ALSO"])
    assert expand_variables("no variables, $HOME stays", env) == ("no variables, $HOME stays", [])


@given(st.text(alphabet=st.characters(blacklist_characters="${}"), max_size=40))
def test_text_without_a_variable_is_left_exactly_as_written(text: str) -> None:
    assert expand_variables(text, {}) == (text, [])


@given(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True),
    st.text(alphabet=st.characters(blacklist_characters="}"), min_size=1, max_size=20),
)
def test_a_set_variable_always_wins_over_its_default(name: str, value: str) -> None:
    assert expand_variables(f"${{{name}:-other}}", {name: value}) == (value, [])


def test_substituted_plain_values_are_typed_and_quoted_ones_stay_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen:\n"
        "  address: 127.0.0.1:${PORT}\n"
        "  max_headers: ${MAX_HEADERS:-64}\n"
        "  allow_semicolon: ${SEMICOLONS}\n"
        "public_url: '${PUBLIC_URL}'\n"
        "backends:\n"
        "  up: {urls: ['http://${UPSTREAM_HOST}:8000']}\n",
    )
    env = {
        "PORT": "18443",
        "SEMICOLONS": "true",
        "PUBLIC_URL": "https://gw.example.com",
        "UPSTREAM_HOST": "orders.internal",
    }
    config = load_config(path, environ=env)
    assert config.listen.address.port == 18443
    assert config.listen.max_headers == 64
    assert config.listen.path.allow_semicolon is True
    assert config.public_url == "https://gw.example.com"
    assert config.backends["up"].urls == ("http://orders.internal:8000",)


# -- through a real `gatehouse check` --------------------------------------------
def test_check_substitutes_the_environment_and_names_an_unset_variable_at_its_line(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "listen:\n"
        "  address: ${LISTEN_ADDRESS:-127.0.0.1:8443}\n"
        "admin:\n"
        "  address: ${ADMIN_ADDRESS}\n"  # line 4: unset, no default
        "backends:\n"
        "  up: {urls: ['${UPSTREAM_URL}']}\n",
    )
    good = gatehouse(
        "check",
        "--config",
        str(path),
        "--json",
        env={"ADMIN_ADDRESS": "127.0.0.1:9901", "UPSTREAM_URL": "http://127.0.0.1:8000"},
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["ok"] is True

    bad = gatehouse("check", "--config", str(path), env={"UPSTREAM_URL": "http://127.0.0.1:8000"})
    assert bad.returncode == 2
    assert (
        f"{path}:4: config.admin.address: environment variable ADMIN_ADDRESS is not set"
        in bad.stderr
    ), bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_malformed_variable_is_a_problem_not_a_literal(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "public_url: https://${HOST\nbackends:\n  up: {urls: [http://127.0.0.1:1]}\n",
    )
    result = gatehouse("check", "--config", str(path), env={"HOST": "x"})
    assert result.returncode == 2
    assert f"{path}:1: config.public_url: expected ${{NAME}}" in result.stderr


def test_an_env_reference_on_a_non_secret_field_is_refused_with_the_fix(tmp_path: Path) -> None:
    """``client_id: env:AZURE_CLIENT_ID`` used to pass and then be sent literally."""
    path = write(
        tmp_path,
        "backends:\n"
        "  up:\n"
        "    urls: [http://127.0.0.1:1]\n"
        "    credentials:\n"
        "      type: azure\n"
        "      mode: client_secret\n"
        "      app_id: 5e7a0c1d-0000-4000-8000-00000000a11d\n"
        "      client_id: env:AZURE_CLIENT_ID\n"  # line 8
        "      tenant_id: ${AZURE_TENANT_ID}\n"
        "      client_secret: env:AZURE_CLIENT_SECRET\n"  # a secret: references are right here
        "identity:\n"
        "  issuers:\n"
        "    - issuer: https://login.example.com\n"
        "      audiences: [env:AUDIENCE]\n",  # line 14
    )
    result = gatehouse(
        "check", "--config", str(path), env={"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c"}
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(
        line.startswith(f"{path}:8: backends.up.credentials.client_id: 'env:AZURE_CLIENT_ID'")
        and "write '${AZURE_CLIENT_ID}'" in line
        for line in lines
    ), result.stderr
    assert any(line.startswith(f"{path}:14:") and "'env:AUDIENCE'" in line for line in lines)
    assert not any(":10:" in line for line in lines), "a secret reference is fine"


def test_gatehouse_config_is_the_default_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  up: {urls: [http://127.0.0.1:1]}\n")
    result = gatehouse("check", env={"GATEHOUSE_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK")
    missing = gatehouse("check")
    assert missing.returncode == 2
    assert "--config" in missing.stderr


async def test_aks_workload_identity_variables_configure_the_azure_provider(
    tmp_path: Path, entra_peer: tuple[AzurePeer, LocalTls]
) -> None:
    """``type: azure`` with an app id is enough in a pod that AKS workload identity set up."""
    entra, tls = entra_peer
    cluster = Issuer("https://oidc.cluster.test")
    entra.federated_issuer = cluster
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(
        cluster.mint(
            {"sub": "system:serviceaccount:apps:gatehouse", "aud": "api://AzureADTokenExchange"}
        )
    )
    path = write(
        tmp_path,
        "backends:\n"
        "  up:\n"
        "    urls: [http://127.0.0.1:1]\n"
        f"    credentials: {{type: azure, app_id: {APP_ID}, ca_bundle: {tls.ca_file}}}\n",
    )
    injected = {
        "AZURE_CLIENT_ID": "wi-client",
        "AZURE_TENANT_ID": TENANT,
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "AZURE_AUTHORITY_HOST": entra.url,
    }
    code, out, err = await gatehouse_async(
        "credentials", "check", "--config", str(path), "--json", env=injected
    )
    assert code == 0, out + err
    [backend] = json.loads(out)["backends"]
    assert backend["result"] == "ok" and backend["types"] == "azure"
    assert entra.calls["entra"] == 1
    [token] = entra.issuer.issued
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["azp"] == "wi-client" and claims["aud"] == f"api://{APP_ID}"

    # Without the variables the same file names what is missing, and where.
    code, _, err = await gatehouse_async(
        "check",
        "--config",
        str(path),
        env={"AZURE_TENANT_ID": TENANT, "AZURE_FEDERATED_TOKEN_FILE": str(token_file)},
    )
    assert code == 0, "without all three, managed identity stays the default"
    explicit = write(
        tmp_path,
        path.read_text().replace("type: azure,", "type: azure, mode: workload_identity,"),
    )
    code, _, err = await gatehouse_async("check", "--config", str(explicit))
    assert code == 2
    assert f"{explicit}:4: backends.up.credentials: workload_identity needs 'client_id'" in err
    assert "AZURE_CLIENT_ID in the environment" in err
