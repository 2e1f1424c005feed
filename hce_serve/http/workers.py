"""``hce-serve http --workers N``: N server processes on one listening socket, each with its own engine.

One process serves requests on one event loop and holds the GIL for its Python work (HTTP parsing, checks,
rendering); several processes use the cores for that too. Each opens the index read-only, and writes are
refused with a message that says why: one writer per index folder, and a process that wrote would leave the
others' indexes stale. uvicorn starts the processes (spawn) and hands each the socket; the settings reach
them through one environment variable, since a spawned process imports the app factory afresh.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .batcher import Batching
from .limits import Limits

ENV = "HCE_HTTP_WORKER_CONFIG"
FACTORY = "hce_serve.http.workers:app_from_environment"


def refusal(workers: int) -> str:
    return f"this server runs {workers} worker processes and serves reads only; writes need --workers 1"


def serve(target: Any, host: str, port: int, workers: int, options: dict[str, Any], limits: Limits,
          batching: Batching, log_level: str = "warning") -> None:
    """Run ``workers`` processes serving ``target`` (an index folder, or a ``MilvusSpec``) read-only."""
    import uvicorn

    config = {"target": _target_json(target), "options": options, "limits": asdict(limits),
              "batching": asdict(batching), "reason": refusal(workers)}
    os.environ[ENV] = json.dumps(config)
    uvicorn.run(FACTORY, factory=True, workers=workers, host=host, port=port, log_level=log_level)


def app_from_environment() -> Any:
    """The app of one worker process (uvicorn calls it in each): the engine opened read-only."""
    from ..engine import Engine
    from ..options import EngineOptions
    from .app import create_app

    cfg = json.loads(os.environ[ENV])
    t, opts = cfg["target"], EngineOptions(**cfg["options"])
    if t["kind"] == "folder":
        engine = Engine.open(t["path"], options=opts)
    else:
        engine = Engine.open_milvus(t["uri"], t["collection"], t["model"], t["token"], options=opts)
    engine.encoder  # noqa: B018 - load the graph before the first request, not during it
    return create_app(engine, limits=Limits(**cfg["limits"]), batching=Batching(**cfg["batching"]),
                      read_only_reason=cfg["reason"], save_on_shutdown=False)


def _target_json(target: Any) -> dict[str, Any]:
    if isinstance(target, (str, os.PathLike)):
        return {"kind": "folder", "path": str(Path(target).resolve())}
    t = target.target  # cli.options.MilvusSpec
    return {"kind": "milvus", "uri": t.uri, "collection": t.collection, "token": t.token,
            "model": str(Path(target.model).resolve())}
