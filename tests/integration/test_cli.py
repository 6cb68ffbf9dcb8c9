"""The ``brainless-odm`` command line, against the session's real nats-server.

Commands run as ``python -m brainless_odm.cli`` subprocesses: what a user runs, with real exit
codes, real stdout/stderr separation and real signals.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, BinaryIO

import orjson
import pytest
from helpers import wait_for
from nats.aio.client import Client
from pydantic import ValidationError

from brainless_odm import ConnectionLost, Database, Document, DocumentConfig, Indexed, Registry
from brainless_odm.store.base import BucketConfig, Operation, WriteOp
from brainless_odm.store.nats import NatsKVStore, connect
from brainless_odm.testing import NatsServer, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "brainless_odm.cli"]


class CliTicket(Document):
    # A registry of its own: other tests' Database(documents=None) must not pick this class up.
    model_config = DocumentConfig(collection="cli_ticket", registry=Registry())

    title: str
    state: Annotated[str, Indexed()] = "open"
    priority: int = 0


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("NATS_URL", None)
    env["COLUMNS"] = "160"
    env.update(extra)
    return env


async def cli(*args: str, url: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the CLI without blocking the event loop (the databases in the test keep syncing)."""
    extra = {"NATS_URL": url} if url else {}
    return await asyncio.to_thread(
        subprocess.run, [*CLI, *args], env=_env(**extra), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
async def tickets(nats_client: Client, brainless_namespace: str) -> AsyncIterator[Database]:
    """A started database holding three tickets, flushed."""
    db = Database(nats_client, namespace=brainless_namespace, location="test-node", documents=[CliTicket])
    await db.start()
    manager = CliTicket.objects.using(db)
    for i, title in enumerate(("printer", "vpn", "coffee")):
        manager.add(title=title, priority=i)
    await db.flush()
    try:
        yield db
    finally:
        await db.stop()


# -- --help for every command -------------------------------------------------------------------

HELP = [
    [],
    ["server"],
    ["demo"],
    ["ls"],
    ["dump"],
    ["get"],
    ["watch"],
    ["dead-letters"],
    ["dead-letters", "list"],
    ["dead-letters", "show"],
    ["dead-letters", "requeue"],
]


@pytest.mark.parametrize("args", HELP, ids=[" ".join(a) or "main" for a in HELP])
def test_help(args: list[str]) -> None:
    proc = subprocess.run([*CLI, *args, "--help"], env=_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    # A flag takes no value: no type next to it (typer shows "--version <bool>" by default).
    assert "<bool>" not in proc.stdout
    assert "--help" in proc.stdout
    if (args and args[0] in ("ls", "dump", "get", "watch")) or args[1:]:
        for option in ("--url", "--namespace", "--user", "--password", "--token", "--creds", "--tls-ca"):
            assert option in proc.stdout


def test_version() -> None:
    """One version, written once in the package, reported by the command and the installed metadata."""
    from importlib.metadata import version

    import brainless_odm

    proc = subprocess.run([*CLI, "--version"], env=_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"brainless-odm {brainless_odm.__version__}"
    assert version("brainless-odm") == brainless_odm.__version__


# -- commands against a real server -----------------------------------------------------------


async def test_ls(nats_url: str, tickets: Database) -> None:
    proc = await cli("ls", "--namespace", tickets.namespace, url=nats_url)
    assert proc.returncode == 0, proc.stderr
    assert "cli_ticket" in proc.stdout
    assert f"{tickets.namespace}-cli_ticket" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if "cli_ticket" in line)
    assert " 3 " in row


async def test_ls_empty_namespace(nats_url: str, brainless_namespace: str) -> None:
    proc = await cli("ls", "-n", brainless_namespace, "--url", nats_url)
    assert proc.returncode == 0
    assert "no collections" in proc.stderr


async def test_dump(nats_url: str, tickets: Database) -> None:
    proc = await cli("dump", "cli_ticket", "-n", tickets.namespace, url=nats_url)
    assert proc.returncode == 0, proc.stderr
    docs = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(d["title"] for d in docs) == ["coffee", "printer", "vpn"]
    assert {d["uuid"] for d in docs} == {t.uuid for t in CliTicket.objects.using(tickets)}
    assert all("_odm" not in d for d in docs)
    assert "3 document(s)" in proc.stderr

    meta = await cli("dump", "cli_ticket", "-n", tickets.namespace, "--meta", url=nats_url)
    first = orjson.loads(meta.stdout.splitlines()[0])
    assert first["_odm"]["loc"] == "test-node"
    assert isinstance(first["_revision"], int)


async def test_dump_and_get_meta_give_every_entry_its_key_and_revision(
    nats_url: str, nats_client: Client, brainless_namespace: str
) -> None:
    # No database runs here: it would move the undecodable entries to the dead letters.
    ns = brainless_namespace
    store = NatsKVStore(nats_client, namespace=ns)
    bucket = await store.open_bucket(f"{ns}-cli_ticket", BucketConfig())
    revisions = {}
    entries = (
        ("good", b'{"title": "ok"}'),
        ("garbage", b"not json"),
        ("a-list", b"[1]"),
        ("spoof", b'{"title": "ok", "uuid": "another"}'),  # the key is shown, not the member
    )
    for key, value in entries:
        [revisions[key]] = await bucket.write([WriteOp(key, value)])
    await store.close()

    dump = await cli("dump", "cli_ticket", "-n", ns, "--meta", url=nats_url)
    assert dump.returncode == 0, dump.stderr
    docs = {d["uuid"]: d for d in map(orjson.loads, dump.stdout.splitlines())}
    assert {k: d["_revision"] for k, d in docs.items()} == revisions
    assert docs["garbage"]["_raw"] == "not json"
    assert docs["a-list"]["_raw"] == "[1]"
    assert docs["spoof"]["title"] == "ok"
    plain = await cli("dump", "cli_ticket", "-n", ns, url=nats_url)
    assert all("_revision" not in orjson.loads(line) for line in plain.stdout.splitlines())

    got = await cli("get", "cli_ticket", "garbage", "-n", ns, "--meta", url=nats_url)
    assert got.returncode == 0, got.stderr
    expected = {"uuid": "garbage", "_raw": "not json", "_revision": revisions["garbage"]}
    assert orjson.loads(got.stdout) == expected


async def test_dump_and_get_show_integers_beyond_64_bits_exactly(nats_url: str, tickets: Database) -> None:
    # orjson read 2**70 + 1 as a float (1.1805916207174113e+21): the dump showed another number.
    big = 2**70 + 1
    ticket = await CliTicket.objects.using(tickets).get(title="vpn")
    ticket.priority = big
    await tickets.flush()
    proc = await cli("dump", "cli_ticket", "-n", tickets.namespace, url=nats_url)
    assert proc.returncode == 0, proc.stderr
    assert f'"priority":{big}' in proc.stdout
    got = await cli("get", "cli_ticket", ticket.uuid or "", "-n", tickets.namespace, url=nats_url)
    assert got.returncode == 0, got.stderr
    assert f'"priority": {big}' in got.stdout


async def test_dump_unknown_collection(nats_url: str, tickets: Database) -> None:
    proc = await cli("dump", "nope", "-n", tickets.namespace, url=nats_url)
    assert proc.returncode == 1
    assert "no collection 'nope'" in proc.stderr
    assert "cli_ticket" in proc.stderr  # says what does exist
    # a read-only command must not have created the bucket
    assert "nope" not in (await cli("ls", "-n", tickets.namespace, url=nats_url)).stdout


async def test_get(nats_url: str, tickets: Database) -> None:
    ticket = await CliTicket.objects.using(tickets).get(title="vpn")
    assert ticket.uuid is not None
    proc = await cli("get", "cli_ticket", ticket.uuid, "-n", tickets.namespace, url=nats_url)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout) == {"uuid": ticket.uuid, "title": "vpn", "state": "open", "priority": 1}

    await ticket.delete()
    await tickets.flush()
    gone = await cli("get", "cli_ticket", ticket.uuid, "-n", tickets.namespace, url=nats_url)
    assert gone.returncode == 1
    assert "was deleted" in gone.stderr

    missing = await cli("get", "cli_ticket", "no-such-key", "-n", tickets.namespace, url=nats_url)
    assert missing.returncode == 1
    assert "no document 'no-such-key'" in missing.stderr


async def test_watch(nats_url: str, tickets: Database) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "watch",
        "cli_ticket",
        "-n",
        tickets.namespace,
        "--json",
        "--count",
        "3",
        "--timeout",
        "20",
        env=_env(NATS_URL=nats_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        banner = await asyncio.wait_for(proc.stderr.readline(), 15)
        assert b"watching" in banner  # loaded: every change from now on is tailed

        manager = CliTicket.objects.using(tickets)
        printer = await manager.get(title="printer")
        printer.state = "closed"
        await tickets.flush()
        new = manager.add(title="keyboard")
        await tickets.flush()
        await printer.delete()
        await tickets.flush()

        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()  # our own child, by PID
            await proc.wait()
    assert proc.returncode == 0
    changes = [orjson.loads(line) for line in out.splitlines()]
    assert [c["op"] for c in changes] == ["updated", "created", "deleted"]
    assert changes[0]["key"] == printer.uuid
    assert changes[0]["location"] == "test-node"
    assert changes[0]["changed"] == {"state": {"old": "open", "new": "closed"}}
    assert changes[1]["key"] == new.uuid
    assert changes[1]["changed"]["title"] == {"old": None, "new": "keyboard"}


async def test_watch_timeout_ends_it(nats_url: str, tickets: Database) -> None:
    started = time.monotonic()
    proc = await cli("watch", "cli_ticket", "-n", tickets.namespace, "--timeout", "1", url=nats_url)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 10


async def test_dead_letters(nats_url: str, nats_client: Client, brainless_namespace: str) -> None:
    ns = brainless_namespace
    store = NatsKVStore(nats_client, namespace=ns)
    bucket = await store.open_bucket(f"{ns}-cli_ticket", BucketConfig())
    # a value the class rejects (priority is an int), as another program might have written it
    await bucket.write([WriteOp("bad-1", b'{"title": "x", "priority": "urgent"}')])

    db = Database(nats_client, namespace=ns, location="loader", documents=[CliTicket])
    await db.start()
    try:
        for _ in range(500):
            if await db.dead_letters():
                break
            await asyncio.sleep(0.01)
        assert [d.key for d in await db.dead_letters()] == ["bad-1"]
    finally:
        await db.stop()

    listed = await cli("dead-letters", "list", "-n", ns, url=nats_url)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "bad-1" in line)
    assert "cli_ticket" in row
    # what is wrong and where, not Pydantic's title line ("1 validation error for CliTicket")
    assert "priority: Input should be a valid integer" in row
    assert "validation error" not in listed.stdout

    shown = await cli("dead-letters", "show", "cli_ticket", "bad-1", "-n", ns, url=nats_url)
    assert shown.returncode == 0, shown.stderr
    assert "1 validation error for CliTicket" in shown.stdout  # the full text
    assert "urgent" in shown.stdout
    assert "priority" in shown.stdout
    assert "loader" in shown.stdout

    unknown = await cli("dead-letters", "show", "cli_ticket", "nope", "-n", ns, url=nats_url)
    assert unknown.returncode == 1

    requeued = await cli("dead-letters", "requeue", "cli_ticket", "bad-1", "-n", ns, url=nats_url)
    assert requeued.returncode == 0, requeued.stderr
    entry = await bucket.get("bad-1")
    assert entry is not None
    assert entry.operation is Operation.PUT
    assert orjson.loads(entry.value)["priority"] == "urgent"  # the raw value, back for the nodes to judge
    after = await cli("dead-letters", "list", "-n", ns, url=nats_url)
    assert "bad-1" not in after.stdout
    await store.close()


async def test_dead_letters_list_shows_what_is_wrong_in_letters_stored_before_summaries(
    nats_url: str, nats_client: Client, brainless_namespace: str
) -> None:
    ns = brainless_namespace
    with pytest.raises(ValidationError) as invalid:
        CliTicket.model_validate({"title": "x", "priority": "urgent"})
    with pytest.raises(ValidationError) as not_json:
        CliTicket.model_validate_json(b"{oops")
    store = NatsKVStore(nats_client, namespace=ns)
    dead = await store.open_bucket(f"{ns}-_dead_letters", BucketConfig())
    # The record as it was stored before it carried a summary: only Pydantic's text.
    for key, exc in (("old-1", invalid.value), ("old-2", not_json.value)):
        old = {"collection": "cli_ticket", "key": key, "revision": 3, "error": str(exc), "value": ""}
        await dead.write([WriteOp(f"cli_ticket.{key}", orjson.dumps(old))])
    await store.close()

    listed = await cli("dead-letters", "list", "-n", ns, url=nats_url)
    assert listed.returncode == 0, listed.stderr
    rows = {key: line for line in listed.stdout.splitlines() for key in ("old-1", "old-2") if key in line}
    assert "priority: Input should be a valid integer" in rows["old-1"]
    assert "Invalid JSON: key must be a string at line 1 column 2" in rows["old-2"]
    assert "validation error" not in listed.stdout


async def test_dead_letters_none(nats_url: str, brainless_namespace: str) -> None:
    proc = await cli("dead-letters", "list", "-n", brainless_namespace, url=nats_url)
    assert proc.returncode == 0
    assert "no dead letters" in proc.stderr


async def test_server_runs_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "stderr").open("wb") as stderr:
        code = await _run_server_until_interrupted(tmp_path, port, stderr)
    assert code == 0
    with pytest.raises(ConnectionLost):
        await connect(f"nats://127.0.0.1:{port}", timeout=0.5)  # the nats-server child is gone too
    assert f"with JetStream on nats://127.0.0.1:{port}" in (tmp_path / "stderr").read_text()


async def _run_server_until_interrupted(tmp_path: Path, port: int, stderr: BinaryIO) -> int:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "server",
        "--port",
        str(port),
        "--store-dir",
        str(tmp_path / "data"),
        env=_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        nc = None
        deadline = time.monotonic() + 15
        while nc is None:
            try:
                nc = await connect(f"nats://127.0.0.1:{port}", timeout=0.5)
            except ConnectionLost:
                if time.monotonic() > deadline or proc.returncode is not None:
                    raise
                await asyncio.sleep(0.1)
        # JetStream is on and stores in the given directory
        store = NatsKVStore(nc, namespace="srv")
        await store.open_bucket("srv-x", BucketConfig())
        assert await store.list_buckets() == ["srv-x"]
        await store.close()
        await nc.close()
        assert (tmp_path / "data" / "jetstream").is_dir()

        # The banner comes once the CLI itself has seen the server answer (maybe after we did).
        banner = f"with JetStream on nats://127.0.0.1:{port}"
        await wait_for(lambda: banner in (tmp_path / "stderr").read_text(), 15, "the banner")
        proc.send_signal(signal.SIGINT)  # Ctrl-C, to our own child by PID
        code = await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code


def test_server_on_a_busy_port_announces_nothing() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [*CLI, "server", "--port", str(port)], env=_env(), capture_output=True, text=True, timeout=30
        )
    assert proc.returncode == 1
    assert "with JetStream on" not in proc.stderr  # the banner announced a server that never ran
    assert "address already in use" in proc.stderr  # nats-server's own log line
    assert "error: nats-server exited with code 1" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_demo_ends_by_itself() -> None:
    started = time.monotonic()
    proc = await cli("demo", "--pause", "0", "--rounds", "4", "--seed", "7", timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 20
    assert "merged on both nodes: state='answered' (from prague), agent='dana' (from brno)" in proc.stdout
    assert "the delete won on both nodes" in proc.stdout
    assert "identical to prague and brno" in proc.stdout
    assert "both views identical" in proc.stdout


# -- a dead server: a clear message within seconds ------------------------------------------------

DEAD = [
    ["ls"],
    ["dump", "cli_ticket"],
    ["get", "cli_ticket", "k"],
    ["watch", "cli_ticket"],
    ["dead-letters", "list"],
    ["dead-letters", "show", "cli_ticket", "k"],
    ["dead-letters", "requeue", "cli_ticket", "k"],
]


@pytest.mark.parametrize("args", DEAD, ids=[" ".join(a) for a in DEAD])
def test_unreachable_server_fails_fast(args: list[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    proc = subprocess.run([*CLI, *args, "--url", url], env=_env(), capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert "cannot connect to NATS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 5


async def test_wrong_credentials_are_not_a_dead_server() -> None:
    async with NatsServer(extra_args=["--user", "u", "--pass", "secret"]) as server:
        proc = await cli("ls", "--user", "u", "--password", "wrong", url=server.url)
        assert proc.returncode == 1
        assert "refused the connection" in proc.stderr
        assert "Authorization Violation" in proc.stderr
        assert "brainless-odm server" not in proc.stderr  # a server answered: none to start
        assert "Traceback" not in proc.stderr
        ok = await cli("ls", "--user", "u", "--password", "secret", url=server.url)
        assert ok.returncode == 0, ok.stderr


# The CLI with the nkeys package hidden, whether or not it is installed here.
CLI_WITHOUT_NKEYS = [
    sys.executable,
    "-c",
    "import sys; sys.modules['nkeys'] = None; from brainless_odm.cli import main; main()",
]


def test_creds_without_the_nkeys_package_is_one_line(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    url = f"nats://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [*CLI_WITHOUT_NKEYS, "ls", "--creds", str(creds), "--url", url],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
    assert 'pip install "brainless-odm[nkeys]"' in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--creds", "/nonexistent/user.creds"], "--creds /nonexistent/user.creds: no such file"),
        (["--tls-ca", "/nonexistent"], "--tls-ca /nonexistent: no such file"),
        (["--tls-ca", "/"], "--tls-ca /: not a file"),
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert /nonexistent.pem: no such file"),
        (["--tls-ca", "{junk}"], "not a usable CA certificate file"),
        (["--tls-cert", "{junk}"], "not a usable certificate and key"),
        (["--tls-key", "{junk}"], "--tls-key needs --tls-cert"),
    ],
    ids=["creds", "ca", "ca-dir", "cert", "ca-junk", "cert-junk", "key-alone"],
)
def test_unusable_credential_files_are_one_line(tmp_path: Path, flags: list[str], says: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    flags = [f.replace("{junk}", str(junk)) for f in flags]
    url = f"nats://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [*CLI, "ls", *flags, "--url", url], env=_env(), capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["server"], ["demo", "--pause", "0"]], ids=["server", "demo"])
def test_a_missing_nats_server_says_how_to_install_it(args: list[str]) -> None:
    # The install hint survives the terminal's markup: "[server]" is text, not a style tag.
    env = _env(NATS_SERVER_BIN=os.devnull)
    proc = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "brainless-odm[server]" in proc.stderr
    assert "Traceback" not in proc.stderr
    shown = subprocess.run([*CLI, "server", "--help"], env=env, capture_output=True, text=True, timeout=30)
    assert "brainless-odm[server]" in shown.stdout
