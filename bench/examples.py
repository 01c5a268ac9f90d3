"""Example store benchmark: top-5 retrieval among 100,000 examples, and adding one example.

    python -m bench.examples                      # SQLite in a temp folder, 100k examples
    python -m bench.examples --url postgresql://postgres@127.0.0.1:5432/bench --n 100000

Rows of the table:

- ``tether search`` — ``nearest()``: embed the query (hashing embedder), check the index is
  current (one count/max query), top 5 by matrix-vector product + ``argpartition``, load the
  5 rows. Model time is the hashing embedder's, included.
- ``tether ctx.examples`` — the same plus recording what the run was shown in
  ``run_examples`` (one write transaction).
- ``baseline: brute force, full sort`` — NumPy over the same in-memory matrix, sorting
  every similarity (``argsort``) instead of selecting the top 5.
- ``floor: matrix @ query alone`` — the matrix-vector product by itself: what any brute
  force search pays (it reads the whole matrix: memory bandwidth bounds it).
- ``baseline: brute force, no cache`` — read every vector from the store and search it, per
  query: what a search without the in-process matrix pays.
- ``tether add example`` — insert one example with a precomputed vector (excluding model
  time), one transaction at full durability; then the next search's incremental refresh.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import insert, select

from tether import Store
from tether.review.embedders import HashingEmbedder
from tether.review.examples import (
    Spec,
    example_values,
    index_for,
    insert_example,
    nearest,
    record_shown,
)
from tether.store.schema_review import examples

AGENT = "bench"
WORDS = [
    "water", "fire", "theft", "hail", "flood", "pipe", "roof", "car", "bicycle", "kitchen",
    "basement", "garage", "storm", "window", "glass", "burst", "leak", "stolen", "broken",
    "crash", "tree", "lightning", "mould", "jewellery",
]


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=8)) for _ in range(n)]


def _ms(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[int(0.95 * (len(ms) - 1))]


def _time(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def load(store: Store, spec: Spec, n: int, rng: np.random.Generator, console: Console) -> None:
    """Bulk-insert ``n`` examples with random unit vectors (not measured)."""
    dim = spec.embedder.dim
    batch = 5000
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"loading {n:,} examples", total=n)
        for start in range(0, n, batch):
            m = min(batch, n - start)
            vecs = rng.standard_normal((m, dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            rows = [
                {
                    "agent": AGENT, "run_id": None, "review_id": None, "case_text": f"case {i}",
                    "input": {"i": start + i}, "corrected_output": {"decision": "refer"},
                    "reason": "bench", "vector": vecs[i].tobytes(), "dim": dim,
                    "embedder": spec.embedder.name, "created_at": time.time(),
                }
                for i in range(m)
            ]
            with store.engine.begin() as conn:
                conn.execute(insert(examples), rows)
            progress.update(bar, advance=m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="store URL (default: SQLite in a temp folder)")
    parser.add_argument("--n", type=int, default=100_000, help="examples in the store")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--adds", type=int, default=200)
    args = parser.parse_args()
    console = Console()
    rng = np.random.default_rng(7)
    tmp = tempfile.TemporaryDirectory()
    url = args.url or f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    store = Store.open(url)
    spec = Spec(agent=AGENT, fields=None, threshold=0.0, embedder=HashingEmbedder())
    load(store, spec, args.n, rng, console)
    queries = _texts(rng, args.queries)

    t = time.perf_counter()
    index = index_for(store, AGENT, spec.embedder)  # first search: loads the matrix
    first_load = time.perf_counter() - t
    rows: list[tuple[str, list[float]]] = []

    it = iter(queries * 2)
    rows.append(("tether search (nearest, top 5)",
                 _time(lambda: nearest(store, spec, next(it), 5), args.queries)))
    # One run per query, so every query records its rows (as each real run does).
    calls = iter([(store.submit(AGENT, f"run-{i}").run_id, q) for i, q in enumerate(queries)])
    rows.append(("tether ctx.examples (top 5 + record)",
                 _time(lambda: _examples_call(store, spec, *next(calls)), args.queries)))

    matrix = index.matrix[: index.n].copy()
    qvecs = spec.embedder.embed(queries)
    j = iter(range(10**9))

    def full_sort() -> object:
        q = qvecs[next(j) % len(qvecs)]
        return np.argsort(-(matrix @ q))[:5]

    rows.append(("baseline: brute force, full sort", _time(full_sort, args.queries)))

    def product() -> object:
        return matrix @ qvecs[next(j) % len(qvecs)]

    rows.append(("floor: matrix @ query alone", _time(product, args.queries)))

    def no_cache() -> object:
        with store.engine.connect() as conn:
            blobs = conn.execute(
                select(examples.c.vector).where(examples.c.agent == AGENT)
            ).scalars().all()
        m = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
        q = qvecs[next(j) % len(qvecs)]
        return np.argsort(-(m @ q))[:5]

    rows.append(("baseline: brute force, no cache", _time(no_cache, 5)))

    vec = qvecs[0]
    adds: list[float] = []
    refresh: list[float] = []
    for k in range(args.adds):
        values = example_values(spec, text=f"added {k}", vector=vec, input={"k": k},
                                corrected_output={"decision": "decline"}, reason="bench")
        t = time.perf_counter()
        store._transact(lambda conn, v=values: insert_example(conn, v))  # type: ignore[misc]
        adds.append(time.perf_counter() - t)
        t = time.perf_counter()
        index_for(store, AGENT, spec.embedder)
        refresh.append(time.perf_counter() - t)
    rows.append(("tether add example (insert, no model)", adds))
    rows.append(("tether index refresh after an add", refresh))

    table = Table(title=f"Example store, {args.n:,} examples, dim {spec.embedder.dim}, "
                        f"{store.dialect or url.split(':')[0]}")
    table.add_column("operation")
    table.add_column("median ms", justify="right")
    table.add_column("p95 ms", justify="right")
    table.add_column("samples", justify="right")
    for name, samples in rows:
        med, p95 = _ms(samples)
        table.add_row(name, f"{med:.2f}", f"{p95:.2f}", str(len(samples)))
    console.print(table)
    console.print(f"first search (loads the {args.n:,}-row matrix): {first_load:.2f} s")
    store.close()
    tmp.cleanup()


def _examples_call(store: Store, spec: Spec, run_id: int, text: str) -> object:
    """What ``ctx.examples(5)`` does once the case's text is built."""
    shown = nearest(store, spec, text, 5)
    record_shown(store, run_id, shown)
    return shown


if __name__ == "__main__":
    main()
