"""NATS JetStream Key/Value implementation of :class:`~brainless_odm.store.base.KVStore`.

This is the only module of brainless_odm that imports ``nats``. It speaks the JetStream API
directly (``$JS.API.*`` requests, push consumers on private inboxes, publishes with reply
subjects) instead of going through nats-py's ``KeyValue`` helper, because that helper has bugs
that break the guarantees of :mod:`brainless_odm.store.base`:

* its watcher may report "initial values done" before the data (nats.py #842), so a populated
  bucket can load as partly empty, and ``keys()`` can raise ``NoKeysError`` spuriously;
* ``publish_async`` never resolves on an error ack such as a CAS conflict (nats.py #985);
* ``kv.get`` raises for delete markers, whose revision compare-and-set needs;
* its watcher needs 10-18 s to resume after a reconnect (idle heartbeat 5 s x 2 misses).

Bucket layout is the standard NATS KV one (stream ``KV_<bucket>``, subjects ``$KV.<bucket>.<key>``,
``KV-Operation`` headers), so ``nats kv`` and every other NATS client read and write the same data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, cast

import nats
import nats.aio.client
import nats.errors
import nats.protocol.parser
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport

from brainless_odm.exceptions import (
    BucketNotFound,
    ConnectionClosed,
    ConnectionLost,
    PayloadTooLarge,
    StoreError,
)
from brainless_odm.store.base import (
    HEADER_ROOM,
    BucketConfig,
    Conflict,
    Entry,
    Operation,
    Snapshot,
    WriteOp,
    WriteResult,
    bucket_not_found,
    check_bucket_name,
    check_key,
    check_op,
    store_closed,
)

__all__ = ["NatsBucket", "NatsKVStore", "NatsWatch", "connect", "refused_credentials"]

log = logging.getLogger(__name__)

# JetStream API error codes (nats-server/server/errors.json).
_ERR_STREAM_NOT_FOUND = 10059
_ERR_STREAM_NAME_IN_USE = 10058
_ERR_WRONG_LAST_SEQUENCE = 10071
_ERR_MESSAGE_TOO_LARGE = 10054

_DUPLICATE_WINDOW_NS = 120 * 1_000_000_000  # the KV default; retries with one msg_id dedupe inside it

# nats-py exceptions that mean "the server cannot be reached right now" (transient).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.FlushTimeoutError,
    nats.errors.NoServersError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)
# Anything nats-py raises while publishing one message (after our own size/key checks).
_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (*_CONNECTION_ERRORS, nats.errors.Error)


# -- shortcuts through nats-py ---------------------------------------------------------------
#
# nats-py has no batch publish and hands every message through a Msg object, a queue and a task
# switch before a callback sees it; for a 20k-document flush those per-message costs (plus its
# pure-Python header parser) were most of the time over a bare publish loop. ``_Wire`` installs, once
# per client, three shortcuts that keep nats-py's observable behaviour:
#
# * writes feed whole batches of ready-made ``HPUB`` commands into the client's write buffer; a
#   small one on an idle connection is written to the socket at once (nats-py's flusher would
#   write it one loop iteration later);
# * messages for our own subscriptions (publish acks, consumer deliveries) are handed to a plain
#   function straight from the protocol parser; everything else takes nats-py's own path;
# * header blocks in the common form (no status line, ASCII) are parsed by a tighter loop that
#   yields exactly the dict nats-py's parser yields (tests compare the two on generated input);
# * the protocol parser reads ``MSG``/``HMSG`` with nats-py's own expressions but works through a
#   received chunk by offset (one copy of it, not two slices and two deletions per message) and
#   hands messages for our subscriptions over without a coroutine per message; anything else
#   (``PING``, ``INFO``, ``-ERR``, ...) goes to nats-py's parser with the rest of the chunk.
#
# Each shortcut is used only when the client has the internals it needs (checked by name and
# signature); otherwise the public API is used, which is slower and equally correct.

_HDR_STRIP = " \t\n\r\x0b\x0c"  # what bytes.strip() removes
_HDR_NAME_SPACE = re.compile("[\t\n\x0b\x0c\r\x1c-\x1f ]")  # what str.isspace() finds in ASCII
#: Writes up to this size go straight to an idle socket (see ``_Wire.send``); larger ones, and any
#: write while the socket's send buffer holds more, go through nats-py's flusher.
_DIRECT_MAX = 64 * 1024

#: A fast route for one subscription: (subject, reply, data, raw headers) -> handled. Returning
#: False hands the message to nats-py's normal path (the subscription's callback).
Route = Callable[[bytes, bytes, bytes, "bytes | None"], bool]


def _parse_headers_fast(headers: bytes) -> dict[str, str] | bool | None:
    """What nats-py's parser makes of a header block without a status line; ``False`` for a block
    with one (``NATS/1.0 503``), which nats-py must parse itself."""
    if len(headers) < 10 or headers[8] == 32:  # 32: a space, so a status line follows
        return False
    raw = headers[10:]
    out: dict[str, str] = {}
    if raw.isascii():
        for line in raw.decode("ascii").split("\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip(_HDR_STRIP)
            if _HDR_NAME_SPACE.search(key):
                continue
            out[key] = value.strip(_HDR_STRIP)
        return out or None
    for bline in raw.split(b"\r\n"):  # nats-py's own rules, byte by byte
        bname, bsep, bvalue = bline.partition(b":")
        if not bsep:
            continue
        try:
            key = bname.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _HDR_NAME_SPACE.search(key):
            continue
        out[key] = bvalue.strip().decode("utf-8", "replace")
    return out or None


# nats-py's control-line expressions without their ``\A``, to match at an offset of a chunk; used
# only while nats-py's own are exactly these (so a message means the same to both parsers).
_NATS_MSG_RE = b"\\AMSG\\s+([^\\s]+)\\s+([^\\s]+)\\s+(([^\\s]+)[^\\S\r\n]+)?(\\d+)\r\n"
_NATS_HMSG_RE = b"\\AHMSG\\s+([^\\s]+)\\s+([^\\s]+)\\s+(([^\\s]+)[^\\S\r\n]+)?([\\d]+)\\s+(\\d+)\r\n"
_MSG_AT = re.compile(_NATS_MSG_RE[2:])
_HMSG_AT = re.compile(_NATS_HMSG_RE[2:])


def _parser_is_known(nc: Client) -> bool:
    """Does ``nc``'s protocol parser look exactly like the one the fast parser stands in for?"""
    mod: Any = nats.protocol.parser
    ps = getattr(nc, "_ps", None)
    return (
        isinstance(ps, getattr(mod, "Parser", ()))
        and isinstance(getattr(ps, "buf", None), bytearray)
        and getattr(mod, "AWAITING_CONTROL_LINE", None) == 1
        and getattr(getattr(mod, "MSG_RE", None), "pattern", None) == _NATS_MSG_RE
        and getattr(getattr(mod, "HMSG_RE", None), "pattern", None) == _NATS_HMSG_RE
        and _signature_is(type(ps), "parse", ("self", "data"))
    )


class _Wire:
    """The shortcuts installed on one nats-py client (see above). Get it with :meth:`of`."""

    def __init__(self, nc: Client, *, shortcuts: bool = True) -> None:
        self.nc = nc
        self.routes: dict[int, Route] = {}
        cls = type(nc)
        self.batch = shortcuts and all(
            hasattr(nc, name)
            for name in ("_send_command", "_flush_pending", "_flush_queue", "stats", "max_payload")
        )
        self.dispatch = shortcuts and _signature_is(
            cls, "_process_msg", ("self", "sid", "subject", "reply", "data", "headers")
        )
        # With fast_mail_parser installed nats-py parses headers in Rust already.
        self.headers = (
            shortcuts
            and getattr(nats.aio.client, "parse_email", None) is None
            and _signature_is(cls, "_process_headers", ("self", "headers"))
        )
        self.parser = self.dispatch and _parser_is_known(nc)
        self.direct = self.batch and all(
            hasattr(nc, name) for name in ("_transport", "_pending", "_pending_data_size")
        )
        if self.dispatch:
            self._install_dispatch()
        if self.headers:
            self._install_headers()
        if self.parser:
            self._install_parser()

    @classmethod
    def of(cls, nc: Client) -> _Wire:
        wire = cast("_Wire | None", nc.__dict__.get("_brainless_odm_wire"))
        if wire is None:
            wire = cls(nc)
            nc.__dict__["_brainless_odm_wire"] = wire
        return wire

    def _install_dispatch(self) -> None:
        original: Any = self.nc._process_msg  # typed headers: bytes; the parser passes None too
        routes = self.routes
        stats = self.nc.stats

        async def process_msg(
            sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            route = routes.get(sid)
            if route is not None and route(subject, reply, data, headers):
                stats["in_msgs"] += 1
                stats["in_bytes"] += len(data)
                return
            await original(sid, subject, reply, data, headers)

        self.nc.__dict__["_process_msg"] = process_msg

    def _install_parser(self) -> None:
        nc: Any = self.nc
        ps = nc._ps
        original = ps.parse
        routes = self.routes
        stats = nc.stats
        msg_at = _MSG_AT.match
        hmsg_at = _HMSG_AT.match
        # A message whose payload has not all arrived yet: (buffer, bytes it needs). Until then a
        # chunk only extends the buffer (no copy of a large payload per chunk).
        waiting: list[Any] = [None, 0]

        async def parse(data: bytes = b"") -> None:
            buf: bytearray = ps.buf
            buf.extend(data)
            if ps.state != 1:  # inside a payload nats-py's parser started: it finishes the chunk
                await original()
                return
            if waiting[0] is buf and len(buf) < waiting[1]:
                return
            waiting[0] = None
            view = bytes(buf)
            size = len(view)
            pos = 0
            count = nbytes = 0  # routed messages and their payload bytes, added to stats at the end
            try:
                while pos < size:
                    first = view[pos]
                    if first == 77:  # M
                        m = msg_at(view, pos)
                        if m is None:
                            break
                        subject, sid_b, _, reply, total = m.groups()
                        hlen = 0
                    elif first == 72:  # H
                        m = hmsg_at(view, pos)
                        if m is None:
                            break
                        subject, sid_b, _, reply, hlen_b, total = m.groups()
                        hlen = int(hlen_b) if len(hlen_b) < 16 else -1
                    else:
                        break
                    if hlen < 0 or len(total) > 15 or not sid_b.isdigit() or len(sid_b) > 15:
                        break  # odd numbers (not digits, absurdly long): nats-py's parser handles them
                    start = m.end()
                    needed = int(total)
                    end = start + needed
                    if end + 2 > size:
                        waiting[0] = buf
                        waiting[1] = end + 2 - pos
                        break
                    if hlen > 0:
                        headers: bytes | None = view[start : start + hlen]
                        payload = view[start + hlen : end]
                    else:
                        headers = None
                        payload = view[start:end]
                    pos = end + 2
                    sid = int(sid_b)
                    if reply is None:
                        reply = b""
                    route = routes.get(sid)
                    if route is not None and route(subject, reply, payload, headers):
                        count += 1
                        nbytes += len(payload)
                        continue
                    if count:
                        stats["in_msgs"] += count
                        stats["in_bytes"] += nbytes
                        count = nbytes = 0
                    await nc._process_msg(sid, subject, reply, payload, headers)
                    if ps.buf is not buf:
                        return  # the parser was reset meanwhile (a reconnect): the chunk is void
            finally:
                # Also when a handler raised: what was handed over is consumed and counted, as
                # nats-py's parser has it. Not after a reset: that buffer is a new connection's.
                if ps.buf is buf:
                    if count:
                        stats["in_msgs"] += count
                        stats["in_bytes"] += nbytes
                    if pos:
                        del buf[:pos]
            if buf and waiting[0] is None:
                await original()  # a line nats-py reads itself (PING, INFO, -ERR, part of a line)

        ps.__dict__["parse"] = parse

    def _install_headers(self) -> None:
        original = self.nc._process_headers

        async def process_headers(headers: bytes | None) -> dict[str, str] | None:
            if not headers:
                return None
            parsed = _parse_headers_fast(headers)
            if parsed is False:
                return await original(headers)
            return cast("dict[str, str] | None", parsed)

        self.nc.__dict__["_process_headers"] = process_headers

    def route(self, sub: Subscription, handler: Route) -> bool:
        """Send ``sub``'s messages to ``handler`` first; False if this client can't."""
        sid = getattr(sub, "_id", None)
        if not self.dispatch or not isinstance(sid, int):
            return False
        self.routes[sid] = handler
        return True

    def unroute(self, sub: Subscription) -> None:
        self.routes.pop(getattr(sub, "_id", -1), None)

    async def send(self, commands: list[bytes], count: int, size: int) -> None:
        """Send ready-made protocol commands (like ``count`` publishes of ``size`` payload bytes
        in all). A small write on an idle connection goes to the socket now, after whatever the
        client still holds; anything else is queued and the client's flusher kicked, as
        ``Client.publish`` does."""
        nc: Any = self.nc
        nc.stats["out_msgs"] += count
        nc.stats["out_bytes"] += size
        data = b"".join(commands)
        writer = self._direct_writer(len(data))
        if writer is not None:
            if nc._pending:  # queued by the client, not yet written: it goes first
                data = b"".join((*nc._pending, data))
                nc._pending = []
                nc._pending_data_size = 0
            writer.write(data)
            return
        await nc._send_command(data)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    def _direct_writer(self, size: int) -> asyncio.StreamWriter | None:
        """The stream to write ``size`` bytes to directly, or None to go through the flusher.

        The flusher costs a loop iteration per flush (its task wakes on the next one): ~30 µs of
        every change's latency with ``flush_interval=0``. Writing directly is safe only while
        nothing is waiting for it: connected (not reconnecting, which buffers), no wake-up queued
        (it would write ``_pending`` after us), a plain TCP transport whose send buffer is almost
        empty (so the flusher's back-pressure is not bypassed), and a small write."""
        if not self.direct or size > _DIRECT_MAX:
            return None
        nc: Any = self.nc
        transport = nc._transport
        if (
            type(transport) is not TcpTransport
            or not nc.is_connected
            or nc._flush_queue is None
            or not nc._flush_queue.empty()
        ):
            return None
        writer: asyncio.StreamWriter | None = transport._io_writer
        if writer is None or writer.transport.is_closing():
            return None
        if writer.transport.get_write_buffer_size() > _DIRECT_MAX:
            return None
        return writer


def _signature_is(cls: type, name: str, params: tuple[str, ...]) -> bool:
    fn = getattr(cls, name, None)
    if fn is None or not inspect.iscoroutinefunction(fn):
        return False
    try:
        return tuple(inspect.signature(fn).parameters) == params
    except (TypeError, ValueError):
        return False


def _entry_kind(headers: dict[str, str] | None) -> tuple[Operation, str | None]:
    """Operation and server reason of a stored message, from its headers."""
    if not headers:
        return Operation.PUT, None
    reason = headers.get("Nats-Marker-Reason")
    op = headers.get("KV-Operation")
    if op == "DEL":
        return Operation.DELETE, reason
    if op == "PURGE":
        return Operation.PURGE, reason
    if reason is not None:
        # Server-written markers (2.11+): a TTL expiry or a purge removes the key's history,
        # "Remove" is a single delete (same mapping as nats.go).
        return (Operation.DELETE if reason == "Remove" else Operation.PURGE), reason
    return Operation.PUT, None


#: The header of a delete marker written with ``WriteOp.removes`` (see ``Entry.removes``).
REMOVES_HEADER = "Brainless-Removes"


def _removes(headers: dict[str, str] | None) -> int | None:
    """``Entry.removes`` of a stored message (``None`` unless a well-formed header says so)."""
    text = headers.get(REMOVES_HEADER) if headers else None
    return int(text) if text is not None and text.isdigit() else None


def _parse_header_block(raw: bytes) -> dict[str, str]:
    """Parse a raw ``NATS/1.0`` header block (as returned by the STREAM.MSG.GET API)."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.decode().strip()] = value.decode().strip()
    return out


class _ApiError(StoreError):
    """A JetStream API error response; callers map the codes they understand."""

    def __init__(self, subject: str, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        super().__init__(f"JetStream API {subject}: {description} (code {code}, err_code {err_code})")


_GAVE_UP = (
    "nats-py gave up reconnecting after max_reconnect_attempts and closed it; connect with "
    "max_reconnect_attempts=-1 to ride out outages of any length"
)


def _disconnected(nc: Client, what: str) -> ConnectionLost | ConnectionClosed:
    if nc.is_closed:
        # Closed for good: it never comes back, so this is not retried.
        if isinstance(nc.last_error, nats.errors.NoServersError):
            return ConnectionClosed(f"{what}: the NATS connection is closed ({_GAVE_UP})")
        return ConnectionClosed(
            f"{what}: the NATS connection is closed (stop the Database before closing its connection)"
        )
    return ConnectionLost(f"{what}: not connected to NATS")


def _lost(what: str, exc: BaseException) -> ConnectionLost | ConnectionClosed:
    err: ConnectionLost | ConnectionClosed
    if isinstance(exc, nats.errors.ConnectionClosedError):
        # Closed for good, not by the network: it never comes back, so it is not retried.
        err = ConnectionClosed(
            f"{what}: the NATS connection is closed (by its owner, who should stop the Database "
            f"first, or: {_GAVE_UP})"
        )
    elif isinstance(exc, nats.errors.NoRespondersError):
        err = ConnectionLost(
            f"{what}: no responders (JetStream is not enabled on the server, e.g. nats-server -js, "
            "or the server is starting or stopping)"
        )
    else:
        err = ConnectionLost(f"{what}: NATS server unreachable ({type(exc).__name__})")
    err.__cause__ = exc
    return err


#: How often a request or a write waiting for its answer looks whether the connection it was sent
#: on is gone (seconds): the answer can then never come.
_RECONNECT_CHECK = 0.1


async def _request(nc: Client, subject: str, payload: bytes, timeout: float) -> Msg:
    """``nc.request``, but ended with ``ConnectionReconnectingError`` as soon as the connection
    it was sent on is lost. nats-py keeps waiting for the whole timeout, though the server that
    got the request is gone: a flush that asked something just before a restart sat it out."""
    epoch = nc.stats["reconnects"]
    task = asyncio.ensure_future(nc.request(subject, payload, timeout=timeout))
    try:
        while True:
            done, _ = await asyncio.wait((task,), timeout=_RECONNECT_CHECK)
            if done:
                return task.result()
            if nc.is_closed:
                raise nats.errors.ConnectionClosedError  # by its owner: not retried
            if not nc.is_connected or nc.stats["reconnects"] != epoch:
                raise nats.errors.ConnectionReconnectingError
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _api(nc: Client, subject: str, payload: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    """One JetStream API request; transport failures become ``ConnectionLost``, API errors ``_ApiError``."""
    if not nc.is_connected:
        # nats-py would buffer the request until a reconnect and we would sit out the timeout.
        raise _disconnected(nc, subject)
    try:
        msg = await _request(nc, subject, orjson.dumps(payload) if payload is not None else b"", timeout)
    except nats.errors.NoRespondersError as e:
        # Nobody serves $JS.API: JetStream is off, or the server is still starting.
        raise _lost(f"{subject}: JetStream not available", e) from e
    except _CONNECTION_ERRORS as e:
        raise _lost(subject, e) from e
    resp = cast("dict[str, Any]", orjson.loads(msg.data))
    err = resp.get("error")
    if err:
        raise _ApiError(
            subject, int(err.get("code", 0)), int(err.get("err_code", 0)), str(err.get("description"))
        )
    return resp


def _ack_fields(reply: str) -> tuple[int, int, int, int] | None:
    """``(stream_seq, consumer_seq, timestamp_ns, pending)`` from a ``$JS.ACK`` reply subject."""
    tokens = reply.split(".")
    n = len(tokens)
    if n == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        off = 0
    elif n >= 11:  # v2: $JS.ACK.<domain>.<account hash>.<stream>... [+ random token]
        off = 2
    else:
        return None
    return int(tokens[5 + off]), int(tokens[6 + off]), int(tokens[7 + off]), int(tokens[8 + off])


class _PushConsumer:
    """An ordered, ack-less push consumer on a private inbox (what nats.go calls an ordered consumer).

    Delivers ``(stream_seq, subject, data, headers, timestamp_ns, pending)`` to ``on_msg``
    synchronously from the subscription callback (``headers`` may be ``None`` for a plain put even
    when it carried some: only what :func:`_entry_kind` reads matters), answers flow control, and
    reports a gap in the consumer sequence (a dropped message) or a stale consumer through
    ``on_gap``: the owner then recreates it from the last stream sequence it has seen, so nothing
    is skipped.
    """

    def __init__(
        self,
        bucket: NatsBucket,
        *,
        on_msg: Callable[[int, str, bytes, dict[str, str] | None, int, int], None],
        on_gap: Callable[[], None],
        on_idle: Callable[[], None] | None = None,
        heartbeat: float = 1.0,
        flow_reply: Callable[[str], bool] | None = None,
    ) -> None:
        self._bucket = bucket
        self._nc = bucket._nc
        self._on_msg = on_msg
        self._on_gap = on_gap
        self._on_idle = on_idle
        self._flow_reply = flow_reply
        self.heartbeat = heartbeat
        self.sub: Subscription | None = None
        self.name: str | None = None
        self.dseq = 0
        self.last_activity = time.monotonic()
        self.num_pending_at_start = -1
        self.closed = False

    async def start(self, *, last_per_subject: bool, start_seq: int) -> None:
        cfg: dict[str, Any] = {
            "ack_policy": "none",
            "filter_subject": self._bucket._prefix + ">",
            "replay_policy": "instant",
            "flow_control": True,
            "idle_heartbeat": int(self.heartbeat * 1e9),
            "mem_storage": True,
            "num_replicas": 1,
            # The server drops the consumer once nobody listens (we died without cleaning up).
            "inactive_threshold": int(max(5.0, self.heartbeat * 5) * 1e9),
        }
        if last_per_subject:
            cfg["deliver_policy"] = "last_per_subject"
        elif start_seq <= 1:
            cfg["deliver_policy"] = "all"
        else:
            cfg["deliver_policy"] = "by_start_sequence"
            cfg["opt_start_seq"] = start_seq
        inbox = self._nc.new_inbox()
        cfg["deliver_subject"] = inbox
        try:
            self.sub = await self._nc.subscribe(
                inbox, cb=self._cb, pending_msgs_limit=1 << 21, pending_bytes_limit=1 << 30
            )
        except _CONNECTION_ERRORS as e:
            raise _lost(f"watching bucket {self._bucket.name}", e) from e
        if self.closed:
            # stop() ran while we subscribed (the bucket closed): it found nothing to end.
            await self.stop()
            return
        self.last_activity = time.monotonic()
        self._bucket._wire.route(self.sub, self._route)
        try:
            info = await self._bucket._api(
                f"$JS.API.CONSUMER.CREATE.{self._bucket._stream}",
                {"stream_name": self._bucket._stream, "config": cfg},
            )
        except BaseException:
            await self.stop()
            raise
        self.name = str(info.get("name"))
        self.num_pending_at_start = int(info.get("num_pending", 0))
        if self.closed and self.sub is None:
            await self.stop()  # stopped while the server created it: delete it there too

    async def stop(self) -> None:
        """Unsubscribe and delete the consumer on the server (best effort, never raises)."""
        self.closed = True
        sub, self.sub = self.sub, None
        if sub is not None:
            self._bucket._wire.unroute(sub)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        name, self.name = self.name, None
        if name is not None and self._nc.is_connected:
            # Fire and forget: inactive_threshold removes it anyway if this is lost.
            with contextlib.suppress(Exception):
                await self._nc.publish(f"$JS.API.CONSUMER.DELETE.{self._bucket._stream}.{name}")

    def _route(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """A delivery straight from the protocol parser (see ``_Wire``); control messages
        (heartbeats, flow control, status) go on to :meth:`_cb`."""
        if not reply.startswith(b"$JS.ACK."):
            return False
        if self.closed:
            return True
        hdrs = None
        # Receivers only ask the headers what _entry_kind asks (delete, purge, marker): a put's
        # Nats-Msg-Id and Nats-Expected-* are not worth a parse per message.
        if headers is not None and (b"KV-Operation" in headers or b"Nats-Marker-Reason" in headers):
            parsed = _parse_headers_fast(headers)
            if parsed is False:
                return False
            hdrs = cast("dict[str, str] | None", parsed)
        self.last_activity = time.monotonic()
        fields = _ack_fields(reply.decode())
        if fields is None:
            return True
        sseq, dseq, ts, pending = fields
        if dseq != self.dseq + 1:
            self.closed = True
            self._on_gap()
            return True
        self.dseq = dseq
        self._on_msg(sseq, subject.decode(), data, hdrs, ts, pending)
        return True

    async def _cb(self, msg: Msg) -> None:
        if self.closed:
            return
        self.last_activity = time.monotonic()
        reply = msg.reply
        if reply and reply.startswith("$JS.ACK."):
            fields = _ack_fields(reply)
            if fields is None:
                return
            sseq, dseq, ts, pending = fields
            if dseq != self.dseq + 1:
                # Ordered-consumer invariant: consumer sequences are contiguous; a hole means a
                # message was dropped (slow consumer, reconnect), so restart from what we have.
                self.closed = True
                self._on_gap()
                return
            self.dseq = dseq
            self._on_msg(sseq, msg.subject, msg.data, msg.headers, ts, pending)
            return
        hdrs = msg.headers or {}
        status = hdrs.get("Status")
        if status == "100":
            if reply:  # flow control request
                if self._flow_reply is None or self._flow_reply(reply):
                    await self._nc.publish(reply)
                return
            stalled = hdrs.get("Nats-Consumer-Stalled")
            if stalled:
                await self._nc.publish(stalled)
            last = hdrs.get("Nats-Last-Consumer")
            # ">": deliveries take the fast route and may overtake a heartbeat queued in nats-py.
            if last is not None and int(last) > self.dseq:
                self.closed = True
                self._on_gap()
                return
            if self._on_idle is not None and not stalled:
                self._on_idle()
        elif status is not None:
            # 409 "Consumer Deleted" and the like: the consumer is gone, recreate it.
            self.closed = True
            self._on_gap()


class _WatchState:
    """The machinery behind a :class:`NatsWatch` (kept apart so the handle can be collected).

    Invariant: ``_last`` is the revision of the last entry queued; every (re)created consumer
    starts at ``_last + 1`` and entries at or below ``_last`` are dropped, so a reset can neither
    skip nor repeat an entry.
    """

    _HIGH_WATER = 20_000  # queued entries above which flow control is held back (backpressure)

    def __init__(self, bucket: NatsBucket, after: int, heartbeat: float) -> None:
        self._bucket = bucket
        self._nc = bucket._nc
        self._last = after
        self._heartbeat = heartbeat
        self._queue: deque[Entry] = deque()
        self._ready = asyncio.Event()
        self._reset_needed = asyncio.Event()
        self._consumer: _PushConsumer | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        # Why it was closed, if not by its owner: raised once by the next __anext__.
        self._close_error: StoreError | None = None
        self._held_flow: list[str] = []
        self._reconnects = 0
        self.sink: Callable[[Entry], None] | None = None

    @property
    def active(self) -> bool:
        return self._monitor is not None and not self._closed

    async def ensure_started(self) -> None:
        if self._monitor is None and not self._closed:
            await self._start()

    async def _start(self) -> None:
        bucket = self._bucket
        if bucket._closed:
            raise store_closed(bucket.name)
        bucket._watches.add(self)
        self._reconnects = self._nc.stats["reconnects"]
        try:
            await self._new_consumer()
        except BaseException:
            bucket._watches.discard(self)
            c, self._consumer = self._consumer, None
            if c is not None:
                await c.stop()
            raise
        if self._closed:
            # Closed while the consumer started (the bucket's close(), or our owner's aclose()),
            # which stopped it: no monitor to start. __anext__ says why.
            return
        self._monitor = asyncio.get_running_loop().create_task(self._run_monitor())

    def _raise_closed(self) -> NoReturn:
        err, self._close_error = self._close_error, None
        if err is not None:
            raise err
        raise StopAsyncIteration

    async def _new_consumer(self) -> None:
        old, self._consumer = self._consumer, None
        if old is not None:
            await old.stop()
        self._held_flow.clear()
        c = _PushConsumer(
            self._bucket,
            on_msg=self._on_msg,
            on_gap=self._reset_needed.set,
            heartbeat=self._heartbeat,
            flow_reply=self._allow_flow,
        )
        self._consumer = c
        self._reconnects = self._nc.stats["reconnects"]
        await c.start(last_per_subject=False, start_seq=self._last + 1)

    def _allow_flow(self, reply: str) -> bool:
        if len(self._queue) < self._HIGH_WATER:
            return True
        self._held_flow.append(reply)
        return False

    def _on_msg(
        self, seq: int, subject: str, data: bytes, headers: dict[str, str] | None, ts: int, pending: int
    ) -> None:
        if seq <= self._last:
            return
        self._last = seq
        op, reason = _entry_kind(headers)
        key = subject[len(self._bucket._prefix) :]
        if op is Operation.PUT:
            entry = Entry(key, data, seq, op, reason)
        else:
            entry = Entry(key, b"", seq, op, reason, _removes(headers))
        sink = self.sink
        if sink is not None and not self._queue:
            try:
                sink(entry)
            except Exception:
                log.exception("watch %s: the sink failed on revision %d of %s", self._bucket.name, seq, key)
            return
        self._queue.append(entry)
        self._ready.set()

    async def _run_monitor(self) -> None:
        """Recreate the consumer after a reconnect, a gap, or missed heartbeats."""
        stale_after = self._heartbeat * 3
        while not self._closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reset_needed.wait(), timeout=min(0.25, self._heartbeat))
            if self._closed:
                return
            c = self._consumer
            need = (
                self._reset_needed.is_set()
                or c is None
                or self._nc.stats["reconnects"] != self._reconnects
                or time.monotonic() - c.last_activity > stale_after
            )
            if not need or not self._nc.is_connected:
                continue
            self._reset_needed.clear()
            try:
                await self._new_consumer()
            except BucketNotFound as e:
                self._error = e
                self._ready.set()
                return
            except StoreError as e:
                log.debug("watch %s: consumer reset failed, retrying: %s", self._bucket.name, e)
                self._consumer = None
                await asyncio.sleep(0.2)
            except Exception as e:  # never let the monitor die silently: surface to the iterator
                self._error = e
                self._ready.set()
                return

    async def __anext__(self) -> Entry:
        if self._closed:
            self._raise_closed()
        if self._monitor is None:
            await self._start()
        while not self._queue:
            if self._error is not None:
                err, self._error = self._error, None
                await self.aclose()
                raise err
            if self._closed:
                self._raise_closed()
            self._ready.clear()
            await self._ready.wait()
        entry = self._queue.popleft()
        if self._held_flow and len(self._queue) < self._HIGH_WATER // 2:
            held, self._held_flow = self._held_flow, []
            for reply in held:
                with contextlib.suppress(Exception):
                    await self._nc.publish(reply)
        return entry

    async def aclose(self, error: StoreError | None = None) -> None:
        """Stop; ``error`` (the bucket closed) is then raised by the next ``__anext__``."""
        if self._closed:
            return
        self._closed = True
        self._close_error = error
        self._ready.set()
        self._reset_needed.set()
        monitor, self._monitor = self._monitor, None
        if monitor is not None and monitor is not asyncio.current_task():
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await monitor
        c, self._consumer = self._consumer, None
        if c is not None:
            await c.stop()
        self._bucket._watches.discard(self)


# Close tasks of watches dropped without aclose(), referenced until done (asyncio keeps only weak refs).
_FINALIZING: set[asyncio.Task[None]] = set()


class NatsWatch:
    """The async iterator (and async context manager) returned by :meth:`NatsBucket.watch`.

    ``async with bucket.watch(rev) as w: async for entry in w: ...`` starts the consumer on entry
    and stops it on exit. A watch that is just iterated starts on the first ``__anext__``; leaving
    the loop with ``break`` (dropping the last reference) or calling :meth:`aclose` stops it.
    """

    def __init__(self, bucket: NatsBucket, after: int, heartbeat: float) -> None:
        self._state = _WatchState(bucket, after, heartbeat)

    def __aiter__(self) -> NatsWatch:
        return self

    async def __anext__(self) -> Entry:
        return await self._state.__anext__()

    def deliver_to(self, sink: Callable[[Entry], None]) -> None:
        """Hand entries to ``sink`` as they arrive, called synchronously by the connection's
        reader, instead of queueing them for iteration: no queue and no task switch per entry.
        Iterating the watch is still what starts it and what surfaces its errors; it yields only
        entries that were queued before this call. ``sink`` must not block; an exception from it
        is logged and the entry counts as delivered."""
        self._state.sink = sink

    async def aclose(self) -> None:
        """Stop watching: unsubscribe and delete the server-side consumer. Idempotent."""
        await self._state.aclose()

    async def __aenter__(self) -> NatsWatch:
        # Start the consumer now rather than on the first __anext__, so entries written from
        # here on are read while the bucket still holds them (history=1 drops superseded ones).
        await self._state.ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Like an async generator's finalizer: a watch abandoned by `break` is closed on the loop.
        state = self._state
        if not state.active:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop any more: the consumer's inactive_threshold cleans up server-side
        task = loop.create_task(state.aclose())
        _FINALIZING.add(task)
        task.add_done_callback(_FINALIZING.discard)


#: Publishes per batch command (one write to the client's buffer).
_BATCH = 256


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Round:
    """One :meth:`NatsBucket.write` call: its results and how many publishes await an ack."""

    __slots__ = ("level", "ops", "outstanding", "results", "waiter")

    def __init__(self, ops: Sequence[WriteOp]) -> None:
        self.ops = ops
        self.results: list[WriteResult | None] = [None] * len(ops)
        self.outstanding = 0
        self.waiter: asyncio.Future[None] | None = None
        self.level = 0

    def settle(self, i: int, result: WriteResult) -> None:
        if self.results[i] is not None:
            return
        self.results[i] = result
        self.outstanding -= 1
        waiter = self.waiter
        if waiter is not None and self.outstanding <= self.level and not waiter.done():
            waiter.set_result(None)


class NatsBucket:
    """One collection's NATS KV bucket (stream ``KV_<name>``), a :class:`~brainless_odm.store.base.Bucket`.

    Obtain it from :meth:`NatsKVStore.open_bucket`.
    """

    def __init__(
        self,
        nc: Client,
        name: str,
        *,
        stream_config: dict[str, Any],
        timeout: float = 5.0,
        max_inflight: int = 2048,
        heartbeat: float = 1.0,
    ) -> None:
        self._nc = nc
        self._name = name
        self._stream = f"KV_{name}"
        self._prefix = f"$KV.{name}."
        self._timeout = timeout
        self._max_inflight = max_inflight
        self._heartbeat = heartbeat
        self._direct = bool(stream_config.get("allow_direct"))
        mms = int(stream_config.get("max_msg_size", -1) or -1)
        self._max_msg_size = mms if mms > 0 else None
        self._watches: set[_WatchState] = set()
        # Write pipeline: one wildcard inbox subscription; each publish gets reply <inbox>.<n>.
        self._ack_sub: Subscription | None = None
        self._ack_prefix = ""
        self._acks: dict[int, tuple[_Round, int]] = {}
        self._ack_ids = itertools.count(1)
        self._wire = _Wire.of(nc)
        self._batch = False
        self._ack_lock = asyncio.Lock()
        self._closed = False

    @property
    def name(self) -> str:
        """The bucket name (``{namespace}-{collection}``)."""
        return self._name

    @property
    def max_value_size(self) -> int:
        """The largest value a put may carry: the server's max payload, or the stream's
        ``max_msg_size`` if smaller, minus ``HEADER_ROOM`` for the headers we send.

        The server counts headers against both limits, nats-py does not: a message whose value
        fits but whose headers push it over makes the server close the whole connection. A bucket
        created here has ``max_msg_size = max_value_size + HEADER_ROOM``, so a value of exactly
        the configured size fits."""
        limit = self._nc.max_payload
        if self._max_msg_size is not None:
            limit = min(limit, self._max_msg_size)
        return max(0, limit - HEADER_ROOM)

    def _subject(self, key: str) -> str:
        return self._prefix + key

    async def _api(self, subject: str, payload: dict[str, Any] | None) -> dict[str, Any]:
        if self._closed:
            raise store_closed(self._name)
        try:
            return await _api(self._nc, subject, payload, self._timeout)
        except _ApiError as e:
            if e.err_code == _ERR_STREAM_NOT_FOUND:
                raise bucket_not_found(self._name) from e
            raise

    async def _stream_info(self) -> dict[str, Any]:
        return await self._api(f"$JS.API.STREAM.INFO.{self._stream}", None)

    async def _check_exists(self, cause: BaseException) -> StoreError:
        """After a no-responders reply: the stream is gone (BucketNotFound) or the server is not ready."""
        try:
            await self._stream_info()
        except BucketNotFound as e:
            return e
        except StoreError as e:
            return e
        return _lost(f"bucket {self._name}", cause)

    # -- load ---------------------------------------------------------------------------------

    async def _scan_once(
        self, last_seq: int
    ) -> list[tuple[int, str, bytes, dict[str, str] | None, int]] | None:
        """One LAST_PER_SUBJECT pass; ``None`` if the consumer dropped a message (rescan)."""
        rows: list[tuple[int, str, bytes, dict[str, str] | None, int]] = []
        append = rows.append
        done = asyncio.Event()
        gap = False

        def on_msg(
            seq: int, subject: str, data: bytes, headers: dict[str, str] | None, ts: int, pending: int
        ) -> None:
            append((seq, subject, data, headers, ts))
            # Complete once we reach what the stream held before the consumer started, or the
            # consumer has nothing more (the last_seq message itself may have been removed).
            if seq >= last_seq or pending == 0:
                done.set()

        def on_gap() -> None:
            nonlocal gap
            gap = True
            done.set()

        # An idle heartbeat means the server has nothing left to deliver to us.
        consumer = _PushConsumer(
            self, on_msg=on_msg, on_gap=on_gap, on_idle=done.set, heartbeat=min(self._heartbeat, 1.0)
        )
        try:
            await consumer.start(last_per_subject=True, start_seq=0)
            if consumer.num_pending_at_start == 0 and consumer.dseq == 0:
                done.set()
            while not done.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(done.wait(), timeout=consumer.heartbeat)
                if not done.is_set() and time.monotonic() - consumer.last_activity > max(
                    3.0, consumer.heartbeat * 3
                ):
                    raise ConnectionLost(f"loading bucket {self._name}: no data or heartbeat from the server")
        finally:
            await consumer.stop()
        return None if gap else rows

    async def _scan(self) -> tuple[list[tuple[int, str, bytes, dict[str, str] | None, int]], int]:
        """The last message of every subject, complete up to the stream's last_seq read first."""
        info = await self._stream_info()
        state = info.get("state", {})
        last_seq = int(state.get("last_seq", 0))
        if int(state.get("messages", 0)) == 0:
            return [], last_seq
        for _attempt in range(5):
            rows = await self._scan_once(last_seq)
            if rows is not None:
                return rows, last_seq
            log.warning("loading bucket %s: consumer sequence gap, restarting the scan", self._name)
        raise ConnectionLost(f"loading bucket {self._name}: messages kept being dropped")

    async def load(self) -> Snapshot:
        """Every live key's latest entry, read with a ``LAST_PER_SUBJECT`` consumer.

        ``Snapshot.revision`` is the stream's last sequence read *before* the consumer started, and
        the scan does not stop before it has seen that sequence (or the consumer reports nothing
        pending), so the snapshot is never partial. Writes racing with the load may already be
        reflected (entries with a revision above ``revision``); ``watch(after=revision)`` replays
        them with the same revisions.
        """
        rows, last_seq = await self._scan()
        prefix_len = len(self._prefix)
        latest: dict[str, Entry] = {}
        for seq, subject, data, headers, _ts in rows:
            key = subject[prefix_len:]
            if headers:
                op, _reason = _entry_kind(headers)
                if op is not Operation.PUT:
                    latest.pop(key, None)
                    continue
            latest[key] = Entry(key, data, seq)
        return Snapshot(list(latest.values()), last_seq)

    # -- watch --------------------------------------------------------------------------------

    def watch(self, after: int) -> NatsWatch:
        """Entries with revision > ``after``, live and in order, resuming across reconnects.

        The consumer starts on ``async with`` or the first ``__anext__``. After a reconnect (or
        a gap, or missed heartbeats) it is recreated from the last delivered revision + 1. Close it with
        ``await it.aclose()`` (or ``async with bucket.watch(n) as it``); :meth:`NatsKVStore.close`
        closes any still open. Raises ``BucketNotFound`` if the bucket is deleted.
        """
        return NatsWatch(self, after, self._heartbeat)

    # -- get ----------------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """The latest entry of ``key`` including delete/purge markers, or ``None`` if never written."""
        check_key(key)
        if self._closed:
            raise store_closed(self._name)
        subject = self._subject(key)
        if self._direct:
            if not self._nc.is_connected:
                raise _disconnected(self._nc, f"get {self._name}/{key}")
            try:
                msg = await _request(
                    self._nc, f"$JS.API.DIRECT.GET.{self._stream}.{subject}", b"", self._timeout
                )
            except nats.errors.NoRespondersError as e:
                raise await self._check_exists(e) from e
            except _CONNECTION_ERRORS as e:
                raise _lost(f"get {self._name}/{key}", e) from e
            hdrs = msg.headers or {}
            status = hdrs.get("Status")
            if status == "404":
                return None
            if status is not None:
                raise StoreError(
                    f"direct get {self._name}/{key}: status {status} {hdrs.get('Description', '')}"
                )
            seq = int(hdrs["Nats-Sequence"])
            op, reason = _entry_kind(hdrs)
            if op is Operation.PUT:
                return Entry(key, msg.data, seq, op, reason)
            return Entry(key, b"", seq, op, reason, _removes(hdrs))
        try:
            resp = await self._api(f"$JS.API.STREAM.MSG.GET.{self._stream}", {"last_by_subj": subject})
        except _ApiError as e:
            if e.code == 404:
                return None
            raise
        m = resp["message"]
        headers = _parse_header_block(base64.b64decode(m["hdrs"])) if m.get("hdrs") else None
        op, reason = _entry_kind(headers)
        data = base64.b64decode(m["data"]) if m.get("data") and op is Operation.PUT else b""
        return Entry(key, data, int(m["seq"]), op, reason, None if op is Operation.PUT else _removes(headers))

    # -- write --------------------------------------------------------------------------------

    async def _ensure_ack_sub(self) -> None:
        async with self._ack_lock:
            if self._closed:
                raise store_closed(self._name)
            if self._ack_sub is not None:
                return
            prefix = self._nc.new_inbox() + "."
            try:
                sub = await self._nc.subscribe(prefix + "*", cb=self._on_ack)
            except _CONNECTION_ERRORS as e:
                raise _lost(f"writing to bucket {self._name}", e) from e
            if self._closed:
                # close() ran while we subscribed: it found no subscription to end.
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                raise store_closed(self._name)
            self._ack_sub = sub
            self._ack_prefix = prefix
            self._batch = self._wire.batch and self._wire.route(self._ack_sub, self._ack_route)

    def _ack_route(self, subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> bool:
        status = headers[9:12].decode() if headers and headers[8] == 32 else None
        self._ack(subject[len(self._ack_prefix) :], data, status)
        return True

    async def _on_ack(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        self._ack(msg.subject[len(self._ack_prefix) :], msg.data, status)

    def _ack(self, token: bytes | str, data: bytes, status: str | None) -> None:
        try:
            entry = self._acks.pop(int(token), None)
        except ValueError:
            return
        if entry is not None:
            rnd, i = entry
            rnd.settle(i, self._ack_result(rnd.ops[i], data, status))

    def _ack_result(self, op: WriteOp, data: bytes, status: str | None) -> WriteResult:
        if status == "503":
            return _NO_RESPONDERS
        try:
            resp = orjson.loads(data)
        except orjson.JSONDecodeError:
            return StoreError(f"{self._name}/{op.key}: unreadable publish ack {data[:100]!r}")
        err = resp.get("error")
        if not err:
            return int(resp["seq"])  # a duplicate ack carries the original sequence
        err_code = int(err.get("err_code", 0))
        desc = str(err.get("description"))
        if err_code == _ERR_WRONG_LAST_SEQUENCE:
            return Conflict(op.key, op.expected_revision)
        if err_code == _ERR_MESSAGE_TOO_LARGE:
            size = len(op.value or b"")
            return PayloadTooLarge(
                f"{self._name}/{op.key}: value is {size} bytes, the bucket refused it: {desc}",
                size=size,
                limit=self.max_value_size,
            )
        if err_code == _ERR_STREAM_NOT_FOUND:
            return bucket_not_found(self._name)
        return StoreError(f"{self._name}/{op.key}: {desc} (err_code {err_code})")

    def _command(self, op: WriteOp, token: int) -> bytes:
        """The ``PUB``/``HPUB`` protocol command ``Client.publish`` would send for ``op``."""
        value = op.value if op.value is not None else b""
        hdr = ""
        if op.msg_id is not None:
            hdr = f"Nats-Msg-Id: {op.msg_id}\r\n"
        if op.expected_revision is not None:
            hdr += f"Nats-Expected-Last-Subject-Sequence: {op.expected_revision}\r\n"
        if op.value is None:
            hdr += "KV-Operation: DEL\r\n"
            if op.removes is not None:
                hdr += f"{REMOVES_HEADER}: {op.removes}\r\n"
        if not hdr:
            return (
                f"PUB {self._prefix}{op.key} {self._ack_prefix}{token} {len(value)}\r\n".encode()
                + value
                + b"\r\n"
            )
        block = f"NATS/1.0\r\n{hdr}\r\n".encode()
        sizes = f"{len(block)} {len(block) + len(value)}"
        return (
            f"HPUB {self._prefix}{op.key} {self._ack_prefix}{token} {sizes}\r\n".encode()
            + block
            + value
            + b"\r\n"
        )

    async def _publish(self, op: WriteOp, token: int) -> None:
        """``op`` through nats-py's public ``publish`` (where the batch shortcut is unavailable)."""
        headers: dict[str, str] = {}
        if op.msg_id is not None:
            headers["Nats-Msg-Id"] = op.msg_id
        if op.expected_revision is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(op.expected_revision)
        if op.value is None:
            headers["KV-Operation"] = "DEL"
            if op.removes is not None:
                headers[REMOVES_HEADER] = str(op.removes)
        await self._nc.publish(
            self._prefix + op.key,
            op.value if op.value is not None else b"",
            reply=f"{self._ack_prefix}{token}",
            headers=headers or None,
        )

    async def _drain(self, rnd: _Round, sent: deque[tuple[float, int, int, int]], level: int) -> None:
        """Wait until at most ``level`` of ``rnd``'s publishes await their ack; a publish whose
        ack is later than the timeout, or that was sent on a connection lost since (its ack can
        never come: the client has reconnected), is settled as ``ConnectionLost`` (it may still
        have landed; the engine retries it)."""
        loop = asyncio.get_running_loop()
        results = rnd.results
        stats = self._nc.stats
        while rnd.outstanding > level:
            while sent and results[sent[0][2]] is not None:
                sent.popleft()
            if not sent:  # cannot happen: every unsettled publish is in ``sent``
                raise AssertionError("write pipeline lost track of a publish")
            deadline, token, i, epoch = sent[0]
            now = loop.time()
            if now >= deadline or epoch != stats["reconnects"]:
                sent.popleft()
                self._acks.pop(token, None)
                why = "no publish ack" if now >= deadline else "no publish ack before the connection was lost"
                rnd.settle(i, _lost(f"{self._name}/{rnd.ops[i].key}: {why}", nats.errors.TimeoutError()))
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            rnd.waiter, rnd.level = waiter, level
            # Woken now and then to notice a reconnect: without it a flush in progress when the
            # server restarted would sit out the whole timeout.
            timer = loop.call_at(min(deadline, now + _RECONNECT_CHECK), _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                rnd.waiter = None

    def _closed_result(self, op: WriteOp) -> StoreError:
        """A write's result after close(): what is wrong with the op itself first, as before it."""
        return check_op(self._name, op, self.max_value_size) or store_closed(self._name, op.key)

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """Publish ``ops`` pipelined (up to ``max_inflight`` unacknowledged), one result per op.

        Results: the new revision (a duplicate ``msg_id`` gives the original one), ``Conflict``
        for a failed compare-and-set, or the ``StoreError`` for that op (``InvalidKey``,
        ``PayloadTooLarge``, ``BucketNotFound``, ``ConnectionLost`` when no ack arrived within the
        timeout — the write may still have been applied; retry with the same ``msg_id``).
        Never raises for a per-op failure and never waits longer than the timeout per op.
        """
        if not ops:
            return []
        if self._ack_sub is None or self._closed:
            try:
                await self._ensure_ack_sub()
            except (ConnectionLost, ConnectionClosed) as e:
                if self._closed:
                    return [self._closed_result(op) for op in ops]
                return [e] * len(ops)
        nc = self._nc
        loop = asyncio.get_running_loop()
        rnd = _Round(ops)
        results = rnd.results
        acks = self._acks
        # In publish order; acks of one stream come back in order, so the head has the earliest
        # deadline and waiting on it alone bounds every op by the timeout.
        sent: deque[tuple[float, int, int, int]] = deque()
        window = self._max_inflight
        n = len(ops)
        i = 0
        try:
            while i < n:
                if rnd.outstanding >= window:
                    await self._drain(rnd, sent, window // 2)
                # One batch: as many ops as the window has room for (at most _BATCH).
                room = min(window - rnd.outstanding, _BATCH)
                commands: list[bytes] = []
                tokens: list[tuple[int, int]] = []
                size = 0
                deadline = loop.time() + self._timeout
                epoch = nc.stats["reconnects"]
                while i < n and len(tokens) < room:
                    op = ops[i]
                    bad = check_op(self._name, op, self.max_value_size)
                    if bad is None and self._closed:
                        bad = store_closed(self._name, op.key)
                    elif bad is None and (not nc.is_connected or nc.is_draining_pubs):
                        # nats-py would buffer the publish until a reconnect and we would wait the
                        # full timeout for an ack; fail now, the engine retries (same msg_id).
                        bad = _disconnected(nc, f"{self._name}/{op.key}")
                    if bad is not None:
                        results[i] = bad
                        i += 1
                        continue
                    token = next(self._ack_ids)
                    acks[token] = (rnd, i)
                    rnd.outstanding += 1
                    if self._batch:
                        commands.append(self._command(op, token))
                        size += len(op.value or b"")
                        tokens.append((token, i))
                    else:
                        try:
                            await self._publish(op, token)
                        except _PUBLISH_ERRORS as e:
                            acks.pop(token, None)
                            rnd.settle(i, _lost(f"{self._name}/{op.key}: publish failed", e))
                            i += 1
                            continue
                        except BaseException:
                            acks.pop(token, None)  # cancelled: not in ``sent`` yet, so forget it here
                            raise
                        tokens.append((token, i))
                    sent.append((deadline, token, i, epoch))
                    i += 1
                if commands:
                    try:
                        await self._wire.send(commands, len(commands), size)
                    except _PUBLISH_ERRORS as e:
                        for token, j in tokens:
                            acks.pop(token, None)
                            rnd.settle(j, _lost(f"{self._name}/{ops[j].key}: publish failed", e))
            await self._drain(rnd, sent, 0)
        finally:
            # Cancelled midway: forget our tokens so late acks are dropped, not leaked.
            for _d, token, _i, _e in sent:
                acks.pop(token, None)

        if any(r is _NO_RESPONDERS for r in results):
            # No responders on a KV subject: the stream is gone, or JetStream is not ready.
            gone = await self._check_exists(nats.errors.NoRespondersError())
            for j, r in enumerate(results):
                if r is _NO_RESPONDERS:
                    results[j] = gone
        return [r if r is not None else StoreError("write result missing") for r in results]

    # -- housekeeping -------------------------------------------------------------------------

    async def purge_deletes(self, older_than: float = 30 * 60) -> None:
        """Remove delete/purge markers older than ``older_than`` seconds, and what they hide.

        Recent markers are kept so a watcher that is briefly behind still sees the deletion.
        A newer write racing with this is never removed (the purge stops below the marker's
        revision + 1). After this, the key reads as never written (``expected_revision=0``).
        """
        rows, _ = await self._scan()
        cutoff_ns = time.time_ns() - int(older_than * 1e9)
        for seq, subject, _data, headers, ts in rows:
            if not headers or _entry_kind(headers)[0] is Operation.PUT or ts > cutoff_ns:
                continue
            await self._api(f"$JS.API.STREAM.PURGE.{self._stream}", {"filter": subject, "seq": seq + 1})

    async def close(self) -> None:
        """Stop this bucket's watches (they end with ``ConnectionClosed``) and its ack subscription.
        Final: every later call fails with ``ConnectionClosed`` and starts nothing (writes and
        watches racing with this end so too, and leave no subscription or task behind)."""
        self._closed = True
        for w in list(self._watches):
            await w.aclose(store_closed(self._name))
        sub, self._ack_sub = self._ack_sub, None
        if sub is not None:
            self._wire.unroute(sub)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        acks, self._acks = self._acks, {}
        for rnd, i in acks.values():
            # Sent, so it may have been written; it will never be known here.
            rnd.settle(
                i,
                ConnectionClosed(
                    f"{self._name}/{rnd.ops[i].key}: the store was closed before the write's ack came "
                    "(it may have been written)"
                ),
            )


class _NoResponders(StoreError):
    """Placeholder result until the bucket's existence is checked."""


_NO_RESPONDERS = _NoResponders("no responders")


def _stream_config(name: str, config: BucketConfig) -> dict[str, Any]:
    """The JetStream stream config of a KV bucket, as nats.go and nats-py create it (with direct gets).
    ``config`` checked its values when it was made (``BucketConfig``)."""
    dup = _DUPLICATE_WINDOW_NS
    max_age = 0
    if config.ttl:
        max_age = int(config.ttl * 1e9)
        dup = min(dup, max_age)
    cfg: dict[str, Any] = {
        "name": f"KV_{name}",
        "subjects": [f"$KV.{name}.>"],
        "retention": "limits",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": max_age,
        "max_msgs_per_subject": config.history,
        # Room for our headers on top of the largest value: the server counts both.
        "max_msg_size": config.max_value_size + HEADER_ROOM if config.max_value_size else -1,
        "storage": config.storage,
        "discard": "new",
        "num_replicas": config.replicas,
        "duplicate_window": dup,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "deny_purge": False,
        "allow_direct": True,
    }
    if max_age:
        # Without this an expired entry just vanishes and running nodes keep the document forever:
        # the server writes a delete marker (Nats-Marker-Reason: MaxAge) that their watch applies.
        cfg["allow_msg_ttl"] = True
        cfg["subject_delete_marker_ttl"] = max(max_age, 1_000_000_000)
    if config.description:
        cfg["description"] = config.description
    # Escape hatch: raw JetStream stream config fields (e.g. "max_bytes", "placement").
    cfg.update(config.extra)
    return cfg


_COMPARED = ("max_msgs_per_subject", "max_msg_size", "storage", "num_replicas", "max_age", "allow_direct")


class NatsKVStore:
    """A :class:`~brainless_odm.store.base.KVStore` on NATS JetStream Key/Value.

    ``nc`` is a connected nats-py client; the store never closes it. ``namespace`` scopes
    :meth:`list_buckets` to buckets named ``{namespace}-...``. ``timeout`` bounds every server
    round trip (API calls, publish acks); ``max_inflight`` is how many unacknowledged publishes a
    write keeps in flight; ``heartbeat`` is the idle heartbeat of watch consumers (a dead consumer
    is replaced after three missed heartbeats, and right after a reconnect).
    """

    def __init__(
        self,
        nc: Client,
        *,
        namespace: str,
        timeout: float = 5.0,
        max_inflight: int = 2048,
        heartbeat: float = 1.0,
    ) -> None:
        self._nc = nc
        self.namespace = namespace
        self._timeout = timeout
        self._max_inflight = max_inflight
        self._heartbeat = heartbeat
        self._buckets: list[NatsBucket] = []
        self._closed = False

    async def open_bucket(self, name: str, config: BucketConfig) -> NatsBucket:
        """Open bucket ``name`` (already namespaced), creating it with ``config`` where missing.

        An existing bucket is used as it is; where its settings differ from ``config`` a warning
        is logged (changing a bucket is an operator's decision, not a side effect of starting).
        """
        check_bucket_name(name)
        if self._closed:
            raise store_closed(name)
        wanted = _stream_config(name, config)
        stream = wanted["name"]
        try:
            info = await _api(self._nc, f"$JS.API.STREAM.INFO.{stream}", None, self._timeout)
        except _ApiError as e:
            if e.err_code != _ERR_STREAM_NOT_FOUND:
                raise
            try:
                info = await _api(self._nc, f"$JS.API.STREAM.CREATE.{stream}", wanted, self._timeout)
            except _ApiError as e2:
                if e2.err_code != _ERR_STREAM_NAME_IN_USE:
                    # Settings this server refuses, such as replicas > 1 on a single server.
                    raise StoreError(
                        f"bucket {name!r}: the server refused to create it with history={config.history}, "
                        f"replicas={config.replicas}, storage={config.storage!r}, "
                        f"max_value_size={config.max_value_size}, ttl={config.ttl}: {e2.description} "
                        f"(err_code {e2.err_code})"
                    ) from e2
                # Someone else created it between our INFO and CREATE: use theirs.
                info = await _api(self._nc, f"$JS.API.STREAM.INFO.{stream}", None, self._timeout)
        have = cast("dict[str, Any]", info.get("config", {}))
        diffs = [f"{k}={have.get(k)!r} (wanted {wanted[k]!r})" for k in _COMPARED if have.get(k) != wanted[k]]
        if diffs:
            log.warning(
                "bucket %s exists with different settings, using it as it is: %s", name, ", ".join(diffs)
            )
        if self._closed:  # while we asked the server: close() would not end this bucket
            raise store_closed(name)
        bucket = NatsBucket(
            self._nc,
            name,
            stream_config=have,
            timeout=self._timeout,
            max_inflight=self._max_inflight,
            heartbeat=self._heartbeat,
        )
        self._buckets.append(bucket)
        return bucket

    async def delete_bucket(self, name: str) -> bool:
        """Delete bucket ``name`` and all its data. ``False`` if it did not exist; ``InvalidKey``
        for a name no bucket can have (it would be sent in a subject)."""
        check_bucket_name(name)
        if self._closed:
            raise store_closed(name)
        try:
            await _api(self._nc, f"$JS.API.STREAM.DELETE.KV_{name}", None, self._timeout)
        except _ApiError as e:
            if e.err_code == _ERR_STREAM_NOT_FOUND:
                return False
            raise
        return True

    async def list_buckets(self) -> list[str]:
        """Names of the buckets of this namespace (``{namespace}-*``), sorted."""
        if self._closed:
            raise store_closed()
        prefix = f"KV_{self.namespace}-"
        names: list[str] = []
        offset = 0
        while True:
            resp = await _api(self._nc, "$JS.API.STREAM.NAMES", {"offset": offset}, self._timeout)
            page = resp.get("streams") or []
            # A collection name has no "-": "app-staging-call" belongs to namespace "app-staging".
            names.extend(s[3:] for s in page if s.startswith(prefix) and "-" not in s[len(prefix) :])
            offset += len(page)
            if not page or offset >= int(resp.get("total", 0)):
                break
        return sorted(names)

    async def close(self) -> None:
        """Stop every watch and ack subscription this store opened. The connection stays open.
        Final: the store and its buckets fail every later call with ``ConnectionClosed``."""
        self._closed = True
        buckets, self._buckets = self._buckets, []
        for b in buckets:
            await b.close()


def _quiet_error_cb_factory(url: str) -> Callable[[Exception], Any]:
    async def error_cb(e: Exception) -> None:
        # nats-py's default logs every reconnect attempt with a traceback at ERROR.
        log.warning("NATS %s: %s: %s", url, type(e).__name__, e)

    return error_cb


def _is_auth_refusal(e: BaseException) -> bool:
    """The server refused the client's credentials (nats-py: ``AuthorizationError``, or a plain
    ``nats.errors.Error`` carrying the server's ``-ERR 'Authorization Violation'``)."""
    if isinstance(e, nats.errors.AuthorizationError):
        return True
    text = str(e).lower()
    return isinstance(e, nats.errors.Error) and ("authorization" in text or "authentication" in text)


def refused_credentials(e: BaseException) -> bool:
    """True if ``e`` (a :class:`ConnectionLost` from :func:`connect`) is the server refusing the
    credentials rather than no server answering."""
    cause = e.__cause__
    return cause is not None and _is_auth_refusal(cause)


_NKEYS_HINT = 'pip install "brainless-odm[nkeys]"'


def _require_nkeys() -> None:
    """nats-py signs with the ``nkeys`` package for credentials and NKEY seeds, and imports it only
    once it is connecting (a bare ModuleNotFoundError from deep inside nats-py). Say so up front."""
    try:
        import nkeys  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"NATS credentials (.creds) and NKEY seeds need the nkeys package: {_NKEYS_HINT}",
            name="nkeys",
        ) from e


async def connect(
    url: str | list[str] = "nats://127.0.0.1:4222", *, timeout: float = 2.0, **options: Any
) -> Client:
    """Connect to NATS, failing within seconds with :class:`ConnectionLost` if no server answers.

    nats-py's own defaults retry a dead server for about two minutes. Here each server is tried
    at most twice (``connect_timeout=timeout``), and the whole attempt is bounded by roughly
    ``2 * timeout`` per server. Once connected, the client reconnects forever by default
    (``max_reconnect_attempts=-1``, ``reconnect_time_wait=0.5``) so a running application
    survives a server restart. Every other nats-py ``connect`` option (``user``, ``password``,
    ``token``, ``user_credentials``, ``tls``, callbacks...) is passed through.

    A server that answers but refuses the credentials is a :class:`ConnectionLost` that says so,
    with the server's error as ``__cause__`` (:func:`refused_credentials` tells the two apart).

    ``user_credentials`` and the ``nkeys_seed`` options need the ``nkeys`` package
    (``pip install "brainless-odm[nkeys]"``); without it this raises :class:`ImportError` saying so.
    """
    servers = [url] if isinstance(url, str) else list(url)
    shown = ", ".join(servers)
    if any(options.get(k) is not None for k in ("user_credentials", "nkeys_seed", "nkeys_seed_str")):
        _require_nkeys()
    after_reconnect_attempts = options.pop("max_reconnect_attempts", -1)
    after_allow_reconnect = options.pop("allow_reconnect", True)
    after_time_wait = options.pop("reconnect_time_wait", 0.5)
    error_cb = options.pop("error_cb", None) or _quiet_error_cb_factory(shown)
    refusals: list[Exception] = []
    connecting = True

    async def recording_error_cb(e: Exception) -> None:
        # nats-py reports a refused login only here: connect() itself ends in NoServersError, which
        # would read as a dead server. Record refusals while connecting only.
        if connecting and _is_auth_refusal(e):
            refusals.append(e)
        await error_cb(e)

    options["error_cb"] = recording_error_cb
    options.setdefault("ping_interval", 10)
    options.setdefault("max_outstanding_pings", 3)
    nc = Client()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers,
                connect_timeout=timeout,  # type: ignore[arg-type]  # nats-py annotates int, uses float
                allow_reconnect=True,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,  # type: ignore[arg-type]
                **options,
            ),
            timeout=2 * timeout * len(servers) + 1.0,
        )
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as e:
        connecting = False
        with contextlib.suppress(Exception):
            await nc.close()
        if refusals or _is_auth_refusal(e):
            refusal = refusals[-1] if refusals else e
            raise ConnectionLost(
                f"NATS at {shown} refused the connection: {refusal} "
                "(wrong or missing user/password, token or credentials?)"
            ) from refusal
        raise ConnectionLost(
            f"cannot connect to NATS at {shown} within {timeout:g}s per attempt ({type(e).__name__}: {e})"
        ) from e
    connecting = False
    nc.options["max_reconnect_attempts"] = after_reconnect_attempts
    nc.options["allow_reconnect"] = after_allow_reconnect
    nc.options["reconnect_time_wait"] = after_time_wait
    return nc
