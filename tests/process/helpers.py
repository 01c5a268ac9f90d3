"""Running the real `tether` command in a project folder, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TETHER = [sys.executable, "-m", "tether"]


def env_for(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update({"TETHER_PROJECT_DIR": str(project), "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def tether(project: Path, *args: str, env: dict[str, str] | None = None,
           check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `tether ARGS` to completion and return what it printed."""
    proc = subprocess.run(
        [*TETHER, *args], cwd=project, env=env or env_for(project), capture_output=True,
        text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"tether {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def spawn(project: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start `tether ARGS` in the background."""
    return subprocess.Popen(
        [*TETHER, *args], cwd=project, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition: Callable[[], bool], *, timeout: float = 20, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
