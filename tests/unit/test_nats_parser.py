"""The fast protocol parser ``_Wire`` installs on a nats-py client does exactly what nats-py's
parser does with any stream of server messages, however it is cut into chunks: the same messages
to the same places in the same order, the same PING/PONG/INFO/-ERR handling, the same protocol
errors, the same statistics."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.errors import ProtocolError

from brainless_odm.store.nats import _Wire

ROUTED = (1, 2)  # sids with a fast route: 1 takes every message, 2 only payloads starting with "y"
Event = tuple[Any, ...]


def _client(fast: bool) -> tuple[Client, list[Event]]:
    """A never-connected nats-py client whose handlers record what reaches them."""
    events: list[Event] = []
    nc = Client()

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        events.append(("msg", sid, subject, reply, data, headers))
        nc.stats["in_msgs"] += 1
        await asyncio.sleep(0)  # a real _process_msg may switch tasks

    async def process_ping() -> None:
        events.append(("ping",))

    async def process_pong() -> None:
        events.append(("pong",))

    async def process_info(info: dict[str, Any]) -> None:
        events.append(("info", info))

    async def process_err(err: str) -> None:
        events.append(("err", err))

    nc.__dict__.update(
        _process_msg=process_msg,
        _process_ping=process_ping,
        _process_pong=process_pong,
        _process_info=process_info,
        _process_err=process_err,
    )
    wire = _Wire(nc)
    assert wire.dispatch
    assert wire.parser
    if not fast:
        del nc._ps.__dict__["parse"]  # nats-py's own parser, behind the same dispatch shortcut

    def route(sid: int) -> Any:
        def handle(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            if sid == 2 and not data.startswith(b"y"):
                return False
            if data == b"boom":
                raise RuntimeError("a handler failed")
            events.append(("route", sid, subject, reply, data, headers))
            return True

        return handle

    for sid in ROUTED:
        wire.routes[sid] = route(sid)
    return nc, events


async def _feed(nc: Client, chunks: list[bytes]) -> tuple[str | None, dict[str, int]]:
    error = None
    try:
        for chunk in chunks:
            await nc._ps.parse(chunk)
    except (ProtocolError, RuntimeError) as exc:
        error = type(exc).__name__
    return error, {k: nc.stats[k] for k in ("in_msgs", "in_bytes")}


def _both(chunks: list[bytes]) -> None:
    async def run() -> None:
        fast, fast_events = _client(True)
        slow, slow_events = _client(False)
        fast_out = await _feed(fast, chunks)
        slow_out = await _feed(slow, chunks)
        assert fast_events == slow_events
        assert fast_out == slow_out
        if fast_out[0] != "ProtocolError":
            assert bytes(fast._ps.buf) == bytes(slow._ps.buf)  # the same unread tail

    asyncio.run(run())


_token = st.text("abc.$_>*-0123456789", min_size=1, max_size=12).map(str.encode)
_payload = st.one_of(
    st.binary(max_size=40), st.sampled_from([b"", b"y", b"yes", b"\r\n", b"MSG x 1 2\r\n", b"boom"])
)
_headers = st.lists(
    st.tuples(st.sampled_from([b"KV-Operation", b"Nats-Msg-Id", b"X"]), st.binary(max_size=8)),
    max_size=3,
).map(lambda hs: b"NATS/1.0\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in hs) + b"\r\n")
_status = st.sampled_from([b"NATS/1.0 503\r\n\r\n", b"NATS/1.0 100 Idle Heartbeat\r\n\r\n"])
_sid = st.one_of(st.integers(min_value=1, max_value=4).map(lambda i: str(i).encode()), st.just(b"x1"))
_space = st.sampled_from([b" ", b"  ", b"\t"])


@st.composite
def _msg(draw: Any) -> bytes:
    sp = draw(_space)
    subject, sid, payload = draw(_token), draw(_sid), draw(_payload)
    reply = draw(st.one_of(st.none(), _token))
    args = [subject, sid] + ([reply] if reply is not None else [])
    if draw(st.booleans()):
        hdr = draw(st.one_of(_headers, _status))
        line = b"HMSG" + sp + sp.join([*args, str(len(hdr)).encode(), str(len(hdr) + len(payload)).encode()])
        return line + b"\r\n" + hdr + payload + b"\r\n"
    return b"MSG" + sp + sp.join([*args, str(len(payload)).encode()]) + b"\r\n" + payload + b"\r\n"


_control = st.sampled_from(
    [
        b"PING\r\n",
        b"PONG\r\n",
        b"+OK\r\n",
        b"-ERR 'Stale Connection'\r\n",
        b"INFO " + orjson.dumps({"server_id": "x", "max_payload": 1048576}) + b"\r\n",
    ]
)
_bad = st.sampled_from([b"MSG a 1 5 \r\nhello\r\n", b"BOGUS\r\n", b"HMSG a\r\n", b"MSGX a 1 0\r\n\r\n"])


@st.composite
def _stream(draw: Any) -> list[bytes]:
    frames = draw(st.lists(st.one_of(_msg(), _msg(), _msg(), _control), max_size=25))
    if draw(st.integers(0, 9)) == 0:
        frames.append(draw(_bad))
    data = b"".join(frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=500, deadline=None)
@given(_stream())
def test_same_as_nats_py_parser(chunks: list[bytes]) -> None:
    _both(chunks)


def test_common_streams() -> None:
    ack = b'MSG _INBOX.x.1 1 33\r\n{"stream":"KV_b","seq":1,"d":""}\r\n'
    delivery = (
        b"HMSG $KV.b.k 1 $JS.ACK.KV_b.c.1.5.5.1700000000.0 24 27\r\nNATS/1.0\r\nKV-Operation: DEL\r\n\r\n"
        b"abc\r\n"
    )
    other = b"MSG svc 3 _INBOX.r 2\r\nhi\r\n"
    stream = ack * 3 + delivery + other + b"PING\r\n" + ack + other
    _both([stream])
    _both([stream[i : i + 7] for i in range(0, len(stream), 7)])
    _both([bytes([b]) for b in stream])  # one byte at a time


def test_large_payload_arriving_in_pieces_is_copied_once() -> None:
    payload = b"y" * 200_000
    frame = b"MSG big 1 " + str(len(payload)).encode() + b"\r\n" + payload + b"\r\n"
    _both([frame[i : i + 4096] for i in range(0, len(frame), 4096)])


def test_reset_while_a_message_is_handed_over_voids_the_chunk() -> None:
    """A reconnect resets the parser (a new buffer) while nats-py handles a message: the rest of
    the old chunk is dropped, as nats-py's parser drops it."""

    async def run(fast: bool) -> list[Event]:
        nc, events = _client(fast)
        handle = nc._process_msg

        async def resetting(*args: Any) -> None:
            await handle(*args)
            nc._ps.reset()

        nc.__dict__["_process_msg"] = resetting
        await nc._ps.parse(b"MSG a 3 1\r\nx\r\nMSG b 1 1\r\ny\r\nMSG c 3 1\r\nz\r\n")
        assert bytes(nc._ps.buf) == b""
        return events

    fast, slow = asyncio.run(run(True)), asyncio.run(run(False))
    assert fast == slow == [("msg", 3, b"a", b"", b"x", None)]


def test_a_failing_handler_leaves_what_nats_py_leaves() -> None:
    ok = b"MSG a 1 1\r\nx\r\n"
    boom = b"MSG a 1 4\r\nboom\r\n"
    _both([ok * 3 + boom + ok * 2])
    _both([ok, ok + boom + ok, ok])
