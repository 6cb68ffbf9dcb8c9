"""stop() giving up on a real nats-server that is away, while another task awaits a flush."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sync_helpers import Call, DbFactory

from brainless_odm import DatabaseError, FlushError
from brainless_odm.testing import NatsServer

pytestmark = pytest.mark.integration


async def test_a_flush_awaited_when_stop_gives_up_ends_and_writes_nothing_later(
    make_db: DbFactory, tmp_path: Path
) -> None:
    """The application's flush went on retrying on the stopped database (re-subscribing the
    closed bucket's ack inbox), and wrote, once the server was back, the change stop() had
    reported unwritten."""
    server = NatsServer(store_dir=tmp_path / "js")
    await server.start()
    try:
        db = await make_db(url=server.url, location="a", flush_interval=60)
        doc = Call.objects.using(db).add(channel_id="c-1")
        await db.flush()
        await server.stop()  # our own store_dir: kept
        doc.priority = 7
        user = asyncio.create_task(db.flush())  # a request handler awaiting its write, say
        await asyncio.sleep(0.3)
        with pytest.raises(FlushError) as stopped:
            await db.stop(timeout=1)
        assert [(c, k) for c, k, _ in stopped.value.failures] == [("call", doc.uuid)]
        done, _ = await asyncio.wait([user], timeout=2)
        assert done, "the application's flush outlived stop()"
        with pytest.raises(FlushError) as flushed:
            user.result()
        assert [(c, k) for c, k, _ in flushed.value.failures] == [("call", doc.uuid)]
        assert isinstance(flushed.value.failures[0][2], DatabaseError)

        await server.start()
        await asyncio.sleep(1.5)  # time for a flush still retrying to reconnect and write
        fresh = await make_db(url=server.url, location="fresh")
        assert [d.priority for d in Call.objects.using(fresh)] == [0]
    finally:
        await server.stop()
