"""Parity of our OPT and T5 (BLIP-2's frozen LLMs) with transformers on identical random weights:
parameter names, logits (full, from embeddings, after a soft prefix, incremental) and generated token ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from blip_core.generation import DecodingOptions, generate
from blip_core.model.blip2_config import OptConfig, T5Config
from blip_core.model.opt import OptLM, OptSession
from blip_core.model.t5 import T5LM, T5Session

transformers = pytest.importorskip("transformers")

TOL = 1e-4
V = 100


def reinit(model: nn.Module, seed: int) -> None:
    """Every parameter redrawn from a fixed generator: transformers' own init (zero biases, unit norms) would let
    a wrong bias or norm go unnoticed. Scales are large enough that logits are well separated (no argmax ties)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias") and p.dim() == 1:
                p.copy_(0.1 * noise)
            elif "embed" in name or name == "shared.weight" or "relative_attention_bias" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise * p.shape[-1] ** -0.5)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err < TOL, err


def ours_generate(session, prompt_ids, num_beams, eos_id, pad_id, max_new=8):
    opts = DecodingOptions.build(None, num_beams, max_new_tokens=max_new)
    return [h[0].tokens for h in generate(session, prompt_ids, opts, eos_id=eos_id, pad_id=pad_id)]


def until_eos(row, eos_id: int) -> tuple[int, ...]:
    row = [int(t) for t in row]
    return tuple(row[: row.index(eos_id) + 1]) if eos_id in row else tuple(row)


def _check_eos_mattered(ref, free, eos, num_beams):
    """``free``: the output when nothing stops it (eos 99 unused); ``eos`` one of its tokens, so the stopping and
    finished-hypothesis paths really ran: the free output is no longer possible, and greedy stops at its first
    ``eos``."""
    if eos == 99:
        assert ref == free
        return
    assert ref != free
    if num_beams == 1:
        assert ref == free[: free.index(eos) + 1]


# ------------------------------------------------------------------------------------------------- OPT
OPT_VARIANTS = {
    "pre-norm": dict(embed_dim=32, pre_norm=True),  # every OPT BLIP-2 uses
    "350m-like": dict(embed_dim=16, pre_norm=False),  # project_in/out, post-norm, no final norm
}


def opt_pair(variant: str, seed: int = 0, eos_id: int = 7):
    v = OPT_VARIANTS[variant]
    cfg = OptConfig(vocab_size=V, width=32, embed_dim=v["embed_dim"], layers=2, heads=4, ffn_dim=64,
                    max_positions=64, pre_norm=v["pre_norm"], eos_id=eos_id)
    hf_cfg = transformers.OPTConfig(
        vocab_size=V, hidden_size=32, word_embed_proj_dim=v["embed_dim"], num_hidden_layers=2, num_attention_heads=4,
        ffn_dim=64, max_position_embeddings=64, do_layer_norm_before=v["pre_norm"], dropout=0.0,
        attention_dropout=0.0, activation_function="relu", pad_token_id=cfg.pad_id, bos_token_id=cfg.bos_id,
        eos_token_id=eos_id, attn_implementation="eager")
    hf = transformers.OPTForCausalLM(hf_cfg).eval()
    reinit(hf, seed)
    ours = OptLM(cfg).eval()
    ours.load_state_dict({k: hf.state_dict()[k] for k in ours.state_dict()}, strict=True)
    return ours, hf


@pytest.mark.parametrize("variant", list(OPT_VARIANTS))
def test_opt_keys_and_full_logits(variant):
    ours, hf = opt_pair(variant)
    hf_keys = set(hf.state_dict())
    assert set(ours.state_dict()) == hf_keys - {"lm_head.weight"}  # tied to embed_tokens
    assert ("model.decoder.project_in.weight" in hf_keys) == (variant == "350m-like")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: positions count real tokens only
    ids[1, :4] = 1
    with torch.no_grad():
        close(ours.logits(ours(ours.embed(ids))), hf(input_ids=ids).logits)
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours.logits(ours(ours.embed(ids), mask=mask))
        assert torch.isfinite(got).all()
        close(got[mask.bool()], ref[mask.bool()])
        emb = torch.randn(2, 9, ours.cfg.embed_dim, generator=g)
        close(ours.logits(ours(emb)), hf(inputs_embeds=emb).logits)


@pytest.mark.parametrize("variant", list(OPT_VARIANTS))
def test_opt_soft_prefix_full_and_incremental(variant):
    ours, hf = opt_pair(variant, seed=2)
    g = torch.Generator().manual_seed(3)
    soft = torch.randn(1, 6, ours.cfg.embed_dim, generator=g)
    ids = torch.cat([torch.tensor([[ours.cfg.bos_id]]), torch.randint(3, V, (1, 7), generator=g)], 1)
    with torch.no_grad():
        full = torch.cat([soft, ours.embed(ids)], 1)
        ref = hf(inputs_embeds=full).logits
        close(ours.logits(ours(full)), ref)
        # positions continue after the prefix: the prompt alone gives different logits
        assert (ours.logits(ours(ours.embed(ids))) - ref[:, 6:]).abs().max() > 1e-2
        cache = ours.prefix(soft)
        assert cache.length == 6
        close(ours.logits(ours(ours.embed(ids[:, :3]), cache)), ref[:, 6:9])
        for t in range(3, ids.shape[1]):
            close(ours.logits(ours(ours.embed(ids[:, t:t + 1]), cache))[:, 0], ref[:, 6 + t])
        # with a mask over cache + new tokens (all real) the positions are the same
        cache = ours.prefix(soft)
        close(ours.logits(ours(ours.embed(ids), cache, mask=torch.ones(1, 6 + 8))), ref[:, 6:])


def _hf_opt_generate(hf, embeds, num_beams, eos_id, pad_id, max_new=8):
    out = hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                      max_new_tokens=max_new, num_beams=num_beams, do_sample=False, eos_token_id=eos_id,
                      pad_token_id=pad_id, bos_token_id=2)
    return until_eos(out[0], eos_id)  # inputs_embeds only: new tokens only


@pytest.mark.parametrize("variant", list(OPT_VARIANTS))
@pytest.mark.parametrize("num_beams", [1, 3])
def test_opt_generation_matches_transformers(variant, num_beams):
    ours, hf = opt_pair(variant, seed=4)
    g = torch.Generator().manual_seed(5)
    soft = torch.randn(1, 5, ours.cfg.embed_dim, generator=g)
    prompt = np.array([[ours.cfg.bos_id, 11, 42]], dtype=np.int64)
    with torch.no_grad():
        embeds = torch.cat([soft, ours.embed(torch.as_tensor(prompt))], 1)
        prefix = ours.prefix(soft)
        free = _hf_opt_generate(hf, embeds, num_beams, eos_id=99, pad_id=1)
        # one run that never stops, then runs whose end-of-sequence token is one it would say
        assert len(free) == 8
        for eos in (99, *free[:6]):
            ref = _hf_opt_generate(hf, embeds, num_beams, eos_id=eos, pad_id=1)
            got = ours_generate(OptSession(ours, prefix), prompt, num_beams, eos_id=eos, pad_id=1)[0]
            assert got == ref, (eos, got, ref)
            _check_eos_mattered(ref, free, eos, num_beams)


def test_opt_follow_up_reuses_prefix():
    ours, _ = opt_pair("pre-norm", seed=6)
    g = torch.Generator().manual_seed(7)
    soft = torch.randn(1, 5, 32, generator=g)
    prompts = [np.array([[2, 13, 14, 15]]), np.array([[2, 70]])]
    with torch.no_grad():
        prefix = ours.prefix(soft)
        saved = [(k.clone(), v.clone()) for k, v in prefix.kv]
        session = OptSession(ours, prefix)
        for p in prompts + prompts[::-1]:
            fresh = ours.logits(ours(torch.cat([soft, ours.embed(torch.as_tensor(p))], 1)))[:, -1]
            got = session.start(p, group=3)  # beams: rows duplicated
            assert got.shape == (3, V)
            np.testing.assert_allclose(got, fresh.expand(3, V).numpy(), atol=TOL, rtol=0)
            session.step(np.array([5, 6, 7]), np.array([2, 0, 0]))  # grows and reorders its own cache only
            other = OptSession(ours, prefix).start(p, group=1)
            np.testing.assert_allclose(other, fresh.numpy(), atol=TOL, rtol=0)
        assert prefix.length == 5
        for (k, v), (k0, v0) in zip(prefix.kv, saved):
            assert torch.equal(k, k0) and torch.equal(v, v0)


# -------------------------------------------------------------------------------------------------- T5
T5_VARIANTS = {
    "flan-blip2": dict(ff="gated-gelu", act="gelu", gated=True, tie=False),  # BLIP-2 sets exact gelu
    "flan": dict(ff="gated-gelu", act="gelu_new", gated=True, tie=False),
    "t5-original": dict(ff="relu", act="relu", gated=False, tie=True),
}


def t5_pair(variant: str, seed: int = 0, eos_id: int = 1):
    v = T5_VARIANTS[variant]
    # d_kv * heads (24) != width (32); 8 buckets up to distance 20 so the log-spaced buckets are used
    cfg = T5Config(vocab_size=V, width=32, kv_dim=6, heads=4, ffn_dim=64, layers=3, decoder_layers=2, buckets=8,
                   max_distance=20, gated=v["gated"], act=v["act"], tie_embeddings=v["tie"], scale_outputs=v["tie"],
                   eos_id=eos_id)
    hf_cfg = transformers.T5Config(
        vocab_size=V, d_model=32, d_kv=6, num_heads=4, d_ff=64, num_layers=3, num_decoder_layers=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj=v["ff"],
        dropout_rate=0.0, tie_word_embeddings=v["tie"], pad_token_id=0, eos_token_id=eos_id,
        decoder_start_token_id=0, attn_implementation="eager")
    hf_cfg.dense_act_fn = v["act"]  # what BLIP-2 does to Flan-T5's config
    hf = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    # transformers 5.25 always ties lm_head to shared (tie_word_embeddings=False only turns off the output
    # scaling); Flan-T5 checkpoints have their own lm_head, so give HF one to compare with
    assert hf.lm_head.weight is hf.shared.weight
    if not v["tie"]:
        hf.lm_head.weight = nn.Parameter(torch.empty(V, 32))
    assert hf.config.scale_decoder_outputs == v["tie"]
    reinit(hf, seed)
    ours = T5LM(cfg).eval()
    ours.load_state_dict({k: hf.state_dict()[k] for k in ours.state_dict()}, strict=True)
    return ours, hf


def _t5_inputs(seed, batch=2, S=24):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, S, 32, generator=g)
    mask = torch.ones(batch, S, dtype=torch.long)
    if batch > 1:
        mask[1, S - 7:] = 0  # right padding (T5 tokenizer)
    return embeds, mask


@pytest.mark.parametrize("variant", list(T5_VARIANTS))
def test_t5_keys_full_and_incremental(variant):
    ours, hf = t5_pair(variant, seed=8)
    aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if T5_VARIANTS[variant]["tie"]:
        aliases.add("lm_head.weight")
    assert set(ours.state_dict()) == set(hf.state_dict()) - aliases
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in ours.state_dict()
    embeds, mask = _t5_inputs(9)
    g = torch.Generator().manual_seed(10)
    dec = torch.cat([torch.zeros(2, 1, dtype=torch.long), torch.randint(2, V, (2, 15), generator=g)], 1)
    with torch.no_grad():
        out = hf(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=dec)
        states = ours.encode(embeds, mask)
        close(states[mask.bool()], out.encoder_last_hidden_state[mask.bool()])
        full = ours.logits(ours.decode(dec, states, mask))
        close(full, out.logits)
        ids = torch.randint(2, V, (2, 12), generator=g)
        close(ours.encode(ours.embed(ids)), hf.encoder(input_ids=ids).last_hidden_state)
        # incremental decoding over precomputed cross keys/values: same logits step by step
        from blip_core.model.text import SelfCache

        cache, kv = SelfCache(2), ours.cross_kv(states)
        close(ours.logits(ours.decode(dec[:, :2], None, mask, cache, kv)), full[:, :2])
        for t in range(2, dec.shape[1]):
            close(ours.logits(ours.decode(dec[:, t:t + 1], None, mask, cache, kv))[:, 0], full[:, t])


def _hf_t5_generate(hf, embeds, mask, num_beams, eos_id, max_new=8):
    out = hf.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new, num_beams=num_beams,
                      do_sample=False, eos_token_id=eos_id, pad_token_id=0, decoder_start_token_id=0)
    return [until_eos(row[1:], eos_id) for row in out]  # drop the decoder start token


@pytest.mark.parametrize("variant", ["flan-blip2", "t5-original"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_t5_generation_matches_transformers(variant, num_beams):
    ours, hf = t5_pair(variant, seed=11)
    embeds, mask = _t5_inputs(12, S=20)
    with torch.no_grad():
        free = _hf_t5_generate(hf, embeds, mask, num_beams, eos_id=99)
        states = ours.encode(embeds, mask)
        assert len(free[0]) == 8
        for eos in (99, *free[0][:6]):
            ref = _hf_t5_generate(hf, embeds, mask, num_beams, eos_id=eos)
            got = ours_generate(T5Session(ours, states, mask), np.zeros((2, 1), np.int64), num_beams, eos, 0)
            assert got == ref, (eos, got, ref)
            _check_eos_mattered(ref[0], free[0], eos, num_beams)
    assert hf.lm_head.weight is hf.shared.weight or not torch.equal(hf.lm_head.weight, hf.shared.weight)
