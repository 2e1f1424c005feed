"""Every serving default, defined once: the dataclasses, the command lines and their help read them here.

Like nanoGPT's config block: one line per knob, a comment saying what it trades. Change a value here and
``IndexParams``, ``Limits``, the model card and every ``--option`` follow.
"""

from __future__ import annotations

# ---- encoder (model card defaults; an export's card overrides them) ------------------------------------
DOC_MAX_LENGTH = 256  # document tokens: SciFact/ArguAna passages fit; longer costs quadratic attention
QUERY_MAX_LENGTH = 64  # query tokens (ArguAna's argument-length queries want 256)
VARIANT = "auto"  # encoder graph: int8 on CPU, fp16 on CUDA, else fp32
QUERY_ENCODERS = ("auto", "full", "shallow")  # the choices of --query-encoder
QUERY_ENCODER = "auto"  # queries through the export's distilled shallow graph when it has one, else the full one
# onnxruntime graph rewrites the CPU sessions skip: its fused SkipLayerNormalization CPU kernel is slower than
# the LayerNormalization + Add it replaces, so the fusion makes a query slower on CPU; fp32 outputs are unchanged.
# `python -m benchmarks.ort_fusions` measures it on the CPU at hand (RESULTS.md). CUDA sessions keep every rewrite.
ORT_CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)

# ---- HNSW index (stored in the manifest; a folder keeps the values it was built with) ------------------
M = 16  # graph degree: memory and recall
EF_CONSTRUCTION = 200  # build-time beam: build speed vs graph quality
EF_SEARCH = 100  # query-time beam (hnswlib searches with max(ef, k)); --ef and "ef" override per query
EXACT_THRESHOLD = 4096  # search exactly (numpy) while the live count is at most this
COMPACT_RATIO = 0.3  # the store rebuilds the graph once deleted / labels exceeds this ...
COMPACT_MIN_DELETED = 1024  # ... and at least this many slots are dead

# ---- IVF-SQ8 index (--index-type ivf-sq8: faiss cells of 8-bit codes, re-ranked on fp32) -------------------
INDEX_TYPES = ("hnsw", "ivf-sq8")  # the vector structures an index folder can hold (index/structures.py)
INDEX_TYPE = "hnsw"  # hnsw: no training, the best recall per query time up to about a million documents;
# ivf-sq8 scans compact codes of a few cells, for millions (RESULTS.md §6)
NLIST = 0  # cells; 0 = ~sqrt(live documents), relearnt each time the corpus doubles
NPROBE = 32  # cells scanned per query (its --ef): recall vs time. Wide enough for real corpora, whose queries
# spread over more cells than clustered synthetic vectors (benchmarks/recall.py); tune it with `hce-serve eval --ef`
REFINE = 4  # candidates re-scored on the fp32 vectors per hit asked for: recall of the 8-bit codes vs time

# ---- writing --------------------------------------------------------------------------------------------
BATCH_SIZE = 512  # documents encoded and written per step of build/add: bounds memory for any corpus
MAX_BATCH_SIZE = 1_000_000  # beyond this a step holds more than memory can (and Python's slicing refuses > 2**63)
SAVE_EVERY = 1000  # fold the mutation log into a snapshot after this many logged writes

# ---- searching ------------------------------------------------------------------------------------------
K = 10  # hits per query
MAX_K = 10_000  # a larger k is almost certainly a mistake and costs a full sort of the collection
EVAL_K = 100  # depth retrieved per query by `hce-serve eval` (R@100 needs 100)
SEARCH_CHUNK = 256  # queries encoded per step of a batch search (one progress-bar tick)

# ---- hybrid search (lexical/): defaults chosen on dev queries by benchmarks/hybrid.py (RESULTS: hybrid)
MODES = ("dense", "lexical", "hybrid")
MODE_DENSE_ONLY = "dense"  # a folder without a lexical part (built before hybrid search, or --no-lexical)
MODE_WITH_LEXICAL = "hybrid"  # a new folder with its lexical part, unless `index build --mode` says otherwise
FUSION = "dbsf"  # lexical.fusion.FUSIONS: rrf | minmax | dbsf; best mean dev gain of the robust settings
ALPHA = 0.5  # the dense side's weight in the fused score
FUSION_DEPTH = 100  # hits each side retrieves before fusion (at least k)
MAX_FUSION_DEPTH = 10_000
COMPILED_TOPK_MIN_POSTINGS = 50_000  # a query's postings from which BM25 top-k runs compiled (numba, when
# installed): below it numpy's MaxScore answers as fast, and a short-lived process never loads the kernel
COMPILED_TOPK_WARM_MIN_POSTINGS = 5_000_000  # an index's postings from which opening it loads the kernel in the
# background: its queries will use it, and a one-shot CLI search on a smaller index need not load numba
COMPILED_TOPK_SLICE_MIN_POSTINGS = 400_000  # a query's postings from which its top k is computed in two halves
# of the rows, one on another thread: on a second core the answer comes in about half the time, at the same CPU
LEXICAL_THREADS = 4  # threads a process gives hybrid's lexical side, which runs beside the dense side
LEXICAL_BACKGROUND_MIN_POSTINGS = 0  # an index's postings from which hybrid's lexical side runs on its own thread
# beside the encoder, else before it: beside was faster at every size measured (benchmarks.hybrid_scale's
# mode_latency times both), so always
LEXICAL_LANGUAGE = "english"  # a Snowball stemmer name, or "none"
LEXICAL_STOPWORDS = "english"  # english | none | a file of words
QUERY_CACHE = 4096  # query embeddings kept (LRU; 0 = off): ~7 MiB at 384-d, the head of a query log; a hit
# skips the encoder (ms) for a key and a lookup (us), and the index is still searched afresh
SNIPPET_CHARS = 160  # text shown under a hit by the human-readable CLI output
FIELDS = ("title", "text", "metadata")  # stored fields a hit can carry; --json/HTTP/API default to all
FILTER_SCAN_COST = 20  # a filter is answered by an exact scan of its m matches when m * m * this <= ef * live:
# a filtered graph walk visits ~ef * live / m nodes, while a scan copies m vectors out of hnswlib, each copy
# costing about this many visits (benchmarks/filters.py measures the crossover)

# ---- HTTP -----------------------------------------------------------------------------------------------
HOST = "127.0.0.1"  # loopback: serving to a network is an explicit choice (and needs a token for writes)
PORT = 8000
HTTP_THREADS = 1  # onnxruntime threads per request: requests run in parallel, one core each
HTTP_MAX_K = 1000
HTTP_MAX_BATCH = 256  # queries per search request, documents/ids per write request
HTTP_MAX_BODY_BYTES = 8 * 2**20
HTTP_MAX_QUERY_CHARS = 20_000  # the encoder truncates anyway; this bounds the tokenizer's work
# Micro-batching (http/batcher.py): concurrent search requests share one encoder call. A request waits at
# most this long for others to join it, and only while another batch is already running (a lone request
# never waits); 0 turns batching off.
HTTP_MAX_BATCH_WAIT_MS = 1.0
HTTP_MAX_BATCH_QUERIES = 32  # queries per shared encoder call

# ---- beyond one machine: Milvus backend, Ray encoding ---------------------------------------------------
MILVUS_INDEX = "HNSW"  # vector index of an exported collection: HNSW (M, efConstruction, ef as above), IVF_FLAT,
# IVF_SQ8, FLAT
MILVUS_NPROBE = 32  # IVF cells searched per query (nlist defaults to ~4 sqrt(documents))
MILVUS_EXPORT_BATCH = 1000  # entities per insert: bounded by MILVUS_EXPORT_BYTES too (a server refuses huge RPCs)
MILVUS_EXPORT_BYTES = 16 * 2**20
MILVUS_TIMEOUT = 30.0  # seconds to connect to a Milvus server before giving up
RAY_WINDOW = 64  # encode chunks (each --batch-size documents) handed to Ray per dataset: bounds driver memory
