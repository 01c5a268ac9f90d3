"""Subsets: a label-balanced sample weighted toward stubborn failures, reproducible from a
seed.

Cases are stratified by their latest label (cases without one form their own stratum);
each stratum gets an equal share of ``size`` (a stratum smaller than its share gives what
it has and the rest goes to the others). Within a stratum cases are drawn without
replacement with weight ``1 + stubborn_weight * w``, where ``w`` is how many of the
recent experiments got the case wrong (weighted sampling by Efraimidis-Spirakis keys
``u ** (1 / weight)``, from ``numpy.random.default_rng(seed)``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from tether.evals.datasets import dataset_names
from tether.evals.evaluation import correctness
from tether.evals.experiments import list_experiments, results
from tether.evals.loading import DatasetError, require
from tether.evals.models import Dataset
from tether.evals.scoring import class_key
from tether.store import Store

UNLABELED = "(unlabeled)"


def allocate(sizes: Mapping[str, int], size: int) -> dict[str, int]:
    """Equal shares of ``size`` over strata, capped by what each holds, the remainder
    going to strata with room, in class order (deterministic)."""
    take = dict.fromkeys(sizes, 0)
    left = min(size, sum(sizes.values()))
    while left > 0:
        room = [s for s in sorted(sizes) if take[s] < sizes[s]]
        share = max(1, left // len(room))
        for s in room:
            add = min(share, sizes[s] - take[s], left)
            take[s] += add
            left -= add
            if left == 0:
                break
    return take


def stubborn_counts(
    store: Store,
    dataset: Dataset,
    *,
    recent: int = 5,
    agent: str | None = None,
    scorer: str = "exact",
) -> dict[str, int]:
    """Per case key, in how many of the ``recent`` latest experiments on this dataset
    family (its versions and subsets) the agent got it wrong (an error counts as wrong),
    scored against ``dataset``'s latest labels."""
    family = dataset.parent or dataset.name
    exps = [
        e
        for e in list_experiments(store, dataset_ids=dataset_names(store, family))
        if agent is None or e.agent == agent
    ][:recent]
    wrong: dict[str, int] = {}
    now = time.time()
    for e in exps:
        found = results(store, e.id)
        scores = correctness(dataset, found, as_of="latest", scorer=scorer, now=now)
        errored = {r.case_key for r in found if r.error is not None}
        for k, s in scores.items():
            if (s is not None and s < 1.0) or k in errored:
                wrong[k] = wrong.get(k, 0) + 1
    return wrong


def draw_subset(
    dataset: Dataset,
    *,
    size: int,
    seed: int,
    stubborn: Mapping[str, int] | None = None,
    stubborn_weight: float = 4.0,
    name: str | None = None,
) -> Dataset:
    """A subset of ``dataset`` (see the module doc), as a new dataset whose ``parent`` is
    the dataset's name.

    Raises:
        DatasetError: a size below 1 or a negative weight.
    """
    if size < 1:
        raise DatasetError("--size must be at least 1")
    if stubborn_weight < 0:
        raise DatasetError("--stubborn-weight must be 0 or more")
    np = require("numpy")
    stubborn = stubborn or {}
    strata: dict[str, list[int]] = {}
    for i, c in enumerate(dataset.cases):
        latest = c.latest
        strata.setdefault(UNLABELED if latest is None else class_key(latest.value), []).append(i)
    take = allocate({s: len(ix) for s, ix in strata.items()}, size)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for s in sorted(strata):
        ix = strata[s]
        weights = np.array(
            [1.0 + stubborn_weight * stubborn.get(dataset.cases[i].key, 0) for i in ix]
        )
        keys = rng.random(len(ix)) ** (1.0 / weights)
        top = np.argsort(-keys, kind="stable")[: take[s]]
        chosen.extend(ix[j] for j in top)
    chosen.sort()
    parent = dataset.parent or dataset.name
    return Dataset(
        name=name or f"{parent}-subset",
        cases=tuple(dataset.cases[i] for i in chosen),
        parent=parent,
        source=f"subset of {dataset.ref}: size {size}, seed {seed}, "
        f"stubborn weight {stubborn_weight:g}",
    )


def subset_summary(subset: Dataset, stubborn: Mapping[str, int]) -> dict[str, Any]:
    """Per-stratum counts and how many stubborn cases the subset holds."""
    per: dict[str, int] = {}
    for c in subset.cases:
        s = UNLABELED if c.latest is None else class_key(c.latest.value)
        per[s] = per.get(s, 0) + 1
    return {
        "name": subset.name,
        "version": subset.version,
        "cases": len(subset),
        "per_label": dict(sorted(per.items())),
        "stubborn": sum(1 for c in subset.cases if stubborn.get(c.key, 0) > 0),
    }
