"""What both sides of the benchmark share: trial records, percentiles, machine facts and the
cost of one SQLite commit on the disk under test."""

from __future__ import annotations

import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tether

WORKLOADS = ("one", "ten", "chain")
"""``one``: a run with one recorded step. ``ten``: a run with ten. ``chain``: three agents
(workflows) a -> b -> c linked by triggers, one step each; three runs per submitted task."""

STEPS_PER_RUN = {"one": 1, "ten": 10, "chain": 1, "keyed": 10}
RUNS_PER_TASK = {"one": 1, "ten": 1, "chain": 3, "keyed": 1}
"""``keyed`` (Tether only): ten steps with idempotency keys, each written (synced) before
its block runs, the counterpart of a DBOS step's checkpoint."""


@dataclass
class Trial:
    """One measured execution of a workload by one system."""

    system: str  # "tether" or "dbos"
    mode: str  # "full" or "relaxed" (DBOS: its SQLite defaults, reported as "default")
    workload: str
    concurrency: int
    tasks: int
    runs: int
    run_seconds: float
    """Wall time from start to the last run recorded (Tether: the worker; DBOS: the calls)."""
    submit_seconds: float = 0.0
    """Tether only: time to submit the tasks before the worker starts (not in run_seconds)."""
    step_seconds: list[float] = field(default_factory=list)
    """Wall time of each recorded step with a no-op body, measured inside the agent."""
    write_commits: int | None = None
    """Write transactions committed during the measured part (each one synced in full mode)."""
    round: int = 0

    @property
    def runs_per_second(self) -> float:
        return self.runs / self.run_seconds

    @property
    def end_to_end_per_second(self) -> float:
        return self.runs / (self.run_seconds + self.submit_seconds)

    @property
    def seconds_per_run(self) -> float:
        return self.run_seconds / self.runs

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("step_seconds")
        data["runs_per_second"] = self.runs_per_second
        data["end_to_end_runs_per_second"] = self.end_to_end_per_second
        if self.step_seconds:
            data["step_us_median"] = median(self.step_seconds) * 1e6
            data["step_us_p99"] = percentile(self.step_seconds, 99) * 1e6
            data["steps_timed"] = len(self.step_seconds)
        return data


class StepClock:
    """Collects step durations from agent threads (``list.append`` is atomic)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def reset(self) -> list[float]:
        out, self.samples = self.samples, []
        return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 1,000 samples is the 990th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class Counter:
    """A thread-safe counter for commit listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


# -- the machine ---------------------------------------------------------------------


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _revision() -> str:
    """The git commit of the Tether checkout measured, with ``+dirty`` for local edits."""
    root = Path(__file__).resolve().parent.parent
    rev = _cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    if not rev:
        return "unknown"
    dirty = _cmd(["git", "-C", str(root), "status", "--porcelain", "--", "tether"])
    return rev + ("+dirty" if dirty else "")


def machine_info(work_dir: Path) -> dict[str, Any]:
    """What the numbers were measured on."""
    lscpu = _cmd(["lscpu"])
    cpu = next(
        (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
        platform.processor() or "unknown",
    )
    mem = _cmd(["free", "-h"]).splitlines()
    df = _cmd(["df", "-hT", str(work_dir)]).splitlines()
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory": mem[1].split()[1] if len(mem) > 1 else "unknown",
        "disk": " ".join(df[1].split()[:2]) if len(df) > 1 else "unknown",
        "work_dir": str(work_dir),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
        "tether_revision": _revision(),
        "tether_path": str(Path(tether.__file__).parent),
    }
    try:
        import sqlalchemy

        info["sqlalchemy"] = sqlalchemy.__version__
    except ImportError:  # pragma: no cover - tether requires it
        pass
    try:
        from importlib.metadata import version

        info["dbos"] = version("dbos")
    except Exception:
        info["dbos"] = None
    return info


def commit_costs(work_dir: Path, commits: int = 400) -> dict[str, float]:
    """Median milliseconds of one tiny write transaction in SQLite, per configuration.

    ``wal_full`` is Tether's full durability, ``wal_normal`` its relaxed mode, and
    ``delete_full`` SQLite's own defaults (rollback journal, synchronous=FULL), which is
    what DBOS runs on.
    """
    out: dict[str, float] = {}
    for label, journal, sync in (
        ("wal_full", "wal", "FULL"),
        ("wal_normal", "wal", "NORMAL"),
        ("delete_full", "delete", "FULL"),
    ):
        folder = tempfile.mkdtemp(prefix="commit-", dir=work_dir)
        try:
            conn = sqlite3.connect(os.path.join(folder, "c.db"), isolation_level=None)
            conn.execute(f"PRAGMA journal_mode={journal}")
            conn.execute(f"PRAGMA synchronous={sync}")
            conn.execute("CREATE TABLE t (a INTEGER)")
            samples = []
            for i in range(commits):
                t0 = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t VALUES (?)", (i,))
                conn.execute("COMMIT")
                samples.append(time.perf_counter() - t0)
            conn.close()
            out[label] = median(samples) * 1e3
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return out
