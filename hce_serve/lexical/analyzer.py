"""Text to index terms for the lexical (BM25) side: lower-case, word tokens, stop words out, Snowball stems.

The pipeline is the one BEIR's BM25 baselines use (scikit-learn's ``CountVectorizer`` token pattern: runs of
two or more word characters; Lucene's English stop set; PyStemmer's Snowball stemmer), so lexical scores can be
compared with bm25s and Lucene/Pyserini runs. The analyzer's settings travel in the index manifest: a query is
analysed exactly as the documents were, whoever opens the folder.

Terms never reach a query language: they are plain strings used as dictionary keys.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FormatError, MissingDependencyError

TOKEN = re.compile(r"(?u)\b\w\w+\b")

# Lucene's English stop set (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET), which BEIR's BM25 baselines also use.
ENGLISH_STOPWORDS = (
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not",
    "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was",
    "will", "with",
)
BUILTIN_STOPWORDS = {"english": ENGLISH_STOPWORDS, "none": ()}
NO_STEMMER = "none"


def snowball_languages() -> list[str]:
    """The stemmers PyStemmer offers (``english``, ``french``, ``german``, ...)."""
    return sorted(_stemmer_module().algorithms())


def _stemmer_module() -> Any:
    try:
        import Stemmer
    except ImportError:
        raise MissingDependencyError("lexical search needs PyStemmer: pip install 'hce[serve]'") from None
    return Stemmer


def resolve_stopwords(spec: str | Sequence[str]) -> tuple[str, ...]:
    """A stop list from a name (``english``, ``none``), a file (one word a line), or a list of words."""
    if not isinstance(spec, str):
        words = list(spec)
    elif spec in BUILTIN_STOPWORDS:
        words = list(BUILTIN_STOPWORDS[spec])
    elif Path(spec).is_file():
        try:
            words = Path(spec).read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{spec}: cannot read the stop-word file ({e})") from None
    else:
        raise ConfigError(f"stop words must be one of {', '.join(BUILTIN_STOPWORDS)} or a file of words, "
                          f"found {spec!r}")
    if not all(isinstance(w, str) for w in words):
        raise ConfigError("stop words must be strings")
    return tuple(sorted({w.lower() for w in words}))


@dataclass(frozen=True)
class Analyzer:
    """``language``: a Snowball stemmer name, or ``none`` for no stemming; ``stopwords``: the words dropped."""

    language: str = "english"
    stopwords: tuple[str, ...] = ENGLISH_STOPWORDS
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.language, str) or not self.language:
            raise ConfigError(f"lexical language must be a Snowball stemmer name or 'none', found {self.language!r}")
        if self.language != NO_STEMMER and self.language not in snowball_languages():
            raise ConfigError(f"lexical language {self.language!r} has no Snowball stemmer; choose one of "
                              f"{', '.join(snowball_languages())} or 'none'")
        object.__setattr__(self, "_stop", frozenset(self.stopwords))

    @classmethod
    def create(cls, language: str = "english", stopwords: str | Sequence[str] = "english") -> Analyzer:
        return cls(language, resolve_stopwords(stopwords))

    def _stem(self, words: list[str]) -> list[str]:
        if self.language == NO_STEMMER:
            return words
        # A PyStemmer object keeps a cache and is not thread-safe: one per thread.
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = _stemmer_module().Stemmer(self.language)
        return stemmer.stemWords(words)

    def terms(self, text: str) -> list[str]:
        """The index terms of ``text``, in order, repeats kept (a query term's repeats weigh it up)."""
        stop = self._stop  # type: ignore[attr-defined]
        return self._stem([w for w in TOKEN.findall(text.lower()) if w not in stop])

    def counts(self, text: str) -> Counter[str]:
        """Term frequencies of one document."""
        return Counter(self.terms(text))

    def counts_many(self, texts: Iterable[str]) -> list[Counter[str]]:
        """Term frequencies of many documents, stemming each distinct word once (corpus builds)."""
        stop = self._stop  # type: ignore[attr-defined]
        words = [[w for w in TOKEN.findall(t.lower()) if w not in stop] for t in texts]
        if self.language == NO_STEMMER:
            return [Counter(ws) for ws in words]
        vocab = list({w for ws in words for w in ws})
        stem = dict(zip(vocab, self._stem(vocab), strict=True))
        return [Counter(stem[w] for w in ws) for ws in words]

    def to_dict(self) -> dict[str, Any]:
        return {"language": self.language, "stopwords": list(self.stopwords)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "lexical") -> Analyzer:
        try:
            language, stop = d["language"], d["stopwords"]
        except (KeyError, TypeError):
            raise FormatError(f"{where}: analyzer settings need 'language' and 'stopwords'") from None
        if not isinstance(stop, list) or not all(isinstance(w, str) for w in stop):
            raise FormatError(f"{where}: 'stopwords' must be a list of strings")
        try:
            return cls(language, tuple(stop))
        except ConfigError as e:
            raise FormatError(f"{where}: {e}") from None


__all__ = ["ENGLISH_STOPWORDS", "Analyzer", "resolve_stopwords", "snowball_languages"]
