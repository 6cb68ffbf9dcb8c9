"""``python -m bench``: run the benchmark and write the table, JSON, plot and docs/performance.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import report
from bench.common import Context, Implementation, connect
from bench.impl_brainlessdb import BrainlessImplementation
from bench.impl_odm import OdmImplementation
from bench.impl_raw import RawImplementation
from bench.runner import WORKLOADS, Plan, run
from brainless_odm.testing import NatsServer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = "1000,10000,100000"
TARGET_N = 20_000
IMPLEMENTATIONS: dict[str, type[Implementation]] = {
    "raw": RawImplementation,
    "brainlessdb": BrainlessImplementation,
    "odm": OdmImplementation,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="brainless_odm vs raw nats-py vs brainlessdb, in one process against one nats-server.",
    )
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated N (default {DEFAULT_SIZES})")
    p.add_argument(
        "--target-n",
        type=int,
        default=TARGET_N,
        help=f"the N the targets are checked at, always measured too (default {TARGET_N}; 0 = none)",
    )
    p.add_argument("--quick", action="store_true", help="fast smoke run: N=1000 only, fewer repetitions")
    p.add_argument("--only", choices=WORKLOADS, action="append", help="run only this workload (repeatable)")
    p.add_argument(
        "--impl",
        choices=tuple(IMPLEMENTATIONS),
        action="append",
        help="run only this implementation (repeatable)",
    )
    p.add_argument(
        "--skip-slow", action="store_true", help="skip brainlessdb at N >= 50k (its writes take minutes)"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="where results.{json,md} go (default bench/results; for --quick, --only and --impl a "
        "temporary directory, so a smoke run never overwrites the committed figures)",
    )
    docs = p.add_mutually_exclusive_group()
    docs.add_argument(
        "--docs", action="store_true", help="regenerate docs/performance.md even for a partial run"
    )
    docs.add_argument(
        "--no-docs", action="store_true", help="never touch docs/ (default for --quick and --only)"
    )
    p.add_argument("--nats-url", help="use this running nats-server instead of starting one")
    p.add_argument("-v", "--verbose", action="store_true", help="log the libraries' warnings")
    return p.parse_args(argv)


def sizes_of(args: argparse.Namespace) -> list[int]:
    if args.quick:
        return [1000]
    sizes = {int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()}
    if args.target_n:
        sizes.add(args.target_n)
    if any(n <= 0 for n in sizes):
        raise SystemExit("sizes must be positive")
    return sorted(sizes)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


@contextlib.asynccontextmanager
async def server(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    async with NatsServer() as srv:
        yield srv.url


async def main(args: argparse.Namespace) -> int:
    sizes = sizes_of(args)
    plan = Plan(
        sizes=sizes, workloads=tuple(args.only or WORKLOADS), skip_slow=args.skip_slow, quick=args.quick
    )
    target_n = sizes[-1] if args.quick else (args.target_n or sizes[-1])
    chosen = args.impl or list(IMPLEMENTATIONS)
    started = time.perf_counter()
    async with server(args.nats_url) as url:
        errors: list[str] = []
        run_id = uuid.uuid4().hex[:6]
        # Each implementation gets its own two connections: brainless_odm installs shortcuts on
        # the nats-py clients it uses (store/nats.py, ``_Wire``), and they must not speed up or
        # slow down the others' measurements.
        clients: list[Any] = []
        impls = []
        for name in IMPLEMENTATIONS:
            if name in chosen:
                nc_a = await connect(url, f"bench-{name}-a", errors)
                nc_b = await connect(url, f"bench-{name}-b", errors)
                clients += [nc_a, nc_b]
                impls.append(IMPLEMENTATIONS[name](Context(nc_a, nc_b, run_id, errors)))
        print(f"bench: sizes {sizes}, workloads {list(plan.workloads)}, server {url}", flush=True)
        try:
            cells, extras = await run(impls, plan, progress=lambda line: print(line, flush=True))
        finally:
            for impl in impls:
                with contextlib.suppress(Exception):
                    await impl.close()
            nats_server = str(getattr(clients[0], "connected_server_version", "?")) if clients else "?"
            for nc in clients:
                await nc.close()
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "python -m bench",
        "sizes": sizes,
        "target_n": target_n,
        "quick": args.quick,
        "workloads": list(plan.workloads),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "nats_server": nats_server,
        "nats_py": _version("nats-py"),
        "pydantic": _version("pydantic"),
        "orjson": _version("orjson"),
        "brainlessdb": _version("brainlessdb"),
        "brainless_odm": _version("brainless-odm"),
        "seconds": time.perf_counter() - started,
    }
    partial = bool(args.quick or args.only or args.impl)
    write_docs = args.docs or not (args.no_docs or partial)
    default_out = Path(tempfile.gettempdir()) / "brainless-bench" if partial else REPO / "bench" / "results"
    out = args.out or default_out
    summary, _targets = report.write_all(cells, extras, meta, out, REPO / "docs" if write_docs else None)
    print()
    print(summary)
    print(f"bench: results in {out}" + (", docs/performance.md and docs/img/bench.png" if write_docs else ""))
    print(f"bench: took {meta['seconds']:.0f} s")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.ERROR, format="%(name)s: %(message)s"
    )
    return asyncio.run(main(args))


if __name__ == "__main__":
    sys.exit(cli())
