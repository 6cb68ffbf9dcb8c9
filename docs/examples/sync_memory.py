"""Two nodes in one process: Databases sharing a MemoryStore sync exactly like nodes on NATS."""

import asyncio
from collections.abc import Callable
from typing import Annotated

from brainless_odm import Database, Document, Indexed, MemoryStore


class Ticket(Document):
    title: str
    state: Annotated[str, Indexed()] = "open"
    priority: int = 0
    assignee: str | None = None


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds: changes reach the other node asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the nodes did not converge")
        await asyncio.sleep(0.01)


async def main() -> None:
    # --8<-- [start:nodes]
    store = MemoryStore()  # one "cluster", in memory
    async with (
        Database(store, namespace="helpdesk", location="prague", documents=[Ticket]) as prague,
        Database(store, namespace="helpdesk", location="brno", documents=[Ticket]) as brno,
    ):
        at_prague = Ticket.objects.using(prague)
        at_brno = Ticket.objects.using(brno)

        ticket = at_prague.add(title="Printer on fire")
        await prague.flush()  # acknowledged by the store; brno's watch applies it
        assert ticket.uuid is not None
        await eventually(lambda: ticket.uuid in at_brno)
        # --8<-- [end:nodes]

        # --8<-- [start:merge]
        here = at_prague[ticket.uuid]
        there = at_brno[ticket.uuid]
        here.state = "in_progress"  # prague edits one field...
        there.assignee = "dana"  # ...brno another, at the same time
        there.priority = 2
        await asyncio.gather(prague.flush(), brno.flush())

        def merged(t: Ticket) -> bool:
            return (t.state, t.assignee, t.priority) == ("in_progress", "dana", 2)

        await eventually(lambda: merged(here) and merged(there))
        print("both nodes:", here.model_dump(include={"state", "assignee", "priority"}))
        # --8<-- [end:merge]

        # --8<-- [start:same_field]
        here.priority = 5
        there.priority = 7  # same field: the write that reaches the store last wins everywhere
        await asyncio.gather(prague.flush(), brno.flush())
        await eventually(lambda: here.priority == there.priority and not here.is_dirty and not there.is_dirty)
        print("converged on priority", here.priority)
        # --8<-- [end:same_field]

        # --8<-- [start:delete]
        there.title = "Printer on fire (again)"
        await here.delete()  # a delete wins over concurrent edits
        await asyncio.gather(prague.flush(), brno.flush())
        await eventually(lambda: ticket.uuid not in at_brno and ticket.uuid not in at_prague)
        # --8<-- [end:delete]
        print("deleted on both nodes")


if __name__ == "__main__":
    asyncio.run(main())
