"""As-of scoring: each decision against the label as it was known at a chosen time.

For a case, *base* is when the decision was made: the case's ``decided_at``, or, when the
dataset has none, when the experiment's run decided. Then:

- ``decision``: the label as known at *base* (the latest observation at or before it);
- ``latest``: the latest observation there is;
- a duration such as ``30d``: the label as known at *base* + 30 days; a case whose
  *base* + 30 days is still in the future has an *immature* label.

A case is **unlabeled** under an as-of when nothing had been observed by then, an **error**
when its run failed, gave no decision, or the scorer raised (errors are reported apart
from scores), and **immature** when younger than the maturity window (``maturity``; for a
duration as-of the duration itself): immature cases are scored separately and left out of
the agreement. **Agreement** is the mean score (correct 1, partial its score, incorrect 0)
of the mature scored cases; the **maturation gap** is agreement under ``latest`` minus
agreement under ``decision``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether.evals.loading import DatasetError, require
from tether.evals.models import Dataset, Result
from tether.evals.scorers import Scorer, Verdict

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DAY = 86400.0


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` in seconds.

    Raises:
        DatasetError: not a duration.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m is None:
        raise DatasetError(
            f"{text!r} is not a duration; use a number and a unit: 90s, 15m, 12h, 30d or 2w"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True, slots=True)
class AsOf:
    """When labels are read: at decision time, latest, or decision time plus a window."""

    mode: str
    window: float = 0.0
    text: str = ""

    @staticmethod
    def parse(text: str) -> AsOf:
        """``decision``, ``latest`` or a duration (see :func:`parse_duration`).

        Raises:
            DatasetError: none of those.
        """
        t = text.strip().lower()
        if t in ("decision", "latest"):
            return AsOf(t, 0.0, t)
        try:
            return AsOf("window", parse_duration(t), t)
        except DatasetError:
            raise DatasetError(
                f"--as-of {text!r}: use decision, latest or a duration such as 30d"
            ) from None


def class_key(value: Any) -> str:
    """A label or decision as a hashable class name (JSON text for non-strings)."""
    if isinstance(value, str):
        return value
    # Fast paths (this runs per case and observation): the same text json.dumps gives.
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Prepared:
    """A dataset, an experiment's results and a scorer, laid out in arrays once so that
    every as-of is a cheap vectorized pick of one observation per case."""

    def __init__(self, dataset: Dataset, results: Sequence[Result], scorer: Scorer) -> None:
        np = require("numpy")
        self.np = np
        self.dataset = dataset
        by_key = {r.case_key: r for r in results}
        cases = dataset.cases
        n = len(cases)
        self.keys = [c.key for c in cases]
        self.results: list[Result | None] = [by_key.get(c.key) for c in cases]
        base = np.full(n, np.nan)
        # 0 ok, 1 error, 2 missing (no result yet)
        status = np.zeros(n, dtype=np.int8)
        self.errors: dict[int, str] = {}
        obs_case: list[int] = []
        obs_t: list[float] = []
        obs_val: list[Any] = []
        for i, (c, r) in enumerate(zip(cases, self.results, strict=True)):
            if r is None:
                status[i] = 2
            elif r.error is not None:
                status[i] = 1
                self.errors[i] = r.error
            if c.decided_at is not None:
                base[i] = c.decided_at
            elif r is not None:
                base[i] = r.decided_at
            for o in c.labels:
                obs_case.append(i)
                obs_t.append(o.observed_at)
                obs_val.append(o.value)
        self.base = base
        self.status = status
        self.obs_case = np.asarray(obs_case, dtype=np.int64)
        self.obs_t = np.asarray(obs_t, dtype=float)
        self.obs_val = obs_val
        m = len(obs_val)
        score = np.full(m, np.nan)
        verdict = np.zeros(m, dtype=np.int8)  # 0 incorrect 1 partial 2 correct 3 error
        self.reasons: dict[int, str] = {}
        memo: dict[tuple[str, str], Verdict | str] = {}
        self.obs_cls = [class_key(v) for v in obs_val]
        self.dec_cls = [None if r is None else class_key(r.decision) for r in self.results]
        for j in range(m):
            i = obs_case[j]
            if status[i] != 0:
                continue
            r = self.results[i]
            assert r is not None
            mkey = (self.dec_cls[i] or "", self.obs_cls[j])
            v = memo.get(mkey) if scorer_is_pure(scorer) else None
            if v is None:
                try:
                    v = scorer(r.decision, obs_val[j], cases[i])
                    if not isinstance(v, Verdict):
                        from tether.evals.scorers import normalize

                        v = normalize(v)
                except Exception as exc:
                    v = f"scorer failed: {type(exc).__name__}: {exc}"
                if scorer_is_pure(scorer):
                    memo[mkey] = v
            if isinstance(v, str):
                verdict[j] = 3
                self.reasons[j] = v
            else:
                score[j] = v.score
                verdict[j] = {"incorrect": 0, "partial": 1, "correct": 2}[v.verdict]
                if v.reason:
                    self.reasons[j] = v.reason
        self.score = score
        self.verdict = verdict
        has = np.zeros(n, dtype=bool)
        if m:
            has[self.obs_case] = True
        self.has_obs = has
        # The first observation of each case that has any (observations are in case order).
        self.starts = (
            np.flatnonzero(np.r_[True, self.obs_case[1:] != self.obs_case[:-1]])
            if m
            else np.array([], dtype=np.int64)
        )

    def pick(self, times: Any) -> Any:
        """Per case, the index of the latest observation at or before ``times[case]``
        (-1 when none)."""
        np = self.np
        out = np.full(len(self.keys), -1, dtype=np.int64)
        if not len(self.obs_t):
            return out
        ok = self.obs_t <= times[self.obs_case]
        idx = np.where(ok, np.arange(len(self.obs_t)), -1)
        out[self.has_obs] = np.maximum.reduceat(idx, self.starts)
        return out

    def times_for(self, as_of: AsOf) -> Any:
        """Per case, when its label is read under ``as_of``."""
        np = self.np
        if as_of.mode == "latest":
            return np.full(len(self.keys), np.inf)
        if as_of.mode == "decision":
            return self.base
        return self.base + as_of.window


def scorer_is_pure(scorer: Scorer) -> bool:
    """Built-in scorers depend on (decision, label) only, so their verdicts are memoized."""
    return bool(getattr(scorer, "tether_pure", False))


Z95 = 1.959963984540054
"""The standard normal quantile of 0.975."""


def wilson(count: float, nobs: int) -> tuple[float | None, float | None]:
    """The 95% Wilson score interval of a proportion (None, None when ``nobs`` is 0).

    The closed form of ``statsmodels.stats.proportion.proportion_confint(count, nobs,
    method="wilson")`` (a test checks they agree), without importing statsmodels, which
    takes seconds, on every command that scores.
    """
    if nobs <= 0:
        return None, None
    p = count / nobs
    z2 = Z95 * Z95
    denom = 1 + z2 / nobs
    centre = (p + z2 / (2 * nobs)) / denom
    half = Z95 * math.sqrt(max(p * (1 - p) / nobs + z2 / (4 * nobs * nobs), 0.0)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _r(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


@dataclass
class Scored:
    """One as-of applied: per case what was picked, and the summary numbers."""

    as_of: AsOf
    pick: Any
    """Per case the observation index (-1: unlabeled)."""
    state: Any
    """Per case: 0 scored, 1 error, 2 missing, 3 unlabeled, 4 immature (scored apart)."""
    summary: dict[str, Any]


def apply(prep: Prepared, as_of: AsOf, *, now: float, maturity: float = 0.0) -> Scored:
    """Score every case under ``as_of`` (see the module doc for the definitions)."""
    np = prep.np
    times = prep.times_for(as_of)
    pick = prep.pick(times)
    state = np.zeros(len(prep.keys), dtype=np.int8)
    state[pick < 0] = 3
    mature_after = as_of.window if as_of.mode == "window" else maturity
    immature = (now - prep.base) < mature_after
    state[(state == 0) & immature] = 4
    picked_verdict = np.where(pick >= 0, prep.verdict[np.maximum(pick, 0)], 0)
    state[(pick >= 0) & (picked_verdict == 3)] = 1  # the scorer failed on this label
    state[prep.status == 1] = 1
    state[prep.status == 2] = 2
    scores = np.where(pick >= 0, prep.score[np.maximum(pick, 0)], np.nan)
    ok = state == 0
    n_ok = int(ok.sum())
    total = float(np.nansum(scores[ok])) if n_ok else 0.0
    agreement = total / n_ok if n_ok else None
    lo, hi = wilson(total, n_ok)
    imm = state == 4
    n_imm = int(imm.sum())
    summary = {
        "as_of": as_of.text,
        "cases": len(prep.keys),
        "scored": n_ok,
        "agreement": _r(agreement),
        "ci_low": _r(lo),
        "ci_high": _r(hi),
        "correct": int(((picked_verdict == 2) & ok).sum()),
        "partial": int(((picked_verdict == 1) & ok).sum()),
        "incorrect": int(((picked_verdict == 0) & ok).sum()),
        "errors": int((state == 1).sum()),
        "missing": int((state == 2).sum()),
        "unlabeled": int((state == 3).sum()),
        "immature": n_imm,
        "immature_agreement": _r(float(np.nansum(scores[imm])) / n_imm) if n_imm else None,
    }
    return Scored(as_of=as_of, pick=pick, state=state, summary=summary)


def per_class(prep: Prepared, scored: Scored, *, max_classes: int = 50) -> list[dict[str, Any]]:
    """Precision, recall and one-vs-rest accuracy per label class, with Wilson intervals,
    over the cases scored under ``scored`` (empty when labels are not categorical)."""
    ok = prep.np.flatnonzero(scored.state == 0).tolist()
    labels = [prep.obs_cls[scored.pick[i]] for i in ok]
    decisions = [prep.dec_cls[i] for i in ok]
    classes = sorted(set(labels))
    if not classes or len(classes) > max_classes:
        return []
    n = len(ok)
    pairs: dict[tuple[str, str | None], int] = {}
    for pair in zip(labels, decisions, strict=True):
        pairs[pair] = pairs.get(pair, 0) + 1
    out = []
    for c in classes:
        tp = pairs.get((c, c), 0)
        fp = sum(k for (lab, d), k in pairs.items() if lab != c and d == c)
        fn = sum(k for (lab, d), k in pairs.items() if lab == c and d != c)
        tn = n - tp - fp - fn
        p_lo, p_hi = wilson(tp, tp + fp)
        r_lo, r_hi = wilson(tp, tp + fn)
        a_lo, a_hi = wilson(tp + tn, n)
        out.append(
            {
                "class": c,
                "support": tp + fn,
                "predicted": tp + fp,
                "precision": _r(tp / (tp + fp)) if tp + fp else None,
                "precision_ci": [_r(p_lo), _r(p_hi)],
                "recall": _r(tp / (tp + fn)) if tp + fn else None,
                "recall_ci": [_r(r_lo), _r(r_hi)],
                "accuracy": _r((tp + tn) / n) if n else None,
                "accuracy_ci": [_r(a_lo), _r(a_hi)],
            }
        )
    return out


def confusion(prep: Prepared, scored: Scored) -> dict[str, dict[str, int]]:
    """Counts of (label class -> decision class) over the scored cases."""
    out: dict[str, dict[str, int]] = {}
    for i in prep.np.flatnonzero(scored.state == 0).tolist():
        lab = prep.obs_cls[scored.pick[i]]
        dec = prep.dec_cls[i] or ""
        row = out.setdefault(lab, {})
        row[dec] = row.get(dec, 0) + 1
    return out


AGES = (0.0, 3600.0, DAY, 7 * DAY, 14 * DAY, 30 * DAY, 60 * DAY, 90 * DAY, 180 * DAY, 365 * DAY)


def age_curve(prep: Prepared, *, now: float) -> list[dict[str, Any]]:
    """Agreement against label age: for each age, the labels as known that long after the
    decision, over the cases at least that old (so the curve is not mixed with immature
    ones)."""
    np = prep.np
    rel = prep.obs_t - prep.base[prep.obs_case] if len(prep.obs_t) else np.array([0.0])
    top = float(np.nanmax(rel)) if len(rel) and not np.all(np.isnan(rel)) else 0.0
    ages = [a for a in AGES if a <= max(top, 0.0)] + ([top] if top > 0 else [])
    out = []
    for a in sorted(set(ages)):
        s = apply(prep, AsOf("window", a, f"{a / DAY:g}d"), now=now)
        out.append(
            {
                "age_days": round(a / DAY, 4),
                "agreement": s.summary["agreement"],
                "scored": s.summary["scored"],
            }
        )
    return out
