"""The malformed inputs of the file fuzzer: valid artifacts mutated (truncated, bit-flipped, bytes
inserted/deleted/replaced, lines duplicated), structurally valid documents with random values in random
fields, npz trees and write-ahead logs with valid framing around random content, and random bytes.
"""

from __future__ import annotations

import io
import json
import zlib
from typing import Any

import numpy as np
from hypothesis import strategies as st

JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
JSON_ANY = st.recursive(JSON_LEAF,
                        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=12)


@st.composite
def mutated(draw: Any, base: bytes) -> bytes:
    """``base`` after 1-3 random edits: truncate, flip bits, insert, delete, overwrite, duplicate a line."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite", "dupline"]))
        n = len(data)
        pos = draw(st.integers(0, max(n - 1, 0)))
        if kind == "truncate":
            del data[pos:]
        elif kind == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
        elif kind == "dupline":
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def bytes_of(base: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(base), mutated(base), st.binary(max_size=200))


def replace_field(base: dict) -> st.SearchStrategy[bytes]:
    """A JSON document whose field (top level or one level down) got a random value, or was removed."""
    def edit(args: tuple) -> bytes:
        path, value, drop = args
        obj = json.loads(json.dumps(base))
        cur = obj
        for key in path[:-1]:
            cur = cur.setdefault(key, {}) if isinstance(cur.get(key), dict) else cur
        if drop:
            cur.pop(path[-1], None)
        else:
            cur[path[-1]] = value
        return json.dumps(obj).encode()
    paths = [(k,) for k in base] + [(k, s) for k, v in base.items() if isinstance(v, dict) for s in v]
    return st.tuples(st.sampled_from(paths), JSON_ANY, st.booleans()).map(edit)


def jsonl(fields: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """JSON lines whose objects hold the right keys with random values (and sometimes non-objects)."""
    obj = st.fixed_dictionaries({}, optional={f: JSON_ANY | st.text(max_size=12) for f in fields})
    line = obj.map(json.dumps) | JSON_ANY.map(json.dumps) | st.text(max_size=30)
    return st.lists(line, max_size=6).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))


def tree_arrays(dim: int) -> st.SearchStrategy[bytes]:
    """npz files with the right names but random dtypes, shapes and values."""
    arr = st.sampled_from(["int32", "int64", "float32", "float64", "bool"]).flatmap(
        lambda dt: st.lists(st.integers(-3, 6), min_size=0, max_size=8).map(lambda xs: np.array(xs, dtype=dt)))

    def pack(a: tuple) -> bytes:
        parent, cent_rows, leaf, fmt, ver = a
        buf = io.BytesIO()
        np.savez(buf, format=np.array(fmt), format_version=np.array(ver), parent=parent,
                 centroids=np.ones((cent_rows, dim), np.float32), doc_leaf=leaf)
        return buf.getvalue()
    return st.tuples(arr, st.integers(0, 8), arr, st.sampled_from(["hce-tree", "x"]), st.integers(-1, 3)).map(pack)


def wal_records(dim: int, gen: int) -> st.SearchStrategy[bytes]:
    """Logs whose records carry *valid* checksums around random metadata and vector bytes."""
    from hce_serve.folder.wal import FRAME, HEADER, MAGIC, META

    def pack(a: tuple) -> bytes:
        dim, gen, recs = a
        out = HEADER.pack(MAGIC, dim, gen)
        for meta, body in recs:
            m = json.dumps(meta).encode()
            payload = META.pack(len(m)) + m + body
            out += FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        return out
    meta = st.fixed_dictionaries({"op": st.sampled_from(["add", "delete", "x"]) | JSON_ANY},
                                 optional={"ids": st.lists(st.text(max_size=4), max_size=3) | JSON_ANY,
                                           "leaves": JSON_ANY})
    body = st.integers(0, 3).map(lambda n: np.ones((n, dim), "<f4").tobytes()) | st.binary(max_size=40)
    return st.tuples(st.sampled_from([dim, dim, 4]), st.sampled_from([gen, gen, gen + 1]),
                     st.lists(st.tuples(meta | JSON_ANY, body), max_size=3)).map(pack)


# ---- search queries for the lexical and hybrid modes ------------------------------------------------------
# What a full-text engine's query language would read as syntax (SQLite FTS5, Lucene, Tantivy): boolean words,
# phrases, NEAR groups, prefix stars, negation, boosts, column filters, escapes, and SQL a careless engine might
# paste in. The lexical side must take all of it as plain text.
QUERY_SYNTAX = (
    "OR", "AND", "NOT", "NEAR", "or", "and", "not", '"', "'", "*", "-", "+", "^", "^2", "~", "~2", ":", "(", ")",
    "[", "]", "{", "}", "\\", "/", "|", "&", "&&", "||", "!", "?", "%", "_", ";", "--", "/*", "*/", "NEAR(", ",",
    "title:", "text:", "docs:", "{title text}:", "col:*", "MATCH", "bm25(docs)", "highlight(docs, 0, '<', '>')",
    "'; DROP TABLE docs; --", '" OR 1=1 --', "\x00", "\t", "\n", "\r\n",
)
QUERY_STOPWORDS = ("the", "of", "and", "a", "to", "in", "is", "it", "that", "this", "with", "for", "on", "be", "as")


def search_query(words: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Query texts for the search API: arbitrary unicode, FTS-like syntax around ``words`` (the index's own
    vocabulary, so hits exist), stop words and punctuation only (empty once analysed), and very long ones."""
    word = st.sampled_from(words) | st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8)
    syntax = st.lists(st.one_of(word, st.sampled_from(QUERY_SYNTAX)), min_size=1, max_size=12)
    fts = st.one_of(
        syntax.map(" ".join), syntax.map("".join),
        st.tuples(word, word).map(lambda t: f"{t[0]} OR {t[1]}"),
        st.tuples(word, word).map(lambda t: f'"{t[0]} {t[1]}"'),
        st.tuples(word, word, st.integers(-3, 10)).map(lambda t: f"NEAR({t[0]} {t[1]}, {t[2]})"),
        word.map(lambda w: f"{w}*"), word.map(lambda w: f"-{w}"), word.map(lambda w: f"{w}^3"),
        st.tuples(st.sampled_from(("title", "text", "id", "_id")), word).map(lambda t: f"{t[0]}:{t[1]}"),
    )
    empty = st.lists(st.sampled_from(QUERY_STOPWORDS + tuple("!?.,;:-*\"'()") + ("x", "q", "7")),
                     max_size=12).map(" ".join)
    long = st.one_of(
        # one term, thousands of times
        st.tuples(word, st.integers(1_000, 6_000)).map(lambda t: " ".join([t[0]] * t[1])),
        st.integers(500, 3_000).map(lambda n: " ".join(f"w{i}x" for i in range(n))),  # thousands of distinct terms
        st.integers(19_990, 20_010).map(lambda n: ("protein " * n)[:n]),  # around the server's 20,000-character limit
    )
    return st.one_of(st.text(max_size=60), fts, fts, empty, long)
