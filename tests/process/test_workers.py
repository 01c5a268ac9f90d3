"""Worker processes as users run them: killed with SIGKILL, stopped with Ctrl-C, run in pairs.

Each test writes a real project folder with an agents/ module and drives the `tether`
command in subprocesses. The agents append one line per execution to a log file, so the
tests can count executions independently of what the store says.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.process.helpers import env_for, spawn, tether, wait_for

AGENTS = textwrap.dedent(
    """
    import os
    import time

    import tether

    LOG = os.environ["TEST_LOG"]
    FAST = tether.RetryPolicy(max_attempts=3, initial_delay=0.05, jitter=0)


    def _log(ctx, what):
        with open(LOG, "a") as fh:
            fh.write(f"{what} {ctx.run_id} {ctx.key} {ctx.attempt} {os.getpid()}\\n")


    def _wait_for_workers(n):
        # Hold the run until n worker processes have logged a start: a worker that
        # starts late on a busy machine still gets work, so a pair test can't race.
        deadline = time.time() + 60
        while n and time.time() < deadline:
            with open(LOG) as fh:
                if len({line.split()[-1] for line in fh}) >= n:
                    return
            time.sleep(0.01)

    @tether.agent(emits="work.done", retry=FAST)
    def work(ctx):
        with ctx.step("call the slow service", key=f"call-{ctx.key}"):
            # Logged inside the block: by now the keyed step is durably recorded as started.
            _log(ctx, "start")
            _wait_for_workers(int(os.environ.get("WAIT_FOR_WORKERS", "0")))
            if ctx.attempt == 1:
                time.sleep(float(os.environ.get("FIRST_ATTEMPT_SLEEP", "0")))
        _log(ctx, "end")
        return {"pid": os.getpid()}


    @tether.agent(subscribes="work.done")
    def after(ctx):
        _log(ctx, "after")
        return {"saw": ctx.upstream["work.done"]["pid"]}
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "work.py").write_text(AGENTS)
    return tmp_path


def log_lines(project: Path) -> list[list[str]]:
    path = project / "log.txt"
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines()]


def show(project: Path, ref: str, env: dict[str, str]) -> dict:
    return json.loads(tether(project, "show", ref, "--json", env=env).stdout)


def test_sigkilled_worker_loses_nothing_and_its_run_is_retried(project: Path) -> None:
    env = env_for(project, TEST_LOG=str(project / "log.txt"), FIRST_ATTEMPT_SLEEP="60")
    tether(project, "submit", "work", "case-1", env=env)
    victim = spawn(project, "worker", "--lease", "1", "--poll", "0.02", env=env)
    try:
        wait_for(lambda: any(r[0] == "start" for r in log_lines(project)), what="run to start")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
    # The run is still `running` under the dead worker's lease; a new worker reaps it once
    # the lease expires and retries it.
    rescuer = tether(project, "worker", "--until-idle", "--lease", "1", "--poll", "0.02",
                     "--json", env=env, timeout=60)
    stats = json.loads(rescuer.stdout)
    assert stats["reaped"] == 1

    task = show(project, "work/case-1", env)
    first, second = task["runs"]
    assert (first["status"], first["failure_class"]) == ("failed", "retryable")
    assert "worker lost" in first["failure_reason"]
    # The keyed step was durably recorded as started before the kill: the retry can see it.
    assert [(s["key"], s["status"]) for s in first["steps"]] == [("call-case-1", "running")]
    assert (second["status"], second["attempt"], second["reason"]) == ("succeeded", 2, "retry")
    assert task["status"] == "succeeded"
    assert len(task["triggers_out"]) == 1  # the downstream edge, exactly once

    downstream = show(project, "after/case-1", env)
    assert [r["status"] for r in downstream["runs"]] == ["succeeded"]
    lines = log_lines(project)
    assert [r[0] for r in lines] == ["start", "start", "end", "after"]


def test_two_workers_never_run_the_same_run_twice(project: Path) -> None:
    env = env_for(project, TEST_LOG=str(project / "log.txt"), FIRST_ATTEMPT_SLEEP="0.003",
                  WAIT_FOR_WORKERS="2")
    n = 120
    # Submitted through the Python API in one process: 120 CLI calls would be slow.
    script = (
        "import tether\np = tether.Project.load()\n"
        f"[p.submit('work', f'case-{{i}}') for i in range({n})]"
    )
    subprocess.run([sys.executable, "-c", script], cwd=project, env=env, check=True)
    workers = [
        spawn(project, "worker", "--until-idle", "-c", "4", "--poll", "0.01", "--json", env=env)
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=120) for w in workers]
    for w, (_out, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err
    stats = [json.loads(out) for out, _ in outs]
    assert sum(s["succeeded"] for s in stats) == 2 * n  # work + after for each case
    assert all(s["succeeded"] > 0 for s in stats), "both workers should have taken work"

    lines = log_lines(project)
    starts = [r[1] for r in lines if r[0] == "start"]
    afters = [r[1] for r in lines if r[0] == "after"]
    assert len(starts) == len(set(starts)) == n  # every run executed exactly once
    assert len(afters) == len(set(afters)) == n
    assert len({r[4] for r in lines}) == 2  # two processes did the work
    listed = json.loads(tether(project, "tasks", "--status", "succeeded", "--limit", "1000",
                               "--json", env=env).stdout)
    assert len(listed) == 2 * n


def test_ctrl_c_lets_the_running_run_finish(project: Path) -> None:
    env = env_for(project, TEST_LOG=str(project / "log.txt"), FIRST_ATTEMPT_SLEEP="1.0")
    tether(project, "submit", "work", "case-1", env=env)
    w = spawn(project, "worker", "--poll", "0.02", env=env)
    wait_for(lambda: any(r[0] == "start" for r in log_lines(project)), what="run to start")
    w.send_signal(signal.SIGINT)
    _out, err = w.communicate(timeout=30)
    assert w.returncode == 0, err
    assert "stopping" in err
    task = show(project, "work/case-1", env)
    assert [r["status"] for r in task["runs"]] == ["succeeded"]
    # It stopped claiming: the downstream run it enabled is still queued for the next worker.
    assert show(project, "after/case-1", env)["status"] == "queued"


def test_second_ctrl_c_releases_the_run_for_a_retry(project: Path) -> None:
    env = env_for(project, TEST_LOG=str(project / "log.txt"), FIRST_ATTEMPT_SLEEP="30")
    tether(project, "submit", "work", "case-1", env=env)
    w = spawn(project, "worker", "--poll", "0.02", env=env)
    wait_for(lambda: any(r[0] == "start" for r in log_lines(project)), what="run to start")
    w.send_signal(signal.SIGINT)
    time.sleep(0.3)
    w.send_signal(signal.SIGINT)
    began = time.monotonic()
    _out, err = w.communicate(timeout=30)
    assert time.monotonic() - began < 10, "a second Ctrl-C must not wait for the agent"
    assert w.returncode == 0, err
    task = show(project, "work/case-1", env)
    first, second = task["runs"]
    assert first["status"] == "failed" and "stopped before the run finished" in (
        first["failure_reason"]
    )
    # Released, not counted against the agent: the same attempt number is queued again.
    assert (second["status"], second["attempt"]) == ("queued", 1)
    assert [r[0] for r in log_lines(project)] == ["start"]
