"""Benchmark the local worker on SQLite against DBOS Transact, doing the same no-op work.

    python bench/run.py                 # the full run (about 3 minutes on 2 cores)
    python bench/run.py --quick         # a smoke run (about 20 seconds)
    python bench/run.py --json out.json # also keep every trial as JSON

Workloads: runs with one recorded step, runs with ten, and a chain of three agents linked
by triggers. Tether runs at full durability (every commit synced) and relaxed; DBOS runs on
its SQLite defaults. Systems alternate within every round; the report gives medians over
rounds. See docs/benchmarks.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import tether_side
from common import (
    STEPS_PER_RUN,
    WORKLOADS,
    Trial,
    commit_costs,
    machine_info,
    median,
    percentile,
)
from rich.console import Console
from rich.table import Table

console = Console() if sys.stdout.isatty() else Console(width=130)

TARGETS = {
    "full_runs_per_second": 500.0,
    "relaxed_runs_per_second": 1000.0,
    "step_overhead_us": 200.0,
    "ratio_to_dbos": 10.0,
}

Key = tuple[str, str, str, int]  # system, mode, workload, concurrency


def _load_dbos() -> Any:
    try:
        import dbos_side
    except ImportError as exc:
        console.print(
            f"DBOS is not installed ({exc}); running the Tether side only. For the "
            "comparison: pip install -e '.[bench]'",
            style="yellow",
            markup=False,
        )
        return None
    return dbos_side


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=None,
                   help="runs per throughput trial (default 500): N one-step runs, N ten-step "
                        "runs, N/3 chains of three runs")
    p.add_argument("--latency-runs", type=int, default=None,
                   help="tasks per single-threaded trial, for per-step latency without "
                        "contention (default 100)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds (default 3); systems alternate in each")
    p.add_argument("--concurrency", default=None,
                   help="comma-separated worker/client thread counts to try (default 4,16)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: --runs 200 --latency-runs 30 --rounds 1 --concurrency 4")
    p.add_argument("--no-dbos", action="store_true", help="run the Tether side only")
    p.add_argument("--no-relaxed", action="store_true", help="skip Tether's relaxed mode")
    p.add_argument("--no-keyed", action="store_true",
                   help="skip Tether's runs of ten keyed steps (each one synced before its block)")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the databases go (default: the system temp folder); it must "
                        "be on the disk you want to measure, not a tmpfs")
    p.add_argument("--json", type=Path, default=None, help="write every trial and the summary")
    args = p.parse_args()
    defaults = (
        {"runs": 200, "latency_runs": 30, "rounds": 1, "concurrency": "4"}
        if args.quick
        else {"runs": 500, "latency_runs": 100, "rounds": 3, "concurrency": "4,16"}
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.levels = sorted({int(c) for c in str(args.concurrency).split(",") if c.strip()})
    return args


def _tasks(workload: str, runs: int) -> int:
    """Tasks to submit for about ``runs`` runs of a workload."""
    return max(1, {"one": runs, "ten": runs, "chain": runs // 3}[workload])


def _schedule(args: argparse.Namespace, dbos: Any) -> list[tuple[str, str]]:
    systems = [("tether", "full")]
    if dbos is not None:
        systems.append(("dbos", "default"))
    if not args.no_relaxed:
        systems.append(("tether", "relaxed"))
    return systems


def main() -> int:
    args = _parse()
    dbos = None if args.no_dbos else _load_dbos()
    work_dir = Path(args.dir or tempfile.gettempdir()).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    machine = machine_info(work_dir)
    if dbos is None:
        machine["dbos"] = None
    console.print(
        f"[bold]Tether local worker vs DBOS on SQLite[/bold]  {machine['cpus']} CPUs "
        f"({machine['cpu_model']}), {machine['memory']} RAM, {machine['disk']} at "
        f"{work_dir}; Python {machine['python']}, SQLite {machine['sqlite']}, "
        f"DBOS {machine['dbos'] or 'not installed'}; Tether {machine['tether_revision']} "
        f"({machine['tether_path']}); "
        f"load average {machine['load_average_at_start'][0]:.2f}"
    )
    if machine["load_average_at_start"][0] > 1.0:
        console.print(
            "[yellow]Other processes are busy on this machine (1-minute load average "
            f"{machine['load_average_at_start'][0]:.2f}); expect lower, noisier numbers.[/yellow]"
        )
    costs = commit_costs(work_dir)
    console.print(
        "One SQLite write commit here: "
        f"WAL synchronous=FULL {costs['wal_full']:.3f} ms, "
        f"WAL NORMAL {costs['wal_normal']:.3f} ms, "
        f"rollback journal FULL (SQLite's default) {costs['delete_full']:.3f} ms"
    )
    checks = {"tether": tether_side.durability_check(work_dir)}
    if dbos is not None:
        checks["dbos"] = dbos.durability_check(work_dir)
    console.print(
        "Durability as configured: "
        + "; ".join(
            f"{sys_} {mode + ' ' if sys_ == 'tether' else ''}"
            f"journal={v['journal_mode']} synchronous={v['synchronous']}"
            for sys_, modes in checks.items()
            for mode, v in (modes.items() if sys_ == "tether" else [("", modes)])
        )
    )

    def run_one(system: str, mode: str, workload: str, c: int, tasks: int, rnd: int) -> Trial:
        if system == "tether":
            return tether_side.trial(workload, tasks=tasks, concurrency=c, durability=mode,
                                     work_dir=work_dir, round_no=rnd)
        return dbos.trial(workload, tasks=tasks, concurrency=c, work_dir=work_dir,
                          round_no=rnd)

    systems = _schedule(args, dbos)
    # Warm up imports, statement caches and the page cache; these trials are not kept.
    for system, mode in systems:
        run_one(system, mode, "chain", 4, 20, -1)

    trials: list[Trial] = []
    for rnd in range(args.rounds):
        order = systems[rnd % len(systems):] + systems[: rnd % len(systems)]
        plan = [(w, c, _tasks(w, args.runs)) for w in WORKLOADS for c in args.levels]
        plan += [(w, 1, args.latency_runs) for w in ("one", "ten") if 1 not in args.levels]
        if not args.no_keyed:
            plan += [("keyed", c, args.latency_runs) for c in sorted({1, max(args.levels)})]
        for workload, c, tasks in plan:
            for system, mode in order:
                if workload == "keyed" and system != "tether":
                    continue  # every DBOS step is checkpointed already: "ten" is its match
                t = run_one(system, mode, workload, c, tasks, rnd)
                trials.append(t)
                console.print(
                    f"[dim]round {rnd + 1}/{args.rounds}  {system:<6} {mode:<7} "
                    f"{workload:<5} c={c:<3} {t.runs_per_second:8.0f} runs/s[/dim]"
                )

    machine["load_average_at_end"] = list(os.getloadavg())
    summary = summarize(trials, args.levels)
    report(summary, costs, args)
    elapsed = time.perf_counter() - started
    console.print(f"[dim]benchmark took {elapsed:.0f} s[/dim]")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "commit_ms": costs,
                    "durability": checks,
                    "args": {k: (str(v) if isinstance(v, Path) else v)
                             for k, v in vars(args).items()},
                    "summary": summary,
                    "trials": [t.to_json() for t in trials],
                    "elapsed_seconds": elapsed,
                },
                indent=2,
            )
        )
        console.print(f"wrote {args.json}")
    return 0


# -- summarising ---------------------------------------------------------------------


def summarize(trials: list[Trial], levels: list[int]) -> dict[str, Any]:
    groups: dict[Key, list[Trial]] = defaultdict(list)
    for t in trials:
        groups[(t.system, t.mode, t.workload, t.concurrency)].append(t)

    configs: dict[str, dict[str, Any]] = {}
    for (system, mode, workload, c), ts in sorted(groups.items()):
        rates = [t.runs_per_second for t in ts]
        steps = [s for t in ts for s in t.step_seconds]
        commits = [t.write_commits / t.runs for t in ts if t.write_commits is not None]
        configs[f"{system}/{mode}/{workload}/c{c}"] = {
            "system": system,
            "mode": mode,
            "workload": workload,
            "concurrency": c,
            "tasks": ts[0].tasks,
            "runs": ts[0].runs,
            "rounds": len(ts),
            "runs_per_second": median(rates),
            "runs_per_second_min": min(rates),
            "runs_per_second_max": max(rates),
            "end_to_end_runs_per_second": median([t.end_to_end_per_second for t in ts]),
            "submits_per_second": (
                median([t.tasks / t.submit_seconds for t in ts])
                if ts[0].submit_seconds
                else None
            ),
            "seconds_per_run": median([t.seconds_per_run for t in ts]),
            "step_us_median": median(steps) * 1e6 if steps else None,
            "step_us_p99": percentile(steps, 99) * 1e6 if steps else None,
            "steps_timed": len(steps),
            "commits_per_run": median(commits) if commits else None,
        }

    def cfg(system: str, mode: str, workload: str, c: int) -> dict[str, Any] | None:
        return configs.get(f"{system}/{mode}/{workload}/c{c}")

    def best(system: str, mode: str, workload: str) -> dict[str, Any] | None:
        found = [cfg(system, mode, workload, c) for c in levels]
        found = [f for f in found if f is not None]
        return max(found, key=lambda f: f["runs_per_second"]) if found else None

    systems = sorted({(t.system, t.mode) for t in trials})
    headline: dict[str, Any] = {}
    for workload in WORKLOADS:
        row: dict[str, Any] = {}
        for system, mode in systems:
            b = best(system, mode, workload)
            if b is not None:
                row[f"{system}/{mode}"] = {
                    "runs_per_second": b["runs_per_second"],
                    "concurrency": b["concurrency"],
                    "end_to_end_runs_per_second": b["end_to_end_runs_per_second"],
                    "commits_per_run": b["commits_per_run"],
                }
        dbos_rate = row.get("dbos/default", {}).get("runs_per_second")
        for key in ("tether/full", "tether/relaxed"):
            if key in row and dbos_rate:
                row[key]["ratio_to_dbos"] = row[key]["runs_per_second"] / dbos_rate
                row[key]["end_to_end_ratio_to_dbos"] = (
                    row[key]["end_to_end_runs_per_second"] / dbos_rate
                )
        headline[workload] = row

    per_step: dict[str, Any] = {}
    top = max(levels)
    for system, mode in systems:
        for workload in ("ten", "keyed"):
            alone = cfg(system, mode, workload, 1)
            loaded = best(system, mode, workload) if workload == "ten" else cfg(
                system, mode, workload, top
            )
            entry: dict[str, Any] = {}
            if alone is not None:
                entry["alone"] = _step_entry(alone, cfg(system, mode, "one", 1))
            if loaded is not None:
                c = loaded["concurrency"]
                one = cfg(system, mode, "one", c)
                # Only a one-step trial of the same size gives an unbiased difference.
                same = one is not None and one["tasks"] == loaded["tasks"]
                entry["loaded"] = _step_entry(loaded, one if same else None)
            if entry:
                label = f"{system}/{mode}" + (" keyed" if workload == "keyed" else "")
                per_step[label] = entry
    return {"configs": configs, "headline": headline, "per_step": per_step}


def _step_entry(ten: dict[str, Any], one: dict[str, Any] | None) -> dict[str, Any]:
    entry = {
        "concurrency": ten["concurrency"],
        "median_us": ten["step_us_median"],
        "p99_us": ten["step_us_p99"],
        "steps_timed": ten["steps_timed"],
    }
    if one is not None:
        entry["marginal_us"] = _marginal(one, ten)
    return entry


def _marginal(one: dict[str, Any], ten: dict[str, Any]) -> float:
    """(time per ten-step run - time per one-step run) / 9: what one more step costs the
    worker in throughput terms, its write included."""
    extra = STEPS_PER_RUN[ten["workload"]] - STEPS_PER_RUN["one"]
    return (ten["seconds_per_run"] - one["seconds_per_run"]) / extra * 1e6


# -- reporting -----------------------------------------------------------------------


def _f(value: float | None, fmt: str = "{:,.0f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _ok(met: bool | None) -> str:
    return {True: "[green]met[/green]", False: "[red]missed[/red]", None: "-"}[met]


def report(summary: dict[str, Any], costs: dict[str, float], args: argparse.Namespace) -> None:
    head = summary["headline"]
    has_dbos = any("dbos/default" in row for row in head.values())
    has_relaxed = any("tether/relaxed" in row for row in head.values())

    t = Table(title="Throughput, runs per second (median of rounds, best concurrency)")
    t.add_column("workload")
    t.add_column("Tether full", justify="right")
    t.add_column("incl. submit", justify="right")
    if has_relaxed:
        t.add_column("Tether relaxed", justify="right")
    if has_dbos:
        t.add_column("DBOS", justify="right")
        t.add_column("full ÷ DBOS", justify="right")
        t.add_column("incl. submit ÷ DBOS", justify="right")
        if has_relaxed:
            t.add_column("relaxed ÷ DBOS", justify="right")
    labels = {"one": "1 step", "ten": "10 steps", "chain": "chain of 3 (runs)"}
    for workload, row in head.items():
        full = row.get("tether/full", {})
        relaxed = row.get("tether/relaxed", {})
        d = row.get("dbos/default", {})

        def rate(r: dict[str, Any]) -> str:
            if not r:
                return "-"
            return f"{r['runs_per_second']:,.0f} (c={r['concurrency']})"

        cells = [labels[workload], rate(full), _f(full.get("end_to_end_runs_per_second"))]
        if has_relaxed:
            cells.append(rate(relaxed))
        if has_dbos:
            cells += [
                rate(d),
                _f(full.get("ratio_to_dbos"), "{:.1f}x"),
                _f(full.get("end_to_end_ratio_to_dbos"), "{:.1f}x"),
            ]
            if has_relaxed:
                cells.append(_f(relaxed.get("ratio_to_dbos"), "{:.1f}x"))
        t.add_row(*cells)
    console.print(t)

    s = Table(title="Harness time per recorded step, no-op body (µs)")
    for col in ("steps", "c=1: median", "p99", "(tk - t1)/(k-1)", "under load: median", "p99",
                "(tk - t1)/(k-1)"):
        s.add_column(col, justify="left" if col == "steps" else "right")
    for name, entry in summary["per_step"].items():
        alone = entry.get("alone", {})
        loaded = entry.get("loaded", {})
        keyed = name.endswith(" keyed")
        s.add_row(
            name.replace("/default", "").replace("/", " "),
            _f(alone.get("median_us"), "{:,.1f}"),
            _f(alone.get("p99_us"), "{:,.1f}"),
            # Unkeyed steps cost a few µs: at c=1 the difference drowns in commit jitter.
            _f(alone.get("marginal_us") if keyed or name.startswith("dbos") else None,
               "{:,.1f}"),
            _f(loaded.get("median_us"), "{:,.1f}")
            + (f" (c={loaded['concurrency']})" if loaded else ""),
            _f(loaded.get("p99_us"), "{:,.1f}"),
            _f(loaded.get("marginal_us"), "{:,.1f}"),
        )
    console.print(s)
    console.print(
        "[dim]median/p99: wall time of each `with ctx.step()` block (DBOS: each @DBOS.step "
        "call) measured inside the agent, over every step of every round's ten-step runs. "
        "(tk - t1)/(k-1): extra worker time per run for each extra step, its write included, "
        "from runs of ten steps against runs of one of the same trial size. Keyed steps are "
        "written (synced in full mode) before their block runs; unkeyed ones with the run's "
        "outcome.[/dim]"
    )

    d = Table(title="Every configuration (median over rounds)")
    for col in ("system", "mode", "workload", "c", "runs", "runs/s", "min-max",
                "submits/s", "write commits/run"):
        d.add_column(col, justify="right" if col not in ("system", "mode", "workload") else "left")
    for c in summary["configs"].values():
        d.add_row(
            c["system"], c["mode"], c["workload"], str(c["concurrency"]), str(c["runs"]),
            _f(c["runs_per_second"]),
            f"{c['runs_per_second_min']:,.0f}-{c['runs_per_second_max']:,.0f}",
            _f(c["submits_per_second"]),
            _f(c["commits_per_run"], "{:.2f}") if c["system"] == "tether" else
            _f(c["commits_per_run"], "{:.1f} txn"),
        )
    console.print(d)

    g = Table(title="Against the targets")
    for col in ("target", "measured", ""):
        g.add_column(col)
    one = head["one"]
    full = one.get("tether/full", {}).get("runs_per_second")
    relaxed = one.get("tether/relaxed", {}).get("runs_per_second")
    g.add_row("≥ 500 single-step runs/s, full durability", _f(full),
              _ok(None if full is None else full >= TARGETS["full_runs_per_second"]))
    if relaxed is not None:
        g.add_row("≥ 1,000 single-step runs/s, relaxed", _f(relaxed),
                  _ok(relaxed >= TARGETS["relaxed_runs_per_second"]))
    ratio = one.get("tether/full", {}).get("ratio_to_dbos")
    if ratio is not None:
        g.add_row("≥ 10x DBOS, single step, full durability", f"{ratio:.1f}x",
                  _ok(ratio >= TARGETS["ratio_to_dbos"]))
    step = summary["per_step"].get("tether/full", {})
    for where in ("alone", "loaded"):
        e = step.get(where)
        if not e:
            continue
        values = [e.get("p99_us")] + ([e.get("marginal_us")] if where == "loaded" else [])
        worst = max(v for v in values if v is not None)
        shown = f"median {_f(e.get('median_us'), '{:.0f}')}, p99 {_f(e.get('p99_us'), '{:.0f}')}"
        if where == "loaded":
            shown += f", (t10 - t1)/9 {_f(e.get('marginal_us'), '{:.0f}')}"
        g.add_row(
            f"< 200 µs per recorded step, full ({'c=1' if where == 'alone' else 'under load'})",
            shown,
            _ok(worst < TARGETS["step_overhead_us"]),
        )
    keyed = summary["per_step"].get("tether/full keyed", {}).get("alone")
    if keyed:
        g.add_row(
            "(keyed steps, each synced before its block, c=1)",
            f"median {_f(keyed.get('median_us'), '{:.0f}')}, "
            f"p99 {_f(keyed.get('p99_us'), '{:.0f}')}",
            _ok(keyed["p99_us"] < TARGETS["step_overhead_us"]),
        )
    console.print(g)


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sys.exit(main())

