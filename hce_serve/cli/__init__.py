"""``hce-serve``, the serving command line (DESIGN §5); ``common`` is what all three HCE command lines share.

- ``serve``: the root group, ``search``, ``get``, ``eval`` and ``http``;
- ``index``: ``index build|add|delete|compact|stats|export-milvus``;
- ``options``: the options the commands share, and ``open_engine`` for a folder or a Milvus collection.
"""

from .index import index
from .serve import main

main.add_command(index)

__all__ = ["main"]
