"""BLIP-2 in our own torch code against transformers' Blip2 classes on identical (re-initialised)
weights, copied through our key maps; the LAVIS key maps on the same weights under LAVIS names;
and the Q-Former's ITG mask."""

from __future__ import annotations

import pytest
import torch

from blip_core.checkpoints.keymaps_blip2 import (
    BLIP2_IGNORE_RULES,
    hf_blip2_routes,
    lavis_blip2_routes,
    lavis_qv_bias,
    merge_qv_bias,
    merged_qv_keys,
)
from blip_core.checkpoints.sources import TensorSource
from blip_core.model.blip2 import Blip2Model
from blip_core.model.blip2_config import Blip2Config, OptConfig, QFormerConfig, T5Config
from blip_core.model.config import VisionConfig
from blip_core.model.qformer import itg_mask
from tests.helpers import lavis_names, reinit_

transformers = pytest.importorskip("transformers")

TOL = 1e-4
Q = 6
VISION = VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_dim=64, eps=1e-6)
VOCAB = 99


def qformer_cfg(cross_every: int, text_input: bool) -> QFormerConfig:
    return QFormerConfig(width=32, layers=2, heads=4, mlp_dim=64, cross_every=cross_every, num_queries=Q,
                         vision_width=32, text_input=text_input, vocab_size=VOCAB, max_positions=64)


def hf_config(cfg: Blip2Config, text_config=None):
    v, q = cfg.vision, cfg.qformer
    return transformers.Blip2Config(
        vision_config=dict(hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.layers,
                           num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
                           layer_norm_eps=v.eps, qkv_bias=True),
        qformer_config=dict(hidden_size=q.width, num_hidden_layers=q.layers, num_attention_heads=q.heads,
                            intermediate_size=q.mlp_dim, cross_attention_frequency=q.cross_every,
                            encoder_hidden_size=v.width, vocab_size=q.vocab_size,
                            max_position_embeddings=q.max_positions, use_qformer_text_input=q.text_input,
                            layer_norm_eps=q.eps),
        text_config=text_config, num_query_tokens=q.num_queries, image_text_hidden_size=cfg.embed_dim,
        image_token_index=None,
    )


def rename(sd: dict[str, torch.Tensor], routes) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Foreign state dict -> ours through ``routes``; every key is renamed or ignored by a rule."""
    out, ignored = {}, set()
    for key, value in sd.items():
        for foreign, prefix, keymap in routes:
            if key.startswith(foreign) and (name := keymap.to_ours(key[len(foreign):])) is not None:
                assert prefix + name not in out, f"two keys map to {prefix + name}"
                out[prefix + name] = value
                break
        else:
            assert any(rx.search(key) for rx, _ in BLIP2_IGNORE_RULES), f"{key} is neither mapped nor ignored"
            ignored.add(key)
    return out, ignored


def ours_from(cfg: Blip2Config, sd: dict[str, torch.Tensor], routes) -> Blip2Model:
    model = Blip2Model(cfg)
    renamed, _ = rename(sd, routes)
    model.load_state_dict(renamed, strict=True)  # every one of our tensors comes from the source
    return model.eval()


def pixels(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def text_batch(b: int, t: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 2  # a [CLS]-like first token
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, t - 2:] = 0  # a padded row
    ids[mask == 0] = 0
    return ids, mask


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max().item() < TOL, (a - b).abs().max().item()


def spread(x: torch.Tensor) -> float:
    """How much outputs differ between rows: a check that parity is not met by constant outputs."""
    return (x - x[:1]).abs().max().item()


# ------------------------------------------------------------------ ITM model (no LLM)
def itm_pair(cross_every: int):
    cfg = Blip2Config(vision=VISION, qformer=qformer_cfg(cross_every, True), llm=None, embed_dim=16)
    hf = transformers.Blip2ForImageTextRetrieval(hf_config(cfg)).eval()
    hf.config._attn_implementation = "eager"
    for sub in (hf.vision_model, hf.qformer):
        sub.config._attn_implementation = "eager"
    reinit_(hf)
    sd = hf.state_dict()
    return cfg, hf, sd, ours_from(cfg, sd, hf_blip2_routes(cfg))


@pytest.fixture(scope="module", params=[1, 2], ids=["cross_every1", "cross_every2"])
def itm(request):
    return itm_pair(request.param)


def test_itm_model_vision_and_queries_match_transformers(itm):
    cfg, hf, _, ours = itm
    px = pixels(2)
    with torch.no_grad():
        want_img = hf.vision_model(pixel_values=px).last_hidden_state
        img = ours.encode_image(px)
        close(img, want_img)
        want_q = hf.qformer(query_embeds=hf.query_tokens.expand(2, -1, -1), encoder_hidden_states=want_img,
                            encoder_attention_mask=torch.ones(want_img.shape[:2], dtype=torch.long)).last_hidden_state
        got_q = ours.query_features(img)
    close(got_q, want_q)
    assert got_q.shape == (2, Q, 32)
    assert spread(got_q) > 1e-2


def test_itc_matches_transformers(itm):
    cfg, hf, _, ours = itm
    px, (ids, mask) = pixels(2), text_batch(3, 7)
    with torch.no_grad():
        want = hf(pixel_values=px, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
        got = ours.itc(ours.encode_image(px), ids, mask)
    close(got, want.logits_per_image)
    assert got.shape == (2, 3)
    assert spread(got.flatten()[:, None]) > 1e-2


def test_itm_matches_transformers_and_broadcasts_one_image(itm):
    cfg, hf, _, ours = itm
    px, (ids, mask) = pixels(2), text_batch(2, 7)
    with torch.no_grad():
        want = hf(pixel_values=px, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
        img = ours.encode_image(px)
        got = ours.itm_logits(img, ids, mask)
        close(got, want.logits_per_image)
        assert got.shape == (2, 2)
        assert spread(got) > 1e-3
        # one image against both texts, its keys/values shared rather than copied
        one = ours.itm_logits(img[:1], ids, mask)
        each = torch.cat([ours.itm_logits(img[:1], ids[i:i + 1], mask[i:i + 1]) for i in range(2)])
    close(one, each)


# ----------------------------------------------------------------------- LAVIS names
def lavis_state_dict(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LAVIS names of ``hf_sd`` plus what a LAVIS stage-1 file carries besides: the
    temperature, the ITG head, position ids."""
    out = lavis_names(hf_sd)
    out["temp"] = torch.tensor(0.07)
    out["Qformer.bert.embeddings.position_ids"] = torch.arange(64)[None]
    out["Qformer.cls.predictions.bias"] = torch.zeros(VOCAB)
    out["Qformer.cls.predictions.transform.dense.weight"] = torch.zeros(32, 32)
    return out


def test_lavis_names_load_to_the_same_outputs():
    cfg, hf, hf_sd, ours = itm_pair(2)
    lavis = lavis_state_dict(hf_sd)
    assert not any(k.endswith("qkv.bias") for k in lavis)
    source = lavis_qv_bias(TensorSource.from_dict(lavis))
    keys = source.keys()
    assert sum(k.endswith("attn.qkv.bias") for k in keys) == VISION.layers
    assert not any(k.endswith(("q_bias", "v_bias")) for k in keys)
    merged = {k: source.get(k) for k in keys}
    assert torch.equal(merged["visual_encoder.blocks.0.attn.qkv.bias"][32:64], torch.zeros(32))
    from_lavis = Blip2Model(cfg)
    renamed, ignored = rename(merged, lavis_blip2_routes(cfg))
    assert ignored == {"temp", "Qformer.bert.embeddings.position_ids", "Qformer.cls.predictions.bias",
                       "Qformer.cls.predictions.transform.dense.weight"}
    from_lavis.load_state_dict(renamed, strict=True)
    from_lavis.eval()
    px, (ids, mask) = pixels(2), text_batch(2, 7)
    with torch.no_grad():
        img, img_l = ours.encode_image(px), from_lavis.encode_image(px)
        close(img_l, img)
        close(from_lavis.itc(img_l, ids, mask), ours.itc(img, ids, mask))
        close(from_lavis.itm_logits(img_l, ids, mask), ours.itm_logits(img, ids, mask))


def test_merge_qv_bias_helpers():
    q, v = torch.arange(4.0), torch.arange(4.0) + 10
    tensors = {"visual_encoder.blocks.3.attn.q_bias": q, "visual_encoder.blocks.3.attn.v_bias": v,
               "visual_encoder.blocks.4.attn.q_bias": q, "ln_vision.weight": q}
    keys = merged_qv_keys(tensors)
    # the pair fuses; a lone half is left for the loader to report
    assert keys == ["visual_encoder.blocks.3.attn.qkv.bias", "visual_encoder.blocks.4.attn.q_bias", "ln_vision.weight"]
    get = merge_qv_bias(tensors.__getitem__)
    assert torch.equal(get("visual_encoder.blocks.3.attn.qkv.bias"), torch.cat([q, torch.zeros(4), v]))
    assert torch.equal(get("ln_vision.weight"), q)


def test_routes_for_llm_models_name_the_projection_and_skip_tied_aliases():
    for llm, lavis_proj in ((OptConfig(), "opt_proj"), (T5Config(), "t5_proj")):
        cfg = Blip2Config(llm=llm)
        for routes, key in ((hf_blip2_routes(cfg), "language_projection.weight"),
                            (lavis_blip2_routes(cfg), f"{lavis_proj}.bias")):
            renamed, _ = rename({key: torch.zeros(1)}, routes)
            assert list(renamed) == [key.replace(lavis_proj, "language_projection")]
        renamed, ignored = rename({f"{cfg.llm_kind}_model.lm_head.weight": torch.zeros(1)}, lavis_blip2_routes(cfg))
        # OPT's head is tied (ignored); Flan-T5's is its own tensor (loaded)
        assert list(renamed) == ([] if cfg.llm_kind == "opt" else ["language_model.lm_head.weight"])
    tied_t5 = Blip2Config(llm=T5Config(tie_embeddings=True))
    sd = {f"language_model.{k}": torch.zeros(1) for k in
          ("lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "shared.weight")}
    renamed, ignored = rename(sd, hf_blip2_routes(tied_t5))
    assert list(renamed) == ["language_model.shared.weight"] and len(ignored) == 3


# ----------------------------------------------------------------- models with an LLM
def tiny_llm(kind: str):
    if kind == "opt":
        ours = OptConfig(vocab_size=VOCAB, width=16, embed_dim=16, layers=1, heads=2, ffn_dim=32, max_positions=64)
        hf = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=16, word_embed_proj_dim=16, num_hidden_layers=1,
                                    num_attention_heads=2, ffn_dim=32, max_position_embeddings=64,
                                    pad_token_id=1, bos_token_id=2, eos_token_id=50)
        return ours, hf
    ours = T5Config(vocab_size=VOCAB, width=16, kv_dim=8, heads=2, ffn_dim=32, layers=1, decoder_layers=1)
    hf = transformers.T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1,
                               num_decoder_layers=1, feed_forward_proj="gated-gelu", dense_act_fn="gelu",
                               tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return ours, hf


@pytest.mark.parametrize("kind", ["opt", "t5"])
def test_soft_prompt_matches_get_image_features(kind):
    llm, hf_llm = tiny_llm(kind)
    cfg = Blip2Config(vision=VISION, qformer=qformer_cfg(2, False), llm=llm, embed_dim=16)
    hf = transformers.Blip2ForConditionalGeneration(hf_config(cfg, hf_llm.to_dict())).eval()
    for c in (hf.config, hf.vision_model.config, hf.qformer.config, hf.language_model.config):
        c._attn_implementation = "eager"
    reinit_(hf)
    ours = ours_from(cfg, hf.state_dict(), hf_blip2_routes(cfg))
    px = pixels(2)
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=px)
        img = ours.encode_image(px)
        close(img, want.last_hidden_state)
        close(ours.query_features(img), want.qformer_outputs.last_hidden_state)
        got = ours.soft_prompt(img)
    close(got, want.pooler_output)
    assert got.shape == (2, Q, 16)
    assert spread(got) > 1e-2


# ------------------------------------------------------------------------- ITG mask
def test_itg_mask_shape_and_pattern():
    m = itg_mask(2, torch.tensor([[1, 1, 0]]))
    assert m.shape == (1, 1, 5, 5)
    want = torch.tensor([[1, 1, 0, 0, 0],
                         [1, 1, 0, 0, 0],
                         [1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 0]], dtype=torch.bool)  # the padded third text token is never seen
    assert torch.equal(m[0, 0], want)


def test_itg_decoder_queries_never_see_text_and_text_is_causal():
    cfg = Blip2Config(vision=VISION, qformer=qformer_cfg(2, True), llm=None, embed_dim=16)
    torch.manual_seed(0)
    model = Blip2Model(cfg).eval()
    qf = model.qformer
    with torch.no_grad():
        img = model.encode_image(pixels(1))
        ids, _ = text_batch(2, 6)
        mask = torch.ones_like(ids)
        changed = ids.clone()
        changed[:, 3] = (changed[:, 3] + 1) % VOCAB + 3
        Qn = cfg.qformer.num_queries

        def full(x):  # queries + text under the ITG mask, every row
            h = torch.cat([qf.query_tokens.expand(2, -1, -1), qf.embed_text(x)], 1)
            return qf._run(h, Qn, itg_mask(Qn, mask), img)

        a, b = full(ids), full(changed)
        # queries: unchanged by any text token, and equal to the query-only pass (LAVIS's cached K/V)
        close(a[:, :Qn], b[:, :Qn])
        close(a[:, :Qn], qf.queries(img.expand(2, -1, -1)))
        # text rows before the change are unchanged; the changed row and later ones do change
        close(a[:, Qn:Qn + 3], b[:, Qn:Qn + 3])
        assert (a[:, Qn + 3:] - b[:, Qn + 3:]).abs().amax(-1).min() > 1e-3
        # the public decoder pass returns the text rows
        close(qf.decoder(img, ids, mask), a[:, Qn:])
        # under the bidirectional ITM mask the same change does reach the queries and earlier text
        m1, m2 = qf.multimodal(img, ids, mask), qf.multimodal(img, changed, mask)
        assert (m1[:, :Qn + 3] - m2[:, :Qn + 3]).abs().max() > 1e-3
