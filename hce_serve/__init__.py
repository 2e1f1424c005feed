"""HCE serving runtime and the formats every stage shares.

```python
from hce_serve import Engine, Encoder

with Engine.open("idx") as engine:                 # an index folder built by `hce-serve index build`
    hits = engine.search("ocean warming", k=5)     # [Hit(id, score, title, text, metadata), ...]
vectors = Encoder("export").encode(["a text"])     # numpy (1, dim), L2-normalised
```

Importing this package never imports torch or transformers (it is what users deploy on CPU servers), and
the names below are imported on first use, so ``import hce_serve`` stays cheap for the training side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one version string: pyproject.toml reads it (tool.setuptools.dynamic)

_EXPORTS = {
    "Engine": "engine",
    "Hit": "documents",
    "Encoder": "encoder",
    "Document": "documents",
    "IndexParams": "options",
    "AddResult": "documents",
    "DeleteResult": "documents",
    "HCEError": "errors",
    "DataError": "errors",
    "FormatError": "errors",
}
__all__ = ["AddResult", "DataError", "DeleteResult", "Document", "Encoder", "Engine", "FormatError", "HCEError", "Hit",
           "IndexParams", "__version__"]

if TYPE_CHECKING:
    from .documents import AddResult, DeleteResult, Document, Hit
    from .encoder import Encoder
    from .engine import Engine
    from .errors import DataError, FormatError, HCEError
    from .options import IndexParams


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'hce_serve' has no attribute {name!r}")
