"""The agent graph: agents are nodes, trigger names are edges, found by convention."""

from tether.graph.agent import Agent, Upstream, agent
from tether.graph.registry import ENTRY_POINT_GROUP, Graph, build, discover

__all__ = ["ENTRY_POINT_GROUP", "Agent", "Graph", "Upstream", "agent", "build", "discover"]
