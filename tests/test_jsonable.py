"""``to_json``: what agents return becomes JSON data, or an error naming the field."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import math
from typing import Any

import pytest
from pydantic import BaseModel

from tether import OutputError
from tether.jsonable import canonical, to_json


class Address(BaseModel):
    city: str
    since: dt.date


class Customer(BaseModel):
    name: str
    address: Address
    tags: list[str] = []


@dataclasses.dataclass
class Line:
    item: str
    amount: float


@dataclasses.dataclass
class Invoice:
    lines: list[Line]
    customer: Customer | None = None


def test_plain_json_data_passes_through_unchanged() -> None:
    value = {"a": 1, "b": [True, None, 2.5, "x"], "c": {"d": []}}

    assert to_json(value) == value


def test_tuples_become_lists() -> None:
    assert to_json({"pair": (1, (2, 3))}) == {"pair": [1, [2, 3]]}


def test_pydantic_models_are_converted_in_json_mode() -> None:
    customer = Customer(name="Ada", address=Address(city="Paris", since=dt.date(2020, 1, 31)))

    assert to_json(customer) == {
        "name": "Ada",
        "address": {"city": "Paris", "since": "2020-01-31"},
        "tags": [],
    }


def test_dataclasses_are_converted_with_nested_models() -> None:
    invoice = Invoice(
        lines=[Line("cover", 10.0), Line("fee", 2.5)],
        customer=Customer(name="Bo", address=Address(city="Oslo", since=dt.date(2021, 2, 3))),
    )

    assert to_json(invoice) == {
        "lines": [{"item": "cover", "amount": 10.0}, {"item": "fee", "amount": 2.5}],
        "customer": {
            "name": "Bo",
            "address": {"city": "Oslo", "since": "2021-02-03"},
            "tags": [],
        },
    }


@pytest.mark.parametrize(
    ("value", "path", "kind"),
    [
        ({"when": dt.datetime(2026, 1, 1)}, "output.when", "datetime.datetime"),
        ({"ids": {1, 2}}, "output.ids", "builtins.set"),
        ({"items": [{}, {}, {"at": dt.date(2026, 1, 1)}]}, "output.items[2].at", "datetime.date"),
        ({"amount": decimal.Decimal("1.10")}, "output.amount", "decimal.Decimal"),
        ([Line("x", 1.0), object()], "output[1]", "builtins.object"),
        ({"cls": Line}, "output.cls", "builtins.type"),
    ],
)
def test_values_json_cannot_hold_are_rejected_naming_the_field(
    value: Any, path: str, kind: str
) -> None:
    with pytest.raises(OutputError) as info:
        to_json(value)

    message = str(info.value)
    assert message.startswith(f"{path} is a {kind}")
    assert "cannot be stored as JSON" in message


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected_naming_the_field(number: float) -> None:
    with pytest.raises(OutputError, match=r"^output\.score\[1\] is .*JSON cannot represent"):
        to_json({"score": [1.0, number]})


def test_non_string_keys_are_rejected() -> None:
    with pytest.raises(OutputError, match=r"output\.by_id has a key 1 of type int"):
        to_json({"by_id": {1: "a"}})


def test_the_path_starts_with_what_is_being_converted() -> None:
    with pytest.raises(OutputError, match=r"^step 'fetch' input\.since is"):
        to_json({"since": dt.date(2026, 1, 1)}, what="step 'fetch' input")


def test_a_model_field_json_cannot_hold_names_the_field() -> None:
    @dataclasses.dataclass
    class Holder:
        values: set[int]

    with pytest.raises(OutputError, match=r"^output\.values is a builtins\.set"):
        to_json(Holder({1}))


def test_canonical_text_ignores_key_order() -> None:
    assert canonical({"b": 1, "a": [1, {"y": 2, "x": 1}]}) == canonical(
        {"a": [1, {"x": 1, "y": 2}], "b": 1}
    )
    assert canonical({"a": 1}) != canonical({"a": 2})
    assert canonical({"b": 1, "a": 2}) == '{"a":2,"b":1}'
