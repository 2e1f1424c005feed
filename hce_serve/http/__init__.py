"""The HTTP API over an ``Engine``: ``create_app`` (``app``), the request limits it enforces (``limits``), how it
micro-batches searches (``batcher``), and ``--workers`` processes (``workers``)."""

from .app import create_app
from .batcher import Batching
from .limits import Limits, is_loopback

__all__ = ["Batching", "Limits", "create_app", "is_loopback"]
