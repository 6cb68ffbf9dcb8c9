"""Documents and fields: markers, nested models, dirtiness, validation and bucket options."""

import asyncio
from datetime import datetime, timezone
from typing import Annotated

import pydantic
from pydantic import BaseModel, Field

from brainless_odm import Database, Document, DocumentConfig, Indexed, Unique, UniqueViolation


# --8<-- [start:nested]
class Address(BaseModel):
    street: str = ""
    city: str | None = None


class Contact(BaseModel):
    number: str
    address: Address = Address()


# --8<-- [end:nested]


# --8<-- [start:abstract]
class Stamped(Document, abstract=True):
    """Not a collection: only a base for the classes below."""

    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


# --8<-- [end:abstract]


# --8<-- [start:agent]
class Agent(Stamped):
    model_config = DocumentConfig(
        collection="agents",  # the default would be "agent"
        bucket_history=5,  # keep the last 5 revisions of each agent in JetStream
        bucket_storage="file",
    )

    login: Annotated[str, Unique()]  # one agent per login
    email: Annotated[str | None, Unique()] = None  # unique too, but None may repeat
    team: Annotated[str, Indexed()]  # equality, `in` and ranges answered from an index
    skills: list[str] = []
    contact: Contact | None = None  # nested models are plain Pydantic models
    settings: dict[str, int] = {}


# --8<-- [end:agent]


async def main() -> None:
    async with Database(None, location="prague-1", documents=[Agent]) as db:
        # --8<-- [start:add]
        alice = Agent.objects.add(login="alice", team="support")  # keyword fields
        bob = Agent.objects.add({"login": "bob", "team": "sales"})  # a dict
        carol = Agent.objects.add(Agent(login="carol", team="sales"), team="support")  # a model + overrides
        # --8<-- [end:add]
        print(Agent.model_config.get("collection"), len(Agent.objects))

        # --8<-- [start:dirty]
        await db.flush()
        assert not alice.is_dirty

        alice.team = "sales"  # assignment
        alice.contact = Contact(number="+420 111")
        await db.flush()

        alice.contact.address.city = "Brno"  # assignment inside a nested model
        alice.skills.append("french")  # in-place mutation of a list
        alice.settings["max_calls"] = 3  # ... and of a dict
        print(sorted(alice.dirty_fields))  # ['contact', 'settings', 'skills']

        await db.flush()
        alice.team = "sales"  # an equal value is no change
        alice.skills.sort()  # nor is an in-place change that leaves an equal value
        assert not alice.is_dirty
        # --8<-- [end:dirty]

        # --8<-- [start:validation]
        try:
            bob.skills = "everything"  # type: ignore[assignment]
        except pydantic.ValidationError as exc:
            print("rejected:", exc.errors()[0]["type"])
        assert bob.skills == []  # the old value stays, and bob is not dirty because of it
        # --8<-- [end:validation]

        # --8<-- [start:unique]
        try:
            Agent.objects.add(login="alice", team="sales")
        except UniqueViolation as exc:
            print(f"taken: {exc.field}={exc.value!r}")

        try:
            carol.login = "bob"  # enforced on assignment too
        except UniqueViolation as exc:
            print(f"still {carol.login}: {exc.value!r} is held by {exc.holder}")
        assert carol.login == "carol"
        # --8<-- [end:unique]

        # --8<-- [start:dict]
        assert alice.uuid is not None
        assert Agent.objects[alice.uuid] is alice
        assert alice in Agent.objects
        del Agent.objects[bob]  # or Agent.objects.delete(bob), or await bob.delete()
        await carol.delete()
        print([a.login for a in Agent.objects])  # ['alice']

        try:
            await Agent.objects.get(login="bob")
        except Agent.DoesNotExist:
            print("bob is gone")
        # --8<-- [end:dict]


if __name__ == "__main__":
    asyncio.run(main())
