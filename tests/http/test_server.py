"""Bad input at the HTTP layer: rejected with short JSON, connection closed, audited."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.gatehouse import Gatehouse, public_route, start_gatehouse
from tests.support.net import raw_request


@pytest.fixture(scope="module")
def gh(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    proc = start_gatehouse(
        tmp_path_factory.mktemp("server"),
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("all", "/", "up")],
        listen={"max_header_size": "1KiB", "max_headers": 20},
    )
    yield proc
    proc.stop()


def status_and_body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


BAD_REQUESTS = {
    "content_length_with_transfer_encoding": b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer_encoding_not_only_chunked": b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "transfer_encoding_chunked_twice": b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer_encoding_not_chunked": b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
    "missing_host": b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n",
    "bare_lf": b"GET /echo HTTP/1.1\nHost: a\n\n",
    "control_character_in_value": b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n",
    "space_before_colon": b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "malformed_request_line": b"GET /echo HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    "crlf_in_header_value": b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: b\rX-B: c\r\n\r\n",
    "bad_header_name": b"GET /echo HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    "obsolete_line_folding": b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "bad_chunk_size": b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
}

# Two values where one is allowed: refused as ambiguous, whatever the values.
AMBIGUOUS_REQUESTS = {
    "duplicate_content_length": b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "duplicate_content_length_same_value": b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "duplicate_host": b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "duplicate_host_same_value": b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "duplicate_host_other_case": b"GET /echo HTTP/1.1\r\nHost: a\r\nhOST: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_malformed_requests_get_400_json_and_the_connection_is_closed(
    gh: Gatehouse, name: str
) -> None:
    before = len(gh.audit_records())
    response = raw_request(gh.port, BAD_REQUESTS[name] + b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    status, body = status_and_body(response)
    assert status == 400, response[:200]
    assert json.loads(body)["error"] == "malformed_request"
    # Closed after the error: the pipelined second request is never answered.
    assert response.count(b"HTTP/1.") == 1
    records = gh.wait_audit(before + 1)
    assert len(records) == before + 1
    assert records[-1]["status"] == 400 and records[-1]["decision"] == "deny"


@pytest.mark.parametrize("name", sorted(AMBIGUOUS_REQUESTS))
def test_a_duplicated_host_or_content_length_is_refused_as_ambiguous_and_closed(
    gh: Gatehouse, name: str
) -> None:
    before = len(gh.audit_records())
    response = raw_request(
        gh.port, AMBIGUOUS_REQUESTS[name] + b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    status, body = status_and_body(response)
    assert status == 400, response[:200]
    assert json.loads(body)["error"] == "ambiguous_request"
    assert response.count(b"HTTP/1.") == 1  # closed: the pipelined request never answered
    records = gh.wait_audit(before + 1)
    assert len(records) == before + 1
    assert records[-1]["reason"] == "ambiguous_request" and records[-1]["decision"] == "deny"


def test_oversized_header_gets_431(gh: Gatehouse) -> None:
    before = len(gh.audit_records())
    response = raw_request(
        gh.port, b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    )
    status, body = status_and_body(response)
    assert status == 431 and json.loads(body)["error"] == "headers_too_large"
    assert gh.wait_audit(before + 1)[-1]["status"] == 431


def test_too_many_headers_gets_431(gh: Gatehouse) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    status, _ = status_and_body(
        raw_request(gh.port, b"GET /echo HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
    )
    assert status == 431


def test_absolute_form_target_is_routed_on_its_canonical_path(gh: Gatehouse) -> None:
    response = raw_request(
        gh.port,
        b"GET http://other.example/x/../echo/abs HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    status, body = status_and_body(response)
    assert status == 200
    assert json.loads(body)["raw_path"] == "/echo/abs"


def test_fragment_and_encoded_slash_in_target_are_rejected(gh: Gatehouse) -> None:
    for target in (b"/echo#frag", b"/echo/a%2Fb", b"/echo;x=1"):
        response = raw_request(
            gh.port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        status, body = status_and_body(response)
        assert status == 400, target
        assert json.loads(body)["error"] == "bad_path"


def test_error_bodies_are_short_json_without_request_data(gh: Gatehouse) -> None:
    response = raw_request(
        gh.port,
        b"GET /a/../../secret-token-value HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    status, body = status_and_body(response)
    assert status == 400
    data = json.loads(body)
    assert set(data) == {"error", "status", "request_id"}
    assert b"secret-token-value" not in response
