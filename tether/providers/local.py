"""The default provider: the embedded local worker (threads, group commit)."""

from __future__ import annotations

from typing import ClassVar

from tether.providers.base import Listener, Provider
from tether.runtime.worker import Worker, WorkerStats


class LocalProvider(Provider):
    """Runs on :class:`tether.runtime.Worker` in this process."""

    name: ClassVar[str] = "local"
    _worker: Worker | None = None

    def run(
        self,
        *,
        until_idle: bool = False,
        concurrency: int | None = None,
        on_complete: Listener | None = None,
    ) -> WorkerStats:
        options = {} if concurrency is None else {"concurrency": concurrency}
        self._worker = self.project.worker(on_complete=on_complete, **options)
        return self._worker.run(until_idle=until_idle)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()

    def abort(self) -> None:
        if self._worker is not None:
            self._worker.abort()
