"""brainless_odm.testing: real nats-server processes for tests and development."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from brainless_odm.store.base import BucketConfig, WriteOp
from brainless_odm.store.nats import NatsKVStore, connect
from brainless_odm.testing import NatsServer, NatsServerError, free_port, local_server

pytestmark = pytest.mark.integration


def _is_dir(path: str) -> bool:
    return Path(path).is_dir()


def _exists(path: str) -> bool:
    return Path(path).exists()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    return True


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


async def test_start_stop_removes_process_and_store() -> None:
    server = NatsServer()
    await server.start()
    pid, store_dir = server.pid, server.store_dir
    assert server.running
    assert pid is not None
    assert store_dir is not None
    assert _is_dir(store_dir)
    assert server.url == f"nats://127.0.0.1:{server.port}"
    nc = await connect(server.url)
    try:
        store = NatsKVStore(nc, namespace="helper")
        await store.open_bucket("helper-x", BucketConfig())  # JetStream is ready
    finally:
        await nc.close()
    await server.stop()
    assert not server.running
    assert server.pid is None
    assert not _pid_alive(pid)
    assert not _exists(store_dir)


async def test_restart_keeps_port_store_and_data() -> None:
    async with NatsServer() as server:
        port, store_dir, pid = server.port, server.store_dir, server.pid
        nc = await connect(server.url)
        bucket = await NatsKVStore(nc, namespace="h").open_bucket("h-x", BucketConfig())
        assert await bucket.write([WriteOp("k", b"v")]) == [1]
        await nc.close()

        await server.restart()
        assert server.port == port
        assert server.store_dir == store_dir
        assert server.pid != pid
        assert pid is not None
        assert not _pid_alive(pid)

        nc = await connect(server.url)
        try:
            bucket = await NatsKVStore(nc, namespace="h").open_bucket("h-x", BucketConfig())
            entry = await bucket.get("k")
            assert entry is not None
            assert entry.value == b"v"
        finally:
            await nc.close()


async def test_given_store_dir_is_kept(tmp_path: Path) -> None:
    store = tmp_path / "js"
    async with NatsServer(store_dir=store) as server:
        assert server.store_dir == str(store)
    assert store.is_dir()


async def test_bad_arguments_fail_fast_with_log_tail() -> None:
    server = NatsServer(extra_args=["--definitely-not-a-flag"], start_timeout=5)
    with pytest.raises(NatsServerError, match="exited"):
        await server.start()
    assert not server.running
    await server.stop()


async def test_local_server_context_manager() -> None:
    async with local_server() as server:
        pid = server.pid
        assert server.running
        nc = await connect(server.url)
        await nc.close()
    assert pid is not None
    assert not _pid_alive(pid)
