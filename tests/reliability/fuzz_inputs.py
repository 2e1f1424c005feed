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
JSON_ANY = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
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
