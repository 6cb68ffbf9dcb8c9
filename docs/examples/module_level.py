"""The module-level shortcut: one default Database, set up and stopped by brainless_odm itself."""

import asyncio

import brainless_odm
from brainless_odm import Document


class Setting(Document):
    name: str
    value: str


async def main() -> None:
    # --8<-- [start:setup]
    nc = None  # or: await nats.connect("nats://127.0.0.1:4222")
    await brainless_odm.setup(nc, namespace="app", location="prague-1", documents=[Setting])
    try:
        Setting.objects.add(name="greeting", value="ahoj")
        print(await brainless_odm.flush(), "document(s) written")
        assert (await Setting.objects.get(name="greeting")).value == "ahoj"
    finally:
        await brainless_odm.stop()
    # --8<-- [end:setup]


if __name__ == "__main__":
    asyncio.run(main())
