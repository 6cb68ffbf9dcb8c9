"""Testing an application with the brainless_odm pytest fixtures (registered on install)."""

import asyncio
from typing import Annotated

import pytest

from brainless_odm import Database, Document, Indexed, MemoryStore


class Ticket(Document):
    title: str
    state: Annotated[str, Indexed()] = "open"


def close_all(db: Database) -> int:
    """The application code under test."""
    n = 0
    for ticket in Ticket.objects.using(db):
        if ticket.state != "closed":
            ticket.state = "closed"
            n += 1
    return n


# --8<-- [start:memory]
async def test_close_all_in_memory() -> None:
    async with Database(None, documents=[Ticket]) as db:
        Ticket.objects.using(db).add(title="a")
        Ticket.objects.using(db).add(title="b", state="closed")
        assert close_all(db) == 1
        assert await Ticket.objects.using(db).filter(state="open").count() == 0


# --8<-- [end:memory]


# --8<-- [start:two_nodes]
async def test_a_change_reaches_the_other_node() -> None:
    store = MemoryStore()
    async with (
        Database(store, location="a", documents=[Ticket]) as a,
        Database(store, location="b", documents=[Ticket]) as b,
    ):
        ticket = Ticket.objects.using(a).add(title="shared")
        await a.flush()
        for _ in range(500):  # poll with a deadline, never a bare sleep
            if ticket.uuid in Ticket.objects.using(b):
                break
            await asyncio.sleep(0.01)
        assert Ticket.objects.using(b)[ticket.uuid].title == "shared"


# --8<-- [end:two_nodes]


# --8<-- [start:nats]
@pytest.mark.integration
async def test_persisted_in_nats(nats_client, brainless_namespace) -> None:
    # nats_client: a nats-py client connected to the session's nats-server;
    # brainless_namespace: a fresh namespace for this test, so tests never see each other's data.
    async with Database(nats_client, namespace=brainless_namespace, documents=[Ticket]):
        Ticket.objects.add(title="persisted")

    async with Database(nats_client, namespace=brainless_namespace, documents=[Ticket]):
        assert (await Ticket.objects.get(title="persisted")).state == "open"


# --8<-- [end:nats]
