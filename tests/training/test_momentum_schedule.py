"""Feature queue wrap-around, momentum update, the alpha ramp and the lr schedule."""

from __future__ import annotations

import pytest
import torch

from blip_core.model.blip import BlipModel
from blip_core.model.config import preset
from training.momentum import FeatureQueue, MomentumModel
from training.schedule import alpha_at, lr_at


def _feats(start: int, n: int, dim: int = 2) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float).unsqueeze(1).repeat(1, dim)


def test_queue_wraps_when_the_global_batch_does_not_divide_it():
    q = FeatureQueue(size=10, dim=2)
    assert q.ids.tolist() == [-1] * 10 and torch.allclose(q.image.norm(dim=1), torch.ones(10))
    for step in range(3):  # batches of 4 into 10 slots: the third wraps around
        q.enqueue(_feats(4 * step, 4), -_feats(4 * step, 4), torch.arange(4 * step, 4 * step + 4))
    assert int(q.ptr) == 2
    assert q.ids.tolist() == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert q.image[:, 0].tolist() == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert q.text[:, 0].tolist() == [-10, -11, -2, -3, -4, -5, -6, -7, -8, -9]
    for step in range(3, 8):  # and keeps going: slot of sample n is n % 10
        q.enqueue(_feats(4 * step, 4), _feats(4 * step, 4), torch.arange(4 * step, 4 * step + 4))
    assert int(q.ptr) == 32 % 10
    assert sorted(q.ids.tolist()) == list(range(22, 32)) and all(i % 10 == s for s, i in enumerate(q.ids.tolist()))


def test_queue_batch_larger_than_queue_keeps_the_newest():
    q = FeatureQueue(size=5, dim=2)
    q.enqueue(_feats(0, 3), _feats(0, 3), torch.arange(3))
    q.enqueue(_feats(3, 12), _feats(3, 12), torch.arange(3, 15))  # 12 > 5
    assert int(q.ptr) == 15 % 5
    assert all(i % 5 == s for s, i in enumerate(q.ids.tolist())) and sorted(q.ids.tolist()) == list(range(10, 15))


def test_momentum_model_is_an_ema_of_the_itc_parts():
    torch.manual_seed(0)
    online = BlipModel(preset("tiny", ("caption", "match")))
    m = MomentumModel(online)
    assert not any(p.requires_grad for p in m.parameters())
    theirs = dict(online.named_parameters())
    for name, p in m.model.named_parameters():
        assert torch.equal(p, theirs[name])
    before = {n: p.clone() for n, p in m.model.named_parameters()}
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    m.update(online, 0.995)
    for name, p in m.model.named_parameters():
        assert torch.allclose(p, 0.995 * before[name] + 0.005 * theirs[name], atol=1e-6)
    assert "text_decoder.lm_head.bias" not in dict(m.model.named_parameters())  # ITC parts only


def test_alpha_ramps_linearly_over_two_epochs():
    N = 100  # steps per epoch
    assert alpha_at(0, N, 0.4, 2) == 0.0
    assert alpha_at(50, N, 0.4, 2) == pytest.approx(0.1)
    assert alpha_at(100, N, 0.4, 2) == pytest.approx(0.2)  # BLIP: 0.4 * (epoch*N + i) / (2N)
    assert alpha_at(150, N, 0.4, 2) == pytest.approx(0.3)
    assert alpha_at(200, N, 0.4, 2) == pytest.approx(0.4)
    assert alpha_at(10_000, N, 0.4, 2) == pytest.approx(0.4)
    assert alpha_at(0, N, 0.4, 0) == 0.4  # no ramp
    assert alpha_at(50, N, 0.4, 1) == pytest.approx(0.2)  # retrieval fine-tune: one epoch


def test_lr_warmup_then_step_decay_or_cosine():
    kw = dict(lr=3e-4, warmup_steps=10, warmup_lr=1e-6, lr_decay=0.9, min_lr=1e-6)
    assert lr_at(0, 100, 1000, schedule="step", **kw) == pytest.approx(1e-6)
    assert lr_at(5, 100, 1000, schedule="step", **kw) == pytest.approx(1e-6 + (3e-4 - 1e-6) / 2)
    assert lr_at(10, 100, 1000, schedule="step", **kw) == pytest.approx(3e-4)
    assert lr_at(250, 100, 1000, schedule="step", **kw) == pytest.approx(3e-4 * 0.9 ** 2)
    assert lr_at(10_000_000, 100, 1000, schedule="step", **kw) == pytest.approx(1e-6)  # floor
    assert lr_at(10, 100, 1010, schedule="cosine", **kw) == pytest.approx(3e-4)
    assert lr_at(510, 100, 1010, schedule="cosine", **kw) == pytest.approx((3e-4 + 1e-6) / 2)
    assert lr_at(1010, 100, 1010, schedule="cosine", **kw) == pytest.approx(1e-6)
