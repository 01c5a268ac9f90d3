"""The agent graph, and the tasks around one task, as text, Mermaid, Graphviz dot or JSON.

Both graphs become a :class:`View` (nodes, optionally grouped, and labelled edges); each
format renders a view. Text and the JSON forms are written for their graph: the agent
graph lists agents in dependency order with team, subscriptions and emits; a task graph
lists the edges upstream and downstream of its task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tether.graph.agent import Agent
from tether.graph.provenance import TaskGraph, when
from tether.graph.registry import Graph

FORMATS = ("text", "mermaid", "dot", "json")
"""The formats :func:`render_agents` and :func:`render_tasks` produce."""


@dataclass(frozen=True, slots=True)
class Node:
    """A node of a view: an id safe in every format, a label, and a group (a team)."""

    id: str
    label: str
    group: str | None = None
    style: str | None = None
    """``focus``, ``succeeded``, ``failed``... (a class the formats may colour)."""


@dataclass(frozen=True, slots=True)
class Edge:
    """A labelled edge between two node ids."""

    source: str
    target: str
    label: str


@dataclass(frozen=True, slots=True)
class View:
    """What Mermaid and dot draw: nodes (grouped into clusters) and edges."""

    title: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    data: dict[str, Any] = field(default_factory=dict)
    """The JSON form."""


# -- the agent graph ----------------------------------------------------------------------


def agents_dict(graph: Graph) -> dict[str, Any]:
    """The agent graph's JSON form: ``{nodes, edges}`` in dependency order."""
    return {
        "nodes": [
            {
                "id": name,
                "name": name,
                "team": graph[name].team,
                "subscribes": list(graph[name].subscribes),
                "emits": list(graph[name].static_emits),
                "emits_decided_by_function": graph[name].dynamic,
                "root": not graph[name].subscribes,
            }
            for name in graph.order()
        ],
        "edges": [
            {"from": up, "to": down, "trigger": trigger} for up, trigger, down in graph.edges()
        ],
    }


def agent_view(graph: Graph) -> View:
    """The agent graph: agents as nodes grouped by team, triggers as edges."""
    order = graph.order()
    ids = {name: f"a{i}" for i, name in enumerate(order)}
    nodes = tuple(
        Node(ids[name], name if not graph[name].team else f"{name}\n({graph[name].team})",
             graph[name].team)
        for name in order
    )
    edges = tuple(Edge(ids[up], ids[down], trigger) for up, trigger, down in graph.edges())
    title = f"Agent graph: {len(graph)} agents, {len(edges)} trigger edges"
    return View(title, nodes, edges, agents_dict(graph))


def _emits(graph: Graph, a: Agent) -> str:
    outs = ", ".join(
        f"{t} → {', '.join(d.name for d in graph.subscribers(t)) or '(no subscriber)'}"
        for t in a.static_emits
    )
    if a.dynamic:
        return "(decided by a function that declares no may_emit)"
    if callable(a.emits) and not isinstance(a.emits, str):
        return f"one of: {outs}"
    return outs or "-"


def agents_text(graph: Graph) -> str:
    """The agent graph as lines: agents upstream first, with team, subscriptions, emits."""
    edges = graph.edges()
    lines = [f"Agent graph: {len(graph)} agents, {len(edges)} trigger edges"]
    if not len(graph):
        return lines[0] + "\nNo agents found: put modules with @tether.agent functions in agents/\n"
    for name in graph.order():
        a = graph[name]
        lines.append("")
        lines.append(f"{name}" + (f"  (team {a.team})" if a.team else ""))
        if a.subscribes:
            subs = ", ".join(
                f"{t} ← {', '.join(e.name for e in graph.emitters(t)) or '?'}"
                for t in a.subscribes
            )
            if len(a.subscribes) > 1:
                subs += "  (a join: runs once all have fired for one key)"
            lines.append(f"  subscribes: {subs}")
        else:
            lines.append("  subscribes: - (a root: work is submitted to it)")
        lines.append(f"  emits:      {_emits(graph, a)}")
        if a.key is not None:
            lines.append("  key:        computed by a key function")
    return "\n".join(lines) + "\n"


def render_agents(graph: Graph, fmt: str) -> str:
    """The agent graph in a format of :data:`FORMATS`."""
    if fmt == "text":
        return agents_text(graph)
    return _render(agent_view(graph), fmt)


# -- the tasks around one task ------------------------------------------------------------


def task_view(tg: TaskGraph) -> View:
    """A task graph: tasks as nodes (with status), recorded triggers as edges."""
    ids = {t.id: f"t{t.id}" for t in tg.tasks}
    nodes = tuple(
        Node(ids[t.id], f"{t.ref}\n{t.status}", None,
             "focus" if t.id == tg.focus.id else str(t.status))
        for t in tg.tasks
    )
    edges = tuple(
        Edge(ids[e.upstream_task_id], ids[e.downstream_task_id], e.name)
        for e in tg.edges
        if e.upstream_task_id in ids and e.downstream_task_id in ids
    )
    title = (
        f"Tasks around {tg.focus.ref}: {len(tg.upstream)} upstream, "
        f"{len(tg.downstream)} downstream"
    )
    return View(title, nodes, edges, tg.to_dict())


def tasks_text(tg: TaskGraph) -> str:
    """A task graph as lines: the task, then the edges upstream and downstream of it."""
    by_id = {t.id: t for t in tg.tasks}

    def name(task_id: int) -> str:
        t = by_id.get(task_id)
        return f"task {task_id}" if t is None else f"{t.ref} [{t.status}]"

    f = tg.focus
    lines = [
        f"{f.ref} (task {f.id}, {f.status}): {len(tg.upstream)} tasks upstream, "
        f"{len(tg.downstream)} downstream"
    ]
    for title, ids in (("upstream", tg.upstream), ("downstream", tg.downstream)):
        edges = [e for e in tg.edges if
                 (e.downstream_task_id if title == "upstream" else e.upstream_task_id)
                 in ids | {f.id}]
        lines.append("")
        lines.append(f"{title}:" if edges else f"{title}: none recorded")
        for e in edges:
            lines.append(
                f"  {name(e.upstream_task_id)} --{e.name}--> {name(e.downstream_task_id)}"
                f"  (run {e.upstream_run_id}, {when(e.created_at)})"
            )
    if tg.truncated:
        lines.append("\n(cut: more edges were recorded than one query follows)")
    return "\n".join(lines) + "\n"


def render_tasks(tg: TaskGraph, fmt: str) -> str:
    """A task graph in a format of :data:`FORMATS`."""
    if fmt == "text":
        return tasks_text(tg)
    return _render(task_view(tg), fmt)


# -- formats ------------------------------------------------------------------------------


def _render(view: View, fmt: str) -> str:
    if fmt == "mermaid":
        return to_mermaid(view)
    if fmt == "dot":
        return to_dot(view)
    if fmt == "json":
        return json.dumps(view.data, indent=2, default=str) + "\n"
    raise ValueError(f"unknown graph format {fmt!r}; use one of {', '.join(FORMATS)}")


def _groups(view: View) -> list[tuple[str | None, list[Node]]]:
    groups: dict[str | None, list[Node]] = {}
    for n in view.nodes:
        groups.setdefault(n.group, []).append(n)
    return sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))


_MERMAID_STYLES = {
    "focus": "stroke-width:3px",
    "succeeded": "stroke:#2a2",
    "failed": "stroke:#c22",
    "cancelled": "stroke:#c22,stroke-dasharray:4",
}


def _mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label (entity codes for quotes and brackets)."""
    out = (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("|", "#124;")
    )
    return out.replace("\n", "<br/>")


def to_mermaid(view: View) -> str:
    """A Mermaid ``flowchart LR``: groups become subgraphs, edges carry trigger names."""
    lines = ["flowchart LR"]
    for i, (group, nodes) in enumerate(_groups(view)):
        indent = "  "
        if group is not None:
            lines.append(f'  subgraph g{i}["{_mermaid_text(group)}"]')
            indent = "    "
        lines += [f'{indent}{n.id}["{_mermaid_text(n.label)}"]' for n in nodes]
        if group is not None:
            lines.append("  end")
    lines += [f'  {e.source} -->|"{_mermaid_text(e.label)}"| {e.target}' for e in view.edges]
    styles = sorted({n.style for n in view.nodes if n.style in _MERMAID_STYLES})
    for style in styles:
        lines.append(f"  classDef {style} {_MERMAID_STYLES[style]}")
        members = ",".join(n.id for n in view.nodes if n.style == style)
        lines.append(f"  class {members} {style}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    """A double-quoted DOT string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_DOT_STYLES = {
    "focus": "penwidth=3",
    "succeeded": "color=darkgreen",
    "failed": "color=red",
    "cancelled": "color=red, style=dashed",
}


def to_dot(view: View) -> str:
    """A Graphviz ``digraph``: groups become clusters, edges carry trigger names."""
    lines = [
        "digraph tether {",
        "  rankdir=LR;",
        "  node [shape=box];",
        f"  label={_dot_text(view.title)};",
        "  labelloc=t;",
    ]

    def node(n: Node, indent: str) -> str:
        attrs = f"label={_dot_text(n.label)}"
        if n.style in _DOT_STYLES:
            attrs += f", {_DOT_STYLES[n.style]}"
        return f"{indent}{n.id} [{attrs}];"

    for i, (group, nodes) in enumerate(_groups(view)):
        if group is None:
            lines += [node(n, "  ") for n in nodes]
            continue
        lines.append(f"  subgraph cluster_{i} {{")
        lines.append(f"    label={_dot_text(group)};")
        lines += [node(n, "    ") for n in nodes]
        lines.append("  }")
    lines += [f"  {e.source} -> {e.target} [label={_dot_text(e.label)}];" for e in view.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"
