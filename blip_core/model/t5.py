"""T5 v1.1 / Flan-T5, BLIP-2's frozen encoder-decoder LLM, in our own torch code.

Parameter names are exactly those of transformers' ``T5ForConditionalGeneration`` (``shared.weight``,
``encoder.block.{i}.layer.0.SelfAttention.q.weight`` ...), minus its aliases of ``shared``
(``encoder.embed_tokens``, ``decoder.embed_tokens``, and ``lm_head`` when tied).

T5 specifics: RMS norms without bias, no attention scaling, a learned relative-position bias (in the first block of
each stack, shared by all its blocks; bidirectional buckets in the encoder, causal in the decoder; none in
cross-attention), pre-norm residual blocks. BLIP-2 feeds the encoder ``[32 soft-prompt embeddings][question </s>]``
and decodes from ``decoder_start_id``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blip_core.model.blip2_config import T5_ACTS, T5Config
from blip_core.model.opt import additive_mask
from blip_core.model.text import KV, CachedSession, SelfCache, causal_mask, padding_mask

ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf (BLIP-2 overrides Flan-T5's gelu_new with this)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
assert set(ACTIVATIONS) == set(T5_ACTS)


def relative_bucket(relative: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int) -> torch.Tensor:
    """relative = key position - query position (any shape, long) -> bucket ids in [0, buckets).

    Half the buckets (per direction when bidirectional) are exact small distances, the rest log-spaced up to
    ``max_distance``, beyond which all distances share the last bucket."""
    out = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        out += (relative > 0).long() * buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)  # the future never appears: only distances into the past
    exact = buckets // 2
    # float32 like transformers, so bucket boundaries agree exactly
    large = exact + (torch.log(relative.float() / exact) / math.log(max_distance / exact)
                     * (buckets - exact)).long()
    large = torch.clamp(large, max=buckets - 1)
    return out + torch.where(relative < exact, relative, large)


class T5LayerNorm(nn.Module):
    """RMS norm: x / rms(x) * weight (no mean, no bias), the statistic in fp32."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps)).to(self.weight.dtype)


class T5Attention(nn.Module):
    def __init__(self, cfg: T5Config, relative_bias: bool, bidirectional: bool):
        super().__init__()
        self.cfg = cfg
        self.heads, self.kv_dim = cfg.heads, cfg.kv_dim
        inner = cfg.heads * cfg.kv_dim
        self.q = nn.Linear(cfg.width, inner, bias=False)
        self.k = nn.Linear(cfg.width, inner, bias=False)
        self.v = nn.Linear(cfg.width, inner, bias=False)
        self.o = nn.Linear(inner, cfg.width, bias=False)
        self.bidirectional = bidirectional
        if relative_bias:
            self.relative_attention_bias = nn.Embedding(cfg.buckets, cfg.heads)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.kv_dim).transpose(1, 2)  # [B, h, T, d_kv]

    def project_kv(self, source: torch.Tensor) -> KV:
        """source [B, N, width] -> keys, values [B, h, N, d_kv]."""
        return self._split(self.k(source)), self._split(self.v(source))

    def position_bias(self, T: int, S: int, offset: int, device) -> torch.Tensor:
        """[1, h, T, S]: the bias of queries at positions offset..offset+T-1 over keys 0..S-1."""
        query = torch.arange(offset, offset + T, device=device)[:, None]
        key = torch.arange(S, device=device)[None, :]
        bucket = relative_bucket(key - query, self.bidirectional, self.cfg.buckets, self.cfg.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1)[None]

    def forward(self, x: torch.Tensor, kv: KV, bias: torch.Tensor | None) -> torch.Tensor:
        """x [R, T, width]; kv [B, h, S, d_kv] with R a multiple of B; bias additive [B|1, h|1, T, S] (position
        bias + mask) or None. When R = g*B (beams), the g consecutive rows of each input share its keys/values
        without copying them: their queries are folded into the time axis (only for a bias that does not depend
        on the query row, i.e. cross-attention's padding mask)."""
        R, T, _ = x.shape
        k, v = kv
        B, h, d = k.shape[0], self.heads, self.kv_dim
        q = self._split(self.q(x))
        if R != B:
            q = q.reshape(B, -1, h, T, d).transpose(1, 2).reshape(B, h, -1, d)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        if R != B:
            ctx = ctx.reshape(B, h, -1, T, d).transpose(1, 2).reshape(R, h, T, d)
        return self.o(ctx.transpose(1, 2).reshape(R, T, -1))


class _SelfAttentionLayer(nn.Module):
    def __init__(self, cfg: T5Config, relative_bias: bool, bidirectional: bool):
        super().__init__()
        self.SelfAttention = T5Attention(cfg, relative_bias, bidirectional)
        self.layer_norm = T5LayerNorm(cfg.width, cfg.eps)

    def forward(self, x, bias, cache: SelfCache | None, index: int):
        h = self.layer_norm(x)
        k, v = self.SelfAttention.project_kv(h)
        if cache is not None:
            k, v = cache.append(index, k, v)
        return x + self.SelfAttention(h, (k, v), bias)


class _CrossAttentionLayer(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.EncDecAttention = T5Attention(cfg, relative_bias=False, bidirectional=True)
        self.layer_norm = T5LayerNorm(cfg.width, cfg.eps)

    def forward(self, x, kv: KV, bias):
        return x + self.EncDecAttention(self.layer_norm(x), kv, bias)


class _Dense(nn.Module):
    """Gated (``wi_0``, ``wi_1``: act(x W0) * x W1) or plain (``wi``) FFN, then ``wo``."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gated = cfg.gated
        self.act = ACTIVATIONS[cfg.act]
        if cfg.gated:
            self.wi_0 = nn.Linear(cfg.width, cfg.ffn_dim, bias=False)
            self.wi_1 = nn.Linear(cfg.width, cfg.ffn_dim, bias=False)
        else:
            self.wi = nn.Linear(cfg.width, cfg.ffn_dim, bias=False)
        self.wo = nn.Linear(cfg.ffn_dim, cfg.width, bias=False)

    def forward(self, x):
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(h)


class _FeedForwardLayer(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.DenseReluDense = _Dense(cfg)
        self.layer_norm = T5LayerNorm(cfg.width, cfg.eps)

    def forward(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    """``layer`` = [self-attention, (cross-attention,) feed-forward], each pre-norm residual."""

    def __init__(self, cfg: T5Config, decoder: bool, relative_bias: bool):
        super().__init__()
        parts: list[nn.Module] = [_SelfAttentionLayer(cfg, relative_bias, bidirectional=not decoder)]
        if decoder:
            parts.append(_CrossAttentionLayer(cfg))
        parts.append(_FeedForwardLayer(cfg))
        self.layer = nn.ModuleList(parts)

    def forward(self, x, bias, cache=None, index=0, cross_kv: KV | None = None, cross_bias=None):
        x = self.layer[0](x, bias, cache, index)
        if cross_kv is not None:
            x = self.layer[1](x, cross_kv, cross_bias)
        return self.layer[-1](x)


class T5Stack(nn.Module):
    def __init__(self, cfg: T5Config, decoder: bool):
        super().__init__()
        n = cfg.decoder_layers if decoder else cfg.layers
        self.block = nn.ModuleList(T5Block(cfg, decoder, relative_bias=i == 0) for i in range(n))
        self.final_layer_norm = T5LayerNorm(cfg.width, cfg.eps)

    def bias(self, T: int, offset: int, mask: torch.Tensor | None, dtype, device) -> torch.Tensor:
        """Position bias of block 0 plus the (causal / padding) mask, [B|1, h, T, offset + T]."""
        bias = self.block[0].layer[0].SelfAttention.position_bias(T, offset + T, offset, device).to(dtype)
        allowed = (causal_mask(T, offset, mask, device) if not self.block[0].layer[0].SelfAttention.bidirectional
                   else padding_mask(mask))
        masked = additive_mask(allowed, dtype)
        return bias if masked is None else bias + masked


class T5LM(nn.Module):
    """T5 encoder-decoder. ``embed`` -> ``encode`` -> ``decode`` -> ``logits``."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        if cfg.act not in ACTIVATIONS:
            raise ValueError(f"T5 act must be one of {', '.join(ACTIVATIONS)}, got {cfg.act!r}")
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.width)
        self.encoder = T5Stack(cfg, decoder=False)
        self.decoder = T5Stack(cfg, decoder=True)
        # Flan-T5 (v1.1) has its own LM head; original T5 ties it and scales the hidden states instead
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.width, cfg.vocab_size, bias=False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> [B, T, width] (T5 has no absolute positions and no embedding scale)."""
        return self.shared(ids)

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, S, width], mask [B, S] of 1/0 -> encoder states [B, S, width]."""
        S = embeds.shape[1]
        bias = self.encoder.bias(S, 0, mask, embeds.dtype, embeds.device)
        x = embeds
        for block in self.encoder.block:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)

    def cross_kv(self, states: torch.Tensor) -> list[KV]:
        """Every decoder block's cross-attention keys/values over ``states`` [B, S, width]: once per encoder
        output, shared by all steps and beams."""
        return [block.layer[1].EncDecAttention.project_kv(states) for block in self.decoder.block]

    def decode(self, ids: torch.Tensor, states: torch.Tensor | None, states_mask: torch.Tensor | None = None,
               cache: SelfCache | None = None, cross_kv: list[KV] | None = None) -> torch.Tensor:
        """ids [B, T] (decoder input: start id then targets) over encoder ``states`` [B, S, width] (or their
        precomputed ``cross_kv``) -> decoder hidden [B, T, width] after the final norm. ``cache`` makes it
        incremental: positions (for the relative bias) continue after its length."""
        if cross_kv is None:
            if states is None:
                raise ValueError("decode needs the encoder states or their cross_kv")
            cross_kv = self.cross_kv(states)
        x = self.embed(ids)
        T = ids.shape[1]
        offset = cache.length if cache is not None else 0
        bias = self.decoder.bias(T, offset, None, x.dtype, x.device)
        cross_bias = additive_mask(padding_mask(states_mask), x.dtype)
        for i, block in enumerate(self.decoder.block):
            x = block(x, bias, cache, i, cross_kv[i], cross_bias)
        return self.decoder.final_layer_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., width] -> [..., V]."""
        if self.lm_head is None:
            scale = self.cfg.width**-0.5 if self.cfg.scale_outputs else 1.0
            return F.linear(hidden * scale, self.shared.weight)
        return self.lm_head(hidden)


class T5Session(CachedSession):
    """``generation.StepDecoder`` over the T5 decoder for one batch of encoder outputs.

    states [B, S, width], states_mask [B, S] or None. The cross-attention keys/values are computed once here and
    shared by every step and beam: the ``group`` rows of input b are rows b*group .. b*group+group-1 (beam search
    only reorders rows within an input), and their queries are folded onto b's keys/values, never copied."""

    def __init__(self, lm: T5LM, states: torch.Tensor, states_mask: torch.Tensor | None = None):
        self.lm = lm
        with torch.inference_mode():
            self.cross_kv = lm.cross_kv(states)
        self.states_mask = states_mask
        self.batch = states.shape[0]
        self.cache = SelfCache(len(lm.decoder.block))

    def _run(self, ids: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            h = self.lm.decode(ids, None, self.states_mask, self.cache, self.cross_kv)
            return self.lm.logits(h[:, -1]).float().numpy()

    def start(self, prompt_ids: np.ndarray, group: int) -> np.ndarray:
        """prompt_ids int64 [B, T], normally [[decoder_start_id]] per row -> logits [B * group, V]."""
        ids = torch.as_tensor(np.asarray(prompt_ids, dtype=np.int64))
        if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] != self.batch:
            raise ValueError(f"T5 prompt must be [{self.batch}, tokens >= 1], got {tuple(ids.shape)}")
        self.cache = SelfCache(len(self.lm.decoder.block))
        return self._grouped(self._run(ids), self.batch, group)
