"""OPT, BLIP-2's frozen decoder-only LLM, in our own torch code.

Parameter names are exactly those of transformers' ``OPTForCausalLM`` (``model.decoder.layers.{i}.self_attn.q_proj``
...), so a checkpoint loads with an identity key map; the LM head is tied to ``embed_tokens`` and owns no parameter.

BLIP-2 feeds OPT ``[32 soft-prompt embeddings][BOS prompt ...]``: positions run over the whole sequence (learned
position table offset by 2), so the soft prompt takes positions 0-31 and the text continues at 32. ``OptLM.prefix``
runs the soft prompt once and returns its cache; ``OptSession`` decodes after it without ever modifying it, so a
follow-up question on the same image reuses it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blip_core.model.blip2_config import OptConfig
from blip_core.model.text import CachedSession, SelfCache, causal_mask

POSITION_OFFSET = 2  # OPT's learned position table starts at row 2 (a fairseq leftover)


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean attention mask (True = attend) -> additive float mask (0 / dtype min).

    A left-padded query row sees no key at all; with a boolean mask SDPA would give it NaN, and NaN values at
    padded keys poison every later row (0 * NaN). The finite minimum gives such rows a harmless uniform average,
    as transformers' eager attention does."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class OptAttention(nn.Module):
    def __init__(self, cfg: OptConfig):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.width // cfg.heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, h, T, hd]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: SelfCache | None, index: int):
        """x [B, T, W]; mask additive [B|1, 1, T, S] or None; S = cache length + T."""
        B, T, W = x.shape
        # the query is scaled before the product, as in OPT (scale=1.0 below), for bit-closeness
        q = self._split(self.q_proj(x) * self.scaling)
        k, v = self._split(self.k_proj(x)), self._split(self.v_proj(x))
        if cache is not None:
            k, v = cache.append(index, k, v)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.out_proj(ctx.transpose(1, 2).reshape(B, T, W))


class OptLayer(nn.Module):
    """Pre-norm (every OPT but 350m) or post-norm (350m) attention + ReLU FFN."""

    def __init__(self, cfg: OptConfig):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.self_attn = OptAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.width, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.width)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, x, mask, cache, index):
        h = self.self_attn_layer_norm(x) if self.pre_norm else x
        x = x + self.self_attn(h, mask, cache, index)
        if not self.pre_norm:
            x = self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if self.pre_norm else x
        x = x + self.fc2(F.relu(self.fc1(h)))
        return x if self.pre_norm else self.final_layer_norm(x)


class OptDecoder(nn.Module):
    def __init__(self, cfg: OptConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.embed_positions = nn.Embedding(cfg.max_positions + POSITION_OFFSET, cfg.width)
        different = cfg.embed_dim != cfg.width  # OPT-350m: 512-wide embeddings, 1024-wide layers
        self.project_in = nn.Linear(cfg.embed_dim, cfg.width, bias=False) if different else None
        self.project_out = nn.Linear(cfg.width, cfg.embed_dim, bias=False) if different else None
        # post-norm OPT (350m) has no final norm
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.pre_norm else None
        self.layers = nn.ModuleList(OptLayer(cfg) for _ in range(cfg.layers))


class _OptModel(nn.Module):
    """Only here so parameter names start with ``model.decoder.`` like transformers'."""

    def __init__(self, cfg: OptConfig):
        super().__init__()
        self.decoder = OptDecoder(cfg)


class OptLM(nn.Module):
    """OPT causal LM: embeddings [B, T, embed_dim] in, final hidden states out, tied logits on demand."""

    def __init__(self, cfg: OptConfig):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"OPT width {cfg.width} is not a multiple of heads {cfg.heads}")
        self.cfg = cfg
        self.model = _OptModel(cfg)

    @property
    def decoder(self) -> OptDecoder:
        return self.model.decoder

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> word embeddings [B, T, embed_dim] (positions are added in ``forward``)."""
        return self.decoder.embed_tokens(ids)

    def forward(self, embeds: torch.Tensor, cache: SelfCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, T, embed_dim] -> final hidden [B, T, embed_dim] (after the final norm and project_out).

        ``cache`` (grown in place) holds the keys/values of earlier tokens; positions continue after its length.
        ``mask`` [B, cache.length + T] of 1/0 marks real tokens (left padding): positions are then counted over
        real tokens only, ``cumsum(mask) - 1`` as in transformers, and padded keys are hidden."""
        dec = self.decoder
        B, T, _ = embeds.shape
        offset = cache.length if cache is not None else 0
        if offset + T > self.cfg.max_positions:
            raise ValueError(f"OPT sequence of {offset + T} tokens exceeds max_positions {self.cfg.max_positions}")
        if mask is None:
            pos = torch.arange(offset, offset + T, device=embeds.device)[None]
        else:
            if mask.shape != (B, offset + T):
                raise ValueError(f"mask shape {tuple(mask.shape)} != (batch, cached + new) = {(B, offset + T)}")
            mask = mask.long()
            pos = (torch.cumsum(mask, 1) * mask - 1)[:, offset:]  # a pad gets -1 -> table row 1, as in OPT
        x = dec.project_in(embeds) if dec.project_in is not None else embeds
        x = x + dec.embed_positions(pos + POSITION_OFFSET)
        attn = additive_mask(causal_mask(T, offset, mask, embeds.device), x.dtype)
        for i, layer in enumerate(dec.layers):
            x = layer(x, attn, cache, i)
        if dec.final_layer_norm is not None:
            x = dec.final_layer_norm(x)
        return dec.project_out(x) if dec.project_out is not None else x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., embed_dim] -> [..., V] through the tied word embeddings."""
        return F.linear(hidden, self.decoder.embed_tokens.weight)

    def new_cache(self) -> SelfCache:
        return SelfCache(len(self.decoder.layers))

    def prefix(self, embeds: torch.Tensor) -> SelfCache:
        """Run a prefix (BLIP-2's soft prompt, [B, P, embed_dim]) once; its cache, for ``OptSession``."""
        cache = self.new_cache()
        self(embeds, cache)
        return cache


def copy_cache(cache: SelfCache) -> SelfCache:
    """A new SelfCache over the same tensors: appending or selecting rows builds new tensors, so the original is
    never modified."""
    out = SelfCache(len(cache.kv))
    out.kv = list(cache.kv)
    return out


class OptSession(CachedSession):
    """``generation.StepDecoder`` over an OptLM after an optional prefix cache (never modified)."""

    def __init__(self, lm: OptLM, prefix: SelfCache | None = None):
        self.lm = lm
        self.prefix = prefix
        self.cache = lm.new_cache()

    def _run(self, ids: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            h = self.lm(self.lm.embed(ids), self.cache)
            return self.lm.logits(h[:, -1]).float().numpy()

    def start(self, prompt_ids: np.ndarray, group: int) -> np.ndarray:
        """prompt_ids int64 [B, T] (T >= 1: BLIP-2's OPT prompts begin with BOS) -> logits [B * group, V]."""
        ids = torch.as_tensor(np.asarray(prompt_ids, dtype=np.int64))
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"OPT prompt must be [batch, tokens] with at least one token, got {tuple(ids.shape)}")
        B = ids.shape[0]
        self.cache = self.lm.new_cache() if self.prefix is None else copy_cache(self.prefix)
        if self.prefix is not None and self.prefix.length:
            rows = self.prefix.kv[0][0].shape[0]
            if rows == 1 and B > 1:  # one prefix shared by every prompt row
                self.cache.select(torch.zeros(B, dtype=torch.long))
            elif rows != B:
                raise ValueError(f"prefix has {rows} rows, prompt has {B}")
        return self._grouped(self._run(ids), B, group)
