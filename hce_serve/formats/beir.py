"""BEIR-layout data: ``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``qrels/<split>.tsv``.

The corpus is streamed (``iter_corpus``) so a multi-GB file never has to sit in a list of dicts; only
the set of ids seen so far is kept, to catch duplicates. Every malformed line raises ``DataError`` with
``file:line`` in its one-line message.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..documents import Document
from ..errors import DataError

log = logging.getLogger(__name__)


def resolve(path: str | os.PathLike[str]) -> Path:
    """``x.jsonl`` or, when only it exists, ``x.jsonl.gz``."""
    p = Path(path)
    if p.exists():
        return p
    gz = p.with_name(p.name + ".gz")
    if gz.exists():
        return gz
    raise DataError(f"{p}: file not found (nor {gz.name})")


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line; decoding and gzip errors become DataError.

    Lines are decoded one by one (not through a buffered text wrapper) so an error names the right line.
    """
    p = resolve(path)
    lineno = 0
    try:
        with _open_binary(p) as fh:
            for lineno, raw in enumerate(fh, 1):  # noqa: B007 - lineno is used after the loop on error
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{p}:{lineno}: not UTF-8 text ({e.reason} at column {e.start + 1})") from None
                if line.strip():
                    yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{p}:{lineno + 1}: unreadable or truncated file ({e})") from None


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, int, dict]]:
    """(file name, line number, object) for each JSON line; the object must be a JSON object."""
    p = resolve(path)
    for lineno, line in iter_lines(p):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{p}:{lineno}: expected a JSON object, found {type(obj).__name__}")
        yield str(p), lineno, obj


def _field(obj: dict, key: str, where: str, required: bool = True) -> str:
    val = obj.get(key)
    if val is None:
        if required:
            raise DataError(f"{where}: missing field {key!r}")
        return ""
    if isinstance(val, (int, float)) and not isinstance(val, bool) and key == "_id":
        return str(val)  # some corpora use numeric ids
    if not isinstance(val, str):
        raise DataError(f"{where}: field {key!r} must be a string, found {type(val).__name__}")
    try:
        val.encode("utf-8")
    except UnicodeEncodeError:  # a "\\ud800" escape: valid JSON, not text
        raise DataError(f"{where}: field {key!r} is not valid Unicode text (a lone surrogate escape)") from None
    if key == "_id" and (not val.strip() or "\n" in val or "\r" in val or "\t" in val):
        raise DataError(f"{where}: _id {val!r} is empty or contains a tab or line break")
    return val


EMPTY_POLICIES = ("error", "keep", "skip")


def iter_corpus(path: str | os.PathLike[str], empty: str = "error") -> Iterator[Document]:
    """Stream documents from a corpus file, checking fields and id uniqueness.

    ``empty`` decides what a document with blank title and text does: ``error`` (DataError naming its line),
    ``keep`` (yielded; BEIR's evaluation indexes such documents too) or ``skip``. A ``metadata`` object is
    passed through as read (``checks.check_metadata`` flattens it); any other ``metadata`` value is ignored.
    """
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, found {empty!r}")
    seen: set[str] = set()
    count = 0
    for fname, lineno, obj in iter_jsonl(path):
        where = f"{fname}:{lineno}"
        doc_id = _field(obj, "_id", where)
        if doc_id in seen:
            raise DataError(f"{where}: duplicate document id {doc_id!r}")
        seen.add(doc_id)
        count += 1
        meta = obj.get("metadata")
        doc = Document(doc_id, _field(obj, "title", where, required=False), _field(obj, "text", where),
                       meta if isinstance(meta, dict) and meta else None)
        if doc.is_empty:
            if empty == "error":
                raise DataError(f"{where}: document {doc_id!r} has empty title and text")
            if empty == "skip":
                continue
        yield doc
    if not count:
        raise DataError(f"{resolve(path)}: no documents")


def load_corpus(path: str | os.PathLike[str]) -> list[Document]:
    return list(iter_corpus(path))


def load_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """{query id: text}; queries may be empty strings only if the file says so (they are refused)."""
    out: dict[str, str] = {}
    for fname, lineno, obj in iter_jsonl(path):
        where = f"{fname}:{lineno}"
        qid = _field(obj, "_id", where)
        if qid in out:
            raise DataError(f"{where}: duplicate query id {qid!r}")
        text = _field(obj, "text", where)
        if not text.strip():
            raise DataError(f"{where}: query {qid!r} has empty text")
        out[qid] = text
    if not out:
        raise DataError(f"{resolve(path)}: no queries")
    return out


Qrels = dict[str, dict[str, int]]


def load_qrels(path: str | os.PathLike[str]) -> Qrels:
    """{query id: {doc id: grade}} from a TSV with the header ``query-id corpus-id score``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    qrels: Qrels = {}
    header_seen = False
    for lineno, line in iter_lines(p):
        parts = line.rstrip("\r\n").split("\t")
        if not header_seen:
            header_seen = True
            if parts[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
        if len(parts) < 3:
            raise DataError(f"{p}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), found "
                            f"{len(parts)}")
        qid, did, score = parts[0].strip(), parts[1].strip(), parts[-1].strip()
        try:
            grade = int(float(score))
        except ValueError:
            raise DataError(f"{p}:{lineno}: score must be a number, found {score!r}") from None
        if not qid or not did:
            raise DataError(f"{p}:{lineno}: empty query or corpus id")
        qrels.setdefault(qid, {})[did] = grade
    if not qrels:
        raise DataError(f"{p}: no judgments")
    return qrels


def qrels_path(data_dir: str | os.PathLike[str], split: str) -> Path:
    p = Path(data_dir) / "qrels" / f"{split}.tsv"
    if not p.is_file():
        avail = sorted(x.stem for x in (Path(data_dir) / "qrels").glob("*.tsv"))
        raise DataError(f"{p}: split {split!r} not found (available: {', '.join(avail) or 'none'})")
    return p


@dataclass
class QrelsCheck:
    kept: Qrels
    unknown_queries: int
    unknown_docs: int


def check_qrels(qrels: Qrels, query_ids: Iterable[str], doc_ids: Iterable[str], where: str = "qrels") -> QrelsCheck:
    """Drop judgments whose query or document is unknown; count and warn instead of failing.

    BEIR ArguAna, for one, ships 5 judgments for documents absent from its corpus.
    """
    qset, dset = set(query_ids), set(doc_ids)
    kept: Qrels = {}
    uq = ud = 0
    for qid, docs in qrels.items():
        if qid not in qset:
            uq += 1
            continue
        good = {d: g for d, g in docs.items() if d in dset}
        ud += len(docs) - len(good)
        if good:
            kept[qid] = good
    if uq or ud:
        log.warning("%s: skipped %d judgments with unknown query ids and %d with unknown document ids", where, uq, ud)
    return QrelsCheck(kept, uq, ud)


@dataclass
class BeirData:
    """A loaded BEIR folder (corpus in memory: use ``iter_corpus`` directly for huge corpora)."""

    corpus: list[Document]
    queries: dict[str, str]
    qrels: Qrels


def load_beir(data_dir: str | os.PathLike[str], split: str = "test") -> BeirData:
    """Load corpus, the queries judged in ``split``, and the split's qrels (unknown ids dropped)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: data folder not found")
    qpath = qrels_path(d, split)
    corpus = load_corpus(d / "corpus.jsonl")
    queries = load_queries(d / "queries.jsonl")
    check = check_qrels(load_qrels(qpath), queries, (doc.id for doc in corpus), str(qpath))
    if not check.kept:
        raise DataError(f"{qpath}: no judgment refers to a known query and document")
    queries = {q: queries[q] for q in check.kept}
    return BeirData(corpus, queries, check.kept)
