"""Errors: a flush that could not write one document writes the others and says which failed."""

import asyncio
import gc
import logging

from brainless_odm import Database, Document, DocumentConfig, FlushError, PayloadTooLarge

log = logging.getLogger("app")


class Note(Document):
    model_config = DocumentConfig(bucket_max_value_size=256)

    text: str


async def main() -> None:
    async with Database(None, namespace="app", documents=[Note]) as db:
        Note.objects.add(text="short")
        big = Note.objects.add(text="x" * 1000)  # encodes to more than the bucket's 256 bytes
        failures = []
        # --8<-- [start:flush]
        try:
            await db.flush()
        except FlushError as exc:
            for collection, key, error in exc.failures:
                log.error("not stored: %s/%s: %s", collection, key, error)
            # --8<-- [end:flush]
            failures = exc.failures
        (failure,) = failures
        assert failure[1] == big.uuid
        assert isinstance(failure[2], PayloadTooLarge)
        assert big.is_dirty  # kept in memory, retried by the next flush
        big.text = "shorter now"
        assert await db.flush() == 1  # the retry fits

        # --8<-- [start:freeze]
        # After start-up, in a service that loads its state once and then mostly updates it:
        gc.freeze()  # what exists now is ignored by every later collection
        # --8<-- [end:freeze]
        gc.unfreeze()


if __name__ == "__main__":
    asyncio.run(main())
