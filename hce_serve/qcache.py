"""A bounded LRU cache of query embeddings, shared by every thread of one process.

Queries repeat (head queries, a user paging through results, a client retrying): an embedding found here
skips the encoder, which is almost all of a query's cost, while the index is still searched afresh, so a
hit never returns stale documents. Nothing in the index invalidates an entry: a query's embedding depends
only on the encoder.

Keys are ``(encoder identity, query key)``. The identity (``Encoder.query_identity``: export folder,
variant, query graph, query_max_length) keeps two encoders that share one cache apart. The query key
(``query_key_function``) is the text as the tokenizer sees it, so two texts share an entry only when the
encoder cannot tell them apart:

- the tokenizer's own normalizer runs first. It lowercases (and strips accents) only when the model's
  tokenizer does, as all-MiniLM-L6-v2's uncased BERT normalizer does; a cased model keeps "US" and "us"
  apart. Python's ``str.lower`` would be wrong both ways: it folds case for cased models and does not
  strip accents where BERT does.
- whitespace runs are then collapsed and trimmed, but only when the pre-tokenizer splits on whitespace and
  drops it (BERT, Whitespace, WhitespaceSplit). Byte-level BPE and SentencePiece (Metaspace) tokenizers
  encode spaces as tokens, so for them the normalised text is the key as it is.
- a text holding an added token matched before normalisation (BERT's ``[MASK]``, ``[SEP]`` …) is keyed by
  its raw text in its own namespace: ``[MASK]`` is one token and ``[mask]`` three.

Values are read-only float32 rows.

Concurrent misses of one key both encode and both store the same row: harmless, and cheaper than making
every other query wait on a per-key lock.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError

# Unicode White_Space, the set the tokenizers library (Rust char::is_whitespace) splits on. Not Python's
# str.split(), which also splits on the separators U+001C-U+001F that BERT's normalizer deletes instead.
WHITESPACE = re.compile(r"[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
# Pre-tokenizers that split on whitespace and drop it, and those that may sit beside them in a Sequence.
_DROPS_WHITESPACE = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_NEUTRAL = {"Punctuation", "Digits"}


def _collapses_whitespace(spec: dict[str, Any] | None) -> bool:
    if not spec:
        return False
    parts = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    kinds = {p.get("type") for p in parts}
    return bool(kinds & _DROPS_WHITESPACE) and kinds <= _DROPS_WHITESPACE | _NEUTRAL


def query_key_function(tokenizer: Any) -> Callable[[str], tuple[str, str]]:
    """``key(text)`` for a ``tokenizers.Tokenizer``: equal keys mean equal token ids (see the module docstring)."""
    spec = json.loads(tokenizer.to_str())
    normalizer = tokenizer.normalizer
    collapse = _collapses_whitespace(spec.get("pre_tokenizer"))
    raw = tuple(t.content for t in tokenizer.get_added_tokens_decoder().values() if not t.normalized and t.content)

    def key(text: str) -> tuple[str, str]:
        if any(t in text for t in raw):
            return "raw", text
        norm = normalizer.normalize_str(text) if normalizer is not None else text
        return "norm", WHITESPACE.sub(" ", norm).strip(" ") if collapse else norm

    return key


class QueryCache:
    """LRU map from a hashable key to one embedding row; ``capacity`` 0 stores nothing (a disabled cache)."""

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
            raise ConfigError(f"query cache capacity must be an integer >= 0, found {capacity!r}")
        self.capacity = capacity
        self._rows: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get_many(self, keys: Sequence[Hashable]) -> list[np.ndarray | None]:
        """The cached row of each key, or None; a hit becomes the most recently used entry."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                row = self._rows.get(key)
                if row is not None:
                    self._rows.move_to_end(key)
                out.append(row)
            found = sum(r is not None for r in out)
            self.hits += found
            self.misses += len(out) - found
        return out

    def put_many(self, keys: Sequence[Hashable], rows: np.ndarray) -> None:
        """Store ``rows[i]`` (float32 (n, dim)) under ``keys[i]``; the least recently used entries go first."""
        if self.capacity == 0:
            return
        frozen = np.array(rows, dtype=np.float32, copy=True)  # (n, dim): callers may reuse their buffer
        frozen.setflags(write=False)
        with self._lock:
            for key, row in zip(keys, frozen, strict=True):
                self._rows[key] = row
                self._rows.move_to_end(key)
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
                self.evictions += 1

    def encode(self, encoder: Any, texts: Sequence[str]) -> np.ndarray:
        """``encoder.encode_queries(texts)`` through the cache: float32 (n, dim), a fresh array. Rows found are
        reused; the rest are encoded in one call, each distinct key once, and stored."""
        if self.capacity == 0 or not texts:
            return encoder.encode_queries(texts)
        ident = encoder.query_identity
        keys = [(ident, encoder.query_key(t)) for t in texts]
        rows = self.get_many(keys)
        todo = {k: i for i, (k, row) in enumerate(zip(keys, rows, strict=True)) if row is None}  # key -> first text
        if todo:
            fresh = encoder.encode_queries([texts[i] for i in todo.values()])  # (m, dim)
            self.put_many(list(todo), fresh)
            found = dict(zip(todo, fresh, strict=True))
            rows = [row if row is not None else found[k] for k, row in zip(keys, rows, strict=True)]
        return np.stack(rows)  # (n, dim)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)

    def stats(self) -> dict[str, Any]:
        """capacity, size, hits, misses, hit_rate (None before the first lookup) and evictions."""
        with self._lock:
            looked = self.hits + self.misses
            return {"capacity": self.capacity, "size": len(self._rows), "hits": self.hits, "misses": self.misses,
                    "hit_rate": round(self.hits / looked, 4) if looked else None, "evictions": self.evictions}
