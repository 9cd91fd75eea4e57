"""Parity with transformers' BLIP on identical seeded weights: our proof of correctness."""

from __future__ import annotations

import re

import pytest
import torch

from blip_core.checkpoints import load_model
from blip_core.generation import DecodingOptions, generate
from blip_core.model.text import DecoderSession
from tests.helpers import random_pixels, save_hf, seeded_hf_model

ATOL = 1e-4


@pytest.fixture(scope="module")
def caption_pair(tmp_path_factory):
    hf = seeded_hf_model("caption", seed=1)
    folder = save_hf(hf, tmp_path_factory.mktemp("cap"))
    ours, tok, report = load_model(folder)
    return hf, ours, tok, report


def _ours_generate(ours, tok, embeds, prompt_ids, **kw):
    kv = ours.text_decoder.cross_kv(embeds)
    opts = DecodingOptions.build(kw.pop("strategy", None), kw.pop("num_beams", 1), **kw)
    hyps = generate(DecoderSession(ours.text_decoder, kv), prompt_ids, opts, eos_id=tok.sep_id)
    return [list(h[0].tokens) for h in hyps]


def _hf_generate(hf, pixels, prompt_ids, **kw):
    """transformers' BlipForConditionalGeneration.generate, fed the prompt as its processor would
    ([CLS] prompt [SEP]: it swaps in [DEC] and drops [SEP] itself); returns new tokens up to [SEP]."""
    ids = torch.cat([torch.full((pixels.shape[0], 1), 101), prompt_ids[:, 1:],
                     torch.full((pixels.shape[0], 1), 102)], 1)
    out = hf.generate(pixel_values=pixels, input_ids=ids, do_sample=False, **kw)
    rows = []
    for row in out[:, prompt_ids.shape[1]:].tolist():
        rows.append(row[: row.index(102) + 1] if 102 in row else row)
    return rows


def test_report_accounts_for_every_key(caption_pair):
    _, ours, _, report = caption_pair
    assert report.format == "hf" and report.tasks == ("caption",)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert report.loaded == len(ours.state_dict())


def test_vision_features_and_teacher_forced_logits(caption_pair):
    hf, ours, tok, _ = caption_pair
    pixels = random_pixels(batch=2, seed=3)
    ids, mask = tok(["a picture of a dog on a beach", "two red circles"], first="dec")
    with torch.no_grad():
        ref_vision = hf.vision_model(pixels).last_hidden_state
        ref_logits = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
        vision = ours.encode_image(pixels)
        logits = ours.caption_logits(vision, ids, mask)
    assert vision.shape == ref_vision.shape
    torch.testing.assert_close(vision, ref_vision, atol=ATOL, rtol=0)
    valid = mask.bool()  # padded positions are not compared: both sides attend differently there
    torch.testing.assert_close(logits[valid], ref_logits[valid], atol=ATOL, rtol=0)
    # the image really steers the output (the test would be vacuous otherwise)
    assert (ref_vision[0] - ref_vision[1]).abs().max() > 0.1


@pytest.mark.parametrize("prompt", ["a picture of ", ""])
@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("eos_boost", [0.0, 6.0])
def test_greedy_and_beam_token_ids(caption_pair, prompt, num_beams, eos_boost):
    """eos_boost raises [SEP]'s bias so sequences finish at different steps (exercises the
    finished-hypothesis bookkeeping of beam search)."""
    hf, ours, tok, _ = caption_pair
    pixels = random_pixels(batch=3, seed=7)
    prompt_ids = torch.tensor([tok.prompt_ids(prompt)] * 3)
    with torch.no_grad():
        hf.text_decoder.cls.predictions.bias[102] += eos_boost
        ours.text_decoder.lm_head.bias[102] += eos_boost
        try:
            ref = _hf_generate(hf, pixels, prompt_ids, max_new_tokens=12, min_new_tokens=2, num_beams=num_beams)
            got = _ours_generate(ours, tok, ours.encode_image(pixels), prompt_ids, num_beams=num_beams,
                                 max_new_tokens=12, min_new_tokens=2)
        finally:
            hf.text_decoder.cls.predictions.bias[102] -= eos_boost
            ours.text_decoder.lm_head.bias[102] -= eos_boost
    assert got == ref
    assert len({tuple(r) for r in ref}) > 1, "different images should get different captions"
    if eos_boost:
        assert any(r[-1] == 102 and len(r) < 12 for r in ref), "the boosted run should end some captions early"


@pytest.mark.parametrize("num_beams", [1, 3])
def test_repetition_penalty(caption_pair, num_beams):
    hf, ours, tok, _ = caption_pair
    pixels = random_pixels(batch=3, seed=7)
    prompt_ids = torch.tensor([tok.prompt_ids("a picture of ")] * 3)
    with torch.no_grad():
        ref = _hf_generate(hf, pixels, prompt_ids, max_new_tokens=10, num_beams=num_beams, repetition_penalty=1.5)
        got = _ours_generate(ours, tok, ours.encode_image(pixels), prompt_ids, num_beams=num_beams,
                             max_new_tokens=10, repetition_penalty=1.5)
        plain = _ours_generate(ours, tok, ours.encode_image(pixels), prompt_ids, num_beams=num_beams, max_new_tokens=10)
    assert got == ref
    assert any(len(set(r)) < len(r) for r in plain), "the unpenalised captions should repeat tokens"
    assert got != plain  # the penalty changed something


@pytest.fixture(scope="module")
def vqa_pair(tmp_path_factory):
    hf = seeded_hf_model("vqa", seed=2)
    folder = save_hf(hf, tmp_path_factory.mktemp("vqa"))
    ours, tok, report = load_model(folder)
    return hf, ours, tok, report


@pytest.mark.parametrize("num_beams", [1, 3])
def test_vqa_question_states_and_answers(vqa_pair, num_beams):
    hf, ours, tok, report = vqa_pair
    assert report.tasks == ("vqa",) and not report.unexpected
    pixels = random_pixels(batch=1, seed=5)
    for question in ["what colour is the circle?", "how many squares are there?"]:
        ids, mask = tok(question, first="enc")
        with torch.no_grad():
            embeds = ours.encode_image(pixels)
            states = ours.encode_question(embeds, ids, mask)
            ref_states = hf.text_encoder(input_ids=ids, attention_mask=mask,
                                         encoder_hidden_states=hf.vision_model(pixels).last_hidden_state).last_hidden_state
            torch.testing.assert_close(states, ref_states, atol=ATOL, rtol=0)
            ref = hf.generate(input_ids=ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=6,
                              num_beams=num_beams, do_sample=False)[0, 1:].tolist()
            ref = ref[: ref.index(102) + 1] if 102 in ref else ref
            kv = ours.answer_decoder.cross_kv(states)
            hyp = generate(DecoderSession(ours.answer_decoder, kv, mask), torch.tensor([[tok.dec_id]]),
                           DecodingOptions.build(None, num_beams, max_new_tokens=6), eos_id=102)[0][0]
        assert list(hyp.tokens) == ref


@pytest.fixture(scope="module")
def match_pair(tmp_path_factory):
    hf = seeded_hf_model("match", seed=3)
    folder = save_hf(hf, tmp_path_factory.mktemp("itm"))
    ours, tok, report = load_model(folder)
    return hf, ours, tok, report


def test_itm_and_itc(match_pair):
    """transformers feeds [CLS] to its ITM head (a known deviation from BLIP's training); we feed
    both the same [ENC] ids so the numbers are comparable."""
    hf, ours, tok, _ = match_pair
    pixels = random_pixels(batch=1, seed=9)
    texts = ["a red circle on the left", "two blue squares", "a picture of a dog"]
    enc_ids, enc_mask = tok(texts, first="enc")
    cls_ids, cls_mask = tok(texts, first="cls")
    px = pixels.expand(len(texts), -1, -1, -1)
    with torch.no_grad():
        ref_itm = hf(input_ids=enc_ids, attention_mask=enc_mask, pixel_values=px, use_itm_head=True).itm_score
        ref_itc = hf(input_ids=cls_ids, attention_mask=cls_mask, pixel_values=pixels, use_itm_head=False).itm_score
        embeds = ours.encode_image(pixels)
        itm = ours.itm_logits(embeds.expand(len(texts), -1, -1), enc_ids, enc_mask)
        shared = ours.itm_logits(embeds, enc_ids, enc_mask, cross_kv=ours.text_encoder.cross_kv(embeds))
        itc = ours.image_features(embeds) @ ours.text_features(cls_ids, cls_mask).T
    torch.testing.assert_close(itm, ref_itm, atol=ATOL, rtol=0)
    torch.testing.assert_close(shared, ref_itm, atol=ATOL, rtol=0)  # keys/values shared across texts
    torch.testing.assert_close(itc, ref_itc, atol=ATOL, rtol=0)
    assert (itm[:, 1] - itm[:, 0]).std() > 0.1  # texts really score differently


# ------------------------------------------------- the original Salesforce .pth layout
HF_TO_SALESFORCE_VISION = [
    (r"vision_model\.embeddings\.class_embedding", "visual_encoder.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", "visual_encoder.pos_embed"),
    (r"vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"visual_encoder.blocks.\1.attn.qkv."),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"visual_encoder.blocks.\1.norm\2."),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    (r"vision_model\.post_layernorm\.", "visual_encoder.norm."),
]


def to_salesforce(hf_state: dict) -> dict:
    """Rename transformers keys to the original BLIP checkpoint's (the inverse of transformers'
    convert_blip_original_pytorch_to_hf.py), written independently of blip_core's key maps."""
    out = {}
    for k, v in hf_state.items():
        for pattern, repl in HF_TO_SALESFORCE_VISION:
            k2 = re.sub("^" + pattern, repl, k)
            if k2 != k:
                k = k2
                break
        out[k] = v.clone()
    return out


def test_salesforce_pth_layout(tmp_path):
    # 64-d heads as in every published BLIP (the .pth records no head count; it is inferred)
    hf = seeded_hf_model("caption", seed=4, width=128, heads=2, text_width=128)
    sd = to_salesforce(hf.state_dict())
    sd["text_decoder.bert.embeddings.position_ids"] = torch.arange(64)[None]
    sd["visual_encoder_m.cls_token"] = torch.zeros(1, 1, 128)  # training state a pretrain file carries
    torch.save({"model": sd, "epoch": 3}, tmp_path / "model_caption.pth")
    ours, tok, report = load_model(tmp_path / "model_caption.pth")
    assert report.format == "salesforce" and report.tasks == ("caption",)
    assert report.ignored["visual_encoder_m.cls_token"].startswith("momentum")
    assert "text_decoder.cls.predictions.decoder.weight" in report.ignored  # tied alias, accounted for
    assert ours.cfg.vision.eps == 1e-6  # the original timm ViT's epsilon
    pixels = random_pixels(batch=2, seed=4)
    prompt_ids = torch.tensor([tok.prompt_ids("a picture of ")] * 2)
    with torch.no_grad():
        ref_vision = hf.vision_model(pixels).last_hidden_state
        vision = ours.encode_image(pixels)
        # same weights, eps 1e-6 vs transformers' 1e-5: features agree closely, tokens exactly
        torch.testing.assert_close(vision, ref_vision, atol=1e-3, rtol=0)
        assert _ours_generate(ours, tok, vision, prompt_ids, max_new_tokens=10) == _hf_generate(
            hf, pixels, prompt_ids, max_new_tokens=10)


@pytest.mark.slow
def test_full_blip_base_size(tmp_path):
    """BLIP-base dimensions (ViT-B/16 at 384 px, BERT-base with 12 heads), seeded weights."""
    import transformers

    torch.manual_seed(0)
    hf = transformers.BlipForConditionalGeneration(
        transformers.BlipConfig(text_config={"num_attention_heads": 12})).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.startswith("vision_model") and p.dim() > 1:
                p.normal_(0, 0.02)
    ours, tok, _ = load_model(save_hf(hf, tmp_path / "base"))
    assert sum(p.numel() for p in ours.parameters()) > 2.2e8
    pixels = random_pixels(batch=1, size=384, seed=1)
    prompt_ids = torch.tensor([tok.prompt_ids("a picture of ")])
    ids, mask = tok(["a picture of a woman sitting on the beach with her dog"], first="dec")
    with torch.no_grad():
        vision = ours.encode_image(pixels)
        torch.testing.assert_close(vision, hf.vision_model(pixels).last_hidden_state, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.caption_logits(vision, ids, mask),
                                   hf(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits,
                                   atol=ATOL, rtol=0)
        for beams in (1, 3):
            assert _ours_generate(ours, tok, vision, prompt_ids, num_beams=beams, max_new_tokens=15) == \
                _hf_generate(hf, pixels, prompt_ids, num_beams=beams, max_new_tokens=15)
