"""The mutation log's reader: what it writes reads back; a record with a valid checksum whose content is not
what the writer produces is a FormatError (one clear line on replay), never a traceback from the index."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from hce_serve.documents import Document
from hce_serve.errors import FormatError
from hce_serve.folder.wal import FRAME, HEADER, MAGIC, META, Record, encode_record, read_log

DIM = 4


def log_with(tmp_path, *records: bytes):
    path = tmp_path / "wal-000001.log"
    path.write_bytes(HEADER.pack(MAGIC, DIM, 1) + b"".join(records))
    return path


def framed(meta: object, body: bytes = b"") -> bytes:
    """A record with a correct checksum around arbitrary metadata (what a fuzzer or a foreign writer makes)."""
    m = json.dumps(meta).encode()
    payload = META.pack(len(m)) + m + body
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def test_records_round_trip(tmp_path):
    vecs = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    add = Record("add", ["a", "b"], vecs, [3, 4], [Document("a", "t", "x", {"k": 1}), Document("b", "", "y")])
    got = read_log(log_with(tmp_path, encode_record(add), encode_record(Record("delete", ["a"]))), DIM, 1)
    assert [r.op for r in got.records] == ["add", "delete"] and got.dropped_bytes == 0
    assert np.array_equal(got.records[0].vectors, vecs) and got.records[0].leaves == [3, 4]
    assert got.records[0].docs[0].metadata == {"k": 1} and got.records[1].ids == ["a"]


VEC = np.zeros(DIM, "<f4").tobytes()


@pytest.mark.parametrize("meta,body", [
    ({"ids": True, "op": "delete", "leaves": True}, b""),  # found by tests/reliability/fuzz.py
    ({"op": "add", "ids": ["a"], "leaves": [{"x": 1}]}, VEC),  # ditto: leaves that are not integers
    ({"op": "add", "ids": ["a"], "leaves": [1, 2]}, VEC),
    ({"op": "add", "ids": ["a"], "leaves": [True]}, VEC),
    ({"op": "add", "ids": ["a"], "leaves": [2**40]}, VEC),
    ({"op": "add", "ids": [1]}, VEC),
    ({"op": "rename", "ids": ["a"]}, b""),
    (["add", ["a"]], VEC),
    ({"op": "add", "ids": ["a"], "docs": [["t", "x"]]}, VEC),
    ({"op": "add", "ids": ["a"], "docs": [["t", 5, None]]}, VEC),
    ({"op": "add", "ids": ["a"], "docs": [["t", "x", [1]]]}, VEC),
    ({"op": "add", "ids": ["a", "b"]}, VEC),  # floats for one vector, two ids
])
def test_a_checksummed_record_of_the_wrong_shape_is_a_format_error(tmp_path, meta, body):
    with pytest.raises(FormatError, match="valid checksum but cannot be decoded"):
        read_log(log_with(tmp_path, framed(meta, body)), DIM, 1)
