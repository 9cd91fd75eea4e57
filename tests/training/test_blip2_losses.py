"""BLIP-2's losses and masks: ITC's best query per pair and rank offset, the stage-2 labels and
losses, the prefix-LM split, and the Q-Former's multimodal causal (ITG) mask."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from blip_core.model.blip2_config import QFormerConfig
from blip_core.model.qformer import QFormer, itg_mask
from training.blip2.losses import (
    causal_lm_loss,
    itc_max_loss,
    prefix_split,
    query_max_similarity,
    seq2seq_loss,
    soft_prompt_labels,
)
from training.losses import sample_hard_negatives


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_itc_takes_the_best_query_of_each_pair():
    queries, texts = _unit(3, 4, 8), _unit(5, 8, seed=1)
    sim = query_max_similarity(queries, texts)
    brute = torch.tensor([[max(float(queries[i, q] @ texts[t]) for q in range(4)) for t in range(5)] for i in range(3)])
    assert sim.shape == (3, 5) and torch.allclose(sim, brute, atol=1e-6)
    # a text equal to one query of image 0 scores 1 with image 0, whatever its other queries are
    texts[2] = queries[0, 3]
    assert query_max_similarity(queries, texts)[0, 2] == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(sim, (queries.mean(1) @ texts.T))  # not the mean query


def test_itc_loss_positives_are_offset_by_rank():
    """Rank 1 of 2: its rows' positives are columns B..2B-1 of the gathered batch."""
    B, Q, E = 4, 3, 16
    texts_all = _unit(2 * B, E, seed=2)
    image_all = torch.stack([texts_all[i].expand(Q, E) for i in range(2 * B)]) + 0.01 * _unit(2 * B, Q, E, seed=3)
    image_all = F.normalize(image_all, dim=-1)
    mine_img, mine_txt = image_all[B:], texts_all[B:]
    temp = torch.tensor(0.05)
    right, sim_i2t, sim_t2i = itc_max_loss(mine_img, mine_txt, image_all, texts_all, temp, offset=B)
    wrong, _, _ = itc_max_loss(mine_img, mine_txt, image_all, texts_all, temp, offset=0)
    assert sim_i2t.shape == sim_t2i.shape == (B, 2 * B)
    assert float(right) + 5 < float(wrong)  # (label smoothing 0.1 keeps the right loss well above 0)
    assert torch.equal(sim_i2t.argmax(1), torch.arange(B) + B) and torch.equal(sim_t2i.argmax(1), torch.arange(B) + B)


def test_itc_gradient_reaches_only_the_local_rows_and_the_temperature():
    img, txt = _unit(4, 2, 8).requires_grad_(), _unit(4, 8, seed=1).requires_grad_()
    temp = torch.tensor(0.07, requires_grad=True)
    loss, _, _ = itc_max_loss(img, txt, img.detach(), txt.detach(), temp)
    loss.backward()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0 and temp.grad != 0


def test_itm_negatives_never_the_positive_nor_the_same_image():
    """Even when ITC is certain the positive is the best match, it is never drawn."""
    B = 6
    sim = torch.eye(B) * 50  # the own pair has all the probability mass
    image_ids = torch.tensor([0, 1, 2, 3, 3, 5])  # rows 3 and 4 show the same image
    same = image_ids[:, None] == image_ids[None, :]
    for seed in range(20):
        neg = sample_hard_negatives(sim, same, generator=torch.Generator().manual_seed(seed))
        assert not bool((neg == torch.arange(B)).any())
        assert not bool(same[torch.arange(B), neg].any())


def test_soft_prompt_labels_ignore_the_prompt_padding_and_soft_tokens():
    ids = torch.tensor([[2, 10, 11, 12, 2], [2, 20, 21, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = soft_prompt_labels(ids, mask, num_queries=3, prompt_len=torch.tensor([2, 1]))
    assert labels.shape == (2, 8)
    assert (labels[:, :3] == -100).all()
    assert labels[0, 3:].tolist() == [-100, -100, 11, 12, 2]
    assert labels[1, 3:].tolist() == [-100, 20, 21, -100, -100]
    assert soft_prompt_labels(ids, mask, 2, 0)[0, 2:].tolist() == ids[0].tolist()


def test_causal_lm_loss_shifts_by_one():
    V = 7
    labels = torch.tensor([[-100, -100, 3, 4, -100]])
    logits = torch.full((1, 5, V), -20.0)
    logits[0, 1, 3] = logits[0, 2, 4] = 20.0  # position t predicts label t + 1
    assert float(causal_lm_loss(logits, labels)) < 1e-6
    logits[0, 2, 4], logits[0, 2, 5] = -20.0, 20.0
    assert float(causal_lm_loss(logits, labels)) == pytest.approx(20.0, rel=0.01)  # half the tokens at 40 nats


def test_seq2seq_loss_does_not_shift():
    labels = torch.tensor([[3, 4, -100]])
    logits = torch.full((1, 3, 6), -20.0)
    logits[0, 0, 3] = logits[0, 1, 4] = 20.0
    assert float(seq2seq_loss(logits, labels)) < 1e-6


def test_prefix_split_from_word_one_to_the_midpoint():
    words = "a large red circle above a small blue square".split()
    cuts = set()
    rng = random.Random(0)
    for _ in range(200):
        prefix, suffix = prefix_split(words, rng)
        assert f"{prefix} {suffix}" == " ".join(words) and suffix
        cuts.add(len(prefix.split()))
    assert cuts == set(range(1, len(words) // 2 + 1))
    assert prefix_split(["circle"], rng) == ("", "circle")


def _tiny_qformer(Q=3):
    torch.manual_seed(0)
    cfg = QFormerConfig(width=16, layers=2, heads=2, mlp_dim=32, num_queries=Q, vision_width=8, text_input=True,
                        vocab_size=30, max_positions=16, dec_id=29)
    return QFormer(cfg).eval()


def test_itg_mask_lets_no_query_see_text():
    Q, mask = 3, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    m = itg_mask(Q, mask)  # [B, 1, Q+T, Q+T], True = attend
    assert m.shape == (2, 1, 7, 7)
    assert not m[:, :, :Q, Q:].any()  # queries never see text
    assert m[:, :, :, :Q].all()  # everyone sees every query
    text = m[1, 0, Q:, Q:]
    assert torch.equal(text, torch.ones(4, 4, dtype=torch.bool).tril())  # causal text
    assert not m[0, 0, :, Q + 3].any()  # padded text is seen by no one


def test_itg_pass_queries_ignore_text_and_text_is_causal():
    """Through the Q-Former itself: under the ITG mask the query rows equal the query-only pass
    (what LAVIS caches), and text row t does not depend on tokens after t."""
    qf, Q = _tiny_qformer(), 3
    image = torch.randn(2, 5, 8)
    ids = torch.tensor([[29, 4, 5, 6], [29, 7, 8, 9]])
    mask = torch.ones_like(ids)
    rows = qf._run(qf._with_queries(2, ids), Q, itg_mask(Q, mask), image)
    assert torch.allclose(rows[:, :Q], qf.queries(image), atol=1e-5)
    changed = ids.clone()
    changed[:, 3] = 11
    before, after = qf.decoder(image, ids, mask), qf.decoder(image, changed, mask)
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert not torch.allclose(before[:, 3], after[:, 3])
