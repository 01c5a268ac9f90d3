"""A project: its settings, its store and its agent graph, opened together."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

from tether.config import Settings, load_settings
from tether.errors import DiscoveryError, InvalidKey
from tether.graph import Agent, Graph, build, discover
from tether.runtime import Worker, WorkerStats
from tether.runtime.execute import EVAL_KEY_PREFIX
from tether.store import Store, Submission
from tether.store.base import _MISSING
from tether.store.submits import submission_items


class Project:
    """Tether for one project folder: ``tether.Project.load()`` in the current folder.

    The store and the graph are opened on first use, so commands that need only one of
    them (``tether tasks`` needs no agents) do not pay for the other.
    """

    def __init__(self, settings: Settings, *, agents: Iterable[Agent] | None = None) -> None:
        self.settings = settings
        self._agents = list(agents) if agents is not None else None

    @classmethod
    def load(
        cls,
        project_dir: Path | str | None = None,
        *,
        agents: Iterable[Agent] | None = None,
        **overrides: Any,
    ) -> Project:
        """Open the project in ``project_dir`` (default: the current folder).

        ``agents`` replaces discovery with an explicit list; ``overrides`` set any
        :class:`tether.config.Settings` field (e.g. ``database_url=...``).
        """
        return cls(load_settings(project_dir, **overrides), agents=agents)

    @cached_property
    def store(self) -> Store:
        """The project's store, migrated on first use."""
        from tether.capture import attach

        store = Store.open(self.settings)
        attach(store, self.settings)  # capture bodies go where the settings say
        return store

    @cached_property
    def graph(self) -> Graph:
        """The project's agents, discovered and validated."""
        if self._agents is not None:
            return build(self._agents)
        return discover(
            self.settings.project_dir,
            agents_dir=self.settings.agents_dir,
            modules=self.settings.agent_modules,
        )

    def submit(self, agent: str, key: str, input: Any = _MISSING) -> Submission:
        """Submit work to an agent: create task (agent, key) and queue a run (idempotent)."""
        self._check_submission(agent, key)
        return self.store.submit(agent, key, input)

    def submit_many(
        self, items: Iterable[tuple[str, str] | tuple[str, str, Any]]
    ) -> list[Submission]:
        """Submit many ``(agent, key)`` or ``(agent, key, input)`` items at once, each as
        :meth:`submit` would: a burst or a backfill, committed a chunk of items per
        transaction rather than one commit per item. Every item is checked first; nothing
        is written if one names an unknown agent or a bad key."""
        rows = submission_items(items)
        for n, (agent, key, _) in enumerate(rows):
            try:
                self._check_submission(agent, key)
            except (DiscoveryError, InvalidKey) as exc:
                raise type(exc)(f"item {n}: {exc}") from None
        return self.store.submit_many(rows)

    def _check_submission(self, agent: str, key: str) -> None:
        if agent not in self.graph:
            known = ", ".join(sorted(self.graph.agents)) or "none found"
            raise DiscoveryError(f"no agent named {agent!r} in this project (agents: {known})")
        if not isinstance(key, str) or not key:
            raise InvalidKey("a task key must be a non-empty string")
        if key.startswith(EVAL_KEY_PREFIX):
            # Evaluation experiments' tasks live there and never emit triggers: a production
            # task keyed there would silently stop its downstream agents.
            raise InvalidKey(
                f"task key {key!r}: keys starting with {EVAL_KEY_PREFIX!r} are reserved for "
                "evaluation experiments (`tether eval run`); choose another key"
            )

    def worker(self, **options: Any) -> Worker:
        """A local worker on this project, with settings as defaults for its options."""
        options.setdefault("concurrency", self.settings.concurrency)
        options.setdefault("lease_seconds", self.settings.lease_seconds)
        options.setdefault("poll_interval", self.settings.poll_interval)
        return Worker(self.store, self.graph, **options)

    def run_until_idle(self, **options: Any) -> WorkerStats:
        """Run a local worker until nothing is queued or running."""
        return self.worker(**options).run(until_idle=True)

    def close(self) -> None:
        """Close the store."""
        if "store" in self.__dict__:
            self.store.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
