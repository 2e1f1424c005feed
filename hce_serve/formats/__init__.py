"""The files every stage shares (training writes them, export copies them, serving reads them).

- ``card``: the model card ``hce_model.json``; ``tree``: the corpus tree ``tree.npz`` (and ``load_tree``);
- ``beir``: BEIR corpus, queries and qrels; ``trec``: TREC run files;
- ``versioned``: the versioned JSON every card is; ``atomic``: crash-safe writes.

Nothing here knows about indexes: an index folder's own files are ``hce_serve.folder``'s.
"""
