"""``python -m bench.profile``: where brainless_odm spends the time of one workload.

Profiles the ODM side of a workload (write + flush, cold load, or propagation) at one N against its
own nats-server, with pyinstrument (wall clock, the call tree) or cProfile (own time per
function), and writes both reports to ``--out``. The tables in docs/performance.md say how far the
ODM is from its targets; this says why.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import data
from bench.common import Context, Reader, collect, connect, quiesce
from bench.impl_odm import OdmDataset, OdmImplementation
from brainless_odm.testing import NatsServer

REPO = Path(__file__).resolve().parent.parent


async def _profile(label: str, fn: Callable[[], Awaitable[Any]], args: argparse.Namespace) -> Any:
    """Run ``fn`` under the chosen profiler (one at a time: both hook ``sys.setprofile``)."""
    collect()
    await quiesce()
    if args.profiler == "cprofile":
        cprof = cProfile.Profile()
        cprof.enable()
        result = await fn()
        cprof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(cprof, stream=buf)
        stats.dump_stats(Path(args.out) / f"profile-{label}.pstats")  # for print_callers() and friends
        stats.sort_stats("tottime").print_stats(args.top)
        text = buf.getvalue()
    else:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        result = await fn()
        profiler.stop()
        text = profiler.output_text(unicode=True, color=False, show_all=False)
    (args.out / f"profile-{label}-{args.profiler}.txt").write_text(text)
    print(f"== {label} ({args.profiler})")
    print(text)
    return result


async def main(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    docs = data.generate(args.n)
    async with NatsServer() as server:
        nc_a = await connect(server.url, "profile-a")
        nc_b = await connect(server.url, "profile-b")
        impl = OdmImplementation(Context(nc_a, nc_b, uuid.uuid4().hex[:6]))
        ds: OdmDataset = impl.dataset(str(args.n))
        try:
            await ds.prepare()
            if "write" in args.workload:
                await _profile(f"write-{args.n}", lambda: ds.write(docs), args)
            else:
                await ds.write(docs)
            await ds.after_write()
            reader: Reader
            if "load" in args.workload:
                reader = await _profile(f"load-{args.n}", ds.open_reader, args)
            else:
                reader = await ds.open_reader()
            if "query" in args.workload:

                async def queries() -> None:
                    for q in data.eq_values(200):
                        await reader.query_eq(q)
                    for lo, hi in data.range_bounds(50):
                        await reader.query_range(lo, hi)
                    for _ in range(20):
                        await reader.query_scan(data.SCAN_STATE)

                await _profile(f"query-{args.n}", queries, args)
            if "propagation" in args.workload:
                async with ds.propagation(reader) as run:

                    async def changes() -> None:
                        for i in range(300):
                            await run.one(i)

                    await _profile(f"propagation-{args.n}", changes, args)
            await reader.close()
        finally:
            await ds.drop()
            await nc_a.close()
            await nc_b.close()


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("-n", type=int, default=20_000, help="documents (default 20000)")
    p.add_argument(
        "--workload",
        action="append",
        choices=("write", "load", "query", "propagation"),
        help="what to profile (repeatable; default write and load)",
    )
    p.add_argument(
        "--profiler", choices=("pyinstrument", "cprofile"), default="pyinstrument", help="which profiler"
    )
    p.add_argument("--top", type=int, default=25, help="cProfile rows to show")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where reports go")
    args = p.parse_args()
    args.workload = args.workload or ["write", "load"]
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
