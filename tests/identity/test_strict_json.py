"""JSON Gatehouse trusts for identity has one meaning: a repeated member name, at
any depth and however it is spelt, refuses the document (tokens 401, IdP
answers unusable), and the fast check agrees with the exact one on all input."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.identity.strict_json import StrictJSONError, loads
from tests.conftest import GatehouseFactory
from tests.identity.introspection_server import introspection_server
from tests.identity.jwks_server import local_issuer
from tests.identity.proxy_env import call, introspecting_issuer, sign_raw, started
from tests.peers.oidc_provider import RESOURCE, OidcProvider, private_key


# -- the loader, in memory ------------------------------------------------------
def _exact(text: str) -> Any:
    """The reference: the standard library with a hook that refuses repeats."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            raise StrictJSONError("duplicate member name")
        return dict(items)

    return json.loads(text, object_pairs_hook=pairs)


_NAMES = st.sampled_from(["sub", "groups", "a", "iss", ":", 'q"', "é"])
_SPACE = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])


@st.composite
def _spelling(draw: st.DrawFn, name: str) -> str:
    """A JSON string for ``name``: plain, or with some characters \\u-escaped."""
    out = []
    for ch in name:
        if ch == '"' or draw(st.booleans()):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@st.composite
def _document(draw: st.DrawFn, depth: int = 0) -> str:
    """JSON text whose objects may repeat names, spelt and spaced in every way."""
    kind = draw(st.sampled_from(["object", "array", "scalar"] if depth < 3 else ["scalar"]))
    ws = draw(_SPACE)
    if kind == "scalar":
        return draw(st.sampled_from(["1", '"x"', '":"', '"a\\":"', "true", "null", '"sub"']))
    if kind == "array":
        items = draw(st.lists(_document(depth + 1), max_size=3))
        return "[" + ws + ("," + ws).join(items) + "]"
    members = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(_spelling(draw(_NAMES)))
        members.append(f"{name}{draw(_SPACE)}:{draw(_SPACE)}{draw(_document(depth + 1))}")
    return "{" + ws + ("," + ws).join(members) + ws + "}"


@settings(max_examples=600, deadline=None)
@given(_document())
def test_the_fast_check_refuses_exactly_what_the_exact_parse_refuses(text: str) -> None:
    try:
        expected = _exact(text)
    except StrictJSONError:
        with pytest.raises(StrictJSONError):
            loads(text.encode())
        return
    assert loads(text.encode()) == expected


@pytest.mark.parametrize(
    "text",
    [
        '{"sub":"alice","sub":"admin"}',
        '{"sub":"alice","\\u0073ub":"admin"}',
        '{"sub" :"alice", "sub"\n:"admin"}',
        '{"a":{"roles":["x"],"roles":["admins"]}}',
        '[{"ok":1},{"g":1,"g":2}]',
        '{"a":"\\":","a":1}',
        '{"keys":[{"kid":"1","kid":"2"}]}',
    ],
)
def test_repeated_names_are_refused_at_any_depth_and_spelling(text: str) -> None:
    with pytest.raises(StrictJSONError):
        loads(text)


def test_json_that_only_looks_like_a_repeat_is_accepted() -> None:
    assert loads('{"a":{"x":1},"b":{"x":2}}') == {"a": {"x": 1}, "b": {"x": 2}}
    assert loads('{"a":":","b":"sub","c":[":"]}') == {"a": ":", "b": "sub", "c": [":"]}
    assert loads('[{"x":1},{"x":1}]') == [{"x": 1}, {"x": 1}]
    assert loads('"just a string"') == "just a string"
    for broken in (b"{", b'{"a":1,}', b"\xff", "{\ud800}"):
        with pytest.raises(StrictJSONError):
            loads(broken)
    with pytest.raises(StrictJSONError):
        loads('{"a":' * 2000 + "1" + "}" * 2000)


# -- signed tokens through a real gatehouse (the real provider's key) -----------
def _claims(provider: OidcProvider) -> str:
    now = int(time.time())
    return f'"iss":"{provider.issuer}","aud":"{RESOURCE}","exp":{now + 300},"iat":{now}'


_PAYLOADS = {
    "sub repeated": '{{{c},"sub":"alice","groups":["users"],"sub":"admin"}}',
    "groups repeated": '{{{c},"sub":"alice","groups":["users"],"groups":["admins"]}}',
    "escaped repeat": '{{{c},"sub":"alice","groups":["users"],"\\u0067roups":["admins"]}}',
    "spaced repeat": '{{{c},"sub" : "alice","groups" :["users"],"groups"\n:["admins"]}}',
    "nested repeat": (
        '{{{c},"sub":"alice","realm_access":{{"roles":["users"],"roles":["admins"]}}}}'
    ),
    "iss repeated": '{{"iss":"https://elsewhere.test",{c},"sub":"alice"}}',
    "inside an array": '{{{c},"sub":"alice","x":[{{"k":1,"k":2}}]}}',
}
_HEADERS = {
    "kid repeated": b'{"alg":"RS256","kid":"elsewhere","kid":"rsa-1"}',
    "alg repeated": b'{"alg":"HS256","kid":"rsa-1","alg":"RS256"}',
    "typ repeated": b'{"alg":"RS256","kid":"rsa-1","typ":"logout+jwt","typ":"at+jwt"}',
}


async def test_tokens_with_repeated_member_names_are_401_and_never_an_identity(
    gatehouse: GatehouseFactory, upstream_url: str, provider: OidcProvider
) -> None:
    key = private_key(provider.keys[0])
    gh = await started(
        gatehouse,
        upstream_url,
        issuers=[
            {
                "issuer": provider.issuer,
                "audiences": [RESOURCE],
                "claims": {"groups": ["groups", "realm_access.roles"]},
            }
        ],
    )
    header = b'{"alg":"RS256","kid":"rsa-1"}'
    clean = f'{{{_claims(provider)},"sub":"alice","groups":["admins"]}}'
    assert (await call(gh, "/echo/admin", sign_raw(header, clean.encode(), key))).status == 200

    hostile = [
        sign_raw(header, text.format(c=_claims(provider)).encode(), key)
        for text in _PAYLOADS.values()
    ]
    hostile += [sign_raw(h, clean.encode(), key) for h in _HEADERS.values()]
    for token in hostile:
        for path in ("/echo/admin", "/echo/whoami"):
            reply = await call(gh, path, token)
            assert (reply.status, reply.error) == (401, "invalid_token"), token
            assert reply.www_authenticate is not None
    records = gh.wait_audit(1 + 2 * len(hostile))
    assert len(records) == 1 + 2 * len(hostile)
    assert all(r["reason"] == "invalid_token" and not r.get("subject") for r in records[1:])


# -- IdP documents through a real gatehouse (local peers) ---------------------------
def _jwks_variant(variant: str, jwks: dict[str, Any], issuer: str) -> bytes:
    key = jwks["keys"][0]
    rest = json.dumps({k: v for k, v in key.items() if k != "kid"})[1:-1]
    if variant == "keys repeated":
        return b'{"keys":[],"keys":[' + json.dumps(key).encode() + b"]}"
    if variant == "kid repeated":
        return ('{"keys":[{"kid":"k9","kid":"k1",' + rest + "}]}").encode()
    return (  # discovery: the first jwks_uri is somewhere else
        f'{{"issuer":"{issuer}","jwks_uri":"http://127.0.0.1:9/jwks","jwks_uri":"{issuer}/jwks"}}'
    ).encode()


@pytest.mark.parametrize("variant", ["keys repeated", "kid repeated", "jwks_uri repeated"])
async def test_key_documents_with_repeated_names_are_never_used(
    gatehouse: GatehouseFactory, upstream_url: str, variant: str
) -> None:
    async with local_issuer("k1") as issuer:
        raw = _jwks_variant(variant, issuer.jwks(), issuer.issuer)
        if variant == "jwks_uri repeated":
            issuer.raw_discovery = raw
        else:
            issuer.raw_jwks = raw
        gh = await started(
            gatehouse,
            upstream_url,
            issuers=[
                {
                    "issuer": issuer.issuer,
                    "audiences": [RESOURCE],
                    "jwks_cache": {"refetch_interval": "0s"},
                }
            ],
        )
        token = issuer.token(aud=RESOURCE)
        reply = await call(gh, token=token)
        assert (reply.status, reply.error) == (503, "idp_unavailable")
        issuer.raw_jwks = issuer.raw_discovery = None  # the IdP fixed: the same token passes
        assert (await call(gh, token=token)).status == 200


@pytest.mark.parametrize(
    "raw",
    [
        b'{"active":true,"iss":"ISS","aud":"urn:gatehouse:api","sub":"alice","sub":"admin"}',
        b'{"active":false,"active":true,"iss":"ISS","aud":"urn:gatehouse:api","sub":"alice"}',
        b'{"active":true,"iss":"ISS","aud":"urn:gatehouse:api","sub":"a","ext":{"g":1,"g":2}}',
    ],
)
async def test_introspection_answers_with_repeated_names_are_never_an_identity(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path, raw: bytes
) -> None:
    async with introspection_server() as server:
        issuer = introspecting_issuer(server, tmp_path)
        server.raw_answers["opaque-token"] = raw.replace(b"ISS", issuer["issuer"].encode())
        gh = await started(gatehouse, upstream_url, issuers=[issuer])
        reply = await call(gh, token="opaque-token")
        assert (reply.status, reply.error) == (503, "idp_unavailable")
        assert reply.subject is None
        assert server.tokens == ["opaque-token"]
