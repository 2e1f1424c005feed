"""Corpus encoding on Ray (Ray Data ``map_batches``), for ``hce-serve index build --ray [--ray-address ADDR]``.

The driver reads and checks the corpus exactly as the one-process build does and cuts it into the same
chunks (``--batch-size`` documents). Each chunk becomes one Arrow block of a Ray dataset; a pool of
encoder actors (one ONNX session each, ``threads`` onnxruntime threads) maps every block whole
(``map_batches(batch_size=None)``). So every chunk is encoded as ``Encoder.encode_documents`` encodes it in
one process: the same documents in the same call, which matters because int8 graphs quantise activations
with one scale per call. Blocks come back in order (``preserve_order``) and their ids are checked against
the chunk sent; the index is then built by the driver from the vectors, as before.

The corpus is handed over in windows of ``window`` chunks (one dataset each), so the driver holds a window
of text, not the corpus. Workers receive the export's files through Ray's object store: a cluster needs
hce installed on its nodes, not a shared disk. ``address=None`` starts a local Ray for this build (and
stops it after); a Ray already started in this process (``ray.init``) is used as it is.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..documents import Document
from ..errors import BackendError, ConfigError, FormatError, missing_dependency
from ..formats.card import CARD_NAME, ModelCard
from ..formats.tree import TREE_IDS_NAME, TREE_NAME

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to encode (``hce-serve index build --ray …``)."""

    address: str | None = None  # a running cluster ("auto", "ray://head:10001", "head:6379"); None: local Ray
    workers: int | None = None  # encoder actors; None: the cluster's CPUs // threads
    threads: int = 1  # onnxruntime intra-op threads per actor
    window: int = defaults.RAY_WINDOW  # chunks per dataset

    def __post_init__(self) -> None:
        if (self.workers is not None and self.workers < 1) or self.threads < 1 or self.window < 1:
            raise ConfigError("Ray workers, threads and window must be >= 1, found "
                              f"{self.workers}/{self.threads}/{self.window}")


def ray_module() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of ray
    except ImportError:
        raise missing_dependency("ray", "ray") from None
    return ray


def export_files(export_dir: Path, variant: str) -> dict[str, bytes]:
    """The export's files an encoder of ``variant`` needs (not the other graphs, not the corpus tree)."""
    card = ModelCard.load(export_dir)
    onnx = card.onnx or {}
    graphs = {str(v) for key in ("files", "query_files") for v in (onnx.get(key) or {}).values() if v}
    keep = str((onnx.get("files") or {}).get(variant, ""))
    if not keep:
        raise FormatError(f"{export_dir / CARD_NAME}: no {variant} graph to encode with")
    skip = (graphs - {keep}) | {TREE_NAME, TREE_IDS_NAME}
    return {p.name: p.read_bytes() for p in sorted(export_dir.iterdir()) if p.is_file() and p.name not in skip}


class _EncodeActor:
    """One Ray actor: writes the shipped export to a temporary folder and encodes whole blocks with it."""

    def __init__(self, files: list[Any], variant: str, threads: int) -> None:
        import ray

        from ..encoder import Encoder

        self._tmp = tempfile.TemporaryDirectory(prefix="hce-ray-export-")
        for name, data in ray.get(files[0]).items():  # the ref travels inside a list: Ray passes it unresolved
            Path(self._tmp.name, name).write_bytes(data)
        self.encoder = Encoder(self._tmp.name, variant=variant, threads=threads, query_encoder="full")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vecs = self.encoder.encode_documents([str(t) for t in batch["text"]])  # (n, dim)
        return {"id": batch["id"], "vector": vecs}


def encode_stream(export_dir: str | os.PathLike[str], variant: str, batches: Iterable[list[Document]],
                  options: RayOptions) -> Iterator[tuple[list[Document], np.ndarray]]:
    """(chunk, its vectors (n, dim)) for every chunk of ``batches``, in order, encoded by Ray actors."""
    ray = ray_module()
    started = _connect(ray, options)
    try:
        import pyarrow as pa

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # blocks come back in the order they were given
        ctx.enable_progress_bars = False  # the build shows its own bar
        files = [ray.put(export_files(Path(export_dir), variant))]
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = options.workers or max(1, cpus // options.threads)
        log.info("encoding on Ray: %d encoder actors x %d onnxruntime threads (%d CPUs)", workers, options.threads,
                 cpus)
        it = iter(batches)
        while window := [b for b in itertools.islice(it, options.window) if b]:
            tables = [pa.table({"id": [d.id for d in b], "text": [d.full_text for d in b]}) for b in window]
            out = ray.data.from_arrow(tables).map_batches(
                _EncodeActor, batch_size=None, batch_format="numpy",
                fn_constructor_args=(files, variant, options.threads),
                compute=ray.data.ActorPoolStrategy(size=min(workers, len(window))), num_cpus=options.threads)
            results = _with_errors(out.iter_batches(batch_size=None, batch_format="numpy"))
            for sent, got in zip(window, results, strict=True):
                if list(got["id"]) != [d.id for d in sent]:
                    raise BackendError("Ray returned encoded blocks out of order or regrouped; nothing was indexed")
                yield sent, np.ascontiguousarray(got["vector"], dtype=np.float32)
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, options: RayOptions) -> bool:
    """Join the Ray of ``options.address``, or one already running here, or start a local one (True)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if options.address is None:
        kwargs["num_cpus"] = os.cpu_count() or 1
    try:
        ray.init(address=options.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise BackendError(f"cannot reach Ray at {options.address or 'a new local instance'}: "
                           f"{' '.join(str(e).split())[:300]}") from None
    return True


def _with_errors(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Ray's task failures (an encoder that cannot load, a worker that died) as one-line errors."""
    import ray.exceptions

    try:
        yield from batches
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None) or e
        detail = " ".join(str(cause).split())[:300]
        raise BackendError(f"Ray encoding failed: {type(cause).__name__}: {detail}") from None
