"""Generative retrieval over the HCE corpus tree: the baseline of issue 33 (DSI / NCI style), torch only.

A query encoder (the same MiniLM as every other arm) feeds a small decoder that emits a document's path
through the corpus tree one level at a time, then the document itself among the documents of the chosen leaf:

- ``codes``: the tree as decoding tables (each node's children, each leaf's documents, each document's path).
- ``model``: the prefix-aware decoder (learned node and document embeddings; NCI's prefix-aware
  weight-adaptive output layer) and the log-probability of a path under teacher forcing.
- ``search``: beam search constrained to the tree (a beam only ever expands the children of its node), and the
  exhaustive scoring that tests check it against.
- ``train``: DSI's training data (indexing pairs: crops of a document -> its path; retrieval pairs: query ->
  the positive's path; DSI-QG's pseudo-queries without labels), the two-phase schedule, evaluation, and
  adding documents without retraining.

No ONNX export and no serving support: the generative retriever exists to be measured against HCE
(``benchmarks.quality --arms gr``, ``benchmarks.gr``), not to be deployed.
"""
