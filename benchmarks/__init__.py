"""HCE's benchmark studies, each a module run from the repository root as ``python -m benchmarks.NAME``
(``--quick`` for the small setting; tests/test_benchmarks_smoke.py runs every one on tiny inputs):

    recall         BM25, zero-shot and fine-tuned encoders; fp32 / int8; exact and HNSW search
    latency        Python API and HTTP server against the raw floor and torch, 1 and 2 threads
    index_scale    build time, memory, recall against latency, deletions; ``--one-box`` the 5M study
    incremental    documents added and deleted after training, through the command line
    export_latency export time, query latency and document throughput of torch / ORT fp32 / int8
    int8_study     full-corpus quality of each int8 recipe
    tree_build     the corpus tree over 1M vectors
    quality        HCE against hard-negative baselines, several seeds (quality_report: its tests and plots)
    demo           the table and results file of scripts/demo.sh
    query_distill  what a shallow (distilled) query encoder costs in nDCG@10
    ort_fusions    onnxruntime's graph rewrites against the sessions hce-serve opens
    filters        filtered search: recall and latency across selectivity
    backends       an index folder against its Milvus export: overlap, nDCG@10, latency
    ray_speedup    corpus encoding on Ray actors against one process

``harness`` is what they share, one module per concern (paths, provenance and the result writer, the
command line, timing, memory, synthetic vectors, figures); ``encoders`` the BEIR step (encode, exact search,
evaluate), ``loopback`` the HTTP server and load client, ``bm25`` the baseline. Results go to
benchmarks/results/NAME.json, each naming the script that wrote it.
"""
