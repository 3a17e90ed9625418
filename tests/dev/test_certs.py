"""``gatehouse dev-cert``: private keys are never readable by others, not even briefly."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from proxy.dev.certs import dev_certificates

REPO = Path(__file__).resolve().parents[2]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_created_private_under_the_common_umask_022(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "dev-cert", str(tmp_path / "certs")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        umask=0o022,
    )
    assert out.returncode == 0, out.stderr
    files = {p.name: mode_of(p) for p in (tmp_path / "certs").iterdir()}
    assert files == {
        "ca.crt": 0o644,
        "ca.key": 0o600,
        "server.crt": 0o644,
        "server.key": 0o600,
        "client.crt": 0o644,
        "client.key": 0o600,
    }


def test_a_reader_of_the_old_key_file_never_sees_the_new_key(tmp_path: Path) -> None:
    # Written in place, a key reached whoever had the file open (it was readable
    # by every user until the chmod): a new file is renamed over it instead.
    first = dev_certificates(tmp_path)
    old_key = first["server_key"].read_bytes()
    with first["server_key"].open("rb") as reader:
        second = dev_certificates(tmp_path)
        assert reader.read() == old_key
    assert second["server_key"].read_bytes() != old_key


def test_a_symlink_planted_at_a_key_name_is_replaced_not_written_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not a key")
    elsewhere.chmod(0o644)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "client.key").symlink_to(elsewhere)
    files = dev_certificates(certs)
    assert elsewhere.read_text() == "not a key"
    assert not files["client_key"].is_symlink()
    assert b"PRIVATE KEY" in files["client_key"].read_bytes()
    assert mode_of(files["client_key"]) == 0o600
    assert not list(certs.glob("*.tmp"))
