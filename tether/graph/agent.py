"""``@tether.agent``: a plain function becomes a node of the decision graph."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from tether.errors import DiscoveryError
from tether.retry import RetryPolicy

Emits = str | Sequence[str] | Callable[[Any], "str | Iterable[str] | None"] | None
"""What an agent emits on success: one trigger name, several, or a function of the output
returning the names to emit (none, one or several)."""

ExampleFields = Sequence[str] | Callable[[Any], str] | None
"""What represents a case for similarity search (see :mod:`tether.review.examples`)."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """What a downstream agent's ``key`` function sees of the run whose trigger fired."""

    trigger: str
    agent: str
    key: str
    output: Any


@dataclass(frozen=True, eq=False)
class Agent:
    """An agent: a function of a :class:`tether.Context`, and how it joins the graph.

    Calling an ``Agent`` calls the function, so agents stay testable as plain functions.
    """

    fn: Callable[..., Any]
    name: str
    subscribes: tuple[str, ...] = ()
    """Triggers this agent needs; it runs once all have fired for the same key."""
    emits: Emits = None
    may_emit: tuple[str, ...] = ()
    """The names a function-valued ``emits`` may return, declared for the graph."""
    key: Callable[[Upstream], str] | None = None
    """The downstream task's key from the upstream run; default: the upstream task's key."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_on: tuple[type[BaseException], ...] = ()
    """Exception types (beyond the defaults) that make a failure retryable."""
    team: str | None = None
    """The team that owns the agent, shown in the graph."""
    description: str = ""
    decision: str | Callable[[Any], Any] | None = None
    """What evaluation scores: a field of the output, or a function of it (default: the
    output's ``decision`` field)."""
    features: Callable[[Any, Any], Any] | Sequence[str] | None = None
    """What the production bar's triage model learns from besides the harness's own
    features: a function ``(ctx, output) -> {name: number or str}``, or output/input field
    names (see docs/production-bar.md)."""
    review_rate: float = 0.0
    """Share of successful runs sampled for rollout review (0 to 1; see tether.review)."""
    example_fields: ExampleFields = None
    """What represents a case for similarity: dotted paths into the input, or a function
    of the input returning text (default: the whole input)."""
    example_threshold: float = 0.85
    """Minimum cosine similarity for ``ctx.examples`` to return an example."""
    embedder: Any = None
    """The embedder name (``hashing``, ``minilm``) or object; default ``hashing``."""

    @property
    def is_async(self) -> bool:
        """Whether the function is a coroutine function."""
        return inspect.iscoroutinefunction(self.fn)

    @property
    def static_emits(self) -> tuple[str, ...]:
        """Every trigger name this agent can emit, as far as the graph can know."""
        if self.emits is None:
            return ()
        if isinstance(self.emits, str):
            return (self.emits,)
        if callable(self.emits):
            return self.may_emit
        return tuple(self.emits)

    @property
    def dynamic(self) -> bool:
        """True when ``emits`` is a function whose names were not declared (``may_emit``)."""
        return callable(self.emits) and not isinstance(self.emits, str) and not self.may_emit

    def emitted(self, output: Any) -> tuple[str, ...]:
        """The trigger names to emit for a successful run's output."""
        if self.emits is None:
            return ()
        if isinstance(self.emits, str):
            return (self.emits,)
        if callable(self.emits):
            chosen = self.emits(output)
            if chosen is None:
                return ()
            names = (chosen,) if isinstance(chosen, str) else tuple(chosen)
            for name in names:
                if not isinstance(name, str):
                    raise TypeError(
                        f"agent {self.name!r}: emits returned {name!r}; it must return "
                        "trigger names (str), a list of them, or None"
                    )
                if self.may_emit and name not in self.may_emit:
                    raise ValueError(
                        f"agent {self.name!r} emitted {name!r}, which is not in its "
                        f"may_emit {list(self.may_emit)}"
                    )
            return names
        return tuple(self.emits)

    def downstream_key(self, upstream: Upstream) -> str:
        """This agent's task key for a trigger from ``upstream``."""
        if self.key is None:
            return upstream.key
        value = self.key(upstream)
        if not isinstance(value, str) or not value:
            raise TypeError(
                f"agent {self.name!r}: key function returned {value!r}; it must return a "
                "non-empty str"
            )
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _names(value: str | Iterable[str] | None, what: str, agent: str) -> tuple[str, ...]:
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else tuple(value)
    for n in names:
        if not isinstance(n, str) or not n:
            raise DiscoveryError(f"agent {agent!r}: {what} must be non-empty trigger names")
    return names


@overload
def agent(fn: Callable[..., Any], /) -> Agent: ...


@overload
def agent(
    *,
    name: str | None = None,
    subscribes: str | Iterable[str] | None = None,
    emits: Emits = None,
    may_emit: Iterable[str] | None = None,
    key: Callable[[Upstream], str] | None = None,
    max_attempts: int | None = None,
    retry: RetryPolicy | None = None,
    retry_on: Iterable[type[BaseException]] = (),
    team: str | None = None,
    decision: str | Callable[[Any], Any] | None = None,
    features: Callable[[Any, Any], Any] | Sequence[str] | None = None,
    review_rate: float = 0.0,
    example_fields: ExampleFields = None,
    example_threshold: float = 0.85,
    embedder: Any = None,
) -> Callable[[Callable[..., Any]], Agent]: ...


def agent(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    subscribes: str | Iterable[str] | None = None,
    emits: Emits = None,
    may_emit: Iterable[str] | None = None,
    key: Callable[[Upstream], str] | None = None,
    max_attempts: int | None = None,
    retry: RetryPolicy | None = None,
    retry_on: Iterable[type[BaseException]] = (),
    team: str | None = None,
    decision: str | Callable[[Any], Any] | None = None,
    features: Callable[[Any, Any], Any] | Sequence[str] | None = None,
    review_rate: float = 0.0,
    example_fields: ExampleFields = None,
    example_threshold: float = 0.85,
    embedder: Any = None,
) -> Agent | Callable[[Callable[..., Any]], Agent]:
    """Make a function an agent. Use bare (``@tether.agent``) or with options.

    Args:
        name: the agent's name (default: the function's name).
        subscribes: trigger name(s) the agent needs; it runs once all have fired for the
            same key. An agent that subscribes to nothing is a root: work is submitted to it.
        emits: on success, a trigger name, a list of names, or a function of the output
            returning the names to emit (or None to emit nothing).
        may_emit: with a function ``emits``, the names it may return, so discovery can
            check the graph (recommended).
        key: the downstream task's key from the :class:`Upstream` run (default: its key).
        max_attempts: runs before a retryable failure becomes final (default 3).
        retry: the full :class:`RetryPolicy` (backoff and jitter); ``max_attempts`` overrides
            its field of the same name.
        retry_on: extra exception types to treat as retryable.
        team: the team that owns the agent.
        decision: for evaluation, the output field holding the decision, or a function
            of the output returning it (default: the ``decision`` field).
        features: for the triage model, a function ``(ctx, output) -> dict`` of extra
            features, or output/input field names to learn from.
        review_rate: share of successful runs queued for rollout review (0 to 1).
        example_fields: what represents a case for ``ctx.examples``: dotted paths into the
            task's input (``("claim.description", "claim.type")``; ``upstream.NAME.path``
            reads a trigger's upstream output), or a function of the input returning text.
        example_threshold: minimum cosine similarity of a returned example (0 to 1).
        embedder: ``"hashing"`` (default, offline), ``"minilm"`` (extra ``embeddings``),
            or an object with ``name``, ``dim`` and ``embed(texts)``.
    """

    def wrap(f: Callable[..., Any]) -> Agent:
        agent_name = name or f.__name__
        policy = retry or RetryPolicy()
        if max_attempts is not None:
            if max_attempts < 1:
                raise DiscoveryError(f"agent {agent_name!r}: max_attempts must be at least 1")
            policy = policy.replace(max_attempts=max_attempts)
        exc_types = tuple(retry_on)
        for t in exc_types:
            if not (isinstance(t, type) and issubclass(t, BaseException)):
                raise DiscoveryError(f"agent {agent_name!r}: retry_on takes exception types")
        if emits is not None and not (isinstance(emits, str) or callable(emits)):
            _names(emits, "emits", agent_name)  # validates a list of names
        if not 0.0 <= review_rate <= 1.0:
            raise DiscoveryError(
                f"agent {agent_name!r}: review_rate must be between 0 and 1, got {review_rate!r}"
            )
        if not -1.0 <= example_threshold <= 1.0:
            raise DiscoveryError(
                f"agent {agent_name!r}: example_threshold is a cosine similarity between "
                f"-1 and 1, got {example_threshold!r}"
            )
        fields = example_fields
        if fields is not None and not callable(fields):
            fields = (fields,) if isinstance(fields, str) else tuple(fields)
            if not fields or not all(isinstance(x, str) and x for x in fields):
                raise DiscoveryError(
                    f"agent {agent_name!r}: example_fields takes dotted field paths "
                    "(e.g. ('claim.description',)) or a function of the input"
                )
        return Agent(
            fn=f,
            name=agent_name,
            subscribes=_names(subscribes, "subscribes", agent_name),
            emits=emits,
            may_emit=_names(may_emit, "may_emit", agent_name),
            key=key,
            retry=policy,
            retry_on=exc_types,
            team=team,
            description=inspect.getdoc(f) or "",
            decision=decision,
            features=tuple(features) if isinstance(features, (list, tuple)) else features,
            review_rate=review_rate,
            example_fields=fields,
            example_threshold=example_threshold,
            embedder=embedder,
        )

    if fn is not None:
        return wrap(fn)
    return wrap
