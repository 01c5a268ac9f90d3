"""Turning what agents return into JSON the store can keep, or saying exactly why not."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from tether.errors import OutputError

_SCALARS = (str, int, bool, type(None))


def to_json(value: Any, *, what: str = "output") -> Any:
    """Return ``value`` as plain JSON data (dicts, lists, str, numbers, bools, None).

    Pydantic models and dataclasses are converted; tuples become lists. Anything else
    raises :class:`OutputError` naming the field, e.g. ``output.items[2].when``.
    """
    return _convert(value, what)


def _convert(value: Any, path: str) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise OutputError(f"{path} is {value!r}, which JSON cannot represent")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise OutputError(
                    f"{path} has a key {k!r} of type {type(k).__name__}; JSON keys must be str"
                )
            out[k] = _convert(v, f"{path}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_convert(v, f"{path}[{i}]") for i, v in enumerate(value)]
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # a Pydantic model
        return _convert(dump(mode="json"), path)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _convert(dataclasses.asdict(value), path)
    raise OutputError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which cannot be "
        "stored as JSON; return str, int, float, bool, None, lists and dicts of them"
    )


def canonical(value: Any) -> str:
    """A stable text form of JSON data: equal data gives equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
