"""The HCE loss on hand-made embeddings: no model, no data."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from hce_train.loss import CentroidLevel, hce_loss  # noqa: E402


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _perfect(b: int = 4, s: int = 3, d: int = 16):
    """Query i == positive i == basis vector i; negatives are other, orthogonal basis vectors."""
    eye = torch.eye(d)
    q = eye[:b].clone()
    d_pos = eye[:b].clone()
    d_neg = torch.stack([eye[b + i * s : b + (i + 1) * s] for i in range(b)])  # (b, S, D)
    return q, d_pos, d_neg, torch.ones(b, s, dtype=torch.bool)


def test_perfect_encoder_gives_near_zero_loss():
    q, d_pos, d_neg, mask = _perfect()
    out = hce_loss(q, d_pos, d_neg, mask, tau=0.05)
    assert out.loss.item() < 1e-6
    assert out.stats["inbatch_acc"] == 1.0
    assert out.stats["margin"] == pytest.approx(1.0)


def test_siblings_change_the_loss_and_masked_ones_do_not():
    q, d_pos, d_neg, mask = _perfect(b=2, s=2)
    base = hce_loss(q, d_pos, d_neg, mask, inbatch_weight=0.0).loss.item()
    hard = d_neg.clone()
    hard[0, 0] = F.normalize(q[0] + 0.1 * hard[0, 0], dim=0)  # a sibling almost equal to the query
    harder = hce_loss(q, d_pos, hard, mask, inbatch_weight=0.0).loss.item()
    assert harder > base + 0.1
    mask2 = mask.clone()
    mask2[0, 0] = False  # the same hard sibling masked out must not count
    assert hce_loss(q, d_pos, hard, mask2, inbatch_weight=0.0).loss.item() == pytest.approx(base, abs=1e-6)


def test_document_level_value_matches_hand_computation():
    q = _unit([1.0, 0.0])
    d_pos = _unit([1.0, 0.0])
    d_neg = _unit([0.0, 1.0])[None]  # (1, 1, 2)
    out = hce_loss(q, d_pos, d_neg, torch.ones(1, 1, dtype=torch.bool), tau=0.5, inbatch_weight=0.0)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_flows_to_siblings_and_to_the_query_through_centroid_levels():
    q, d_pos, d_neg, mask = _perfect(b=2, s=2)
    d_neg = (d_neg + 0.3 * q[:, None, :]).requires_grad_(True)  # (b, S, D), close to the query
    cent = torch.randn(2, 3, 16)  # constants, as the trainer passes them (no gradient into the tree)
    lvl = CentroidLevel(cent, torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 1]))
    grads = []
    for weight in (1.0, 0.0):
        qq = q.clone().requires_grad_(True)
        hce_loss(qq, d_pos, d_neg, mask, [lvl], level_weights=(weight,)).loss.backward()
        grads.append(qq.grad)
    assert d_neg.grad is not None and d_neg.grad.abs().sum() > 0
    # The centroid level contributes to the query's gradient, and only through its weight.
    assert not torch.allclose(grads[0], grads[1])


def test_centroid_level_prefers_right_node_and_is_scale_free_when_normalised():
    q = _unit([1.0, 0.0, 0.0])
    right, wrong = torch.tensor([0.3, 0.0, 0.0]), torch.tensor([0.6, 0.6, 0.0])  # right has a small norm
    cand = torch.stack([right, wrong])[None]  # (1, 2, 3)
    lvl = CentroidLevel(cand, torch.ones(1, 2, dtype=torch.bool), torch.tensor([0]))
    dpos, dneg, m = q.clone(), torch.zeros(1, 0, 3), torch.zeros(1, 0, dtype=torch.bool)
    normed = hce_loss(q, dpos, dneg, m, [lvl], level_weights=(1.0,), inbatch_weight=0.0, doc_weight=0.0)
    raw = hce_loss(q, dpos, dneg, m, [lvl], level_weights=(1.0,), inbatch_weight=0.0, doc_weight=0.0,
                   normalize_centroids=False)
    # Raw dot products rank the loose-but-wrong centroid first; cosine ranks the right one first.
    assert normed.stats["acc_level1"] == 1.0 and raw.stats["acc_level1"] == 0.0
    assert normed.loss.item() < raw.loss.item()
    # The level weight scales its contribution linearly.
    double = hce_loss(q, dpos, dneg, m, [lvl], level_weights=(2.0,), inbatch_weight=0.0, doc_weight=0.0)
    assert double.loss.item() == pytest.approx(2 * normed.loss.item(), rel=1e-5)


def test_inbatch_false_negatives_are_masked():
    q = _unit([1.0, 0.0], [1.0, 0.0])  # two queries with the same positive document
    d_pos = _unit([1.0, 0.0], [1.0, 0.0])
    d_neg, mask = torch.zeros(2, 0, 2), torch.zeros(2, 0, dtype=torch.bool)
    unmasked = hce_loss(q, d_pos, d_neg, mask, doc_weight=0.0).loss.item()
    ex = torch.tensor([[False, True], [True, False]])
    masked = hce_loss(q, d_pos, d_neg, mask, doc_weight=0.0, qd_exclude=ex, dq_exclude=ex).loss.item()
    assert unmasked == pytest.approx(math.log(2), rel=1e-4)  # the duplicate ties with the positive
    assert masked < 1e-6


def test_rows_with_no_candidates_do_not_produce_nan():
    q, d_pos, d_neg, _ = _perfect(b=2, s=2)
    out = hce_loss(q, d_pos, d_neg, torch.zeros(2, 2, dtype=torch.bool))
    assert math.isfinite(out.loss.item())
    assert "margin" not in out.stats


def test_level_temperatures_apply_per_level_and_repeat():
    q = _unit([1.0, 0.0, 0.0])
    cand = _unit([1.0, 0.2, 0.0], [0.2, 1.0, 0.0])[None]  # (1, 2, 3)
    lvl = CentroidLevel(cand, torch.ones(1, 2, dtype=torch.bool), torch.tensor([0]))
    dpos, dneg, m = q.clone(), torch.zeros(1, 0, 3), torch.zeros(1, 0, dtype=torch.bool)
    kw = {"level_weights": (1.0,), "inbatch_weight": 0.0, "doc_weight": 0.0}
    sharp = hce_loss(q, dpos, dneg, m, [lvl, lvl], level_taus=(0.05,), **kw).stats
    soft = hce_loss(q, dpos, dneg, m, [lvl, lvl], level_taus=(0.05, 1.0), **kw).stats
    assert sharp["loss_level2"] == pytest.approx(sharp["loss_level1"])  # one value covers every level
    assert soft["loss_level2"] > soft["loss_level1"]  # a softer temperature on level 2 only
