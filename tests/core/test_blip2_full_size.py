"""BLIP-2 at full size (``make test-slow``): EVA ViT-g/14 (1408 x 39, 224 px), the BERT-base
Q-Former with 32 queries, and an LLM of OPT-2.7B's widths (2560, 32 heads, vocab 50304; two of its
32 layers, so that transformers' model and ours fit in memory side by side), and the
``blip2-itm-vit-g`` retrieval model: seeded random weights saved by transformers, loaded by
``blip_core.load``, compared in fp32."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from PIL import Image

import blip_core
from blip_core.preprocess import pixel_array
from tests.helpers import reinit_, save_blip2_hf

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def _image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((240, 320, 3)) * 255).astype(np.uint8))


def test_full_size_opt_model_matches_transformers(tmp_path):
    text = transformers.OPTConfig(vocab_size=50304, hidden_size=2560, num_hidden_layers=2, ffn_dim=10240,
                                  num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=2560,
                                  pad_token_id=1, bos_token_id=2, eos_token_id=50118)
    cfg = transformers.Blip2Config(text_config=text.to_dict(), num_query_tokens=32, image_token_index=50265)
    hf = transformers.Blip2ForConditionalGeneration(cfg).eval()
    reinit_(hf, seed=0, std=0.02)  # the published init scale (transformers' own puts the ViT at 1e-10)
    folder = save_blip2_hf(hf, tmp_path / "opt", "opt")
    ours = blip_core.load(folder, warmup=False)
    assert ours.cfg.vision.layers == 39 and ours.cfg.qformer.num_queries == 32 and ours.cfg.llm.width == 2560
    image = _image(1)
    pixels = torch.from_numpy(pixel_array(image, 224))
    prompt = ours.tokenizer.prompt_ids("a photo of")
    with torch.no_grad():
        soft = ours.model.encode_frame(pixels)
        ref = hf.get_image_features(pixel_values=pixels).pooler_output  # the projected query outputs
        ids = torch.tensor([[50265] * 32 + prompt])
        logits = hf(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 32:]
        lm = ours.model.language_model
        mine = lm.logits(lm(torch.cat([soft, lm.embed(torch.tensor([prompt]))], 1)))[0, 32:]
    torch.testing.assert_close(soft, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(mine, logits, atol=1e-4, rtol=0)
    for beams in (1, 3):
        out = hf.generate(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          num_beams=beams, max_new_tokens=10, min_new_tokens=10)[0, ids.shape[1]:].tolist()
        assert list(ours.caption(image, prompt="a photo of", max_new_tokens=10, min_new_tokens=10,
                                 num_beams=beams).token_ids) == out
    del hf, ours
    gc.collect()


def test_full_size_itm_model_matches_transformers(tmp_path):
    cfg = transformers.Blip2Config(qformer_config={"use_qformer_text_input": True, "vocab_size": 30523},
                                   num_query_tokens=32)
    hf = transformers.Blip2ForImageTextRetrieval(cfg).eval()
    reinit_(hf, seed=1, std=0.02)
    folder = save_blip2_hf(hf, tmp_path / "itm", "itm")
    ours = blip_core.load(folder, warmup=False)
    texts = ["a woman and her dog sitting on a beach", "a red bus in the snow"]
    image = _image(2)
    res = ours.match(image, texts)
    ids, mask = ours.tokenizer(texts, first="cls", max_length=35)
    pixels = torch.from_numpy(pixel_array(image, 224))
    with torch.no_grad():
        itm = hf(pixel_values=pixels.expand(2, -1, -1, -1), input_ids=ids, attention_mask=mask,
                 use_image_text_matching_head=True).logits_per_image.softmax(-1)[:, 1]
        itc = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                 use_image_text_matching_head=False).logits_per_image[0]
    np.testing.assert_allclose([r.itm for r in res], itm.numpy(), atol=1e-4)
    np.testing.assert_allclose([r.itc for r in res], itc.numpy(), atol=1e-4)
