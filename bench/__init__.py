"""Side-by-side benchmark of brainless_odm, raw nats-py and brainlessdb 0.17.x.

Run it with ``python -m bench`` (``--help`` lists the options). It starts its own nats-server,
measures the three implementations on the same generated documents in one process against that one
server, and writes ``bench/results/results.{json,md}``, ``docs/img/bench.png`` and
``docs/performance.md``.
"""
