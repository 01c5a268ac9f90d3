"""The agent graph: agents are nodes, trigger names are edges, found by convention."""

from tether.graph.agent import Agent, Upstream, agent
from tether.graph.provenance import Cause, CauseEdge, TaskGraph, Why, task_graph, why
from tether.graph.registry import ENTRY_POINT_GROUP, Graph, build, discover
from tether.graph.why_not import Explanation, RootCause, TriggerCheck, WhyNot, why_not

__all__ = [
    "ENTRY_POINT_GROUP",
    "Agent",
    "Cause",
    "CauseEdge",
    "Explanation",
    "Graph",
    "RootCause",
    "TaskGraph",
    "TriggerCheck",
    "Upstream",
    "Why",
    "WhyNot",
    "agent",
    "build",
    "discover",
    "task_graph",
    "why",
    "why_not",
]
