"""Framing decisions as plain functions: which body a message has, which fields are singletons."""

from __future__ import annotations

import pytest

from proxy.http.h1.rules import (
    CHUNKED,
    UNTIL_CLOSE,
    RemoteProtocolError,
    content_length,
    duplicated_singleton,
    request_framing,
    response_framing,
    response_has_body,
    status_has_body,
)


def test_a_request_without_framing_fields_has_no_body() -> None:
    assert request_framing([], []) == 0


def test_a_request_body_is_its_content_length_or_chunked() -> None:
    assert request_framing([b"12"], []) == 12
    assert request_framing([], [b"chunked"]) == CHUNKED
    assert request_framing([], [b"Chunked "]) == CHUNKED


def test_content_length_with_transfer_encoding_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        request_framing([b"3"], [b"chunked"])
    assert (err.value.rejection.status, err.value.rejection.reason) == (400, "malformed_request")


@pytest.mark.parametrize(
    "codings",
    [[b"gzip, chunked"], [b"chunked, chunked"], [b"chunked", b"chunked"], [b"identity"], [b""]],
)
def test_a_transfer_encoding_other_than_exactly_chunked_is_malformed(codings: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        request_framing([], codings)
    assert err.value.rejection.reason == "malformed_request"


@pytest.mark.parametrize("lengths", [[b"3", b"4"], [b"3", b"3"]])
def test_two_content_lengths_are_ambiguous_even_when_equal(lengths: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        request_framing(lengths, [])
    assert (err.value.rejection.status, err.value.rejection.reason) == (400, "ambiguous_request")


@pytest.mark.parametrize("value", [b"-1", b"+1", b"1,1", b"0x10", b"", b"1" * 19, b"\xd9\xa1"])
def test_a_content_length_is_digits_only_and_bounded(value: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        content_length(value)


def test_bodiless_statuses_and_head_answers_end_with_their_head() -> None:
    for status in (100, 101, 103, 204, 304):
        assert not status_has_body(status)
        assert response_framing("GET", status, [b"42"], []) == 0
    assert response_framing("HEAD", 200, [b"42"], []) == 0
    assert not response_has_body("HEAD", 200)
    assert response_has_body("GET", 200)


def test_a_response_body_is_its_length_chunked_or_until_the_close() -> None:
    assert response_framing("GET", 200, [b"5"], []) == 5
    assert response_framing("GET", 200, [], [b"chunked"]) == CHUNKED
    assert response_framing("GET", 200, [], []) == UNTIL_CLOSE


def test_response_framing_refuses_what_a_request_would() -> None:
    for lengths, codings in (([b"1"], [b"chunked"]), ([b"1", b"2"], []), ([], [b"gzip"])):
        with pytest.raises(RemoteProtocolError):
            response_framing("GET", 200, lengths, codings)
    # Even where no body follows, what is announced must be well-formed.
    with pytest.raises(RemoteProtocolError):
        response_framing("HEAD", 200, [b"abc"], [])


def test_a_refused_head_names_the_singleton_it_repeats() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\ncontent-length : 1\r\n\r\n"
    assert duplicated_singleton(head) == "content-length"
    assert duplicated_singleton(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nX: 2\r\n\r\n") is None
