"""The shipped decision-mode configurations agree with the contract.

nginx, Caddy and HAProxy run for real in test_conformance.py. Traefik, Envoy
and ingress-nginx have no binary on these machines: their files are parsed
here and their header lists, paths and safety switches compared with the
contract's constants (proxy.http.decision), and the Kubernetes objects are
validated against the Kubernetes schema. The example Gatehouse configuration
passes ``gatehouse check``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml

from proxy.credentials.signing import rotate_key_file
from proxy.http.decision import CLIENT_HEADERS_REMOVED, HANDED_OVER
from proxy.identity.session import new_cookie_key
from tests.decision.stack import DEPLOY, REPO, substituted
from tests.support.cli import gatehouse_command

HANDED = {name.lower() for name in HANDED_OVER}
# What Gatehouse reads of the client's own request: credentials, page or API call,
# and where a session's state-changing request or WebSocket handshake comes from.
READ = {"authorization", "cookie", "accept", "x-requested-with", "origin", "sec-fetch-site"}
READ |= {"upgrade"}
REMOVED = set(CLIENT_HEADERS_REMOVED)
PAGES = {
    "/.gatehouse/login",
    "/.gatehouse/callback",
    "/.gatehouse/logout",
    "/.well-known/gatehouse/jwks.json",
}
KUBERNETES_VERSION = "1.32.0"


def lowered(names: list[str] | set[str]) -> set[str]:
    return {name.strip().lower() for name in names if name.strip()}


# -- the data planes that run for real: their lists, checked for completeness -----------
def test_nginx_sets_every_handed_over_header_and_removes_the_rest() -> None:
    protect = (DEPLOY / "nginx" / "gatehouse-protect.conf").read_text()
    set_from_answer = dict(re.findall(r"proxy_set_header (\S+) \$gatehouse_(\w+);", protect))
    assert lowered(set(set_from_answer)) == HANDED
    for name, variable in set_from_answer.items():
        header = name.lower().replace("-", "_")
        assert f"auth_request_set $gatehouse_{variable} $upstream_http_{header};" in protect
    emptied = lowered(re.findall(r'proxy_set_header (\S+) "";', protect))
    assert emptied | HANDED >= REMOVED
    server = (DEPLOY / "nginx" / "gatehouse-server.conf").read_text()
    # The decision is asked about $request_uri (what proxy_pass forwards), never $uri.
    assert "proxy_set_header X-Forwarded-Uri $request_uri;" in server
    assert "proxy_set_header Upgrade $http_upgrade;" in server  # nginx drops it otherwise
    directives = "\n".join(
        line for line in server.splitlines() if not line.lstrip().startswith("#")
    )
    assert "$uri" not in directives.replace("$request_uri", "")
    assert set(
        re.findall(r"location = (\S+) \{\n    proxy_pass http://gatehouse(\S+);", server)
    ) == {(page, page) for page in PAGES}


def test_caddy_sets_every_handed_over_header_and_removes_the_rest() -> None:
    caddyfile = (DEPLOY / "caddy" / "Caddyfile").read_text()
    copied = re.findall(r"request_header (\S+) \{vars\.gatehouse_(\w+)\}", caddyfile)
    assert lowered({name for name, _ in copied}) == HANDED
    for name, variable in copied:
        assert f"vars gatehouse_{variable} {{http.reverse_proxy.header.{name}}}" in caddyfile
        assert f'@gatehouse_no_{variable} vars gatehouse_{variable} ""' in caddyfile
        assert f"request_header @gatehouse_no_{variable} -{name}" in caddyfile
    patterns = lowered(re.findall(r"request_header -(\S+)", caddyfile))
    for name in REMOVED | (HANDED - {"authorization", "cookie"}):
        for spelling in (name, name.replace("-", "_")):
            assert any(fnmatch.fnmatch(spelling, p) for p in patterns), spelling
    pages = re.search(r"@gatehouse_pages path (.*)", caddyfile)
    assert pages is not None and set(pages.group(1).split()) == PAGES


def test_haproxy_sets_every_handed_over_header_and_removes_the_rest() -> None:
    lua = (DEPLOY / "haproxy" / "gatehouse.lua").read_text()
    copy = re.search(r"local COPY = \{(.*?)\}", lua, re.S)
    strip = re.search(r"local STRIP = \{(.*?)\n\}", lua, re.S)
    assert copy is not None and strip is not None
    assert set(re.findall(r'"([a-z-]+)"', copy.group(1))) == HANDED
    stripped = set(re.findall(r'\["([a-z-]+)"\] = true', strip.group(1)))
    assert (
        REMOVED
        - {
            "x-auth-request-user",
            "x-auth-request-email",
            "x-auth-request-groups",
            "x-auth-request-access-token",
        }
        <= stripped
    )
    assert (
        'norm:sub(1, 15) == "x-auth-request-"' in lua and 'norm:sub(1, 12) == "x-gatehouse-"' in lua
    )
    passed = re.search(r"local PASS = \{(.*?)\}", lua, re.S)
    assert passed is not None and set(re.findall(r'"([a-z-]+)"', passed.group(1))) >= READ
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    acl = re.search(r"acl gatehouse_page path (.*)", cfg)
    assert acl is not None and set(acl.group(1).split()) == PAGES


# -- Traefik, Envoy, ingress-nginx: no binary here, checked as data ---------------------------
def test_traefik_writes_the_forwarded_headers_itself_and_copies_the_contract_headers() -> None:
    config = yaml.safe_load((DEPLOY / "traefik" / "dynamic.yaml").read_text())["http"]
    auth = config["middlewares"]["gatehouse-decide"]["forwardAuth"]
    assert auth["address"] == "http://gatehouse.internal:9000/.gatehouse/decide"
    assert auth["trustForwardHeader"] is False
    assert lowered(auth["authResponseHeaders"]) == HANDED
    sent = lowered(auth["authRequestHeaders"])
    assert sent >= READ
    assert not any(name.startswith(("x-forwarded-", "x-original-")) for name in sent)
    strip = config["middlewares"]["gatehouse-strip"]["headers"]["customRequestHeaders"]
    assert set(strip.values()) == {""}
    assert lowered(set(strip)) | HANDED >= REMOVED
    routers = config["routers"]
    assert routers["app"]["middlewares"] == ["gatehouse-decide", "gatehouse-strip"]
    pages = routers["gatehouse-pages"]
    assert set(re.findall(r"Path\(`([^`]+)`\)", pages["rule"])) == PAGES
    assert "PathPrefix" not in pages["rule"] and "middlewares" not in pages


def _envoy() -> tuple[dict[str, Any], dict[str, Any]]:
    config = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    manager = hcm["typed_config"]
    authz = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    return manager, authz["typed_config"]


def exact(matcher: dict[str, Any]) -> set[str]:
    """The names of an Envoy ListStringMatcher made of exact matches."""
    return {pattern["exact"] for pattern in matcher["patterns"]}


def test_envoy_asks_about_the_path_it_forwards_and_copies_the_contract_headers() -> None:
    manager, authz = _envoy()
    # The path asked about is the path forwarded: both normalised the same way.
    assert manager["normalize_path"] is True and manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert (
        manager["common_http_protocol_options"]["headers_with_underscores_action"]
        == "REJECT_REQUEST"
    )
    assert manager["use_remote_address"] is True  # Envoy writes X-Forwarded-For/-Proto
    assert authz["failure_mode_allow"] is False  # Envoy CVE-2024-23324: never allow on error
    service = authz["http_service"]
    assert service["path_prefix"] == "/.gatehouse/ext_authz"
    response = service["authorization_response"]
    assert exact(response["allowed_upstream_headers"]) == HANDED
    assert {"location", "www-authenticate"} <= exact(response["allowed_client_headers"])
    sent = exact(service["authorization_request"]["allowed_headers"])
    assert sent >= READ | {"x-forwarded-for", "x-forwarded-proto"}
    # Gatehouse ignores these on ext_authz anyway; they are not sent at all.
    assert not sent & {
        "x-forwarded-uri",
        "x-original-uri",
        "x-forwarded-host",
        "x-forwarded-method",
    }
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    unchecked = {
        r["match"]["path"]
        for r in routes
        if r.get("typed_per_filter_config", {})
        .get("envoy.filters.http.ext_authz", {})
        .get("disabled")
    }
    assert unchecked == PAGES
    assert all("prefix" not in r["match"] or r["match"]["prefix"] == "/" for r in routes)


def _ingress_docs() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((DEPLOY / "ingress-nginx" / "app.yaml").read_text()))


def test_ingress_nginx_objects_are_valid_kubernetes() -> None:
    for doc in _ingress_docs():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_ingress_nginx_asks_about_request_uri_and_copies_the_contract_headers() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _ingress_docs()}
    annotations = docs[("Ingress", "app")]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "auth-url"].endswith("/.gatehouse/auth")
    assert annotations[prefix + "auth-signin"] == (
        "https://$host/.gatehouse/login?rd=$escaped_request_uri"
    )
    assert lowered(annotations[prefix + "auth-response-headers"].split(",")) == HANDED
    namespace, name = annotations[prefix + "auth-proxy-set-headers"].split("/")
    written = docs[("ConfigMap", name)]["data"]
    assert docs[("ConfigMap", name)]["metadata"]["namespace"] == namespace
    assert written["X-Forwarded-Uri"] == written["X-Original-URI"] == "$request_uri"
    assert written["X-Forwarded-Method"] == written["X-Original-Method"] == "$request_method"
    assert written["X-Forwarded-Host"] == "$http_host"
    assert written["Upgrade"] == "$http_upgrade"  # the controller's nginx drops it otherwise
    pages = docs[("Ingress", "app-gatehouse-pages")]["spec"]["rules"][0]["http"]["paths"]
    assert {p["path"] for p in pages} == PAGES
    assert {p["pathType"] for p in pages} == {"Exact"}
    strip = docs[("ConfigMap", "gatehouse-strip-headers")]["data"]
    assert set(strip.values()) == {""}
    # The controller writes X-Original-URI on every upstream request itself.
    assert REMOVED - {"x-original-uri"} <= lowered(set(strip)) | HANDED


# -- the Gatehouse side -------------------------------------------------------------------
def test_the_example_gatehouse_configuration_passes_check(tmp_path: Path) -> None:
    keys = tmp_path / "assertion-keys.json"
    rotate_key_file(keys)
    (tmp_path / "cookie-keys").write_text(new_cookie_key() + "\n")
    (tmp_path / "state-key").write_text(new_cookie_key() + "\n")  # same key format
    config = substituted(
        (DEPLOY / "gatehouse.yaml").read_text(),
        {
            "/run/secrets/gatehouse/assertion-keys.json": str(keys),
            "/run/secrets/gatehouse/cookie-keys": str(tmp_path / "cookie-keys"),
            "/run/secrets/gatehouse/state-key": str(tmp_path / "state-key"),
            "dir: policies": f"dir: {DEPLOY / 'policies'}",
        },
        "gatehouse.yaml",
    )
    path = tmp_path / "gatehouse.yaml"
    path.write_text(config)
    result = gatehouse_command(
        "check", "--config", str(path), env={**os.environ, "OIDC_CLIENT_SECRET": "example"}
    )
    assert result.returncode == 0, result.stderr
    loaded = yaml.safe_load(config)
    assert loaded["listen"]["mode"] == "decision"
    assert all("urls" not in backend for backend in loaded["backends"].values())


def test_the_readme_states_the_headers_to_copy_and_to_remove() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Decision mode") :]
    section = section[: section.index("\n## ", 5)]
    for name in HANDED_OVER:
        assert f"`{name}`" in section, name
    for name in CLIENT_HEADERS_REMOVED:
        assert name.lower() in section.lower(), name
