"""Reports of an evaluated experiment: Markdown (with SVG plots beside it) and a single
HTML page (plots embedded as images). Every value that comes from a dataset, an agent or
a scorer is escaped: a label such as ``<script>`` is shown, never run."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from tether.evals.loading import require


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4f}".rstrip("0").rstrip(".") if x == x else "-"
    return str(x)


def _value(v: Any, width: int = 80) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _pyplot() -> Any:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def age_plot(ev: dict[str, Any]) -> str:
    """Agreement against label age, as SVG text."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    pts = [p for p in ev["age_curve"] if p["agreement"] is not None]
    ax.plot([p["age_days"] for p in pts], [p["agreement"] for p in pts], marker="o")
    latest = ev["as_of"].get("latest", {}).get("agreement")
    if latest is not None:
        ax.axhline(latest, linestyle="--", color="grey", label=f"latest labels: {latest:.3f}")
        ax.legend(loc="lower right")
    ax.set_xlabel("label age (days after the decision)")
    ax.set_ylabel("agreement")
    ax.set_ylim(0, 1.05)
    ax.set_title("Agreement against label age")
    ax.grid(alpha=0.3)
    return _svg(fig)


def confusion_plot(ev: dict[str, Any], *, limit: int = 20) -> str:
    """The confusion matrix (labels down, decisions across), as SVG text."""
    plt = _pyplot()
    conf: dict[str, dict[str, int]] = ev["confusion"]
    labels = sorted(conf)[:limit]
    decisions = sorted({d for row in conf.values() for d in row})[:limit]
    grid = [[conf.get(lab, {}).get(d, 0) for d in decisions] for lab in labels]
    fig, ax = plt.subplots(
        figsize=(1.2 + 0.8 * max(len(decisions), 2), 1 + 0.6 * max(len(labels), 2))
    )
    ax.imshow(grid or [[0]], cmap="Blues")
    ax.set_xticks(
        range(len(decisions)), [_value(d, 20) for d in decisions], rotation=45, ha="right"
    )
    ax.set_yticks(range(len(labels)), [_value(lab, 20) for lab in labels])
    top = max((max(r) for r in grid if r), default=0)
    for i, row in enumerate(grid):
        for j, n in enumerate(row):
            ax.text(
                j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black"
            )
    ax.set_xlabel("decision")
    ax.set_ylabel(f"label (as of {ev['primary']})")
    ax.set_title("Confusion matrix")
    return _svg(fig)


def plots(ev: dict[str, Any]) -> tuple[str, str]:
    """Both plots as SVG text (agreement vs label age, confusion), to render once and
    share between the HTML and Markdown reports."""
    return age_plot(ev), confusion_plot(ev)


def _md_cell(v: Any) -> str:
    return html.escape(_value(v)).replace("|", "\\|").replace("\n", " ")


def _ci(value: Any, ci: list[Any]) -> str:
    return f"{_fmt(value)} ({_fmt(ci[0])} to {_fmt(ci[1])})"


def _rows(ev: dict[str, Any]) -> dict[str, list[list[str]]]:
    """The report's tables as rows of plain text cells (escaped by each renderer)."""
    as_of = [
        [
            name,
            _fmt(s["agreement"]),
            f"{_fmt(s['ci_low'])} to {_fmt(s['ci_high'])}",
            _fmt(s["scored"]),
            _fmt(s["immature"]),
            _fmt(s["immature_agreement"]),
            _fmt(s["unlabeled"]),
            _fmt(s["errors"]),
        ]
        for name, s in ev["as_of"].items()
    ]
    classes = [
        [
            c["class"],
            _fmt(c["support"]),
            _ci(c["precision"], c["precision_ci"]),
            _ci(c["recall"], c["recall_ci"]),
            _ci(c["accuracy"], c["accuracy_ci"]),
        ]
        for c in ev["per_class"]
    ]
    worst = [
        [w["key"], _value(w["decision"]), _value(w["label"]), _fmt(w["score"]), w["reason"] or ""]
        for w in ev["worst_cases"]
    ]
    errors = [[e["key"], e["error"] or ""] for e in ev["errors"]]
    return {"as_of": as_of, "classes": classes, "worst": worst, "errors": errors}


HEADERS = {
    "as_of": [
        "as of",
        "agreement",
        "95% CI",
        "scored",
        "immature",
        "immature agr.",
        "unlabeled",
        "errors",
    ],
    "classes": ["class", "support", "precision (CI)", "recall (CI)", "accuracy (CI)"],
    "worst": ["case", "decision", "label", "score", "reason"],
    "errors": ["case", "error"],
}


def _summary_line(ev: dict[str, Any]) -> str:
    gap = ev["maturation_gap"].get("latest")
    cost, lat = ev["cost"], ev["latency"]
    return (
        f"agent {ev['experiment']['agent']}, dataset {ev['dataset']['ref']} "
        f"({ev['dataset']['cases']} cases), scorer {ev['scorer']}; maturation gap "
        f"(latest - decision) {_fmt(gap)}; cost total {_fmt(cost['total'])}, mean "
        f"{_fmt(cost['mean'])}; latency mean {_fmt(lat['mean'])} s, p95 {_fmt(lat['p95'])} s"
    )


def markdown(ev: dict[str, Any], out: Path | str, *, svgs: tuple[str, str] | None = None) -> Path:
    """Write the Markdown report to ``out`` and its plots beside it (``*.age.svg``,
    ``*.confusion.svg``); returns the report's path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    age = path.with_suffix(".age.svg")
    conf = path.with_suffix(".confusion.svg")
    age_svg, conf_svg = svgs or plots(ev)
    age.write_text(age_svg)
    conf.write_text(conf_svg)
    rows = _rows(ev)
    lines = [
        f"# Experiment {html.escape(ev['experiment']['name'])}",
        "",
        html.escape(_summary_line(ev)),
        "",
    ]

    def table(name: str, title: str) -> None:
        lines.extend([f"## {title}", ""])
        if not rows[name]:
            lines.extend(["(none)", ""])
            return
        lines.append("| " + " | ".join(HEADERS[name]) + " |")
        lines.append("|" + "---|" * len(HEADERS[name]))
        lines.extend("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows[name])
        lines.append("")

    table("as_of", "Agreement as of")
    lines.extend([f"![Agreement against label age]({age.name})", ""])
    table("classes", f"Per class (as of {html.escape(ev['primary'])})")
    lines.extend([f"![Confusion matrix]({conf.name})", ""])
    table("worst", "Worst cases")
    table("errors", f"Errors ({ev['error_count']})")
    path.write_text("\n".join(lines))
    return path


def _img(svg: str, alt: str) -> str:
    data = base64.b64encode(svg.encode()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def html_page(ev: dict[str, Any], *, svgs: tuple[str, str] | None = None) -> str:
    """The report as one self-contained HTML page."""
    rows = _rows(ev)
    age_svg, conf_svg = svgs or plots(ev)
    e = html.escape

    def table(name: str) -> str:
        if not rows[name]:
            return "<p>(none)</p>"
        head = "".join(f"<th>{e(h)}</th>" for h in HEADERS[name])
        body = "".join(
            "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows[name]
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    name = e(ev["experiment"]["name"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Experiment {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .6em;
text-align:left}}th{{background:#f4f4f4}}</style></head><body>
<h1>Experiment {name}</h1>
<p>{e(_summary_line(ev))}</p>
<h2>Agreement as of</h2>{table("as_of")}
{_img(age_svg, "Agreement against label age")}
<h2>Per class (as of {e(ev["primary"])})</h2>{table("classes")}
{_img(conf_svg, "Confusion matrix")}
<h2>Worst cases</h2>{table("worst")}
<h2>Errors ({ev["error_count"]})</h2>{table("errors")}
</body></html>
"""
