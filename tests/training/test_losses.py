"""Each loss against a small case computed by hand, and the hard-negative sampler."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch

from training.losses import (
    IGNORE,
    itc_loss,
    itc_targets,
    itm_labels,
    itm_loss,
    lm_loss,
    lm_targets,
    sample_hard_negatives,
    vqa_loss,
)


def _logsumexp(xs):
    return math.log(sum(math.exp(x) for x in xs))


# ---------------------------------------------------------------------------- ITC
def test_itc_targets_by_hand():
    sim_m = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    pos = torch.tensor([[True, False]])
    t = itc_targets(sim_m, pos, alpha=0.4)
    assert torch.allclose(t, torch.tensor([[0.4 * 0.25 + 0.6, 0.4 * 0.75]]))
    # two positives (same image id twice) share the hard mass; alpha 0 = plain one-hot(s)
    t2 = itc_targets(torch.zeros(1, 3), torch.tensor([[True, True, False]]), alpha=0.0)
    assert torch.allclose(t2, torch.tensor([[0.5, 0.5, 0.0]]))
    assert torch.allclose(itc_targets(torch.randn(4, 7), torch.eye(4, 7, dtype=torch.bool), 0.4).sum(1), torch.ones(4))


def test_itc_loss_by_hand():
    # 2 images x 3 keys (2 in-batch, 1 queue); targets one-hot on the diagonal
    s_i2t = [[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]]
    s_t2i = [[1.0, 0.0, 0.0], [0.0, 3.0, 2.0]]
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    i2t = (-(2.0 - _logsumexp(s_i2t[0])) - (1.5 - _logsumexp(s_i2t[1]))) / 2
    t2i = (-(1.0 - _logsumexp(s_t2i[0])) - (3.0 - _logsumexp(s_t2i[1]))) / 2
    got = itc_loss(torch.tensor(s_i2t), torch.tensor(s_t2i), eye, eye)
    assert got.item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)
    # soft targets: -sum t log p
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    row0 = -(0.5 * (2.0 - _logsumexp(s_i2t[0])) + 0.5 * (0.0 - _logsumexp(s_i2t[0])))
    row1 = -(0.25 * (1.5 - _logsumexp(s_i2t[1])) + 0.75 * (-1.0 - _logsumexp(s_i2t[1])))
    got = itc_loss(torch.tensor(s_i2t), torch.tensor(s_i2t), soft, soft)
    assert got.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


# ---------------------------------------------------------------------------- ITM
def test_itm_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])  # pos, neg image, neg text
    assert itm_labels(1).tolist() == [1, 0, 0]
    expected = (-(2.0 - _logsumexp([0, 2])) - (1.0 - _logsumexp([1, 0])) - (0.0 - _logsumexp([0, 0]))) / 3
    assert itm_loss(logits).item() == pytest.approx(expected, abs=1e-6)


def test_hard_negatives_never_positive_or_excluded():
    torch.manual_seed(0)
    B = 6
    sim = torch.randn(B, B) * 3 + torch.eye(B) * 10  # the own pair is by far the most similar
    ids = torch.tensor([0, 0, 1, 2, 3, 3])  # samples 0/1 and 4/5 show the same image
    exclude = ids[:, None] == ids[None, :]
    for _ in range(300):
        neg = sample_hard_negatives(sim, exclude)
        assert not exclude[torch.arange(B), neg].any()
    # with an offset (candidates from all ranks), row i's own pair is column offset + i
    sim_all = torch.randn(B, 3 * B)
    own = torch.zeros(B, 3 * B, dtype=torch.bool)
    own[torch.arange(B), B + torch.arange(B)] = True
    sim_all[own] = 50.0
    for _ in range(200):
        neg = sample_hard_negatives(sim_all, torch.zeros_like(own), offset=B)
        assert (neg != B + torch.arange(B)).all()


def test_hard_negatives_proportional_to_softmax():
    sim = torch.tensor([[9.0, 1.0, 0.0, -1.0, 2.0], [0.0, 5.0, 0.5, 0.2, 0.1]])
    exclude = torch.zeros_like(sim, dtype=torch.bool)
    exclude[0, 4] = True
    expected = torch.softmax(sim, 1) + 1e-4
    expected[0, 0] = expected[0, 4] = expected[1, 1] = 0.0  # own pairs and the excluded one
    expected = expected / expected.sum(1, keepdim=True)
    g = torch.Generator().manual_seed(0)
    n = 6000  # the frequencies' standard error is <= 0.0065: atol 0.02 is three of them
    counts = torch.zeros_like(sim)
    draws = torch.stack([sample_hard_negatives(sim, exclude, generator=g) for _ in range(n)])  # [n, 2]
    for row in range(2):
        counts[row] = torch.bincount(draws[:, row], minlength=5).float() / n
    assert torch.allclose(counts, expected, atol=0.02), (counts, expected)


def test_hard_negatives_vectorised():
    """One multinomial call for the whole batch, whatever its size (BLIP loops per sample)."""
    sim = torch.randn(512, 512)
    exclude = torch.eye(512, dtype=torch.bool)
    with mock.patch("torch.multinomial", wraps=torch.multinomial) as m:
        neg = sample_hard_negatives(sim, exclude)
    assert m.call_count == 1 and m.call_args[0][0].shape == (512, 512)
    assert neg.shape == (512,)


def test_hard_negatives_degenerate_batch_does_not_crash():
    # every sample shows the same image: no true negative exists, but the own pair is still avoided
    sim = torch.randn(4, 4)
    neg = sample_hard_negatives(sim, torch.ones(4, 4, dtype=torch.bool))
    assert (neg != torch.arange(4)).all()


# ----------------------------------------------------------------------------- LM
def test_lm_loss_by_hand_with_smoothing_padding_and_prompt():
    V, eps = 3, 0.1
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    ids = torch.tensor([[2, 1, 0, 0]])  # [DEC]=2, token 1, token 0, padding
    mask = torch.tensor([[1, 1, 1, 0]])

    def smoothed(row, y):
        logp = [v - _logsumexp(row) for v in row]
        return (1 - eps) * -logp[y] + eps * sum(-lp for lp in logp) / V

    # position 0 predicts ids[1] = 1, position 1 predicts ids[2] = 0; position 2 predicts padding
    by_hand = (smoothed([1.0, 0.0, 0.0], 1) + smoothed([0.0, 2.0, 0.0], 0)) / 2
    assert lm_loss(logits, ids, mask).item() == pytest.approx(by_hand, abs=1e-6)
    # prompt_len=2 masks [DEC] and the first token: only position 1's prediction counts
    assert lm_targets(ids, mask, 2).tolist() == [[IGNORE, IGNORE, 0, IGNORE]]
    assert lm_loss(logits, ids, mask, prompt_len=2).item() == pytest.approx(smoothed([0.0, 2.0, 0.0], 0), abs=1e-6)
    # per-sequence sums (BLIP's reduction='none', used for VQA answers)
    per = lm_loss(logits, ids, mask, per_sequence=True)
    assert per.shape == (1,) and per.item() == pytest.approx(2 * by_hand, abs=1e-6)
    # no smoothing = plain cross-entropy
    plain = (-(0.0 - _logsumexp([1.0, 0.0, 0.0])) - (0.0 - _logsumexp([0.0, 2.0, 0.0]))) / 2
    assert lm_loss(logits, ids, mask, label_smoothing=0.0).item() == pytest.approx(plain, abs=1e-6)


def test_vqa_loss_weights_answers_per_question():
    per_answer = torch.tensor([1.0, 3.0, 2.0])  # question 0 has two answers, question 1 one
    weights = torch.tensor([0.75, 0.25, 1.0])
    assert vqa_loss(per_answer, weights, 2).item() == pytest.approx((0.75 + 0.75 + 2.0) / 2)
