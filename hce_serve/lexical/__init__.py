"""The lexical side of an index: an analyzer (terms) and an updatable BM25 index over the stored documents."""

from .analyzer import ENGLISH_STOPWORDS, Analyzer, resolve_stopwords, snowball_languages
from .bm25 import LexHit, LexicalIndex
from .settings import BM25Params

__all__ = ["ENGLISH_STOPWORDS", "Analyzer", "BM25Params", "LexHit", "LexicalIndex", "resolve_stopwords",
           "snowball_languages"]
