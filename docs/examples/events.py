"""Events: callbacks for changes that arrive from other nodes (and, with local=True, our own)."""

import asyncio
from collections.abc import Callable
from typing import Annotated

from brainless_odm import Database, Document, Indexed, MemoryStore


class Order(Document):
    number: str
    state: Annotated[str, Indexed()] = "new"
    total: float = 0.0


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the event did not arrive")
        await asyncio.sleep(0.01)


async def main() -> None:
    store = MemoryStore()
    async with (
        Database(store, location="shop", documents=[Order]) as shop,
        Database(store, location="warehouse", documents=[Order]) as warehouse,
    ):
        seen: list[str] = []
        done = asyncio.Event()

        # --8<-- [start:callbacks]
        def on_change(old: Order | None, new: Order) -> None:
            if old is None:
                seen.append(f"new order {new.number}")
            else:
                seen.append(f"order {new.number} changed")

        async def on_state(doc: Order, field: str, old_value: object, new_value: object) -> None:
            seen.append(f"{doc.number}: {field} {old_value} -> {new_value}")  # a coroutine works too

        def on_delete(doc: Order) -> None:
            seen.append(f"order {doc.number} deleted")
            done.set()

        orders = Order.objects.using(warehouse)
        orders.on_change(on_change)  # remote changes only (the default)
        orders.on_field_change("state", on_state)
        orders.on_delete(on_delete)
        # --8<-- [end:callbacks]

        # --8<-- [start:local]
        mine: list[str] = []
        orders.on_change(lambda old, new: mine.append(new.number), local=True)
        orders.add(number="W-1")  # the warehouse's own change: only the local=True callback fires
        # --8<-- [end:local]

        # --8<-- [start:remote]
        order = Order.objects.using(shop).add(number="S-1", total=99.0)
        await shop.flush()
        await eventually(lambda: "new order S-1" in seen)  # applied by the warehouse's watch
        order.state = "paid"
        await shop.flush()
        await eventually(lambda: "S-1: state new -> paid" in seen)
        await order.delete()
        await shop.flush()
        await asyncio.wait_for(done.wait(), timeout=5)
        # --8<-- [end:remote]

        print("\n".join(seen))
        assert seen[0] == "new order S-1"
        assert "S-1: state new -> paid" in seen
        assert seen[-1] == "order S-1 deleted"
        assert "W-1" in mine


if __name__ == "__main__":
    asyncio.run(main())
