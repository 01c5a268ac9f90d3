"""Human review and the dynamic example store (see docs/review.md).

- :func:`enqueue` queues a run's output for review (triage, rollout sampling, or by hand);
- :func:`record_review` records a verdict (correct / incorrect / partial + reason), and
  turns every confirmed failure into an example;
- ``ctx.examples(k)`` shows an agent the examples close enough to its case to help;
- :func:`coverage` says how many runs got one.
"""

from tether.review.embedders import Embedder, HashingEmbedder, MiniLMEmbedder, MissingExtra
from tether.review.examples import add_example, nearest, shown_to
from tether.review.flow import (
    enqueue,
    queue,
    queued,
    record_review,
    reviews_of,
    sampled,
)
from tether.review.records import SOURCES, VERDICTS, Example, QueueItem, Review, ReviewError

__all__ = [
    "SOURCES",
    "VERDICTS",
    "Embedder",
    "Example",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "MissingExtra",
    "QueueItem",
    "Review",
    "ReviewError",
    "add_example",
    "enqueue",
    "nearest",
    "queue",
    "queued",
    "record_review",
    "reviews_of",
    "sampled",
    "shown_to",
]
