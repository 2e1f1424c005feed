"""The Milvus backend: an index as a Milvus collection (milvus-lite in process, or a server).

- ``store``: ``MilvusStore``, the backend the Engine drives; ``client``: the pymilvus calls;
- ``layout``: the collection's schema, manifest, rows and filter expressions;
- ``export``: an index folder copied into a collection (``hce-serve index export-milvus``).
"""
