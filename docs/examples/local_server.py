"""A throw-away JetStream server for scripts and notebooks (needs brainless-odm[server])."""

import asyncio

import nats

from brainless_odm import Database, Document
from brainless_odm.testing import NatsServer


class Note(Document):
    text: str


async def main() -> None:
    # --8<-- [start:server]
    async with NatsServer() as server:  # free port on 127.0.0.1, temporary store, JetStream on
        nc = await nats.connect(server.url)
        async with Database(nc, namespace="scratch", documents=[Note]):
            Note.objects.add(text="stored in a real JetStream bucket")
        await nc.close()
    # the server is stopped and its temporary store removed
    # --8<-- [end:server]
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
