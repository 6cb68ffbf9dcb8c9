"""Turns measured cells into ratios, target verdicts, a markdown table, JSON, a plot and
docs/performance.md."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.runner import Cell

IMPLS = ("raw", "brainlessdb", "odm")

#: (metric key, label, unit, scale from stored unit to shown unit)
ROWS: tuple[tuple[str, str, str], ...] = (
    ("write_s", "write N + flush", "s"),
    ("write_gc_s", "… of which cyclic GC", "s"),
    ("load_s", "cold load N", "s"),
    ("load_gc_s", "… of which cyclic GC", "s"),
    ("eq_us", "indexed equality query", "µs"),
    ("range_us", "indexed range query", "µs"),
    ("scan_us", "full-scan filter (non-indexed)", "µs"),
    ("prop_p50_ms", "propagation A→B p50", "ms"),
    ("prop_p99_ms", "propagation A→B p99", "ms"),
    ("mem_bytes_per_doc", "memory per document", "B"),
)

#: Per-document cost at the largest N may be at most this many times the cost at LINEAR_BASE.
LINEAR_SLACK = 1.5
LINEAR_BASE = 10_000


def table_data(cells: Sequence[Cell]) -> dict[int, dict[str, Cell]]:
    by_n: dict[int, dict[str, Cell]] = {}
    for cell in cells:
        by_n.setdefault(cell.n, {})[cell.impl] = cell
    return dict(sorted(by_n.items()))


def metric(by_n: dict[int, dict[str, Cell]], n: int, impl: str, key: str) -> float | None:
    cell = by_n.get(n, {}).get(impl)
    if cell is None or cell.skipped:
        return None
    value = cell.metrics.get(key)
    return float(value) if value is not None else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratios(by_n: dict[int, dict[str, Cell]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per N and metric: odm/raw and brainlessdb/odm, pair by pair from the same run."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for n in by_n:
        per: dict[str, dict[str, float | None]] = {}
        for key, _, _ in ROWS:
            odm = metric(by_n, n, "odm", key)
            per[key] = {
                "odm/raw": ratio(odm, metric(by_n, n, "raw", key)),
                "brainlessdb/odm": ratio(metric(by_n, n, "brainlessdb", key), odm),
            }
        out[str(n)] = per
    return out


@dataclass
class Target:
    name: str
    rule: str
    measured: str
    ratio: float | None
    status: str  # PASS, FAIL, INFO, N/A


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}×"


def _check(name: str, rule: str, value: float | None, ok: Callable[[float], bool], measured: str) -> Target:
    if value is None:
        return Target(name, rule, "not measured", None, "N/A")
    return Target(name, rule, measured, value, "PASS" if ok(value) else "FAIL")


def targets(by_n: dict[int, dict[str, Cell]], target_n: int) -> list[Target]:
    """Each target of issue 4, checked at ``target_n`` (linearity at the largest N)."""
    n = target_n

    def m(impl: str, key: str) -> float | None:
        return metric(by_n, n, impl, key)

    out: list[Target] = []
    w = ratio(m("odm", "write_s"), m("raw", "write_s"))
    out.append(
        _check("write + flush vs raw", "odm/raw ≤ 1.4", w, lambda r: r <= 1.4, f"odm/raw = {_fmt_ratio(w)}")
    )
    w = ratio(m("brainlessdb", "write_s"), m("odm", "write_s"))
    out.append(
        _check(
            "write + flush vs brainlessdb",
            "brainlessdb/odm ≥ 8",
            w,
            lambda r: r >= 8,
            f"brainlessdb/odm = {_fmt_ratio(w)}",
        )
    )
    r = ratio(m("odm", "load_s"), m("raw", "load_s"))
    out.append(_check("cold load vs raw", "odm/raw ≤ 2", r, lambda x: x <= 2, f"odm/raw = {_fmt_ratio(r)}"))
    r = ratio(m("brainlessdb", "load_s"), m("odm", "load_s"))
    out.append(
        _check(
            "cold load vs brainlessdb",
            "brainlessdb/odm ≥ 4",
            r,
            lambda x: x >= 4,
            f"brainlessdb/odm = {_fmt_ratio(r)}",
        )
    )
    odm_p50, raw_p50 = m("odm", "prop_p50_ms"), m("raw", "prop_p50_ms")
    delta = None if odm_p50 is None or raw_p50 is None else odm_p50 - raw_p50
    out.append(
        _check(
            "propagation p50",
            "odm ≤ raw + 0.2 ms",
            delta,
            lambda d: d <= 0.2,
            "n/a"
            if delta is None
            else f"odm {odm_p50:.3f} ms, raw {raw_p50:.3f} ms "
            f"(+{delta:.3f} ms, {_fmt_ratio(ratio(odm_p50, raw_p50))})",
        )
    )
    q = ratio(m("odm", "eq_us"), m("brainlessdb", "eq_us"))
    out.append(
        _check(
            "indexed equality query",
            "odm/brainlessdb ≤ 1",
            q,
            lambda x: x <= 1.0,
            f"odm/brainlessdb = {_fmt_ratio(q)}",
        )
    )
    q = ratio(m("odm", "scan_us"), m("brainlessdb", "scan_us"))
    out.append(
        _check(
            "full-scan filter",
            "odm/brainlessdb ≤ 1.5",
            q,
            lambda x: x <= 1.5,
            f"odm/brainlessdb = {_fmt_ratio(q)}",
        )
    )
    mo, mb = m("odm", "mem_bytes_per_doc"), m("brainlessdb", "mem_bytes_per_doc")
    mr = ratio(mo, mb)
    out.append(
        Target(
            "memory per document",
            "report vs brainlessdb",
            "n/a"
            if mo is None or mb is None
            else f"odm {mo:,.0f} B, brainlessdb {mb:,.0f} B, odm/brainlessdb = {_fmt_ratio(mr)}",
            mr,
            "INFO" if mr is not None else "N/A",
        )
    )
    sizes = sorted(by_n)
    big = sizes[-1] if sizes else 0
    for key, label in (("write_s", "write"), ("load_s", "load")):
        base, top = metric(by_n, LINEAR_BASE, "odm", key), metric(by_n, big, "odm", key)
        growth = (
            None if base is None or top is None or big <= LINEAR_BASE else (top / big) / (base / LINEAR_BASE)
        )
        out.append(
            _check(
                f"{label} linear in N",
                f"per-doc cost at {big:,} ≤ {LINEAR_SLACK}× the cost at {LINEAR_BASE:,}",
                growth,
                lambda g: g <= LINEAR_SLACK,
                "n/a" if growth is None else f"per-doc cost {big:,} vs {LINEAR_BASE:,}: {_fmt_ratio(growth)}",
            )
        )
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "B":
        return f"{value:,.0f} B"
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def markdown_table(by_n: dict[int, dict[str, Cell]]) -> str:
    lines = [
        "| workload | N | raw nats-py | brainlessdb 0.17 | brainless_odm | odm/raw | brainlessdb/odm |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for key, label, unit in ROWS:
        for n in by_n:
            vals = {impl: metric(by_n, n, impl, key) for impl in IMPLS}
            if all(v is None for v in vals.values()):
                continue
            lines.append(
                f"| {label} | {n:,} | {_fmt(vals['raw'], unit)} | {_fmt(vals['brainlessdb'], unit)} | "
                f"{_fmt(vals['odm'], unit)} | {_fmt_ratio(ratio(vals['odm'], vals['raw']))} | "
                f"{_fmt_ratio(ratio(vals['brainlessdb'], vals['odm']))} |"
            )
    return "\n".join(lines)


def targets_table(items: Sequence[Target]) -> str:
    lines = ["| target | rule | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {t.rule} | {t.measured} | **{t.status}** |" for t in items]
    return "\n".join(lines)


def extras_md(extras: dict[str, Any], by_n: dict[int, dict[str, Cell]]) -> str:
    parts: list[str] = []
    a = extras.get("assign")
    if a:
        parts += [
            "| assignment | plain Pydantic (`validate_assignment=True`) "
            "| brainless_odm (validate + dirty tracking) | odm/pydantic |",
            "|---|--:|--:|--:|",
            f"| `doc.priority = v` | {a['pydantic_us']:.3f} µs | {a['odm_us']:.3f} µs | "
            f"{_fmt_ratio(ratio(a['odm_us'], a['pydantic_us']))} |",
            f"| `doc.caller.city = v` | {a['pydantic_nested_us']:.3f} µs | {a['odm_nested_us']:.3f} µs | "
            f"{_fmt_ratio(ratio(a['odm_nested_us'], a['pydantic_nested_us']))} |",
            "",
            f"For reference, brainlessdb's msgspec struct assigns in {a['brainlessdb_us']:.3f} µs — without "
            "validating the value and without tracking the change (it needs an explicit `save()`).",
            "",
        ]
    mem = extras.get("pydantic_mem_bytes_per_doc")
    if mem:
        parts += [
            "| memory per document | N | plain Pydantic models in a dict | brainless_odm | odm − pydantic |",
            "|---|--:|--:|--:|--:|",
        ]
        for n_str, plain in mem.items():
            odm = metric(by_n, int(n_str), "odm", "mem_bytes_per_doc")
            diff = "—" if odm is None else f"{odm - plain:,.0f} B"
            parts.append(f"| held | {int(n_str):,} | {plain:,.0f} B | {_fmt(odm, 'B')} | {diff} |")
        parts.append("")
    return "\n".join(parts)


def plot(by_n: dict[int, dict[str, Cell]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    styles = {
        "raw": ("raw nats-py", "o-"),
        "brainlessdb": ("brainlessdb 0.17", "s-"),
        "odm": ("brainless_odm", "^-"),
    }
    for ax, (key, title) in zip(
        axes, (("write_s", "write N + flush"), ("load_s", "cold load N")), strict=True
    ):
        for impl in IMPLS:
            pts = [(n, metric(by_n, n, impl, key)) for n in by_n]
            xs = [n for n, v in pts if v is not None]
            ys = [v for _, v in pts if v is not None]
            if xs:
                label, style = styles[impl]
                ax.plot(xs, ys, style, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N documents")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def to_json(
    cells: Sequence[Cell], extras: dict[str, Any], meta: dict[str, Any], target_items: Sequence[Target]
) -> dict[str, Any]:
    by_n = table_data(cells)
    cleaned: dict[str, Any] = _clean(
        {
            "meta": meta,
            "results": {
                str(n): {
                    impl: {"metrics": c.metrics, "warnings": c.warnings, "skipped": c.skipped}
                    for impl, c in row.items()
                }
                for n, row in by_n.items()
            },
            "ratios": ratios(by_n),
            "extras": extras,
            "targets": [t.__dict__ for t in target_items],
        }
    )
    return cleaned


METHOD = """\
`python -m bench` starts its own `nats-server` (JetStream, temporary store) through
`brainless_odm.testing.NatsServer` and measures three implementations **in one process against
that one server, on the same generated documents** (~180 bytes of JSON each: a unique `code`, two
indexed ints `queue` and `score`, a non-indexed `state`, a nested `caller` model and a `tags`
list; deterministic seed):

* **raw nats-py** — the physical floor: JetStream publishes to `$KV.<bucket>.<uuid>` pipelined by
  hand (bounded window, every ack checked); cold load through an ordered consumer
  (`DeliverPolicy.LAST_PER_SUBJECT`) plus `orjson.loads`, finished at the stream's last sequence
  taken before starting; queries on plain dicts (a `queue → docs` dict, a `bisect` on a sorted
  `score` list, a list comprehension); propagation `kv.put` → ordered consumer (`DeliverPolicy.NEW`).
* **brainlessdb 0.17** (PyPI) — used as its README shows: `collection.add`, `await db.flush()`
  (one awaited put per document), `await db.start()` to load, `collection.filter` to query
  (it has no range lookup, so the range is a predicate scan), `on_change` for propagation.
* **brainless_odm** — public API only: `BenchItem.objects.using(db).add(dict)`, `await db.flush()`,
  `await Database(...).start()`, awaited `filter(...)` querysets, `on_change`.

Every implementation and size gets a fresh bucket (or namespace), deleted afterwards. Node A
(writer) and node B (loader, query node, propagation receiver) use separate connections, and each
implementation its own pair (brainless_odm installs shortcuts on the nats-py clients it uses).
*write* = add N documents and flush until every put is acknowledged (stopping the writer afterwards
is not timed); *… of which cyclic GC* = the time Python's garbage collector ran inside the timed
write or load (`gc.callbacks`); *load* = a new node reading
all N; queries are the median over many calls with varying arguments (equality: ~N/50 hits;
range: ~1 % of N; scan: ~12.5 % of N); *propagation* = one change at a time on node A
(`flush_interval=0`) until node B's callback runs, after 10 warm-ups, the implementations taking
turns of 10 changes (each turn after a 2 ms pause and one uncounted change); *memory* = tracemalloc
growth across one cold load, divided by N. Short workloads are repeated and the median is shown.
Both nodes live in one process, so node A's handling of its own echo and of the ack shares the
event loop with node B's receive: propagation is charged for it (brainlessdb too, raw has no
watcher on node A). `python -m bench.profile` profiles the ODM side of one workload.
The machine is shared and noisy: absolute times drift between runs, the ratios (computed pair by
pair in the same run) are what to compare.
"""


#: Hand-written: why the targets that fail do, from the profiles (kept across regenerations).
ANALYSIS = Path(__file__).with_name("analysis.md")


def performance_md(
    by_n: dict[int, dict[str, Cell]],
    extras: dict[str, Any],
    target_items: Sequence[Target],
    meta: dict[str, Any],
    image: str,
) -> str:
    warnings = [f"* {c.impl} N={c.n}: {w}" for row in by_n.values() for c in row.values() for w in c.warnings]
    skipped = [
        f"* {c.impl} N={c.n}: skipped ({c.skipped})"
        for row in by_n.values()
        for c in row.values()
        if c.skipped
    ]
    parts = [
        "# Performance",
        "",
        "_This page is generated by `python -m bench`; do not edit it by hand._",
        "",
        f"Last run: {meta['date']} · `{meta['command']}` · Python {meta['python']} · "
        f"{meta['cpus']} CPUs · nats-server {meta.get('nats_server', '?')} · nats-py {meta['nats_py']} · "
        f"pydantic {meta['pydantic']} · brainlessdb {meta['brainlessdb']} · took {meta['seconds']:.0f} s",
        "",
        "## Method",
        "",
        METHOD,
        "## Targets",
        "",
        f"Checked at N = {meta['target_n']:,} (linearity at the largest N).",
        "",
        targets_table(target_items),
        "",
        ANALYSIS.read_text().strip() if ANALYSIS.exists() else "",
        "",
        "## Results",
        "",
        markdown_table(by_n),
        "",
        f"![time versus N, log-log]({image})",
        "",
        extras_md(extras, by_n),
    ]
    if warnings or skipped:
        parts += ["## Notes from this run", "", *skipped, *warnings, ""]
    return "\n".join(parts)


def write_all(
    cells: Sequence[Cell],
    extras: dict[str, Any],
    meta: dict[str, Any],
    out_dir: Path,
    docs_dir: Path | None,
) -> tuple[str, list[Target]]:
    """Write results.json and results.md to ``out_dir`` and, when ``docs_dir`` is given, the plot
    and performance.md into the docs. Returns the markdown summary and the target verdicts."""
    by_n = table_data(cells)
    target_items = targets(by_n, meta["target_n"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(
        json.dumps(to_json(cells, extras, meta, target_items), indent=2, ensure_ascii=False) + "\n"
    )
    summary = "\n\n".join([markdown_table(by_n), targets_table(target_items), extras_md(extras, by_n)])
    (out_dir / "results.md").write_text(summary + "\n")
    if docs_dir is not None:
        plot(by_n, docs_dir / "img" / "bench.png")
        (docs_dir / "performance.md").write_text(
            performance_md(by_n, extras, target_items, meta, "img/bench.png")
        )
    else:
        plot(by_n, out_dir / "bench.png")
    return summary, target_items
