"""Property and fuzz tests through a real gatehouse (hypothesis).

* Any request target: the path the policy matched (the audit record's) is
  exactly the path the upstream received, or the request was refused with
  400; a route nobody may use is never reached under another spelling.
* Malformed request heads: never reach the upstream, never a 500, exactly
  one audit record each.
* Malformed upstream answers: never relayed, never a 500 (502
  ``upstream_protocol_error``), one audit record each.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.peers.recorder import Recorder
from tests.support.gatehouse import Gatehouse, public_route, start_gatehouse

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return out


def record_of(gh: Gatehouse, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The audit record of one request (records are written in batches: wait for it)."""
    deadline = time.monotonic() + timeout
    while True:
        for record in reversed(gh.audit_records()):
            if record["request_id"] == request_id:
                found: dict[str, Any] = record
                return found
        assert time.monotonic() < deadline, f"no audit record for {request_id}"
        time.sleep(0.01)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def header(response: bytes, name: bytes) -> bytes | None:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    upstream = Recorder()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def gh(recorder: Recorder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    proc = start_gatehouse(
        tmp_path_factory.mktemp("fuzz"),
        backends={
            "up": {
                "urls": [recorder.url],
                # Every answer here is judged on its own: no breaker, no ejection.
                "circuit_breaker": {"enabled": False},
                "outlier_detection": {"max_ejection_percent": 0},
            }
        },
        routes=[
            {
                "name": "admin",
                "path": "/admin",
                "backend": "up",
                "allow": [{"name": "nobody", "subject": "nobody"}],
            },
            public_route("all", "/", "up"),
        ],
    )
    yield proc
    proc.stop()


# -- request targets ---------------------------------------------------------------

SEGMENTS = st.sampled_from(
    [
        "admin",
        "ADMIN",
        "Admin",
        "a",
        "b",
        "",
        ".",
        "..",
        "...",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%2e.",
        "%61dmin",
        "%41dmin",
        "adm%69n",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "\\",
        "%00",
        "%",
        "%zz",
        "%c3%a4",
        "ä",
        "%e2%80%ae",
        ";",
        ";x=1",
        "%3b",
        "~",
        "%7e",
        "-",
        "admin;",
        "admin%00",
        "admin ",
        "admin%20",
        "admin.",
        "@",
        ":",
        "admin?",
        "#frag",
    ]
)


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    segments = draw(st.lists(SEGMENTS, min_size=1, max_size=6))
    separators = draw(
        st.lists(
            st.sampled_from(["/", "//", "/./", "/../"]),
            min_size=len(segments),
            max_size=len(segments),
        )
    )
    path = "".join(sep + seg for sep, seg in zip(separators, segments, strict=True))
    if draw(st.booleans()):
        path += "?" + draw(st.sampled_from(["x=1", "x=/admin", "../admin", "%2f..", "a=%00", ""]))
    raw = path.encode("utf-8")
    if draw(st.booleans()):
        # Any byte, raw, somewhere (non-ASCII, controls, spaces...).
        at = draw(st.integers(min_value=1, max_value=len(raw)))
        raw = raw[:at] + bytes([draw(st.integers(min_value=0, max_value=255))]) + raw[at:]
    return raw


@FUZZ
@given(target=targets())
def test_the_upstream_receives_exactly_the_path_the_policy_matched_or_the_request_is_refused(
    gh: Gatehouse, recorder: Recorder, target: bytes
) -> None:
    answer = exchange(
        gh.port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert answer, target
    status = status_of(answer)
    assert status != 500, (target, answer[:300])
    request_id = header(answer, b"x-request-id")
    assert request_id is not None
    # Every request's one record, refused or not (so none arrives late for the next test).
    record = record_of(gh, request_id.decode())
    if status in (400, 431):
        return
    if status in (401, 403):  # the admin route, under whatever spelling reached it
        assert record["route"] == "admin"
        return
    assert status == 200, (target, answer[:300])
    received = answer.partition(b"\r\n\r\n")[2]
    received_path = received.partition(b"?")[0].decode("latin-1")
    assert received_path == record["path"], (target, received, record["path"])
    assert record["route"] == "all"
    # Never the protected route's path under another spelling (matching is exact).
    assert received_path != "/admin" and not received_path.startswith("/admin/"), target


# -- malformed request heads -------------------------------------------------------

VALID_HEAD = [b"GET /echo HTTP/1.1", b"Host: a", b"X-A: b", b"Accept: */*"]
BREAKS: list[tuple[str, Callable[[list[bytes]], bytes]]] = [
    ("bare_lf", lambda lines: b"\n".join(lines) + b"\n\n"),
    ("space_before_colon", lambda lines: b"\r\n".join([*lines, b"X-B : c"]) + b"\r\n\r\n"),
    ("control_char", lambda lines: b"\r\n".join([*lines, b"X-B: c\x01d"]) + b"\r\n\r\n"),
    ("bare_cr", lambda lines: b"\r\n".join([*lines, b"X-B: c\rX-C: d"]) + b"\r\n\r\n"),
    ("obs_fold", lambda lines: b"\r\n".join([*lines, b"X-B: c", b" d"]) + b"\r\n\r\n"),
    ("duplicate_host", lambda lines: b"\r\n".join([*lines, b"Host: b"]) + b"\r\n\r\n"),
    (
        "duplicate_length",
        lambda lines: (
            b"\r\n".join([*lines, b"Content-Length: 0", b"Content-Length: 0"]) + b"\r\n\r\n"
        ),
    ),
    (
        "length_and_chunked",
        lambda lines: (
            b"\r\n".join([*lines, b"Content-Length: 3", b"Transfer-Encoding: chunked"])
            + b"\r\n\r\n0\r\n\r\n"
        ),
    ),
    (
        "coding_not_chunked",
        lambda lines: b"\r\n".join([*lines, b"Transfer-Encoding: gzip"]) + b"\r\n\r\n",
    ),
    ("bad_length", lambda lines: b"\r\n".join([*lines, b"Content-Length: -1"]) + b"\r\n\r\n"),
    ("bad_method", lambda lines: b"\r\n".join([b"G@T /echo HTTP/1.1", *lines[1:]]) + b"\r\n\r\n"),
    ("bad_version", lambda lines: b"\r\n".join([b"GET /echo HTTP/9.1", *lines[1:]]) + b"\r\n\r\n"),
    (
        "no_host",
        lambda lines: b"\r\n".join(x for x in lines if not x.startswith(b"Host:")) + b"\r\n\r\n",
    ),
    ("name_with_space", lambda lines: b"\r\n".join([*lines, b"X B: c"]) + b"\r\n\r\n"),
    ("huge_line", lambda lines: b"\r\n".join([*lines, b"X-Big: " + b"a" * 70000]) + b"\r\n\r\n"),
    (
        "bad_chunk",
        lambda lines: (
            b"\r\n".join([b"POST /echo HTTP/1.1", *lines[1:], b"Transfer-Encoding: chunked"])
            + b"\r\n\r\nzz\r\n"
        ),
    ),
]


@st.composite
def malformed_heads(draw: st.DrawFn) -> tuple[str, bytes]:
    lines = list(VALID_HEAD)
    # Shuffle the fields and add noise that is valid in itself.
    extra = draw(
        st.lists(st.sampled_from([b"X-N: 1", b"Cookie: a=b", b"User-Agent: fuzz"]), max_size=3)
    )
    lines = [lines[0], *draw(st.permutations(lines[1:])), *dict.fromkeys(extra)]
    if b"Host: a" not in lines:
        lines.insert(1, b"Host: a")
    name, breaking = draw(st.sampled_from(BREAKS))
    head = breaking(lines)
    return name, head + b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"  # a pipelined request after it


@FUZZ
@given(case=malformed_heads())
def test_a_malformed_head_never_reaches_the_upstream_never_500_and_is_audited_once(
    gh: Gatehouse, recorder: Recorder, case: tuple[str, bytes]
) -> None:
    name, data = case
    records = len(gh.audit_records())
    reached = len(recorder.heads)
    answer = exchange(gh.port, data)
    assert answer, name
    assert status_of(answer) in (400, 431), (name, answer[:200])
    assert answer.count(b"HTTP/1.1 ") == 1, name  # closed: the pipelined request not answered
    assert len(recorder.heads) == reached, name
    after = gh.wait_audit(records + 1)
    assert len(after) == records + 1, name
    assert after[-1]["decision"] == "deny" and after[-1]["status"] == status_of(answer)


# -- malformed upstream answers ------------------------------------------------------

GOOD_ANSWER = [b"HTTP/1.1 200 OK", b"Content-Type: text/plain", b"X-Marker: upstream-said"]
ANSWER_BREAKS: list[Callable[[list[bytes]], bytes]] = [
    lambda lines: b"\n".join([*lines, b"Content-Length: 2"]) + b"\n\nok",
    lambda lines: b"\r\n".join([*lines, b"X-B : c", b"Content-Length: 2"]) + b"\r\n\r\nok",
    lambda lines: b"\r\n".join([*lines, b"X-B: c\x01d", b"Content-Length: 2"]) + b"\r\n\r\nok",
    lambda lines: (
        b"\r\n".join([*lines, b"X-B: c\rInjected: yes", b"Content-Length: 2"]) + b"\r\n\r\nok"
    ),
    lambda lines: (
        b"\r\n".join([*lines, b"Content-Length: 2", b"Content-Length: 3"]) + b"\r\n\r\nok"
    ),
    lambda lines: (
        b"\r\n".join([*lines, b"Content-Length: 2", b"Transfer-Encoding: chunked"])
        + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    ),
    lambda lines: (
        b"\r\n".join([*lines, b"Transfer-Encoding: gzip, chunked"])
        + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    ),
    lambda lines: b"\r\n".join([*lines, b"Content-Length: abc"]) + b"\r\n\r\nok",
    lambda lines: (
        b"\r\n".join([b"HTTP/1.1 2x0 OK", *lines[1:], b"Content-Length: 2"]) + b"\r\n\r\nok"
    ),
    lambda lines: (
        b"\r\n".join([b"HTTP/1.1 101 Switching Protocols", b"Upgrade: h2c", b"Connection: Upgrade"])
        + b"\r\n\r\n"
    ),
    lambda lines: (
        b"\r\n".join([*lines, b"Transfer-Encoding: chunked"]) + b"\r\n\r\nzz\r\nok\r\n0\r\n\r\n"
    ),
    lambda lines: (
        b"\r\n".join([*lines, b"X-Big: " + b"a" * 70000, b"Content-Length: 2"]) + b"\r\n\r\nok"
    ),
    lambda lines: b"SMTP ready\r\n\r\n",
]


@FUZZ
@given(
    index=st.integers(min_value=0, max_value=len(ANSWER_BREAKS) - 1),
    fields=st.permutations(GOOD_ANSWER[1:]),
)
def test_a_malformed_upstream_answer_is_never_relayed_and_never_a_500(
    gh: Gatehouse, recorder: Recorder, index: int, fields: list[bytes]
) -> None:
    recorder.answer = ANSWER_BREAKS[index]([GOOD_ANSWER[0], *fields])
    try:
        records = len(gh.audit_records())
        answer = exchange(
            gh.port, b"GET /anything HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
    finally:
        recorder.answer = None
    assert status_of(answer) == 502, (index, answer[:300])
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "upstream_protocol_error"
    assert b"upstream-said" not in answer and b"Injected" not in answer
    after = gh.wait_audit(records + 1)
    assert len(after) == records + 1
    assert after[-1]["reason"] == "upstream_protocol_error"
