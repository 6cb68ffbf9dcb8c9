"""Dead letters: a stored entry that no longer validates is moved aside; fix it and requeue it."""

import asyncio
import os

import nats
import orjson

from brainless_odm import Database, Document


class Product(Document):
    sku: str
    price: int  # cents


async def main() -> None:
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    nc = await nats.connect(url, connect_timeout=2)
    try:
        async with Database(nc, namespace="shop", documents=[Product]):
            pass  # creates the bucket "shop-product" if it does not exist yet

        # Another program (or an older version of this one) stores a value this class rejects.
        kv = await nc.jetstream().key_value("shop-product")
        await kv.put("legacy-a-1", b'{"sku": "A-1", "price": "12.50 EUR"}')

        # --8<-- [start:list]
        async with Database(nc, namespace="shop", documents=[Product]) as db:
            # the collection loaded anyway; the bad entry was moved to "shop-_dead_letters"
            assert "legacy-a-1" not in Product.objects
            for letter in await db.dead_letters():
                print(f"{letter.collection}/{letter.key} (revision {letter.revision}): {letter.summary}")
                # price: Input should be a valid integer, unable to parse string as an integer
                print("  raw value:", letter.value)
            # --8<-- [end:list]

            # --8<-- [start:requeue]
            [letter] = [dl for dl in await db.dead_letters() if dl.key == "legacy-a-1"]
            fixed = orjson.loads(letter.value)
            fixed["price"] = 1250
            product = await db.requeue_dead_letter(letter, fixed)  # validated, stored, removed
            print("requeued:", product)
            assert await db.dead_letters() == []
            # --8<-- [end:requeue]
            await product.delete()
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
