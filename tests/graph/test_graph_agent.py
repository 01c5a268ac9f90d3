"""``@tether.agent`` and the checks that make a set of agents a valid graph."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

import tether
from tether import Agent, DiscoveryError, RetryPolicy, Upstream
from tether.graph import build


def _noop(ctx: Any) -> None:
    return None


def make(name: str, **options: Any) -> Agent:
    """An agent named ``name`` (functions of one name would collide in a module)."""
    return tether.agent(name=name, **options)(_noop)


def test_the_name_defaults_to_the_function_name() -> None:
    @tether.agent
    def check_identity(ctx: Any) -> str:
        """Checks who the customer is."""
        return "ok"

    @tether.agent(subscribes="kyc.cleared")
    def price(ctx: Any) -> None:
        return None

    assert isinstance(check_identity, Agent)
    assert check_identity.name == "check_identity"
    assert check_identity.description == "Checks who the customer is."
    assert price.name == "price"
    assert price.subscribes == ("kyc.cleared",)
    assert check_identity(None) == "ok"  # still callable as the plain function


def test_options_are_kept() -> None:
    class Flaky(Exception):
        pass

    a = tether.agent(
        name="kyc",
        subscribes=["a", "b"],
        emits=["kyc.cleared", "kyc.logged"],
        max_attempts=5,
        retry=RetryPolicy(initial_delay=2.0, max_attempts=2),
        retry_on=[Flaky],
        team="onboarding",
    )(_noop)

    assert a.name == "kyc"
    assert a.subscribes == ("a", "b")
    assert a.static_emits == ("kyc.cleared", "kyc.logged")
    assert a.retry.max_attempts == 5  # max_attempts overrides the policy's field
    assert a.retry.initial_delay == 2.0
    assert a.retry_on == (Flaky,)
    assert a.team == "onboarding"
    assert make("plain").retry == RetryPolicy()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"retry_on": [ValueError, "oops"]}, "retry_on takes exception types"),
        ({"subscribes": ["ok", ""]}, "subscribes must be non-empty trigger names"),
        ({"emits": ["ok", 3]}, "emits must be non-empty trigger names"),
        ({"may_emit": [""], "emits": lambda out: None}, "may_emit must be non-empty"),
    ],
)
def test_invalid_options_are_discovery_errors_naming_the_agent(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(DiscoveryError, match=message) as info:
        make("bad", **options)
    assert "'bad'" in str(info.value)


def test_emits_as_a_name_a_list_or_a_function_of_the_output() -> None:
    one = make("one", emits="done")
    several = make("several", emits=["a", "b"])
    chosen = make(
        "chosen",
        emits=lambda out: ["approved"] if out["ok"] else None,
        may_emit=["approved", "declined"],
    )
    single = make("single", emits=lambda out: out["route"])
    nothing = make("nothing")

    assert one.emitted({"x": 1}) == ("done",)
    assert several.emitted(None) == ("a", "b")
    assert chosen.emitted({"ok": True}) == ("approved",)
    assert chosen.emitted({"ok": False}) == ()
    assert single.emitted({"route": "manual"}) == ("manual",)
    assert nothing.emitted({"x": 1}) == ()
    assert chosen.static_emits == ("approved", "declined")
    assert not chosen.dynamic
    assert single.dynamic and single.static_emits == ()


def test_an_emits_function_must_return_declared_names() -> None:
    wrong = make("router", emits=lambda out: ["approved", "escalated"], may_emit=["approved"])
    not_names = make("broken", emits=lambda out: [1])

    with pytest.raises(ValueError, match=r"'router' emitted 'escalated'.*may_emit \['approved'\]"):
        wrong.emitted({})
    with pytest.raises(TypeError, match="'broken': emits returned 1"):
        not_names.emitted({})


def test_downstream_key_defaults_to_the_upstream_key_or_comes_from_the_key_function() -> None:
    up = Upstream(trigger="kyc.cleared", agent="kyc", key="case-1", output={"customer": "c-9"})
    default = make("same")
    by_customer = make("by_customer", key=lambda u: u.output["customer"])
    empty = make("empty", key=lambda u: "")

    assert default.downstream_key(up) == "case-1"
    assert by_customer.downstream_key(up) == "c-9"
    with pytest.raises(TypeError, match="'empty': key function returned ''"):
        empty.downstream_key(up)


def test_is_async_tells_coroutine_functions() -> None:
    @tether.agent
    async def fetch(ctx: Any) -> None:
        return None

    assert fetch.is_async
    assert not make("sync").is_async


def test_build_connects_agents_by_trigger_names() -> None:
    kyc = make("kyc", emits="kyc.cleared")
    risk = make("risk", emits="risk.scored")
    quote = make("quote", subscribes=["kyc.cleared", "risk.scored"], emits="quote.ready")
    notify = make("notify", subscribes="quote.ready")

    graph = build([kyc, risk, quote, notify])

    assert len(graph) == 4
    assert graph["quote"] is quote and "quote" in graph and "nobody" not in graph
    assert {a.name for a in graph.roots()} == {"kyc", "risk"}
    assert [a.name for a in graph.subscribers("kyc.cleared")] == ["quote"]
    assert [a.name for a in graph.emitters("quote.ready")] == ["quote"]
    assert sorted(graph.edges()) == [
        ("kyc", "kyc.cleared", "quote"),
        ("quote", "quote.ready", "notify"),
        ("risk", "risk.scored", "quote"),
    ]
    order = graph.order()
    assert order.index("kyc") < order.index("quote") < order.index("notify")
    assert order.index("risk") < order.index("quote")
    with pytest.raises(DiscoveryError, match=r"no agent named 'nobody' \(agents: kyc, notify"):
        graph["nobody"]


def test_a_cycle_is_a_discovery_error_naming_it() -> None:
    a = make("a", subscribes="c.done", emits="a.done")
    b = make("b", subscribes="a.done", emits="b.done")
    c = make("c", subscribes="b.done", emits="c.done")
    root = make("root", emits="c.done")

    with pytest.raises(DiscoveryError, match="cycle") as info:
        build([root, a, b, c])

    message = str(info.value)
    assert all(name in message for name in ("a", "b", "c"))
    assert "DAG" in message


def test_an_agent_triggering_itself_is_a_cycle() -> None:
    with pytest.raises(DiscoveryError, match="cycle"):
        build([make("loop", subscribes="again", emits="again"), make("start", emits="again")])


def test_subscribing_to_a_trigger_no_agent_emits_is_a_discovery_error() -> None:
    kyc = make("kyc", emits="kyc.cleared")
    quote = make("quote", subscribes=["kyc.cleard"])

    with pytest.raises(
        DiscoveryError,
        match=r"'quote' subscribes to 'kyc.cleard', but no agent emits it; "
        r"known triggers: kyc.cleared",
    ):
        build([kyc, quote])


def test_an_undeclared_dynamic_emitter_turns_the_unknown_trigger_into_a_warning() -> None:
    router = make("router", emits=lambda out: out["route"])
    manual = make("manual", subscribes="manual")

    with pytest.warns(UserWarning, match="may come from router"):
        graph = build([router, manual])

    assert "manual" in graph


def test_declared_may_emit_keeps_the_check_strict() -> None:
    router = make("router", emits=lambda out: out["route"], may_emit=["auto"])
    manual = make("manual", subscribes="manual")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DiscoveryError, match="subscribes to 'manual', but no agent emits"):
            build([router, manual])


def test_two_agents_with_one_name_are_a_discovery_error() -> None:
    first = make("kyc")
    second = make("kyc")

    with pytest.raises(DiscoveryError, match="two agents are named 'kyc'"):
        build([first, second])
    # The same agent object seen twice (imported by two modules) is one agent.
    assert len(build([first, first])) == 1


@pytest.mark.parametrize("name", ["a/b", " "])
def test_agent_names_must_be_usable_in_task_refs(name: str) -> None:
    with pytest.raises(DiscoveryError, match="is invalid"):
        build([make(name)])
