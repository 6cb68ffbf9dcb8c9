"""Queries: every lookup, Q objects, ordering, slicing, bulk update and delete."""

import asyncio
from typing import Annotated

from pydantic import BaseModel

from brainless_odm import Database, Document, Indexed, Q, QueryError, Unique


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


def channels(calls: list[Call]) -> list[str]:
    return sorted(c.channel_id for c in calls)


async def main() -> None:
    async with Database(None, documents=[Call]):
        Call.objects.add(
            channel_id="SIP/1", queue_id=1, priority=5, caller=Caller(number="100", city="Prague")
        )
        Call.objects.add(channel_id="SIP/2", queue_id=1, state="ringing", tags=["vip"])
        Call.objects.add(channel_id="SIP/3", queue_id=2, priority=9, caller=Caller(number="300", city="Brno"))
        Call.objects.add(channel_id="PJSIP/4", queue_id=3, state="answered", tags=["vip", "callback"])

        # --8<-- [start:lookups]
        q = Call.objects
        assert channels(await q.filter(state="waiting")) == ["SIP/1", "SIP/3"]  # exact is the default
        assert channels(await q.filter(state__exact="ringing")) == ["SIP/2"]
        assert channels(await q.filter(state__ne="waiting")) == ["PJSIP/4", "SIP/2"]
        assert channels(await q.filter(priority__lt=5)) == ["PJSIP/4", "SIP/2"]
        assert channels(await q.filter(priority__lte=5)) == ["PJSIP/4", "SIP/1", "SIP/2"]
        assert channels(await q.filter(priority__gt=5)) == ["SIP/3"]
        assert channels(await q.filter(priority__gte=5)) == ["SIP/1", "SIP/3"]
        assert channels(await q.filter(queue_id__in=[1, 3])) == ["PJSIP/4", "SIP/1", "SIP/2"]
        assert channels(await q.filter(queue_id__nin={1, 3})) == ["SIP/3"]
        assert channels(await q.filter(channel_id__contains="SIP/")) == ["PJSIP/4", "SIP/1", "SIP/2", "SIP/3"]
        assert channels(await q.filter(tags__contains="callback")) == ["PJSIP/4"]  # member of a list
        assert channels(await q.filter(channel_id__icontains="pjsip")) == ["PJSIP/4"]
        assert channels(await q.filter(channel_id__startswith="SIP/")) == ["SIP/1", "SIP/2", "SIP/3"]
        assert channels(await q.filter(channel_id__endswith="/4")) == ["PJSIP/4"]
        assert channels(await q.filter(caller__isnull=True)) == ["PJSIP/4", "SIP/2"]
        assert channels(await q.filter(caller=None)) == ["PJSIP/4", "SIP/2"]  # same as isnull=True
        assert channels(await q.filter(priority__range=(1, 5))) == ["SIP/1"]  # inclusive
        # --8<-- [end:lookups]

        # --8<-- [start:nested]
        assert channels(await q.filter(caller__city="Prague")) == ["SIP/1"]
        assert channels(await q.filter(caller__city__startswith="Br")) == ["SIP/3"]
        # a comparison through a caller that is None does not match that document, and never raises
        assert channels(await q.filter(caller__number__gt="150")) == ["SIP/3"]
        # --8<-- [end:nested]

        # --8<-- [start:q]
        urgent = await q.filter(Q(state="ringing") | Q(priority__gt=5))
        assert channels(urgent) == ["SIP/2", "SIP/3"]

        not_vip_waiting = await q.filter(Q(state="waiting") & ~Q(tags__contains="vip"))
        assert channels(not_vip_waiting) == ["SIP/1", "SIP/3"]

        # Q objects and keyword lookups mix; keywords are ANDed with the Q objects
        assert channels(await q.filter(Q(queue_id=1) | Q(queue_id=2), priority__gt=0)) == ["SIP/1", "SIP/3"]
        assert channels(await q.exclude(state="waiting")) == ["PJSIP/4", "SIP/2"]
        # --8<-- [end:q]

        # --8<-- [start:order]
        by_priority = await q.order_by("-priority", "channel_id")
        assert [c.channel_id for c in by_priority] == ["SIP/3", "SIP/1", "PJSIP/4", "SIP/2"]

        by_city = await q.order_by("caller__city", "channel_id")  # None sorts first
        assert [c.channel_id for c in by_city] == ["PJSIP/4", "SIP/2", "SIP/3", "SIP/1"]

        page = await q.order_by("channel_id").offset(1).limit(2)  # offset applies before limit
        assert [c.channel_id for c in page] == ["SIP/1", "SIP/2"]
        # --8<-- [end:order]

        # --8<-- [start:terminal]
        waiting = q.filter(state="waiting")  # a QuerySet: immutable, nothing runs yet
        assert await waiting.count() == 2
        assert await waiting.exists()
        top = await waiting.order_by("-priority").first()
        assert top is not None
        assert top.channel_id == "SIP/3"
        assert await q.find(channel_id="nope") is None

        async for call in waiting.order_by("channel_id"):
            print(call.channel_id, call.priority)

        assert await waiting.update(state="ringing") == 2  # validated before any document changes
        assert await q.filter(state="answered").delete() == 1
        assert len(Call.objects) == 3
        # --8<-- [end:terminal]

        # --8<-- [start:errors]
        for bad in ({"colour": "red"}, {"priority__like": 3}, {"priority__gt": "high"}):
            try:
                q.filter(**bad)
            except QueryError as exc:
                print("QueryError:", exc)
        # lookup values are validated against the field type: "5" means 5
        assert channels(await q.filter(priority__gt="5")) == ["SIP/3"]
        # --8<-- [end:errors]


if __name__ == "__main__":
    asyncio.run(main())
