"""The agent graph: discovery by convention, and the checks that make it a valid DAG.

Agents are found in two places: every module of the project's ``agents/`` folder, and the
entry points of the group ``tether.agents`` (so a team can ship its agents as a package).
"""

from __future__ import annotations

import graphlib
import hashlib
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from tether.errors import DiscoveryError
from tether.graph.agent import Agent

ENTRY_POINT_GROUP = "tether.agents"


@dataclass(frozen=True)
class Graph:
    """A validated set of agents: nodes, and the trigger names that connect them."""

    agents: dict[str, Agent]

    def __post_init__(self) -> None:
        self._validate()

    # -- queries -------------------------------------------------------------------

    def __getitem__(self, name: str) -> Agent:
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents)) or "none"
            raise DiscoveryError(f"no agent named {name!r} (agents: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.agents

    def __iter__(self) -> Iterator[Agent]:
        return iter(self.agents.values())

    def __len__(self) -> int:
        return len(self.agents)

    def subscribers(self, trigger: str) -> list[Agent]:
        """Agents that subscribe to a trigger name."""
        return [a for a in self.agents.values() if trigger in a.subscribes]

    def emitters(self, trigger: str) -> list[Agent]:
        """Agents that declare they may emit a trigger name."""
        return [a for a in self.agents.values() if trigger in a.static_emits]

    def edges(self) -> list[tuple[str, str, str]]:
        """``(upstream agent, trigger, downstream agent)`` for every declared connection."""
        return [
            (up.name, name, down.name)
            for up in self.agents.values()
            for name in up.static_emits
            for down in self.subscribers(name)
        ]

    def roots(self) -> list[Agent]:
        """Agents that subscribe to nothing: work enters the graph through them."""
        return [a for a in self.agents.values() if not a.subscribes]

    # -- validation ----------------------------------------------------------------

    def _validate(self) -> None:
        for name in self.agents:
            if "/" in name or not name.strip():
                raise DiscoveryError(
                    f"agent name {name!r} is invalid: names are non-empty and contain no '/'"
                )
        emitted = {n for a in self.agents.values() for n in a.static_emits}
        dynamic = [a.name for a in self.agents.values() if a.dynamic]
        for a in self.agents.values():
            for trigger in a.subscribes:
                if trigger in emitted:
                    continue
                if dynamic:
                    warnings.warn(
                        f"agent {a.name!r} subscribes to {trigger!r}, which no agent declares; "
                        f"it may come from {', '.join(dynamic)} (declare may_emit=[...] there "
                        "so the graph can be checked)",
                        stacklevel=2,
                    )
                    continue
                raise DiscoveryError(
                    f"agent {a.name!r} subscribes to {trigger!r}, but no agent emits it; "
                    f"known triggers: {', '.join(sorted(emitted)) or 'none'}. Fix the name, "
                    "or add the agent that emits it"
                )
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for name in self.agents:
            sorter.add(name)
        for up, _trigger, down in self.edges():
            sorter.add(down, up)
        try:
            sorter.prepare()
        except graphlib.CycleError as exc:
            cycle = exc.args[1]
            raise DiscoveryError(
                "the agent graph has a cycle: "
                + " -> ".join(cycle)
                + "; triggers must form a DAG (an agent cannot, through others, trigger itself)"
            ) from None

    def order(self) -> list[str]:
        """Agent names in dependency order (upstream first)."""
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for name in self.agents:
            sorter.add(name)
        for up, _t, down in self.edges():
            sorter.add(down, up)
        return list(sorter.static_order())


def collect(objects: Iterable[object], *, origin: dict[int, str] | None = None) -> list[Agent]:
    """The distinct :class:`Agent` objects among ``objects``."""
    seen: dict[int, Agent] = {}
    for obj in objects:
        if isinstance(obj, Agent):
            seen.setdefault(id(obj), obj)
    return list(seen.values())


def build(agents: Iterable[Agent], *, where: dict[str, str] | None = None) -> Graph:
    """A validated graph from agents; two agents with one name are an error."""
    by_name: dict[str, Agent] = {}
    where = where or {}
    for a in agents:
        other = by_name.get(a.name)
        if other is not None and other is not a:
            raise DiscoveryError(
                f"two agents are named {a.name!r} ({where.get(a.name, '?')} and "
                f"{_origin(a)}); give one a different name=..."
            )
        by_name[a.name] = a
        where.setdefault(a.name, _origin(a))
    return Graph(by_name)


def _origin(a: Agent) -> str:
    module = getattr(a.fn, "__module__", "?")
    return f"{module}.{getattr(a.fn, '__qualname__', a.name)}"


def _module_agents(module: ModuleType) -> list[Agent]:
    return collect(vars(module).values())


def _import_file(path: Path, package: str) -> ModuleType:
    name = f"{package}.{path.stem}" if path.name != "__init__.py" else package
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if path.name == "__init__.py"
        else None
    )
    if spec is None or spec.loader is None:
        raise DiscoveryError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise DiscoveryError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def discover_folder(folder: Path) -> list[Agent]:
    """Import every module of ``folder`` (recursively) and collect the agents defined there."""
    if not folder.is_dir():
        return []
    # A package name unique to this folder: two projects in one process never collide,
    # and the modules can import each other relatively.
    package = "tether_agents_" + hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    if package not in sys.modules:
        init = folder / "__init__.py"
        if init.exists():
            _import_file(init, package)
        else:
            pkg = ModuleType(package)
            pkg.__path__ = [str(folder)]
            sys.modules[package] = pkg
    found: list[Agent] = []
    for path in sorted(folder.rglob("*.py")):
        if path.name.startswith(("_", ".")) and path.name != "__init__.py":
            continue
        rel = path.relative_to(folder).with_suffix("")
        if any(part.startswith((".", "_")) for part in rel.parts[:-1]):
            continue
        dotted = ".".join((package, *rel.parts))
        if path.name == "__init__.py":
            dotted = dotted.rsplit(".", 1)[0]
        module = sys.modules.get(dotted)
        if module is None:
            try:
                module = importlib.import_module(dotted)
            except DiscoveryError:
                raise
            except Exception as exc:
                raise DiscoveryError(
                    f"importing {path} failed: {type(exc).__name__}: {exc}"
                ) from exc
        found.extend(_module_agents(module))
    return collect(found)


def discover_entry_points(group: str = ENTRY_POINT_GROUP) -> list[Agent]:
    """Agents from installed packages' entry points: each names a module or an agent."""
    found: list[Agent] = []
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as exc:
            raise DiscoveryError(
                f"entry point {ep.name!r} ({ep.value}) in group {group!r} failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(obj, ModuleType):
            found.extend(_module_agents(obj))
        elif isinstance(obj, Agent):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            found.extend(collect(obj))
        else:
            raise DiscoveryError(
                f"entry point {ep.name!r} ({ep.value}) is a {type(obj).__name__}; it must name "
                "a module or an agent"
            )
    return collect(found)


def discover_modules(names: Iterable[str]) -> list[Agent]:
    """Agents defined in importable modules named in the settings (``agent_modules``)."""
    found: list[Agent] = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise DiscoveryError(
                f"agent module {name!r} (from agent_modules) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        found.extend(_module_agents(module))
    return collect(found)


def discover(
    project_dir: Path | str | None = None,
    *,
    agents_dir: str = "agents",
    modules: Iterable[str] = (),
    entry_points_: bool = True,
) -> Graph:
    """The project's agent graph: its ``agents/`` folder plus installed entry points.

    Raises:
        DiscoveryError: an import failed, two agents share a name, a subscribed trigger is
            emitted by no agent, or the triggers form a cycle.
    """
    root = Path(project_dir or Path.cwd())
    agents = discover_folder(root / agents_dir)
    agents += discover_modules(modules)
    if entry_points_:
        agents += discover_entry_points()
    return build(agents)
