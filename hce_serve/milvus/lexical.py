"""The lexical (BM25) side of a Milvus collection: Milvus full-text search fed hce's own analysis.

A collection exported from a folder with a lexical part carries two more fields:

```
lexical       VARCHAR, enable_analyzer (tokenizer "standard"): the document's index terms, hce-analysed, in order
lexical_bm25  SPARSE_FLOAT_VECTOR, the output of a BM25 function over ``lexical``; index SPARSE_INVERTED_INDEX,
              metric BM25, bm25_k1 / bm25_b from the folder
```

Why hce analyses and Milvus only splits: the folder's analyzer is Snowball stemming plus Lucene's English stop
words (``lexical.analyzer``). Milvus servers (>= 2.5) offer an ``english`` analyzer, but milvus-lite 3.2 knows
only the ``standard`` (``\\w+``, lower-cased, single characters kept) and ``jieba`` tokenizers; it refuses
``{"type": "english"}`` and silently ignores a ``stemmer`` filter (it honours a ``stop`` filter). So the text
Milvus indexes is already the folder's terms joined by spaces, and a query is analysed the same way before it is
sent: both backends then count exactly the folder's terms, in any language the folder was built with.

What still differs from the folder's BM25 (``lexical.bm25``), by design of Milvus:
- scores: Milvus multiplies by ``k1 + 1`` (Robertson's form); ``score`` divides it out, so scores are on the
  folder's (Lucene's) scale and ``explain`` means the same on both backends;
- milvus-lite returns ``-score`` as the distance (smaller is better, like its L2): ``score`` takes the magnitude,
  which is right for both conventions since a BM25 score is never negative;
- statistics (N, df, avgdl): milvus-lite keeps them per segment (its own TODO), counting deleted rows until a
  compaction rewrites the segment. An export flushes once, so a collection within milvus-lite's 100,000-row
  segments scores as the folder does (SciFact: the same top 10 for every test query,
  ``benchmarks/milvus_lexical.py``). Documents added later sit in a small segment of their own (the unflushed
  ones too) and score with its statistics, so their idf is low, until lite compacts segments of similar size
  together; re-export to score them as the folder would. Milvus servers (2.5+) gather the statistics of all
  segments for a query;
- a server's ``standard`` tokenizer splits on Unicode word boundaries: a run of CJK ideographs (one term for
  hce's ``\\w\\w+``) becomes one term per ideograph there; Latin-script terms are unchanged;
- Milvus servers accept bm25_k1 in [1.2, 2.0] (hce: [0, 10]); a folder outside that range exports only to lite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..documents import Document
from ..errors import FormatError
from ..lexical.analyzer import Analyzer
from ..lexical.settings import BM25Params, from_settings

TEXT_FIELD, SPARSE_FIELD, FUNCTION = "lexical", "lexical_bm25", "lexical_bm25_fn"
# The terms are already analysed; Milvus only splits them again on the spaces between them.
MILVUS_ANALYZER = {"tokenizer": "standard"}


@dataclass(frozen=True)
class LexicalSpec:
    """The analyzer and BM25 parameters of a collection's lexical side (the folder's, copied at export)."""

    analyzer: Analyzer
    params: BM25Params

    def to_dict(self) -> dict[str, Any]:
        """The folder manifest's shape (``lexical.settings.settings``), plus the fields that hold it."""
        return {"analyzer": self.analyzer.to_dict(), "bm25": self.params.to_dict(),
                "fields": {"text": TEXT_FIELD, "sparse": SPARSE_FIELD}}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> LexicalSpec:
        analyzer_settings, params = from_settings(d, where)
        analyzer = Analyzer.from_dict(analyzer_settings, where)
        fields = d.get("fields") if isinstance(d, Mapping) else None
        if fields != {"text": TEXT_FIELD, "sparse": SPARSE_FIELD}:
            raise FormatError(f"{where}: lexical fields must be {TEXT_FIELD!r} and {SPARSE_FIELD!r}, found {fields!r}")
        return cls(analyzer, params)

    def text(self, doc: Document) -> str:
        """What the ``lexical`` field holds for ``doc``: the folder's terms of its title and text, in order."""
        return " ".join(self.analyzer.terms(doc.full_text))

    def query(self, text: str) -> str:
        """A query as Milvus's BM25 search takes it (a repeated term counts once per repeat, as in the folder)."""
        return " ".join(self.analyzer.terms(text))

    def index_params(self) -> dict[str, Any]:
        return {"bm25_k1": float(self.params.k1), "bm25_b": float(self.params.b)}

    def score(self, distance: float) -> float:
        """The folder's BM25 score of a Milvus BM25 distance (see the module docstring)."""
        return abs(float(distance)) / (float(self.params.k1) + 1.0)

    def add_fields(self, schema: Any, pymilvus: Any, max_length: int) -> None:
        """The two fields and the BM25 function, on a ``CollectionSchema`` being built."""
        dt = pymilvus.DataType
        schema.add_field(TEXT_FIELD, dt.VARCHAR, max_length=max_length, enable_analyzer=True,
                         analyzer_params=dict(MILVUS_ANALYZER))
        schema.add_field(SPARSE_FIELD, dt.SPARSE_FLOAT_VECTOR)
        schema.add_function(pymilvus.Function(name=FUNCTION, function_type=pymilvus.FunctionType.BM25,
                                              input_field_names=[TEXT_FIELD], output_field_names=[SPARSE_FIELD]))


__all__ = ["FUNCTION", "SPARSE_FIELD", "TEXT_FIELD", "LexicalSpec"]
