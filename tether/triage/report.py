"""``tether triage report``: the Pareto curve, the chosen point, and whether the bar holds.

The curve (automation rate vs precision on the held-out runs) and the chosen threshold come
from training. Whether the bar holds *now* is measured on the reviews of automated runs
since the model was trained (rollout samples and any other review of an automated run),
and re-checked with MAPIE's :class:`~mapie.exchangeability_testing.RiskMonitoring`: its
time-uniform lower bound on the automated share's error rate may be read after every new
review; when it exceeds ``1 - target`` the bar has slipped, at the bar's confidence.
"""

from __future__ import annotations

import html
import io
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tether.store import Store
from tether.store.schema import runs, steps
from tether.store.schema_review import reviews
from tether.triage.bars import get_bar
from tether.triage.data import TRIAGE_STEP, latest_reviews
from tether.triage.errors import TriageError, require
from tether.triage.models import TriageModel, latest_model

MIN_RECENT = 30
"""Fewer reviews of automated runs than this cannot say much either way."""


def recent_automated(store: Store, model: TriageModel) -> list[tuple[float, int]]:
    """(review time, 1 if correct) for the automated runs scored by ``model`` and reviewed
    since, oldest review first (latest review per run)."""
    latest = latest_reviews(model.agent)
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(steps.c.output, reviews.c.verdict, reviews.c.created_at)
            .select_from(latest)
            .join(reviews, reviews.c.id == latest.c.review_id)
            .join(runs, runs.c.id == latest.c.run_id)
            .join(steps, steps.c.run_id == runs.c.id)
            .where(steps.c.name == TRIAGE_STEP, runs.c.finished_at >= model.created_at)
            .order_by(reviews.c.created_at, reviews.c.id)
        ).all()
    out = []
    for r in rows:
        o = r.output if isinstance(r.output, dict) else {}
        if o.get("decision") == "automated":
            out.append((float(r.created_at), 1 if r.verdict == "correct" else 0))
    return out


def monitor(labels: list[int], target: float, confidence: float) -> dict[str, Any]:
    """The bar re-checked on recent reviewed automated runs (labels: 1 = correct)."""
    import numpy as np
    from mapie.exchangeability_testing import RiskMonitoring

    n = len(labels)
    result: dict[str, Any] = {
        "reviewed": n, "correct": int(sum(labels)),
        "precision": (sum(labels) / n) if n else None,
        "error_lower_bound": None, "slipped": False,
    }
    if n == 0:
        result["status"] = "no reviews of automated runs yet"
        return result
    mon = RiskMonitoring(risk="precision", test_level=1.0 - confidence,
                         threshold=1.0 - target, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mon.update(np.asarray(labels, dtype=int), np.ones(n, dtype=int))
    bound = mon.online_risk_lower_bound_latest
    result["error_lower_bound"] = None if bound is None else float(bound)
    result["slipped"] = bool(mon.harmful_shift_detected)
    if result["slipped"]:
        result["status"] = (
            f"WARNING: the bar has slipped: with {confidence:.0%} confidence the automated "
            f"share's precision is below {target:.1%} (at most {1 - bound:.1%})"
        )
    elif n < MIN_RECENT:
        result["status"] = f"holding so far; only {n} reviews of automated runs"
    else:
        result["status"] = "holding: no evidence the automated share is below the bar"
    return result


def report(store: Store, agent: str) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data.

    Raises:
        TriageError: the agent has no trained model.
    """
    require("mapie")
    model = latest_model(store, agent)
    if model is None:
        raise TriageError(
            f"triage report {agent}: no triage model yet; train one with "
            f"`tether triage train {agent}`"
        )
    bar = get_bar(store, agent)
    target = bar.target if bar else float(model.bar["target"])
    confidence = bar.confidence if bar else float(model.bar["confidence"])
    recent = recent_automated(store, model)
    check = monitor([y for _, y in recent], target, confidence)
    notes = []
    if model.threshold is None:
        notes.append(
            "no threshold meets the bar on the held-out runs: every run goes to review "
            "(more reviewed runs, better features or a lower bar would change that)"
        )
    if bar is not None and bar.id != model.bar.get("id"):
        from tether.triage.enforce import stricter

        if stricter(bar, model.bar):
            notes.append("the bar was raised after this model was trained: every run goes "
                         f"to review until you retrain (`tether triage train {agent}`)")
        else:
            notes.append("the bar changed after this model was trained: retrain it "
                         f"(`tether triage train {agent}`)")
    if check["slipped"]:
        notes.append(check["status"])
    curve = model.metrics.get("curve", [])
    return {
        "agent": agent,
        "bar": bar.to_dict() if bar else model.bar,
        "model": {k: v for k, v in model.to_dict().items() if k not in ("metrics",)},
        "metrics": {k: v for k, v in model.metrics.items() if k != "curve"},
        "chosen": {
            "threshold": model.threshold,
            "automated_share": model.automated_share,
            "precision": model.metrics.get("calibration_precision"),
        },
        "curve": curve,
        "recent": check,
        "bar_met": model.threshold is not None and not check["slipped"]
        and not (bar is not None and _stricter(bar, model.bar)),
        "notes": notes,
    }


def _stricter(bar: Any, trained_for: dict[str, Any]) -> bool:
    from tether.triage.enforce import stricter

    return stricter(bar, trained_for)


def pareto_svg(data: dict[str, Any]) -> str:
    """The automation rate vs precision curve as an SVG document (matplotlib)."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [c for c in data["curve"] if c.get("precision") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot([c["automated_share"] for c in pts], [c["precision"] for c in pts], "-",
            color="#888", label="held-out runs")
    ok = [c for c in pts if c["meets_bar"]]
    ax.scatter([c["automated_share"] for c in ok], [c["precision"] for c in ok], s=12,
               color="#2a7", label="meets the bar (learn-then-test)", zorder=3)
    ax.axhline(data["bar"]["target"], color="#c33", ls="--", lw=1, label="bar")
    chosen = data["chosen"]
    if chosen["threshold"] is not None and chosen["precision"] is not None:
        ax.scatter([chosen["automated_share"]], [chosen["precision"]], s=80, marker="*",
                   color="#15c", zorder=4, label=f"chosen (threshold {chosen['threshold']:.3f})")
    ax.set_xlabel("automation rate (share of runs not sent to review)")
    ax.set_ylabel("precision of the automated share")
    ax.set_title(f"{data['agent']}: automation vs precision")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]


def write_html(data: dict[str, Any], path: Path) -> Path:
    """Write the report as one self-contained HTML file (the plot inline)."""
    e = html.escape
    bar = data["bar"]
    chosen = data["chosen"]
    recent = data["recent"]

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    rows = "".join(
        f"<tr><td>{k}</td><td>{e(str(v))}</td></tr>" for k, v in [
            ("bar", f"{pct(bar['target'])} {bar['metric']} at {pct(bar['confidence'])} "
                    f"confidence (set by {bar['set_by']})"),
            ("threshold", "none: every run goes to review" if chosen["threshold"] is None
             else f"{chosen['threshold']:.4f}"),
            ("automation rate", pct(chosen["automated_share"])),
            ("held-out precision at the threshold", pct(chosen["precision"])),
            ("trained on", data["model"]["trained_on"]),
            ("held-out AUC", data["metrics"].get("calibration_auc")),
            ("recent reviewed automated runs", recent["reviewed"]),
            ("recent precision", pct(recent["precision"])),
            ("status", recent["status"]),
        ]
    )
    notes = "".join(f"<p class='warn'>{e(n)}</p>" for n in data["notes"])
    doc = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Triage report: {e(data['agent'])}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}
td{{padding:2px 12px;border-bottom:1px solid #ddd}}.warn{{color:#b00;font-weight:bold}}</style>
</head><body><h1>Production bar: {e(data['agent'])}</h1>
<p>Bar {"met" if data["bar_met"] else "NOT met"}.</p>{notes}
<table>{rows}</table>{pareto_svg(data)}</body></html>"""
    path.write_text(doc, encoding="utf-8")
    return path
