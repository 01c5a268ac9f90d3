"""Reading datasets from JSONL, CSV and Parquet files.

Every format has the same fields (see ``docs/evaluation.md``):

- ``key`` (string, required), ``input`` (any JSON; in CSV a JSON text),
  ``decided_at`` (optional ISO 8601 time, or seconds since the epoch);
- labels, either ``labels``: a list of ``{"value": ..., "observed_at": ISO time}`` (in CSV
  a JSON text), or one observation per row in ``label`` + ``observed_at`` columns.

Rows with the same key are one case: their observations are merged (so a label that
matured can be appended as a new row), and their ``input`` and ``decided_at`` must agree.
The whole file is read and checked before anything is stored: a bad row raises
:class:`DatasetError` naming the file, the line (row) and the field, and nothing is kept.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tether.errors import TetherError
from tether.evals.models import Case, Dataset, LabelObservation

TIME_HINT = "use an ISO 8601 time such as 2025-01-31T12:00:00Z (or seconds since the epoch)"


class DatasetError(TetherError):
    """A dataset file (or a dataset name) is invalid; the message says where and how to fix."""


class EvalDependencyError(TetherError):
    """An optional dependency of evaluation is missing."""


def require(module: str) -> Any:
    """Import an optional dependency of the ``evals`` extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EvalDependencyError(
            f"{module} is needed for this evaluation feature: pip install 'tether[evals]'"
        ) from exc


def parse_time(value: Any, where: str) -> float:
    """An ISO 8601 string, a datetime or epoch seconds, as float seconds since the epoch
    (a time without a zone is taken as UTC)."""
    if isinstance(value, bool):
        raise DatasetError(f"{where}: {value!r} is not a time; {TIME_HINT}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise DatasetError(f"{where}: {value!r} is not a time; {TIME_HINT}")
        return float(value)
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise DatasetError(f"{where}: {value!r} is not an ISO time; {TIME_HINT}") from None
    else:
        raise DatasetError(f"{where}: {value!r} is not a time; {TIME_HINT}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class _Builder:
    """Collects rows into cases, merging rows of one key, checking as it goes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.cases: dict[str, dict[str, Any]] = {}

    def add(self, line: int, row: dict[str, Any]) -> None:
        where = f"{self.path}:{line}"
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: a case must be an object with key, input and labels")
        key = row.get("key")
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, str) or not key:
            raise DatasetError(f"{where}: field 'key': a case needs a non-empty string key")
        if len(key) > 400:
            raise DatasetError(f"{where}: field 'key': longer than 400 characters")
        decided = row.get("decided_at")
        decided_at = (
            None if decided in (None, "") else parse_time(decided, f"{where}: field 'decided_at'")
        )
        observations: list[LabelObservation] = []
        labels = row.get("labels")
        if labels not in (None, ""):
            if not isinstance(labels, list):
                raise DatasetError(
                    f"{where}: field 'labels': must be a list of "
                    '{"value": ..., "observed_at": ...} objects'
                )
            for i, obs in enumerate(labels):
                field = f"labels[{i}]"
                if not isinstance(obs, dict) or "value" not in obs:
                    raise DatasetError(
                        f"{where}: field '{field}': must be an object with value and observed_at"
                    )
                if obs.get("observed_at") in (None, ""):
                    raise DatasetError(
                        f"{where}: field '{field}.observed_at': missing; every label value "
                        "carries the time it was observed"
                    )
                observations.append(
                    LabelObservation(
                        obs["value"],
                        parse_time(obs["observed_at"], f"{where}: field '{field}.observed_at'"),
                    )
                )
        if "label" in row and row["label"] not in (None, ""):
            if row.get("observed_at") in (None, ""):
                raise DatasetError(
                    f"{where}: field 'observed_at': missing; a label needs the time it was observed"
                )
            observations.append(
                LabelObservation(
                    row["label"], parse_time(row["observed_at"], f"{where}: field 'observed_at'")
                )
            )
        seen = self.cases.get(key)
        if seen is None:
            self.cases[key] = {
                "input": row.get("input"),
                "decided_at": decided_at,
                "labels": observations,
                "line": line,
            }
            return
        if row.get("input") is not None and seen["input"] != row.get("input"):
            raise DatasetError(
                f"{where}: field 'input': case {key!r} appeared on line {seen['line']} with "
                "another input; one key is one case"
            )
        if decided_at is not None:
            if seen["decided_at"] not in (None, decided_at):
                raise DatasetError(
                    f"{where}: field 'decided_at': case {key!r} appeared on line "
                    f"{seen['line']} with another decided_at"
                )
            seen["decided_at"] = decided_at
        seen["labels"].extend(observations)

    def build(self, name: str, source: str | None) -> Dataset:
        cases = []
        for key, c in self.cases.items():
            labels = tuple(sorted(c["labels"], key=lambda o: o.observed_at))
            cases.append(Case(key=key, input=c["input"], decided_at=c["decided_at"], labels=labels))
        if not cases:
            raise DatasetError(f"{self.path}: no cases found")
        return Dataset(name=name, cases=tuple(cases), source=source)


def _json_field(text: Any, where: str, field: str) -> Any:
    if not isinstance(text, str):
        return text
    if text.strip() == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{where}: field '{field}': not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno}); one case "
                    "per line"
                ) from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "key" not in reader.fieldnames:
            raise DatasetError(f"{path}:1: the header needs a 'key' column (and input, labels)")
        for row in reader:
            line = reader.line_num
            where = f"{path}:{line}"
            out: dict[str, Any] = dict(row)
            for fld in ("input", "labels", "label"):
                if fld in out:
                    out[fld] = (
                        _json_field(out[fld], where, fld)
                        if fld != "label"
                        else _label_cell(out[fld])
                    )
            yield line, out


def _label_cell(text: Any) -> Any:
    """A CSV ``label`` cell: JSON when it parses (1, true, "x"), else the text itself."""
    if not isinstance(text, str) or text == "":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    pq = require("pyarrow.parquet")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from None
    if "key" not in table.column_names:
        raise DatasetError(f"{path}: the table needs a 'key' column (and input, labels)")
    for n, row in enumerate(table.to_pylist(), start=1):
        where = f"{path}:row {n}"
        for fld in ("input", "labels"):
            if isinstance(row.get(fld), str):
                row[fld] = _json_field(row[fld], where, fld)
        yield n, row


def read_rows(path: Path) -> Iterable[tuple[int, Any]]:
    """``(line, row)`` pairs of a dataset file, by its extension."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(path)
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix in (".parquet", ".pq"):
        return _parquet_rows(path)
    raise DatasetError(f"{path}: unknown dataset format {suffix!r}; use .jsonl, .csv or .parquet")


def read_dataset(path: Path | str, *, name: str | None = None) -> Dataset:
    """Read and check a whole dataset file (nothing is stored)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    builder = _Builder(str(p))
    try:
        for line, row in read_rows(p):
            builder.add(line, row)
    except UnicodeDecodeError:
        raise DatasetError(f"{p}: not UTF-8 text") from None
    return builder.build(name or p.stem, str(p))


def write_jsonl(dataset: Dataset, path: Path | str) -> None:
    """Write a dataset in the JSONL form (times as ISO 8601 UTC)."""

    def iso(t: float | None) -> str | None:
        return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()

    with Path(path).open("w", encoding="utf-8") as f:
        for c in dataset.cases:
            f.write(
                json.dumps(
                    {
                        "key": c.key,
                        "input": c.input,
                        "decided_at": iso(c.decided_at),
                        "labels": [
                            {"value": o.value, "observed_at": iso(o.observed_at)} for o in c.labels
                        ],
                    }
                )
                + "\n"
            )
