"""Getting started: define a document, add, query, change and flush, all in memory."""

import asyncio
from typing import Annotated

from pydantic import BaseModel

from brainless_odm import Database, Document, Indexed, Unique


# --8<-- [start:model]
class Caller(BaseModel):
    number: str
    city: str | None = None


class Call(Document):
    channel_id: Annotated[str, Unique()]
    queue_id: Annotated[int, Indexed()]
    state: Annotated[str, Indexed()] = "waiting"
    priority: int = 0
    caller: Caller | None = None
    tags: list[str] = []


# --8<-- [end:model]


async def main() -> None:
    # --8<-- [start:use]
    # None = the in-memory mode: everything works, nothing persists.
    async with Database(None, namespace="app", location="prague-1", documents=[Call]) as db:
        call = Call.objects.add(channel_id="SIP/100", queue_id=5, caller=Caller(number="+420 777"))
        Call.objects.add(channel_id="SIP/101", queue_id=5, priority=3)
        print(call.uuid)  # a UUID1, assigned when added

        waiting = await Call.objects.filter(queue_id=5, state="waiting").order_by("-priority")
        print([c.channel_id for c in waiting])  # ['SIP/101', 'SIP/100']

        call.state = "ringing"  # validated, marked dirty, flushed in the background
        call.tags.append("vip")  # in-place mutation is tracked too
        print(sorted(call.dirty_fields))  # every field: the new document has never been flushed

        written = await db.flush()  # returns when every pending change is stored
        print(f"{written} documents written; dirty now: {call.is_dirty}")

        found = await Call.objects.get(channel_id="SIP/100")
        print(found.state, found.tags)  # ringing ['vip']
    # leaving the block flushed what was pending and stopped the database
    # --8<-- [end:use]
    assert found is call
    assert found.state == "ringing"


if __name__ == "__main__":
    asyncio.run(main())
