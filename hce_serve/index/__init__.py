"""The vector index in memory: mechanism, no file IO of its own folder and no input checks.

- ``index``: ``Index``, the updatable MIPS index over string ids (labels, free slots, leaves, locks, filters);
- ``structures``: the interface a vector structure implements, and the registry of kinds;
- ``hnsw``: hnswlib's graph (the default kind); ``ivf``: faiss IVF cells of 8-bit codes (``ivf-sq8``);
- ``exact``: exact numpy search, the ground truth and the path for small indexes.
"""
