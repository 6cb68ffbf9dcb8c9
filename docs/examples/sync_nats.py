"""Two nodes on a real NATS server: separate connections, one bucket, edits merged field by field."""

import asyncio
import os
from collections.abc import Callable
from typing import Annotated

import nats

from brainless_odm import Database, Document, Indexed


class Ticket(Document):
    title: str
    state: Annotated[str, Indexed()] = "open"
    priority: int = 0
    assignee: str | None = None


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the nodes did not converge")
        await asyncio.sleep(0.01)


async def main() -> None:
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    # --8<-- [start:nodes]
    nc_prague = await nats.connect(url, connect_timeout=2)
    nc_brno = await nats.connect(url, connect_timeout=2)
    prague = Database(nc_prague, namespace="helpdesk", location="prague", documents=[Ticket])
    brno = Database(nc_brno, namespace="helpdesk", location="brno", documents=[Ticket])
    await prague.start()
    await brno.start()
    # --8<-- [end:nodes]
    try:
        at_prague, at_brno = Ticket.objects.using(prague), Ticket.objects.using(brno)
        ticket = at_prague.add(title="VPN is down")
        await prague.flush()
        assert ticket.uuid is not None
        await eventually(lambda: ticket.uuid in at_brno)

        # --8<-- [start:merge]
        here, there = at_prague[ticket.uuid], at_brno[ticket.uuid]
        here.state = "in_progress"
        there.assignee = "dana"
        await asyncio.gather(prague.flush(), brno.flush())  # both compare-and-set on the same revision
        await eventually(lambda: here.assignee == "dana" and there.state == "in_progress")
        # --8<-- [end:merge]
        print(f"prague sees {here.state}/{here.assignee}, brno sees {there.state}/{there.assignee}")

        await here.delete()
        await prague.flush()
        await eventually(lambda: ticket.uuid not in at_brno)
    finally:
        await prague.stop()
        await brno.stop()
        await nc_prague.close()
        await nc_brno.close()


if __name__ == "__main__":
    asyncio.run(main())
