"""The fast header parser of store/nats.py yields exactly what nats-py's own parser yields."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from brainless_odm.store.nats import _parse_headers_fast

_nats_py = Client()  # never connected: only its (unpatched) header parser is used


def _reference(block: bytes) -> dict[str, str] | None:
    return asyncio.run(_nats_py._process_headers(block))


# Names and values drawn from the characters that matter to either parser: separators, every
# kind of ASCII whitespace (incl. \x1c-\x1f, which str.isspace() counts), and non-ASCII bytes.
_chars = st.sampled_from(
    [
        b"a",
        b"Z",
        b"-",
        b"0",
        b":",
        b" ",
        b"\t",
        b"\x0b",
        b"\x0c",
        b"\x1c",
        b"\x1f",
        b"\xc3\xa9",
        b"\xff",
        b"~",
    ]
)
_token = st.lists(_chars, max_size=8).map(b"".join)
_line = st.tuples(_token, st.sampled_from([b":", b": ", b"", b" : "]), _token).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(_line, max_size=5))
def test_same_dict_as_nats_py(lines: list[bytes]) -> None:
    block = b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    assert _parse_headers_fast(block) == _reference(block)


def test_common_blocks() -> None:
    for block in (
        b"NATS/1.0\r\nNats-Msg-Id: abc.1\r\nNats-Expected-Last-Subject-Sequence: 12\r\n\r\n",
        b"NATS/1.0\r\nKV-Operation: DEL\r\n\r\n",
        b"NATS/1.0\r\nNats-Marker-Reason: MaxAge\r\nNats-TTL: 5s\r\n\r\n",
        b"NATS/1.0\r\n\r\n",
        b"NATS/1.0\r\nX-Name:\tcaf\xc3\xa9 \r\n\r\n",
    ):
        assert _parse_headers_fast(block) == _reference(block), block


def test_status_lines_are_left_to_nats_py() -> None:
    for block in (b"NATS/1.0 503\r\n\r\n", b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 3\r\n\r\n"):
        assert _parse_headers_fast(block) is False
