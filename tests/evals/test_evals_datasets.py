"""Datasets: JSONL, CSV and Parquet load the same cases; bad rows are named; versions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from tether import Store
from tether.evals import DatasetError, get_dataset, list_datasets, read_dataset, save_dataset
from tether.evals.models import Case, LabelObservation
from tether.store.schema_evals import eval_cases, eval_datasets, eval_labels


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


ROWS = [
    {
        "key": "c1",
        "input": {"amount": 10},
        "decided_at": "2025-01-01T00:00:00Z",
        "labels": [
            {"value": "fraud", "observed_at": "2025-02-01T00:00:00Z"},
            {"value": "legit", "observed_at": "2025-01-05T00:00:00Z"},
        ],
    },
    {"key": "c2", "input": {"amount": 20}, "labels": []},
]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_case_keeps_observations_in_time_order_and_answers_as_of(tmp_path: Path) -> None:
    ds = read_dataset(write_jsonl(tmp_path / "fraud.jsonl", ROWS))

    c1 = ds.case("c1")
    assert ds.name == "fraud"
    assert c1.decided_at == ts("2025-01-01T00:00:00")
    assert [o.value for o in c1.labels] == ["legit", "fraud"]
    assert c1.label_at(ts("2025-01-04T00:00:00")) is None
    assert c1.label_at(ts("2025-01-05T00:00:00")) == LabelObservation(
        "legit", ts("2025-01-05T00:00:00")
    )
    assert c1.label_at(ts("2025-03-01T00:00:00")).value == "fraud"  # type: ignore[union-attr]
    assert ds.case("c2").labels == () and ds.case("c2").decided_at is None


def test_repeated_key_rows_merge_observations(tmp_path: Path) -> None:
    rows = [
        {"key": "a", "input": 1, "labels": [{"value": 0, "observed_at": "2025-01-01"}]},
        {"key": "a", "labels": [{"value": 1, "observed_at": "2025-01-09"}]},
    ]
    ds = read_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert len(ds) == 1
    assert [o.value for o in ds.case("a").labels] == [0, 1]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"input": 1}, "d.jsonl:2: field 'key'"),
        (
            {"key": "x", "labels": [{"value": 1, "observed_at": "yesterday"}]},
            "d.jsonl:2: field 'labels[0].observed_at': 'yesterday' is not an ISO time",
        ),
        (
            {"key": "x", "labels": [{"value": 1}]},
            "d.jsonl:2: field 'labels[0].observed_at': missing",
        ),
        ({"key": "x", "decided_at": "2025-99-01"}, "d.jsonl:2: field 'decided_at'"),
        ({"key": "x", "labels": {"value": 1}}, "d.jsonl:2: field 'labels': must be a list"),
        ({"key": "c1", "input": {"amount": 11}}, "d.jsonl:2: field 'input': case 'c1' appeared"),
    ],
)
def test_bad_row_names_file_line_and_field(
    tmp_path: Path, row: dict[str, object], expected: str
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], row])
    with pytest.raises(DatasetError) as err:
        read_dataset(path)
    assert expected in str(err.value)


def test_bad_json_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DatasetError, match=r"d.jsonl:2: not valid JSON"):
        read_dataset(path)


def test_csv_with_one_observation_per_row_equals_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "fraud.csv"
    path.write_text(
        "key,input,decided_at,label,observed_at\n"
        'c1,"{""amount"": 10}",2025-01-01T00:00:00Z,fraud,2025-02-01T00:00:00Z\n'
        'c1,"{""amount"": 10}",2025-01-01T00:00:00Z,legit,2025-01-05T00:00:00Z\n'
        'c2,"{""amount"": 20}",,,\n'
    )
    from_csv = read_dataset(path)
    from_jsonl = read_dataset(write_jsonl(tmp_path / "fraud.jsonl", ROWS))
    assert from_csv.version == from_jsonl.version


def test_csv_bad_json_cell_reports_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("key,input,labels\nc1,{},[]\nc2,{oops,[]\n")
    with pytest.raises(DatasetError, match=r"d.csv:3: field 'input': not valid JSON"):
        read_dataset(path)


def test_parquet_with_nested_labels_equals_jsonl(tmp_path: Path) -> None:
    table = pa.table(
        {
            "key": ["c1", "c2"],
            "input": [json.dumps({"amount": 10}), json.dumps({"amount": 20})],
            "decided_at": [datetime(2025, 1, 1, tzinfo=UTC), None],
            "labels": [
                [
                    {"value": "fraud", "observed_at": datetime(2025, 2, 1, tzinfo=UTC)},
                    {"value": "legit", "observed_at": datetime(2025, 1, 5, tzinfo=UTC)},
                ],
                [],
            ],
        }
    )
    pq.write_table(table, tmp_path / "fraud.parquet")
    from_parquet = read_dataset(tmp_path / "fraud.parquet")
    from_jsonl = read_dataset(write_jsonl(tmp_path / "fraud.jsonl", ROWS))
    assert from_parquet.version == from_jsonl.version


def test_parquet_bad_row_reports_row_and_field(tmp_path: Path) -> None:
    table = pa.table({"key": ["a", "b"], "decided_at": ["2025-01-01", "soon"]})
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match=r"d.parquet:2: field 'decided_at'"):
        read_dataset(tmp_path / "d.parquet")


def test_saved_dataset_round_trips_and_same_content_is_same_version(
    store: Store, tmp_path: Path
) -> None:
    ds = read_dataset(write_jsonl(tmp_path / "fraud.jsonl", ROWS))
    saved = save_dataset(store, ds)
    again = save_dataset(store, read_dataset(write_jsonl(tmp_path / "fraud.jsonl", ROWS)))

    assert saved.id is not None and again.id == saved.id
    loaded = get_dataset(store, "fraud")
    assert loaded.cases == ds.cases
    assert loaded.version == ds.version

    # A matured label is a new version; the old one stays as it was.
    grown = [*ROWS[:1], {**ROWS[1], "labels": [{"value": "legit", "observed_at": "2025-03-01"}]}]
    v2 = save_dataset(store, read_dataset(write_jsonl(tmp_path / "fraud.jsonl", grown)))
    assert v2.version != ds.version
    assert get_dataset(store, "fraud").version == v2.version
    assert get_dataset(store, f"fraud@{ds.version[:10]}").case("c2").labels == ()
    assert [d["cases"] for d in list_datasets(store)] == [2, 2]


def test_failed_save_leaves_nothing_behind(store: Store) -> None:
    from tether.evals.models import Dataset

    # A key longer than the column allows fails on PostgreSQL and SQLite accepts it, so
    # provoke a failure both refuse: a label whose value cannot be stored as JSON.
    bad = Dataset(
        name="bad",
        cases=(
            Case("a", 1, None, (LabelObservation(1, 1.0),)),
            Case("b", 2, None, (LabelObservation(object(), 2.0),)),
        ),
        version="v",
    )
    with pytest.raises(Exception):  # noqa: B017 - any refusal; the point is the rollback
        save_dataset(store, bad)
    with store.engine.connect() as conn:
        for table in (eval_datasets, eval_cases, eval_labels):
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() == 0


def test_unknown_dataset_says_how_to_load(store: Store) -> None:
    with pytest.raises(DatasetError, match="tether eval load"):
        get_dataset(store, "nope")
