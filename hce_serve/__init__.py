"""HCE serving runtime and the formats every stage shares.

Importing this package never imports torch or transformers: it is what users deploy on CPU servers.
"""

__version__ = "0.1.0"
