"""``gatehouse credentials check --json``: header names and time to expiry, never a token."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.peers.cloud.oauth import OAuthServer
from tests.support.cli import gatehouse_async as gatehouse


async def test_credentials_check_json_gives_header_names_and_time_to_expiry(
    tmp_path: Path,
    oauth: OAuthServer,
    secret_file: Path,
) -> None:
    (tmp_path / "policies").mkdir()
    config = tmp_path / "gatehouse.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": {
                    "orders": {
                        "urls": ["http://127.0.0.1:1"],
                        "credentials": {
                            "type": "client_credentials",
                            "token_url": oauth.token_url,
                            "client_id": "gh-client",
                            "client_secret_file": str(secret_file),
                        },
                    }
                }
            }
        )
    )
    code, out, err = await gatehouse("credentials", "check", "--config", str(config), "--json")
    assert code == 0, err
    [backend] = json.loads(out)["backends"]
    assert backend["backend"] == "orders" and backend["result"] == "ok"
    assert backend["headers"] == ["Authorization"]
    assert 3000 < backend["expires_in"] <= 3600
    assert oauth.issuer.issued[0] not in out

    oauth.clients["gh-client"].secret = "rotated"
    code, out, _ = await gatehouse("credentials", "check", "--config", str(config), "--json")
    assert code == 1
    [backend] = json.loads(out)["backends"]
    assert backend["result"] == "failed"
    assert backend["reason"] == "upstream_credentials_unavailable"
