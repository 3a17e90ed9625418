"""Key and secret files other users can read are refused: the rule on mode bits and owner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from proxy.config.keyfiles import exposure, key_file_problem
from proxy.credentials.signing import rotate_key_file

REPO = Path(__file__).resolve().parents[2]


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
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert (
        f"{config}:3: config.assertions.signing_keys_file: {keys} is accessible to every user "
        "(mode 0644): chmod 600 it"
    ) in out.stderr
    assert "Traceback" not in out.stderr
