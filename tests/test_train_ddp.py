"""DDP on CPU with 2 gloo processes: the gathered loss gives the single-process gradient; fit runs under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hce_train.loss import hce_loss  # noqa: E402

B, S, D = 6, 2, 8

WORKER = """
import sys, numpy as np, torch
from hce_train import dist
from hce_train.loss import hce_loss
sys.path.insert(0, {tests!r})
from test_train_ddp import make_problem, B, S, D
env = dist.init("cpu")
w, x_q, x_d, x_n = make_problem()
b = B // env.world
mine = slice(env.rank * b, (env.rank + 1) * b)
norm = torch.nn.functional.normalize
q, d_pos = norm(x_q[mine] @ w, dim=-1), norm(x_d[mine] @ w, dim=-1)
d_neg = norm(x_n[mine] @ w, dim=-1)  # (b, S, D)
all_q = dist.gather_with_grad(q, env)
all_docs = torch.cat([dist.gather_with_grad(d_pos, env), dist.gather_with_grad(d_neg.reshape(b * S, D), env)])
out = hce_loss(q, d_pos, d_neg, torch.ones(b, S, dtype=torch.bool), all_q=all_q, all_docs=all_docs,
               offset=env.rank * b)
out.loss.backward()
dist.average_gradients([w], env)
np.save({out!r} + f"/grad{{env.rank}}.npy", w.grad.numpy())
dist.shutdown(env)
"""


def make_problem():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D, D, generator=g).requires_grad_(True)
    return w, torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), torch.randn(B, S, D, generator=g)


def _torchrun(args: list[str], cwd: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def test_gathered_loss_gives_the_single_process_gradient(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    res = _torchrun([str(script)])
    assert res.returncode == 0, res.stderr[-3000:]
    g0, g1 = np.load(tmp_path / "grad0.npy"), np.load(tmp_path / "grad1.npy")
    np.testing.assert_array_equal(g0, g1)  # averaged: every rank steps identically

    w, x_q, x_d, x_n = make_problem()
    norm = torch.nn.functional.normalize
    q, d_pos, d_neg = norm(x_q @ w, dim=-1), norm(x_d @ w, dim=-1), norm(x_n @ w, dim=-1)
    all_docs = torch.cat([d_pos, d_neg.reshape(B * S, D)])
    hce_loss(q, d_pos, d_neg, torch.ones(B, S, dtype=torch.bool), all_q=q, all_docs=all_docs).loss.backward()
    np.testing.assert_allclose(g0, w.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_fit_under_torchrun_with_two_gloo_processes(tiny_beir, tiny_bert, tmp_path):
    out = tmp_path / "ddp"
    res = _torchrun(["-m", "hce_train", "fit", "--data", str(tiny_beir), "--out", str(out), "--base-model",
                     str(tiny_bert), "--max-steps", "2", "--batch-size", "8", "--leaf-size", "4", "--branching", "4",
                     "--siblings", "2", "--doc-max-length", "32", "--query-max-length", "16", "--device", "cpu",
                     "--no-progress", "-q"])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])  # only rank 0 prints
    assert summary["steps"] == 2
    from hce_serve.formats.card import ModelCard
    from hce_serve.formats.tree import Tree

    card = ModelCard.load(out)
    assert card.extra["processes"] == 2 and card.extra["global_batch"] == 8
    assert len(Tree.load(out).doc_ids) == 64
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "event" not in r] == [1, 2]  # one writer: rank 0


REBUILD = """
import sys, numpy as np
from pathlib import Path
from hce_train import dist
from hce_train.config import TrainConfig
from hce_train.model import HCEEncoder
from hce_train.refresh import RunState
out = Path(sys.argv[3]); out.mkdir(parents=True, exist_ok=True)
env = dist.init("cpu")
cfg = TrainConfig(data=sys.argv[1], out=str(out), base_model=sys.argv[2], doc_max_length=32, leaf_size=4,
                  branching=4, precision="fp32", device="cpu").resolved()
run = RunState(cfg, env, "cpu", progress=False)
tree = run.build(HCEEncoder.build(sys.argv[2], "cpu"), 0)  # every rank encodes 1/world of the corpus
if env.is_main:
    tree.save(out)
    np.save(out / "emb.npy", run.last_embeddings)
dist.shutdown(env)
"""


def test_tree_rebuild_sharded_over_two_ranks_gives_the_single_process_tree(tiny_beir, tiny_bert, tmp_path):
    from hce_serve.formats.tree import Tree

    script = tmp_path / "rebuild.py"
    script.write_text(REBUILD)
    two = _torchrun([str(script), str(tiny_beir), str(tiny_bert), str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tiny_beir), str(tiny_bert), str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    e1, e2 = np.load(tmp_path / "one" / "emb.npy"), np.load(tmp_path / "two" / "emb.npy")
    assert e1.shape == e2.shape == (64, 32)
    np.testing.assert_allclose(e2, e1, atol=1e-5)  # the gathered shards, in corpus order
    t1, t2 = Tree.load(tmp_path / "one"), Tree.load(tmp_path / "two")
    np.testing.assert_array_equal(t1.parent, t2.parent)
    np.testing.assert_array_equal(t1.doc_leaf, t2.doc_leaf)
