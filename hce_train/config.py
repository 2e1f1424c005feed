"""Every knob of ``hce-train fit`` in one frozen dataclass (defaults -> --config JSON -> explicit flags).

Defaults follow the calibration in DESIGN §8: lr 5e-5, tau 0.05, batch 64, leaves of ~16 documents,
S = 7 siblings, tree rebuilt every epoch. Fields left ``None`` are resolved by mode in ``resolved()``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hce_serve.defaults import DOC_MAX_LENGTH, QUERY_MAX_LENGTH
from hce_serve.errors import ConfigError

MODES = ("supervised", "unsupervised")
NEGATIVES = ("hce", "flat", "mined")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast on CUDA and on CPUs with native bf16
PSEUDO_QUERIES = ("span", "crop")
PSEUDO_POSITIVES = ("document", "crop")
NEGATIVE_ENCODINGS = ("live", "cached")
BATCHINGS = ("random", "tree-topic")  # tree-topic: TAS-B-style batches from one or two top-level tree nodes
SIBLING_SELECTS = ("leaf", "query")  # leaf: the positive's leaf-mates; query: the query's top under the parent
FILTER_KINDS = ("none", "rank", "percpos")  # --negative-filter none | rank:G | percpos:R
INIT_RULES = ("bottom", "ends", "top")  # distill-query's student init: first L, layer 0 + top L-1, top L
REBUILD_EPOCH = -1  # rebuild_every value meaning "at the start of every epoch"
REBUILD_HALF_EPOCH = -2  # rebuild_every value meaning "at the start and the middle of every epoch"


def parse_negative_filter(text: str) -> tuple[str, float]:
    """``none`` | ``rank:G`` | ``percpos:R`` -> (kind, value); a ConfigError names what is wrong."""
    kind, _, value = str(text).strip().partition(":")
    if kind == "none" and not value:
        return "none", 0.0
    if kind == "rank" and value.strip().isdigit():
        return "rank", float(int(value))
    if kind == "percpos":
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        if 0 < ratio <= 1:
            return "percpos", ratio
        raise ConfigError(f"config: negative_filter percpos:R needs 0 < R <= 1, found {text!r}")
    raise ConfigError(f"config: negative_filter must be none, rank:G or percpos:R, found {text!r}")


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""  # BEIR folder
    out: str = ""  # MODEL_DIR
    split: str = "train"  # qrels split (supervised); unsupervised uses the corpus only
    # Queries of ``split`` kept out of training (a dev split for model selection; see data.holdout_queries).
    holdout_queries: tuple[str, ...] = ()
    base_model: str | None = None  # None -> all-MiniLM-L6-v2 (offline package when installed)
    mode: str = "supervised"
    negatives: str = "hce"  # hce: tree siblings; flat: random docs; mined: start-encoder ranks
    epochs: int | None = None  # None -> 8 supervised, 1 unsupervised
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs, equal budgets)
    batch_size: int = 64  # global batch (split across DDP ranks)
    lr: float | None = None  # None -> 5e-5 supervised, 1e-5 unsupervised (DESIGN §8)
    warmup_ratio: float = 0.1  # linear warmup share of all steps, then linear decay to 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    device: str = "auto"
    precision: str = "auto"  # autocast of the encoder's matmuls; master weights and the loss stay fp32
    # Attention-probability dropout while training; None keeps the base model's (0.1 for MiniLM). 0 lets CPU
    # attention use the fused SDPA kernel (with dropout it runs unfused: a MiniLM step took ~2x as long).
    attention_dropout: float | None = None
    seed: int = 0
    query_max_length: int = QUERY_MAX_LENGTH  # tokens (serving's default, hce_serve.defaults; ArguAna wants 256)
    doc_max_length: int = DOC_MAX_LENGTH  # tokens; recorded as the card's max_length
    # Loss.
    tau: float = 0.05  # temperature of every softmax
    level_taus: tuple[float, ...] | None = None  # per centroid level (top first); None -> tau
    negatives_per_query: int = 7  # S: sampled siblings / random / mined documents per query
    # live: the S negatives are encoded with gradient every step; cached: their embeddings come from the
    # latest corpus encode (re-encoded on the rebuild schedule, every arm), so S costs almost nothing.
    negative_encoding: str = "live"
    doc_weight: float = 1.0  # weight of the document-level sibling CE
    level_weights: tuple[float, ...] = (0.5,)  # centroid levels, top first; the last value repeats
    # > 0: the centroid levels' weights fall linearly to 0 over this many epochs (1.0: over the first epoch),
    # so the coarse structure shapes the start and the document level decides the end.
    level_anneal_epochs: float = 0.0
    inbatch_weight: float = 1.0  # lambda of the two-way in-batch InfoNCE
    normalize_centroids: bool = True  # see loss.py for why
    # Tree.
    branching: int = 32  # most children per node
    leaf_size: int = 16  # most documents per leaf node
    tree_balance: float = 1.3  # a child takes at most this times its fair share
    kmeans_iters: int = 20
    rebuild_every: int = REBUILD_EPOCH  # steps between re-encode + rebuild; -1 = every epoch, 0 = never
    # Mined negatives: ranks [lo, hi) of the starting encoder, positives removed.
    mined_rank_lo: int = 0
    mined_rank_hi: int = 50
    refresh_mined: bool = False  # re-mine from the current encoder on the tree-rebuild schedule
    # The same protection against unjudged positives for every hard-negative arm: no negative may be among
    # the query's top ``sibling_guard`` documents (positives removed) under the encoder that picked it.
    # mined skips ranks < mined_rank_lo; hce drops siblings in the query's top ranks at each rebuild.
    # None -> mined_rank_lo, so one knob guards both. Off by default (the paper's siblings): on SciFact a
    # guard of 10 cost hce 2.4 and mined 1.4 nDCG@10 points over 3 seeds (results/quality-cpu.json).
    # Raise it on data where many relevant documents are unjudged (e.g. sparse web-search qrels).
    sibling_guard: int | None = None
    # The false-negative filter of every hard-negative arm, one knob: ``none``; ``rank:G`` (= sibling_guard G,
    # and mined draws from ranks >= G); ``percpos:R`` (NV-Retriever's TopK-PercPos, arXiv 2407.15831: drop a
    # negative whose score under the encoder that picked it exceeds R x that encoder's score of the
    # positive). None -> derived from sibling_guard, so configs written before the knob keep their meaning.
    # flat's random negatives are never filtered.
    negative_filter: str | None = None
    # Hard negatives of the hce arm: ``leaf`` draws the positive's leaf-mates (then the nearest leaves under the
    # same parent); ``query`` ranks every document under the positive's parent node by the query at each
    # rebuild and draws from the top ``query_sibling_pool`` (the query's confusions, not the document's
    # neighbours). ``sibling_share`` < 1 fills the rest of S from the mined pool (ranks [lo, hi) of the
    # starting encoder, or re-mined at each rebuild with refresh_mined): 0.5 is half siblings, half mined.
    sibling_select: str = "leaf"
    query_sibling_pool: int = 20
    sibling_share: float = 1.0
    # How examples form batches: ``random`` (a seeded shuffle) or ``tree-topic`` (TAS-B-style: each batch
    # from the queries whose positives lie under one or two top-level nodes of the current tree, every
    # example once per epoch; in-batch negatives are then on topic at no extra encoding cost). tree-topic
    # builds a tree on the rebuild schedule for every negatives arm.
    batching: str = "random"
    # Unsupervised pseudo-queries: ``span`` cuts span_min..span_max consecutive words; ``crop`` does the
    # same, then drops each word with probability crop_drop (Contriever-style cropping with deletion).
    pseudo_queries: str = "span"
    span_min_words: int = 16
    span_max_words: int = 48
    crop_drop: float = 0.1
    # Unsupervised positives: ``document`` (the whole document, the pseudo-query cut from it) or ``crop``
    # (a second, independent crop of the same document, Contriever-style: query and positive are both
    # crops, so the model cannot match a span to its verbatim context).
    pseudo_positive: str = "document"
    # Housekeeping.
    encode_batch_size: int = 128  # corpus encoding for tree rebuilds and mining
    checkpoint_every: int = 0  # also checkpoint every N steps (0: only at each epoch end and the end)
    log_every: int = 1  # steps between train_log.jsonl rows
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded as given

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"config: {msg}")

        choices = {"mode": MODES, "negatives": NEGATIVES, "device": DEVICES, "precision": PRECISIONS,
                   "negative_encoding": NEGATIVE_ENCODINGS, "pseudo_queries": PSEUDO_QUERIES, "batching": BATCHINGS,
                   "sibling_select": SIBLING_SELECTS, "pseudo_positive": PSEUDO_POSITIVES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(f"{name} must be one of {allowed}, found {getattr(self, name)!r}")
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            bad(f"attention_dropout must be in [0, 1), found {self.attention_dropout}")
        if not 0 <= self.crop_drop < 1:
            bad(f"crop_drop must be in [0, 1), found {self.crop_drop}")
        if self.sibling_guard is not None and not 0 <= self.sibling_guard < self.mined_rank_hi:
            bad(f"sibling_guard must be in [0, mined_rank_hi={self.mined_rank_hi}), found {self.sibling_guard}")
        if self.negative_filter is not None:
            kind, value = parse_negative_filter(self.negative_filter)
            if kind == "rank" and not value < self.mined_rank_hi:
                bad(f"negative_filter rank:G needs G < mined_rank_hi={self.mined_rank_hi}, "
                    f"found {self.negative_filter}")
            want = int(value) if kind == "rank" else 0
            if self.sibling_guard is not None and self.sibling_guard != want:
                bad(f"negative_filter {self.negative_filter} contradicts sibling_guard {self.sibling_guard}")
        if not 0 <= self.sibling_share <= 1:
            bad(f"sibling_share must be in [0, 1], found {self.sibling_share}")
        if self.query_sibling_pool < 1:
            bad(f"query_sibling_pool must be >= 1, found {self.query_sibling_pool}")
        if self.level_anneal_epochs < 0:
            bad(f"level_anneal_epochs must be >= 0, found {self.level_anneal_epochs}")
        for name in ("batch_size", "query_max_length", "doc_max_length", "branching", "leaf_size", "kmeans_iters",
                     "encode_batch_size", "log_every"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            bad(f"epochs must be >= 1, found {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            bad(f"max_steps must be >= 1, found {self.max_steps}")
        if self.lr is not None and not (0 < self.lr < 1):
            bad(f"lr must be in (0, 1), found {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            bad(f"warmup_ratio must be in [0, 1), found {self.warmup_ratio}")
        if self.tau <= 0 or (self.level_taus is not None and any(t <= 0 for t in self.level_taus)):
            bad("temperatures must be positive")
        if self.negatives_per_query < 0:
            bad(f"negatives_per_query must be >= 0, found {self.negatives_per_query}")
        if min((self.doc_weight, self.inbatch_weight, *self.level_weights), default=0) < 0:
            bad("loss weights must be >= 0")
        if self.branching < 2:
            bad(f"branching must be >= 2, found {self.branching}")
        if self.tree_balance < 1:
            bad(f"tree_balance must be >= 1, found {self.tree_balance}")
        if self.rebuild_every < REBUILD_HALF_EPOCH:
            bad(f"rebuild_every must be -2 (each half epoch), -1 (each epoch), 0 (never) or a step count, "
                f"found {self.rebuild_every}")
        if not 0 <= self.mined_rank_lo < self.mined_rank_hi:
            bad(f"mined ranks need 0 <= lo < hi, found {self.mined_rank_lo}..{self.mined_rank_hi}")
        if not 1 <= self.span_min_words <= self.span_max_words:
            bad(f"span words need 1 <= min <= max, found {self.span_min_words}..{self.span_max_words}")
        if self.checkpoint_every < 0:
            bad(f"checkpoint_every must be >= 0, found {self.checkpoint_every}")

    def resolved(self) -> TrainConfig:
        """Fill the mode-dependent defaults."""
        sup = self.mode == "supervised"
        if self.negative_filter is None:
            guard = self.sibling_guard if self.sibling_guard is not None else self.mined_rank_lo
            filt = f"rank:{guard}" if guard > 0 else "none"
        else:
            kind, value = parse_negative_filter(self.negative_filter)
            guard = int(value) if kind == "rank" else 0
            filt = {"none": "none", "rank": f"rank:{guard}", "percpos": f"percpos:{value:g}"}[kind]
        return replace(
            self,
            epochs=self.epochs if self.epochs is not None else (8 if sup else 1),
            lr=self.lr if self.lr is not None else (5e-5 if sup else 1e-5),
            sibling_guard=guard,
            # a guard binds mined too: it never draws from the top ``sibling_guard`` ranks either
            mined_rank_lo=max(self.mined_rank_lo, guard),
            negative_filter=filt,
        )

    @property
    def percpos(self) -> float | None:
        """R of a ``percpos:R`` filter, else None."""
        if self.negative_filter is None:
            return None
        kind, value = parse_negative_filter(self.negative_filter)
        return value if kind == "percpos" else None

    @property
    def uses_mined(self) -> bool:
        """Whether some of the S negatives come from a mined pool (the mined arm, or hce with sibling_share < 1)."""
        return self.negatives == "mined" or (self.negatives == "hce" and self.sibling_share < 1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        from hce_serve.formats import atomic

        atomic.write_json(path, self.to_json())


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a --config JSON object and check its keys against the dataclass (typos are errors)."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{p}: expected a JSON object, found {type(obj).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ConfigError(f"{p}: unknown config keys {unknown}")
    for key in ("level_taus", "level_weights", "holdout_queries"):
        if isinstance(obj.get(key), list):
            obj[key] = tuple(obj[key])
    return obj


def make_config(file_values: dict[str, Any], flags: dict[str, Any]) -> TrainConfig:
    """Defaults, then the config file, then every flag the user actually gave (None = not given)."""
    values = {**file_values, **{k: v for k, v in flags.items() if v is not None}}
    try:
        return TrainConfig(**values).resolved()
    except TypeError as e:
        raise ConfigError(f"config: {e}") from None


AUTO_CROPS = (8, 16)  # DistillConfig.crops_per_doc's bounds when pseudo_per_doc is 0


@dataclass(frozen=True)
class DistillConfig:
    layers: int = 2  # transformer layers the student keeps
    # Teacher layers the student starts from: layer 0 + the top L-1 (or bottom | top | "I,J,.."). SciFact,
    # L = 2: nDCG@10 loss 2.37 points from the first 2 layers, -0.02 from layers 0 and 5.
    init_layers: str = "ends"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 5e-4  # CISI probe: 1e-4 lost 15.6 nDCG@10 points in 66 steps, 5e-4 8.5; see pseudo_per_doc
    warmup_ratio: float = 0.1
    tau: float = 0.05  # temperature of the listwise term
    cos_weight: float = 1.0
    kl_weight: float = 1.0
    pool_k: int = 32  # teacher's top documents per query in the listwise pool
    # crops per document and epoch; 0: enough to fill max_pseudo, between 8 and 16 (crops_per_doc). 8 took CISI's loss
    # from 8.5 to 0.5 points (522 steps); from the HCE teacher, L 2, 8 -> 16 took it from 1.43 to -0.02 (RESULTS §5)
    pseudo_per_doc: int = 0
    max_pseudo: int = 20_000  # pseudo-queries per epoch at most (sampled): binds from 2,500 documents at 8 crops
    train_query_repeats: int = 8  # each train-split query this many times per epoch (its weight against the crops):
    # SciFact, L 2 / 3, loss at 1 -> 8: HCE teacher 1.39 / 1.38 -> 0.61 / 0.28, base teacher -0.02 / -0.37 -> -0.02 /
    # 0.17
    # (noise), ~20 % more steps (RESULTS §5); no effect without a train split
    pseudo_words: tuple[int, int] = (8, 24)  # words per pseudo-query crop (min, max): query-sized for short queries
    heldout: float = 0.05  # share of queries kept out of training to measure fidelity
    length_grouped: bool = True  # batches of similar-length queries (shuffled megabatches sorted): less padding
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ConfigError(f"--layers must be >= 1, found {self.layers}")
        if self.pseudo_per_doc < 0:
            raise ConfigError(f"pseudo_per_doc must be >= 0 (0: automatic), found {self.pseudo_per_doc}")
        for name in ("epochs", "batch_size", "pool_k", "max_pseudo", "train_query_repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.init_layers not in INIT_RULES:
            idx = self.init_layers.split(",")
            if not all(i.strip().isdigit() for i in idx) or len(idx) != self.layers:
                raise ConfigError(f"init_layers must be one of {', '.join(INIT_RULES)} or {self.layers} "
                                  f"comma-separated layer indices, found {self.init_layers!r}")
        lo, hi = self.pseudo_words
        if not 1 <= lo <= hi:
            raise ConfigError(f"pseudo_words must be MIN,MAX with 1 <= MIN <= MAX, found {lo},{hi}")
        if not 0 < self.lr < 1 or self.tau <= 0 or min(self.cos_weight, self.kl_weight) < 0:
            raise ConfigError("lr must be in (0, 1), tau positive, weights >= 0")
        if not 0 <= self.heldout < 0.5:
            raise ConfigError(f"heldout must be in [0, 0.5), found {self.heldout}")

    def crops_per_doc(self, n_docs: int) -> int:
        """Pseudo-queries cropped from each of ``n_docs`` documents per epoch: ``pseudo_per_doc``, or (0) enough
        to fill ``max_pseudo``, at least 8 and at most 16 (CISI's 1,460 documents: 14; SciFact, ArguAna: 8)."""
        if self.pseudo_per_doc:
            return self.pseudo_per_doc
        return min(AUTO_CROPS[1], max(AUTO_CROPS[0], -(-self.max_pseudo // max(n_docs, 1))))
