"""``gatehouse state check --json`` against a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.state.redis_server import RedisServer
from tests.support.cli import gatehouse_async as gatehouse


async def test_state_check_json_reports_the_round_trip(
    tmp_path: Path,
    redis_server: RedisServer,
    state_key: Path,
) -> None:
    config = tmp_path / "gatehouse.yaml"
    state = {"redis_url": redis_server.url, "encryption_key_file": str(state_key)}
    config.write_text(yaml.safe_dump({"state": state}))
    code, out, err = await gatehouse("state", "check", "--config", str(config), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["result"] == "ok" and result["key_prefix"] == "gatehouse:"
    assert result["milliseconds"] >= 0
    redis_server.stop()
    code, out, _ = await gatehouse("state", "check", "--config", str(config), "--json")
    assert code == 1
    assert json.loads(out) == {"result": "failed", "detail": "Redis unreachable"}
