"""Evaluation as a first-class workflow (issue 6).

Datasets of cases whose labels carry the time they were observed; experiments that run an
agent over a dataset through the harness; scoring as of a chosen time; subsets; comparison
of experiments; disagreement triage; reports. See ``docs/evaluation.md``.

Only plain-Python modules are imported here: numpy, statsmodels and matplotlib (the
``evals`` extra) load when a feature needs them.
"""

from tether.evals.compare import compare
from tether.evals.datasets import get_dataset, list_datasets, save_dataset
from tether.evals.disagreements import classify_disagreement, disagrees, exchanges_of, triage
from tether.evals.evaluation import evaluate, evaluate_experiment
from tether.evals.experiments import get_experiment, list_experiments, results
from tether.evals.loading import DatasetError, read_dataset, write_jsonl
from tether.evals.models import Case, Dataset, Experiment, LabelObservation, Result
from tether.evals.runner import ExperimentRunner, run_experiment, start
from tether.evals.scorers import Verdict
from tether.evals.subsets import draw_subset, stubborn_counts

__all__ = [
    "Case",
    "Dataset",
    "DatasetError",
    "Experiment",
    "ExperimentRunner",
    "LabelObservation",
    "Result",
    "Verdict",
    "classify_disagreement",
    "compare",
    "disagrees",
    "draw_subset",
    "evaluate",
    "evaluate_experiment",
    "exchanges_of",
    "get_dataset",
    "get_experiment",
    "list_datasets",
    "list_experiments",
    "read_dataset",
    "results",
    "run_experiment",
    "save_dataset",
    "start",
    "stubborn_counts",
    "triage",
    "write_jsonl",
]
