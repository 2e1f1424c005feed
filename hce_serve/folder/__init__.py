"""The folder backend: an index folder on disk, opened as ``IndexStore``.

- ``store``: ``IndexStore``, the one owner of a folder's writes (check, log, apply, save);
- ``wal``: the mutation log; ``snapshot``: generations, the manifest commit, the writer lock;
- ``datafiles``: one generation's data files; ``manifest``: ``manifest.json``; ``docstore``: stored documents;
- ``build``: a corpus file into a new folder (``ray_encode``: its encoding on Ray).
"""
