"""The state: section: absent means single replica; every field; file:line problems."""

from __future__ import annotations

from pathlib import Path

from proxy.config.reader import Mapping, SecretRef
from proxy.state.config import StateConfig, parse_state
from tests.support.config import parse_yaml
from tests.support.config import problems_of as config_problems


def read_state(root: Mapping) -> StateConfig | None:
    return parse_state(root.mapping("state"))


def parse(tmp_path: Path, text: str) -> StateConfig | None:
    return parse_yaml(tmp_path, text, read_state)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    return config_problems(tmp_path, text, read_state)


def test_absent_section_means_no_shared_state(tmp_path: Path) -> None:
    assert parse_state(None) is None
    assert parse(tmp_path, "{}\n") is None


def test_minimal_section_has_safe_defaults(tmp_path: Path) -> None:
    config = parse(
        tmp_path,
        """
        state:
          redis_url: redis://redis:6379/0
          encryption_key: env:STATE_KEY
        """,
    )
    assert config == StateConfig(
        redis_url="redis://redis:6379/0", encryption_key=SecretRef("env", "STATE_KEY")
    )
    assert config.key_prefix == "gatehouse:"
    assert config.timeout == 0.5 and config.lock_ttl == 10.0


def test_full_section_parses_every_field(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("k")
    (tmp_path / "pw").write_text("p")
    (tmp_path / "ca.pem").write_text("c")
    config = parse(
        tmp_path,
        """
        state:
          redis_url: rediss://redis.example.test:6380/2
          username: gatehouse
          password_file: pw
          encryption_key_file: keys
          key_prefix: "gh-prod:"
          tls_ca_file: ca.pem
          timeout: 250ms
          lock_ttl: 20s
          reconnect_interval: 2s
          max_connections: 16
        """,
    )
    assert config == StateConfig(
        redis_url="rediss://redis.example.test:6380/2",
        encryption_key=SecretRef("file", str(tmp_path / "keys")),
        key_prefix="gh-prod:",
        username="gatehouse",
        password=SecretRef("file", str(tmp_path / "pw")),
        tls_ca_file=tmp_path / "ca.pem",
        timeout=0.25,
        lock_ttl=20.0,
        reconnect_interval=2.0,
        max_connections=16,
    )


def test_password_in_the_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        state:
          redis_url: redis://user:hunter2-secret@redis:6379/0
          encryption_key: env:K
        """,
    )
    assert len(problems) == 1
    assert "gatehouse.yaml:3:" in problems[0] and "passwords are refused" in problems[0]
    assert "hunter2" not in problems[0]


def test_every_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        state:
          redis_url: http://redis:6379
          encryption_key: c2VjcmV0LWlubGluZQ==
          tls_ca_file: missing.pem
          timeout: 0s
          lock: 5s
        """,
    )
    text = "\n".join(problems)
    assert "expected redis://, rediss:// or unix://" in text
    assert "inline secrets are refused" in text
    assert "file not found" in text
    assert "timeout: must be more than zero" in text
    assert "unknown key 'lock'" in text
    assert "c2VjcmV0" not in text


def test_url_and_encryption_key_are_required(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "state: {key_prefix: x}\n")
    text = "\n".join(problems)
    assert "missing required key 'redis_url'" in text
    assert "missing 'encryption_key_file: PATH' or 'encryption_key: env:NAME'" in text


def test_unix_socket_urls_are_accepted(tmp_path: Path) -> None:
    config = parse(
        tmp_path,
        """
        state:
          redis_url: unix:///run/redis/redis.sock
          encryption_key: env:K
        """,
    )
    assert config is not None and config.redis_url == "unix:///run/redis/redis.sock"


def test_an_encryption_key_or_password_file_other_users_can_read_is_refused(
    tmp_path: Path,
) -> None:
    for name in ("keys", "pw"):
        (tmp_path / name).write_text("s3cr3t\n")
    (tmp_path / "pw").chmod(0o604)
    found = problems_of(
        tmp_path,
        """
        state:
          redis_url: redis://redis:6379/0
          encryption_key_file: keys
          password_file: pw
        """,
    )
    assert found == [
        f"{tmp_path / 'gatehouse.yaml'}:5: config.state.password_file: {tmp_path / 'pw'} "
        "is accessible to every user (mode 0604): chmod 600 it"
    ]
    (tmp_path / "keys").chmod(0o644)
    (tmp_path / "pw").chmod(0o600)
    [problem] = problems_of(
        tmp_path,
        """
        state:
          redis_url: redis://redis:6379/0
          encryption_key_file: keys
        """,
    )
    assert ":4: config.state.encryption_key_file:" in problem
