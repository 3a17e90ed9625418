"""Key and secret files other users can read are refused: the rule on mode bits and owner."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.keyfiles import alterability, exposure, key_file_problem
from proxy.credentials.signing import rotate_key_file
from proxy.dev.certs import dev_certificates
from proxy.identity.session import new_cookie_key
from tests.support.cli import gatehouse_command


@given(st.integers(0, 0o7777), st.sampled_from([0, 1, 1000, 10001]))
def test_a_file_is_accepted_only_when_no_other_user_and_at_most_roots_group_can_read_it(
    mode: int, owner: int
) -> None:
    others, group = mode & 0o007, mode & 0o070
    private = others == 0 and (group == 0 or (owner == 0 and group == 0o040))
    assert (exposure(mode, owner) is None) == private


def test_the_kubernetes_secret_volume_layout_is_accepted_and_umask_022_files_are_not() -> None:
    assert exposure(0o100440, 0) is None  # root:fsGroup 0440 (deploy/kubernetes)
    assert exposure(0o100600, 10001) is None
    assert exposure(0o100400, 10001) is None
    assert exposure(0o100644, 10001) == "is accessible to every user (mode 0644): chmod 600 it"
    assert exposure(0o100640, 10001) == (
        "is accessible to its group (mode 0640): chmod 600 it "
        "(a group may only read a key file that root owns)"
    )
    assert exposure(0o100660, 0) is not None  # group-writable, even when root owns it


def test_the_check_reads_the_mode_bits_so_it_holds_for_root(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret")
    key.chmod(0o640)
    os.chown(key, 12345, 12345)
    assert key_file_problem(key) is not None
    key.chmod(0o600)
    assert key_file_problem(key) is None
    assert key_file_problem(tmp_path / "missing") is None  # reported as missing elsewhere


def test_gatehouse_run_refuses_a_world_readable_signing_key_with_file_line_and_exit_2(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "assertion-keys.json"
    rotate_key_file(keys)
    keys.chmod(0o644)
    (tmp_path / "policies").mkdir()
    config = tmp_path / "gatehouse.yaml"
    config.write_text(
        "listen: {address: '127.0.0.1:0'}\n"
        f"assertions:\n  signing_keys_file: {keys}\n"
        "backends:\n  up:\n    urls: [http://127.0.0.1:9]\n"
    )
    out = gatehouse("run", config)
    assert out.returncode == 2
    assert (
        f"{config}:3: config.assertions.signing_keys_file: {keys} is accessible to every user "
        "(mode 0644): chmod 600 it"
    ) in out.stderr
    assert "Traceback" not in out.stderr


@given(st.integers(0, 0o7777))
def test_a_file_that_decides_who_callers_are_may_be_written_by_its_owner_only(mode: int) -> None:
    assert (alterability(mode) is None) == (mode & 0o022 == 0)


# Every secret the identity and backends sections read from a file, and the
# API-key file, at the line the configuration below names it on.
SECRETS_CONFIG = """\
listen: {{address: '127.0.0.1:0'}}
identity:
  issuers:
    - issuer: http://127.0.0.1:9/idp
      audiences: [gatehouse]
      algorithms: [HS256]
      hs256_secret_file: {dir}/hs256
      introspection:
        endpoint: http://127.0.0.1:9/introspect
        client_id: gatehouse
        client_secret_file: {dir}/introspection-secret
  api_keys:
    file: {dir}/api-keys.yaml
    pepper_file: {dir}/pepper
  browser:
    issuer: http://127.0.0.1:9/idp
    client_id: gatehouse
    client_secret_file: {dir}/browser-secret
    cookie_keys_file: {dir}/cookie-keys
backends:
  up:
    urls: [https://127.0.0.1:9]
    tls:
      client_cert_file: {dir}/client.crt
      client_key_file: {dir}/client.key
"""

# (line, where, file) for each secret in SECRETS_CONFIG.
SECRET_FILES = (
    (7, "config.identity.issuers[0].hs256_secret_file", "hs256"),
    (11, "config.identity.issuers[0].introspection.client_secret_file", "introspection-secret"),
    (14, "config.identity.api_keys.pepper_file", "pepper"),
    (18, "config.identity.browser.client_secret_file", "browser-secret"),
    (19, "config.identity.browser.cookie_keys_file", "cookie-keys"),
    (25, "backends.up.tls.client_key_file", "client.key"),
)


def secrets_setup(tmp_path: Path) -> Path:
    """SECRETS_CONFIG with real files, all private to their owner (umask 077)."""
    for name in ("hs256", "introspection-secret", "pepper", "browser-secret"):
        (tmp_path / name).write_text(secrets.token_urlsafe(48) + "\n")
    (tmp_path / "cookie-keys").write_text(new_cookie_key() + "\n")
    (tmp_path / "api-keys.yaml").write_text("keys: []\n")
    pki = dev_certificates(tmp_path / "pki")
    shutil.copy(pki["client_cert"], tmp_path / "client.crt")
    shutil.copy(pki["client_key"], tmp_path / "client.key")
    (tmp_path / "policies").mkdir()
    config = tmp_path / "gatehouse.yaml"
    config.write_text(SECRETS_CONFIG.format(dir=tmp_path))
    return config


def gatehouse(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    return gatehouse_command(command, "--config", str(config))


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(
    ("mode", "owner", "problem"),
    [
        (0o644, 0, "is accessible to every user (mode 0644): chmod 600 it"),
        (
            0o640,
            12345,  # a group may read a secret only when root gives it that way
            "is accessible to its group (mode 0640): chmod 600 it "
            "(a group may only read a key file that root owns)",
        ),
    ],
)
def test_identity_secrets_and_upstream_client_keys_other_users_can_read_are_refused(
    tmp_path: Path, command: str, mode: int, owner: int, problem: str
) -> None:
    config = secrets_setup(tmp_path)
    for _, _, name in SECRET_FILES:
        (tmp_path / name).chmod(mode)
        os.chown(tmp_path / name, owner, owner)
    out = gatehouse(command, config)
    assert out.returncode == 2, out.stderr
    for line, where, name in SECRET_FILES:
        assert f"{config}:{line}: {where}: {tmp_path / name} {problem}" in out.stderr
    assert "6 problem(s); configuration refused" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["check", "run"])
def test_an_api_key_file_other_users_can_write_is_refused(tmp_path: Path, command: str) -> None:
    config = secrets_setup(tmp_path)
    keys = tmp_path / "api-keys.yaml"
    keys.chmod(0o664)
    out = gatehouse(command, config)
    assert out.returncode == 2, out.stderr
    assert (
        f"{config}:13: config.identity.api_keys.file: {keys} can be written by other users "
        "(mode 0664): chmod go-w it"
    ) in out.stderr
    assert "1 problem(s); configuration refused" in out.stderr
    assert "Traceback" not in out.stderr


def test_private_secrets_root_group_secrets_and_a_readable_api_key_file_are_accepted(
    tmp_path: Path,
) -> None:
    config = secrets_setup(tmp_path)
    # The Kubernetes Secret volume layout: root:fsGroup 0440.
    (tmp_path / "cookie-keys").chmod(0o440)
    os.chown(tmp_path / "cookie-keys", 0, 12345)
    (tmp_path / "pepper").chmod(0o400)
    # The API-key file holds no secret: others may read it (not write it).
    (tmp_path / "api-keys.yaml").chmod(0o644)
    out = gatehouse("check", config)
    assert out.returncode == 0, out.stderr
    assert f"{config}: OK" in out.stdout


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("loosened", ["policies", "policies/routes.yaml"])
def test_a_policy_file_or_directory_every_user_may_write_stops_start_up_with_file_line(
    tmp_path: Path, command: str, loosened: str
) -> None:
    config = secrets_setup(tmp_path)
    routes = tmp_path / "policies" / "routes.yaml"
    routes.write_text("routes: []\n")
    (tmp_path / loosened).chmod(0o777 if loosened == "policies" else 0o666)
    out = gatehouse(command, config)
    assert out.returncode == 2, out.stderr
    what = "directory" if loosened == "policies" else "file"
    assert f"{tmp_path / loosened}:1: policy {what} can be written by every user" in out.stderr
    assert "Traceback" not in out.stderr
