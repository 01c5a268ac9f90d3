"""The Temporal provider against the same work written directly against Temporal.

    python bench/providers_temporal.py            # about 100 seconds on 2 cores
    python bench/providers_temporal.py --quick    # a smoke run (about 15 seconds)
    python bench/providers_temporal.py --json out.json

The work: a chain of three no-op agents ``a -> b -> c``. Three systems do it on one Temporal
dev server (started here, in memory), in one process each turn, alternating within every
round:

- **tether**: the Temporal provider on a PostgreSQL store (``--store sqlite`` for SQLite):
  ``a`` and ``b`` emit triggers, every run is its own ``TetherRun`` workflow, the store
  records every run, step-less output and trigger edge (full durability);
- **plain, 3 workflows**: three workflows, each running one activity and then starting the
  next as an abandoned child — the same shape as the harness (every agent its own durable,
  separately retried unit that starts its successor when it succeeds), with no store;
- **plain, 1 workflow**: one workflow running the three activities in sequence — what one
  team would write for a chain it owns end to end.

Measured: **latency**, one chain at a time, from submitting it (Tether: ``Project.submit``;
plain: ``start_workflow``) to the end of the third unit (Tether: ``c``'s outcome recorded);
**throughput**, ``--chains`` chains submitted at once, runs (three per chain) per second
until the last chain ends, with the CPU time per run of this process (the worker, and for
Tether its submissions, outbox and store client; PostgreSQL's own CPU is not counted) and
of the Temporal server. Same worker concurrency (``--concurrency`` activities at once),
same workflow sandbox settings and eager workflow start on every side. Results: median over
rounds; see the "Temporal provider" section of docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

# Only the standard library and temporalio at module level: the workflow sandbox imports
# this module to run the plain workflows defined below.
from temporalio import activity, workflow

# -- plain Temporal: the same work with no harness ---------------------------------------

PLAIN_DONE: dict[str, float] = {}
"""Chain id -> when its third activity ended (same process, so one clock)."""
PLAIN_ENDED = threading.Condition()

NOOP_TIMEOUT = timedelta(seconds=30)


@activity.defn(name="plain_noop")
def plain_noop(chain: str, index: int) -> dict[str, int]:
    """One agent's work: nothing. The third one records when the chain ended."""
    if index == 2:
        with PLAIN_ENDED:
            PLAIN_DONE[chain] = time.time()
            PLAIN_ENDED.notify_all()
    return {"index": index}


@workflow.defn(name="PlainChain")
class PlainChain:
    """One workflow, three activities in sequence."""

    @workflow.run
    async def run(self, chain: str) -> None:
        for index in range(3):
            await workflow.execute_activity(
                "plain_noop", args=[chain, index], start_to_close_timeout=NOOP_TIMEOUT
            )


@workflow.defn(name="PlainStep")
class PlainStep:
    """One workflow per agent: its activity, then the next agent's workflow."""

    @workflow.run
    async def run(self, chain: str, index: int) -> None:
        await workflow.execute_activity(
            "plain_noop", args=[chain, index], start_to_close_timeout=NOOP_TIMEOUT
        )
        if index < 2:
            await workflow.start_child_workflow(
                "PlainStep",
                args=[chain, index + 1],
                id=f"{chain}-{index + 1}",
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            )


# -- measurement -----------------------------------------------------------------------


SERVER_PID = 0
"""The Temporal dev server's process id, for its CPU time."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux), 0 if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1)]


def wait_all(
    ended: threading.Condition, done: dict[str, float], chains: list[str], timeout: float = 120
) -> None:
    """Block (without polling: the workers share this process) until every chain ended."""
    with ended:
        if not ended.wait_for(lambda: all(c in done for c in chains), timeout):
            raise TimeoutError(f"{sum(c not in done for c in chains)} chains did not finish")


class Side:
    """One system: ``submit(chain)`` starts a chain; ``done`` maps chain -> end time."""

    name = ""
    done: dict[str, float]
    ended: threading.Condition

    def submit_many(self, chains: list[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def measure(self, *, latency_chains: int, throughput_chains: int) -> dict[str, Any]:
        tag = secrets.token_hex(3)
        latencies = []
        for i in range(latency_chains):
            chain = f"lat-{tag}-{i}"
            # Arrive at a random moment, as work does: right after the previous chain ended,
            # Tether's outbox has just polled and a submission would wait a whole interval.
            time.sleep(random.uniform(0, 0.05))
            began = time.time()
            self.submit_many([chain])
            wait_all(self.ended, self.done, [chain])
            latencies.append(self.done[chain] - began)
        chains = [f"tp-{tag}-{i}" for i in range(throughput_chains)]
        cpu, server = time.process_time(), cpu_seconds(SERVER_PID)
        began = time.time()
        self.submit_many(chains)
        wait_all(self.ended, self.done, chains)
        elapsed = max(self.done[c] for c in chains) - began
        runs = 3 * throughput_chains
        return {
            "latencies": latencies,
            "runs_per_second": runs / elapsed,
            "worker_cpu_ms_per_run": (time.process_time() - cpu) / runs * 1000,
            "server_cpu_ms_per_run": (cpu_seconds(SERVER_PID) - server) / runs * 1000,
        }


class PlainSide(Side):
    """Plain Temporal, on its own loop thread with its own worker."""

    def __init__(self, address: str, shape: str, concurrency: int, runner: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from temporalio.client import Client
        from temporalio.worker import Worker

        self.name = "plain, 3 workflows" if shape == "steps" else "plain, 1 workflow"
        self.shape = shape
        # Defined in the module the sandbox imports (not __main__): see main().
        module = sys.modules["providers_temporal"]
        self.done, self.ended = module.PLAIN_DONE, module.PLAIN_ENDED
        self.queue = f"plain-{shape}-{secrets.token_hex(3)}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = self.call(Client.connect(address))
        self.pool = ThreadPoolExecutor(max_workers=concurrency)

        async def make() -> Any:
            return Worker(
                self.client,
                task_queue=self.queue,
                workflows=[module.PlainChain, module.PlainStep],
                activities=[module.plain_noop],
                activity_executor=self.pool,
                max_concurrent_activities=concurrency,
                workflow_runner=runner,
            )

        self.worker = self.call(make())
        self.running = asyncio.run_coroutine_threadsafe(self.worker.run(), self.loop)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def submit_many(self, chains: list[str]) -> None:
        async def start(chain: str) -> None:
            if self.shape == "steps":
                await self.client.start_workflow(
                    "PlainStep", args=[chain, 0], id=f"{chain}-0", task_queue=self.queue,
                    request_eager_start=True,
                )
            else:
                await self.client.start_workflow(
                    "PlainChain", chain, id=chain, task_queue=self.queue,
                    request_eager_start=True,
                )

        async def start_all() -> None:
            await asyncio.gather(*(start(c) for c in chains))

        self.call(start_all())

    def close(self) -> None:
        self.call(self.worker.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.pool.shutdown()


class TetherSide(Side):
    """The Temporal provider in this process, on a store of its own."""

    name = "tether (Temporal provider)"

    def __init__(
        self, address: str, url: str, concurrency: int, work_dir: Path, poll: float
    ) -> None:
        import tether
        from tether.providers import get_provider

        self.done = {}
        self.ended = threading.Condition()

        @tether.agent(emits="a.done")
        def a(ctx: tether.Context) -> dict[str, int]:
            return {"index": 0}

        @tether.agent(subscribes="a.done", emits="b.done")
        def b(ctx: tether.Context) -> dict[str, int]:
            return {"index": 1}

        @tether.agent(subscribes="b.done")
        def c(ctx: tether.Context) -> dict[str, Any]:
            return {"index": 2, "chain": ctx.key}  # the key is the chain id

        self.project = tether.Project.load(
            work_dir,
            agents=[a, b, c],
            database_url=url,
            provider="temporal",
            temporal_address=address,
            task_queue=f"tether-bench-{secrets.token_hex(3)}",
            concurrency=concurrency,
            # Submissions reach the outbox when it next polls (as from any other process):
            # the first hop of a chain waits half of this on average. The later hops do
            # not wait: a finished run wakes its worker's outbox.
            poll_interval=poll,
        )
        self.provider = get_provider(self.project)

        def on_complete(completion: Any) -> None:
            # Called once c's outcome is recorded: the end of a chain.
            chain = (completion.output or {}).get("chain")
            if chain is not None:
                with self.ended:
                    self.done[chain] = time.time()
                    self.ended.notify_all()
        self.thread = threading.Thread(
            target=lambda: self.provider.run(on_complete=on_complete), daemon=True
        )
        self.thread.start()
        time.sleep(1.0)  # connected and polling

    def submit_many(self, chains: list[str]) -> None:
        for chain in chains:
            self.project.submit("a", chain)

    def close(self) -> None:
        self.provider.stop()
        self.thread.join(30)
        self.project.close()


# -- services ----------------------------------------------------------------------------


@contextlib.contextmanager
def dev_server() -> Iterator[str]:
    import socket
    import subprocess

    from tether.cli.temporal import dev_server_command

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    port = free()
    proc = subprocess.Popen(
        dev_server_command(port, http_port=free(), metrics_port=free()),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the Temporal dev server did not start") from None
                time.sleep(0.05)
        global SERVER_PID
        SERVER_PID = proc.pid
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(os.environ.get("TETHER_TEST_PG_URL", "postgresql://postgres@127.0.0.1/test"))
    server = server.set(drivername="postgresql+psycopg")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"tether_bench_temporal_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- the command -------------------------------------------------------------------------


def main() -> None:
    import argparse
    import json
    import tempfile

    from rich.console import Console
    from rich.table import Table
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--chains", type=int, default=None, help="chains for throughput")
    parser.add_argument("--latency-chains", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--poll", type=float, default=0.05,
                        help="Tether's outbox poll interval, s (default 0.05; setting's 0.2)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    chains = args.chains or (40 if args.quick else 150)
    latency_chains = args.latency_chains or (10 if args.quick else 40)
    console = Console(width=max(130, Console().width))

    # The plain workflows must live in an importable module for the sandbox (this file
    # runs as __main__): import it under its own name.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    __import__("providers_temporal")
    # The same sandbox settings as the provider's (which passes `tether` through): the
    # workflows' own module is imported once, not once per workflow.
    plain_runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("providers_temporal")
    )

    results: dict[str, list[dict[str, Any]]] = {}
    began = time.monotonic()
    with dev_server() as address, contextlib.ExitStack() as stack:
        if args.store == "postgresql":
            url = stack.enter_context(pg_database())
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            url = f"sqlite:///{tmp}/tether.db"
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        factories: list[Callable[[], Side]] = [
            lambda: TetherSide(address, url, args.concurrency, work_dir, args.poll),
            lambda: PlainSide(address, "steps", args.concurrency, plain_runner),
            lambda: PlainSide(address, "chain", args.concurrency, plain_runner),
        ]
        for r in range(rounds):
            for make in factories:
                side = make()
                try:
                    # One warm-up chain: connections, caches and the sandbox's first import.
                    side.measure(latency_chains=2, throughput_chains=2)
                    result = side.measure(
                        latency_chains=latency_chains, throughput_chains=chains
                    )
                finally:
                    side.close()
                results.setdefault(side.name, []).append(result)
                console.print(
                    f"round {r + 1}/{rounds} {side.name}: "
                    f"{result['runs_per_second']:.0f} runs/s, latency median "
                    f"{median(result['latencies']) * 1000:.1f} ms",
                    highlight=False,
                )

    table = Table(
        title=f"Three-agent chain on Temporal ({args.store} store for Tether, outbox poll "
        f"{args.poll} s, concurrency {args.concurrency}, {rounds} rounds, {chains} chains "
        "for throughput)"
    )
    for column in ("system", "runs/s", "latency median ms", "latency p99 ms",
                   "time vs plain 3 wf", "time vs plain 1 wf", "worker CPU ms/run",
                   "Temporal CPU ms/run"):
        table.add_column(column, justify="left" if column == "system" else "right")
    summary: dict[str, dict[str, float]] = {}
    for name, trials in results.items():
        lat = [x for t in trials for x in t["latencies"]]
        summary[name] = {
            "runs_per_second": median([t["runs_per_second"] for t in trials]),
            "latency_median_ms": median(lat) * 1000,
            "latency_p99_ms": percentile(lat, 99) * 1000,
            "worker_cpu_ms_per_run": median([t["worker_cpu_ms_per_run"] for t in trials]),
            "server_cpu_ms_per_run": median([t["server_cpu_ms_per_run"] for t in trials]),
        }
    steps, chain = summary["plain, 3 workflows"], summary["plain, 1 workflow"]
    for name, s in summary.items():
        # Time for the same work: 1 / throughput. "+40%" means 1.4x plain's time.
        vs = [steps["runs_per_second"] / s["runs_per_second"] - 1,
              chain["runs_per_second"] / s["runs_per_second"] - 1]
        table.add_row(
            name,
            f"{s['runs_per_second']:.0f}",
            f"{s['latency_median_ms']:.1f}",
            f"{s['latency_p99_ms']:.1f}",
            *(f"{v:+.0%}" for v in vs),
            f"{s['worker_cpu_ms_per_run']:.1f}",
            f"{s['server_cpu_ms_per_run']:.1f}",
        )
    console.print(table)
    t = summary["tether (Temporal provider)"]
    lat_steps = t["latency_median_ms"] / steps["latency_median_ms"] - 1
    lat_chain = t["latency_median_ms"] / chain["latency_median_ms"] - 1
    console.print(
        f"Tether's median latency vs plain 3 workflows {lat_steps:+.0%}, vs plain 1 workflow "
        f"{lat_chain:+.0%}; whole bench {time.monotonic() - began:.0f} s",
        highlight=False,
    )
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "trials": results}, indent=2))


if __name__ == "__main__":
    main()
