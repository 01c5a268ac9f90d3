"""Evaluation as a first-class workflow (issue 6).

Datasets of cases whose labels carry the time they were observed; experiments that run an
agent over a dataset through the harness; scoring as of a chosen time; subsets; comparison
of experiments; disagreement triage; reports. See ``docs/evaluation.md``.

Only plain-Python modules are imported here: numpy, statsmodels and matplotlib (the
``evals`` extra) load when a feature needs them.
"""

from tether.evals.datasets import get_dataset, list_datasets, save_dataset
from tether.evals.loading import DatasetError, read_dataset, write_jsonl
from tether.evals.models import Case, Dataset, Experiment, LabelObservation, Result

__all__ = [
    "Case",
    "Dataset",
    "DatasetError",
    "Experiment",
    "LabelObservation",
    "Result",
    "get_dataset",
    "list_datasets",
    "read_dataset",
    "save_dataset",
    "write_jsonl",
]
