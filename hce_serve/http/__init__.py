"""The HTTP API over an ``Engine``: ``create_app`` (``app``) and the request limits it enforces (``limits``)."""

from .app import create_app
from .limits import Limits, is_loopback

__all__ = ["Limits", "create_app", "is_loopback"]
