"""``listen.mode: decision``: what it needs, and what `gatehouse check` refuses with it."""

from __future__ import annotations

from pathlib import Path

from proxy.config.load import load_config
from tests.config.test_load import problems, run_cli, write

DECISION = "listen:\n  mode: decision\n  trusted_proxies: [10.0.0.5/32]\n"
ROUTE = (
    "routes:\n  - name: r\n    path: /\n    backend: app\n    allow: [{name: a, public: true}]\n"
)


def test_the_default_mode_is_proxy(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  up: {urls: [http://127.0.0.1:1]}\n")
    assert load_config(path).listen.mode == "proxy"


def test_decision_backends_need_no_urls_they_exist_for_their_credentials(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        DECISION + "backends:\n  app:\n    credentials: {type: static, value: env:APP_TOKEN}\n",
    )
    config = load_config(path)
    assert config.listen.mode == "decision"
    assert config.backends["app"].urls == ()
    assert config.backends["app"].credentials


def test_a_proxy_backend_still_needs_a_url(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  app: {timeouts: {connect: 1s}}\n")
    assert any("needs at least one URL" in p for p in problems(path))


def test_decision_mode_without_trusted_proxies_is_refused_at_the_mode_line(tmp_path: Path) -> None:
    path = write(tmp_path, "listen:\n  address: 127.0.0.1:9000\n  mode: decision\nbackends: {}\n")
    found = problems(path)
    assert any(p.startswith(f"{path}:3:") and "trusted_proxies" in p for p in found), found


def test_a_catch_all_trusted_proxy_is_refused_in_decision_mode(tmp_path: Path) -> None:
    for everyone in ("0.0.0.0/0", "'::/0'", "10.0.0.5, 0.0.0.0/0"):
        path = write(
            tmp_path,
            f"listen:\n  mode: decision\n  trusted_proxies: [{everyone}]\nbackends: {{}}\n",
        )
        found = problems(path)
        assert any(p.startswith(f"{path}:3:") and "every peer" in p for p in found), found
    # The same list is the operator's business on a proxy listener.
    path = write(tmp_path, "listen:\n  trusted_proxies: [0.0.0.0/0]\nbackends: {}\n")
    assert load_config(path).listen.trusted_proxies.contains("192.0.2.1")


def test_mtls_identity_is_refused_in_decision_mode(tmp_path: Path) -> None:
    path = write(tmp_path, DECISION + "backends: {}\nidentity:\n  mtls: {enabled: true}\n")
    found = problems(path)
    assert any(p.startswith(f"{path}:6:") and "data plane" in p for p in found), found


def test_check_refuses_a_websocket_route_in_decision_mode_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, DECISION + "backends:\n  app: {}\n")
    policy = tmp_path / "policies" / "r.yaml"
    policy.write_text(ROUTE + "    websocket: true\n")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert any(
        line.startswith(f"{policy}:6:") and "decision listener" in line
        for line in result.stderr.splitlines()
    ), result.stderr
    # The same route is fine on a proxy listener.
    path = write(tmp_path, "backends:\n  app: {urls: [http://127.0.0.1:1]}\n")
    assert run_cli("check", "--config", str(path)).returncode == 0


def test_check_and_run_refuse_decision_mode_without_trusted_proxies(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: {mode: decision}\nbackends: {}\n")
    (tmp_path / "policies" / "r.yaml").write_text(ROUTE.replace("app", "x"))
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(path))
        assert result.returncode == 2
        assert f"{path}:1: config.listen.mode: decision needs" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_decision_config_with_its_routes_passes_check(tmp_path: Path) -> None:
    path = write(tmp_path, DECISION + "backends:\n  app: {}\n")
    (tmp_path / "policies" / "r.yaml").write_text(ROUTE)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
