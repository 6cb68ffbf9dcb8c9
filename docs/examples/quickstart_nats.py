"""Getting started on NATS: the same model, persisted in JetStream KV. Run it twice."""

import asyncio
import os
from typing import Annotated

import nats

from brainless_odm import Database, Document, Indexed, Unique


class Visit(Document):
    page: Annotated[str, Unique()]
    section: Annotated[str, Indexed()] = "docs"
    count: int = 0


async def main() -> None:
    # --8<-- [start:connect]
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=3)
    try:
        async with Database(nc, namespace="quickstart", location="laptop", documents=[Visit]):
            # the bucket "quickstart-visit" is created on first start and loaded on every start
            visit = await Visit.objects.find(page="/getting-started")
            if visit is None:
                visit = Visit.objects.add(page="/getting-started")
            visit.count += 1
            print(f"{visit.page} visited {visit.count} time(s)")  # 1, then 2 on the next run...
        # leaving the block flushed the change to JetStream before stopping
    finally:
        await nc.close()
    # --8<-- [end:connect]


if __name__ == "__main__":
    asyncio.run(main())
