"""The peer server of ``benchmarks.http``: what a user would write by hand to serve the same model over HTTP.

FastAPI with a plain ``def`` endpoint (FastAPI's thread pool), sentence-transformers' ONNX backend on its own
dynamic int8 export of the model (``benchmarks.peers.prepare``), onnxruntime's default session options, and
an exact inner-product search in numpy over the corpus' document vectors (a user's first code for five
thousand documents; it costs about what the index search costs here). The answer has the shape of
``hce-serve http``'s (id, score, title, text, metadata per hit), returned as a dict for FastAPI to encode.

    python -m benchmarks.http_peer --model ST_FOLDER --file onnx/model_qint8_avx512_vnni.onnx \\
        --vectors DOCS.npz --corpus corpus.jsonl --port 8100
"""

# No "from __future__ import annotations": FastAPI must see the request model (a local class) as a real type.

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def build_app(model_dir: Path, file_name: str, vectors: Path, corpus: Path) -> Any:
    from fastapi import FastAPI
    from pydantic import BaseModel
    from sentence_transformers import SentenceTransformer

    from hce_serve.formats.beir import iter_corpus

    model = SentenceTransformer(str(model_dir), backend="onnx", device="cpu",
                                model_kwargs={"provider": "CPUExecutionProvider", "file_name": file_name})
    z = np.load(vectors, allow_pickle=False)
    ids, matrix = [str(i) for i in z["ids"]], np.ascontiguousarray(z["d"], dtype=np.float32)  # (n, dim)
    docs = {d.id: d for d in iter_corpus(corpus)}
    app = FastAPI(title="peer: FastAPI + sentence-transformers ONNX int8")

    class Query(BaseModel):
        query: str
        k: int = 10

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "live": len(ids)}

    @app.post("/search")
    def search(body: Query) -> dict[str, Any]:
        q = model.encode([body.query], normalize_embeddings=True, convert_to_numpy=True)[0]  # (dim,)
        scores = matrix @ q  # (n,)
        k = min(body.k, len(ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        hits = []
        for i in top:
            d = docs[ids[i]]
            hits.append({"id": d.id, "score": float(scores[i]), "title": d.title, "text": d.text,
                         "metadata": d.metadata or {}})
        return {"hits": hits}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="sentence-transformers folder with its ONNX exports")
    ap.add_argument("--file", required=True, help="the ONNX file in it (the int8 export)")
    ap.add_argument("--vectors", type=Path, required=True, help=".npz with ids (n,) and d (n, dim) unit rows")
    ap.add_argument("--corpus", type=Path, required=True, help="the corpus.jsonl the vectors encode")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    import uvicorn

    uvicorn.run(build_app(args.model, args.file, args.vectors, args.corpus), host="127.0.0.1", port=args.port,
                log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
