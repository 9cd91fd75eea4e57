"""The training module: encoder/decoder sharing by identity, every parameter trained every step,
prompt masking, gradient checkpointing and bf16."""

from __future__ import annotations

import pytest
import torch

from blip_core.model.blip import BlipModel
from blip_core.model.config import preset
from training.data import ImageTransform, SceneCaptions, SceneVqa, collate
from training.losses import lm_targets
from training.objectives import Objective, tie_text_stacks
from training.vocab import make_tokenizer, text_ids


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer("scenes", tmp_path_factory.mktemp("vocab"))


def _model(tok, tasks, tied=False):
    torch.manual_seed(0)
    model = BlipModel(preset("tiny", tasks, **text_ids(tok)))
    if tied:
        tie_text_stacks(model.text_encoder, model.text_decoder)
    return model


def _batches(n=8):
    tf = ImageTransform(32)
    return {"captions": collate([SceneCaptions(0, 16, 32, 3, tf)[i] for i in range(n)]),
            "vqa": collate([SceneVqa(0, 16, 32, 3, tf)[i] for i in range(n)])}


def test_encoder_and_decoder_share_all_but_self_attention(tok):
    m = _model(tok, ("caption", "match"), tied=True)
    enc, dec = m.text_encoder, m.text_decoder
    assert (dec.embed.tokens.weight is enc.embed.tokens.weight
            and dec.embed.positions.weight is enc.embed.positions.weight)
    for e, d in zip(enc.layers, dec.layers):
        assert (d.mlp.fc1.weight is e.mlp.fc1.weight and d.mlp.fc2.bias is e.mlp.fc2.bias
                and d.mlp.norm.weight is e.mlp.norm.weight)
        assert (d.cross_attn.key.weight is e.cross_attn.key.weight
                and d.cross_attn.proj.weight is e.cross_attn.proj.weight)
        assert d.self_attn.query.weight is not e.self_attn.query.weight
        assert d.self_attn.norm.weight is not e.self_attn.norm.weight
    assert dec.lm_head is not None and enc.lm_head is None  # the LM head is the decoder's own
    # each shared parameter is counted once: the tied model has exactly the decoder's copies fewer
    untied = _model(tok, ("caption", "match"))
    copies = [untied.text_decoder.embed] + [
        m for layer in untied.text_decoder.layers for m in (layer.cross_attn, layer.mlp)]
    n_copies = sum(p.numel() for module in copies for p in module.parameters())
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in untied.parameters()) - n_copies


@pytest.mark.parametrize("tasks, parts", [
    (("caption", "match"), ("itc_itm", "lm")),  # pre-training
    (("caption", "vqa", "match"), ("itc_itm", "lm", "vqa")),  # multitask fine-tune
])
def test_every_parameter_gets_a_gradient_every_step(tok, tasks, parts):
    """So DDP runs without find_unused_parameters (BLIP's ITC-only pass leaves cross-attention unused)."""
    model = _model(tok, tasks, tied=tasks == ("caption", "match"))
    obj = Objective(model, tok, parts, max_tokens=30, prompt="a picture of " if "vqa" in parts else "", queue_size=20)
    losses = obj(obj.prepare(_batches(), torch.device("cpu")), alpha=0.4)
    assert set(losses) == {"loss_itc", "loss_itm", "loss_lm"} | ({"loss_vqa"} if "vqa" in parts else set())
    sum(losses.values()).backward()
    missing = [n for n, p in obj.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing
    assert obj.temp.grad is not None
    assert not any(p.requires_grad for p in obj.momentum_model.parameters())


def test_caption_prompt_is_masked_from_the_loss(tok):
    obj = Objective(_model(tok, ("caption",)), tok, ("lm",), max_tokens=30, prompt="a picture of ")
    assert obj.prompt_len == 4  # [DEC] a picture of, as BLIP's prompt_length
    x = obj.prepare(_batches(), torch.device("cpu"))
    ids = x["dec_ids"]
    assert (ids[:, :4] == torch.tensor(tok.prompt_ids("a picture of "))).all()
    labels = lm_targets(ids, x["dec_mask"], obj.prompt_len)
    assert (labels[:, :4] == -100).all() and (labels[:, 4] == ids[:, 4]).all()
    # the loss ignores what the model predicts for the prompt words
    model = obj.model
    embeds = model.encode_image(x["pixels"])
    logits = model.caption_logits(embeds, ids, x["dec_mask"])
    tampered = logits.clone()
    tampered[:, :3] = torch.randn_like(tampered[:, :3]) * 10  # predictions of "a", "picture", "of"
    from training.losses import lm_loss

    assert torch.allclose(lm_loss(logits, ids, x["dec_mask"], 4), lm_loss(tampered, ids, x["dec_mask"], 4))
    assert not torch.allclose(lm_loss(logits, ids, x["dec_mask"], 0), lm_loss(tampered, ids, x["dec_mask"], 0))


def test_queue_gets_the_momentum_features_of_the_batch(tok):
    obj = Objective(_model(tok, ("caption", "match"), tied=True), tok, ("itc_itm", "lm"), max_tokens=30, queue_size=20)
    b = _batches()
    obj(obj.prepare(b, torch.device("cpu")))
    assert int(obj.queue.ptr) == 8 and obj.queue.ids[:8].tolist() == b["captions"]["image_ids"].tolist()
    assert torch.allclose(obj.queue.image[:8].norm(dim=1), torch.ones(8))


def test_grad_checkpointing_gives_the_same_loss_and_gradients(tok):
    results = []
    for on in (False, True):
        obj = Objective(_model(tok, ("caption", "match"), tied=True), tok, ("itc_itm", "lm"),
                        max_tokens=30, queue_size=20)
        for module in obj.model.modules():
            if hasattr(module, "grad_checkpointing"):
                module.grad_checkpointing = on
        torch.manual_seed(1)
        losses = obj(obj.prepare(_batches(), torch.device("cpu")), alpha=0.4)
        sum(losses.values()).backward()
        results.append((torch.stack(list(losses.values())), obj.model.vision.blocks[0].mlp.fc1.weight.grad.clone(),
                        obj.model.text_encoder.layers[0].mlp.fc1.weight.grad.clone()))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


def test_bf16_autocast_step_is_finite(tok):
    obj = Objective(_model(tok, ("caption", "vqa", "match")), tok, ("itc_itm", "lm", "vqa"),
                    max_tokens=30, queue_size=20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = obj(obj.prepare(_batches(), torch.device("cpu")), alpha=0.4)
    total = sum(losses.values())
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
