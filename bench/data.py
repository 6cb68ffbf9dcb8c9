"""The documents every implementation stores, generated deterministically.

One document is a JSON object of about 180 bytes: a unique ``code``, two indexed integers
(``queue`` for equality, ``score`` for ranges), a non-indexed ``state`` for the full-scan filter, a
nested ``caller`` model and a ``tags`` list. ``generate(n)`` is a prefix of ``generate(m)`` for
``n < m``, so every size holds the same first documents.
"""

from __future__ import annotations

import random
from typing import Any

SEED = 20_240_611

#: Cardinality of the ``queue`` field: 50 values give ~400 hits per value at N = 20k.
QUEUES = 50
#: ``score`` is uniform in ``[0, SCORE_MAX)``; a range query spans ``RANGE_WIDTH`` values (~1 %).
SCORE_MAX = 10_000
RANGE_WIDTH = 100
#: Eight states, so the full-scan filter ``state == SCAN_STATE`` matches ~12.5 % of the documents.
STATES = ("waiting", "ringing", "talking", "held", "wrapup", "parked", "missed", "done")
SCAN_STATE = "held"
CITIES = ("Prague", "Brno", "Ostrava", "Plzen", "Liberec", "Olomouc", None)
FIRST = ("Jana", "Petr", "Eva", "Jan", "Lucie", "Tomas", "Marie", "Pavel")
LAST = ("Novak", "Svoboda", "Dvorak", "Cerny", "Prochazka", "Kucera", "Vesely", "Horak")
TAGS = ("vip", "sales", "support", "callback", "new", "billing", "escalated")

Doc = dict[str, Any]


def generate(n: int, seed: int = SEED) -> list[Doc]:
    """Return ``n`` documents as plain dicts (fresh objects on every call)."""
    rng = random.Random(seed)
    docs: list[Doc] = []
    for i in range(n):
        docs.append(
            {
                "code": f"CH-{i:07d}-{rng.getrandbits(32):08x}",
                "queue": rng.randrange(QUEUES),
                "score": rng.randrange(SCORE_MAX),
                "state": rng.choice(STATES),
                "priority": rng.randrange(10),
                "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                "caller": {"number": f"+420{rng.randrange(10**9):09d}", "city": rng.choice(CITIES)},
                "tags": rng.sample(TAGS, rng.randrange(4)),
            }
        )
    return docs


def eq_values(repeats: int) -> list[int]:
    """``queue`` values for the indexed equality query, one per repetition."""
    return [(7 + 13 * i) % QUEUES for i in range(repeats)]


def range_bounds(repeats: int) -> list[tuple[int, int]]:
    """Inclusive ``score`` ranges of ``RANGE_WIDTH`` values, one per repetition."""
    starts = [(1_234 + 997 * i) % (SCORE_MAX - RANGE_WIDTH) for i in range(repeats)]
    return [(lo, lo + RANGE_WIDTH - 1) for lo in starts]
