"""Connecting with credentials and TLS: brainless_odm takes a nats-py client, so every option is nats-py's."""

import asyncio
import os
import ssl

import nats

from brainless_odm import Database, Document


class Setting(Document):
    name: str
    value: str


# --8<-- [start:options]
def connect_options() -> dict[str, object]:
    """nats-py options from the environment; unset variables are simply not used."""
    env = os.environ.get
    options: dict[str, object] = {
        "servers": env("NATS_URL", "nats://127.0.0.1:4222").split(","),
        "name": "billing-service",  # shows up in the server's connection list
        "connect_timeout": 2,
        "max_reconnect_attempts": -1,  # keep reconnecting forever once connected
    }
    if env("NATS_USER"):
        options["user"], options["password"] = env("NATS_USER"), env("NATS_PASSWORD")
    if env("NATS_TOKEN"):
        options["token"] = env("NATS_TOKEN")
    if env("NATS_CREDS"):  # a .creds file (NKEY + JWT), as used with NGS / operator mode
        options["user_credentials"] = env("NATS_CREDS")
    if env("NATS_CA"):
        tls = ssl.create_default_context(cafile=env("NATS_CA"))
        if env("NATS_CERT"):  # mutual TLS
            tls.load_cert_chain(env("NATS_CERT", ""), env("NATS_KEY"))
        options["tls"] = tls
    return options


# --8<-- [end:options]


async def main() -> None:
    # --8<-- [start:connect]
    nc = await nats.connect(**connect_options())  # type: ignore[arg-type]
    try:
        async with Database(
            nc, namespace="billing", location=os.environ.get("LOCATION", "prague-1"), documents=[Setting]
        ) as db:
            print("connected to", nc.connected_url.netloc if nc.connected_url else "?", "as", db)
    finally:
        await nc.close()
    # --8<-- [end:connect]


if __name__ == "__main__":
    asyncio.run(main())
