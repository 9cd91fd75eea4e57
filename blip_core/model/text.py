"""The MED text transformer: one BERT-style stack used in three modes.

========== ================ =============== =========================================
mode        self-attention   cross-attention  used for
========== ================ =============== =========================================
text        bidirectional    skipped          unimodal text encoder (ITC, ``[CLS]``)
multimodal  bidirectional    on               image-grounded encoder (ITM / VQA, ``[ENC]``)
decoder     causal           on               image-grounded decoder (LM, ``[DEC]``)
========== ================ =============== =========================================

BERT is post-norm: every sub-block is ``norm(x + f(x))``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blip_core.model.config import TextConfig

Mode = Literal["text", "multimodal", "decoder"]
KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [B, heads, T, head_dim] each


def bert_init_(module: nn.Module) -> None:
    """BERT/ViT initialisation of one module (apply to every module of a model): N(0, 0.02)
    weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=cfg.pad_id)
        self.positions = nn.Embedding(cfg.max_positions, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """ids: [B, T] -> [B, T, D]; ``offset`` = tokens already in the cache."""
        pos = torch.arange(offset, offset + ids.shape[1], device=ids.device)
        return self.norm(self.tokens(ids) + self.positions(pos))


class TextAttention(nn.Module):
    """BERT attention block (query from the text; keys/values from the text or from an encoder of
    width ``kv_width``) followed by the output projection and the residual norm."""

    def __init__(self, cfg: TextConfig, kv_width: int):
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.width, cfg.width)
        self.key = nn.Linear(kv_width, cfg.width)
        self.value = nn.Linear(kv_width, cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, h, T, hd)

    def project_kv(self, source: torch.Tensor) -> KV:
        """source: [B, N, kv_width] -> keys and values [B, h, N, hd]."""
        return self._split(self.key(source)), self._split(self.value(source))

    def forward(self, x: torch.Tensor, kv: KV, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [R, T, D]; kv: [B, h, N, hd] with R a multiple of B. When R = g*B (beams, or several
        questions per image), the g rows of each image share its keys/values without copying them:
        their queries are folded into the time axis of one attention call."""
        R, T, D = x.shape
        k, v = kv
        B, h, hd = k.shape[0], self.heads, D // self.heads
        q = self._split(self.query(x))
        # exported graphs take the grouped form whatever the example shapes were
        grouped = R != B or torch.onnx.is_in_onnx_export()
        if grouped:
            q = q.reshape(B, -1, h, T, hd).transpose(1, 2).reshape(B, h, -1, hd)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if grouped:
            ctx = ctx.reshape(B, h, -1, T, hd).transpose(1, 2).reshape(-1, h, T, hd)
        ctx = ctx.transpose(1, 2).reshape(-1, T, D)
        return self.norm(x + self.proj(ctx))


class TextMlp(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))


class SelfCache:
    """Self-attention keys/values of the tokens seen so far, one (k, v) per layer, [R, h, T, hd]."""

    def __init__(self, layers: int):
        self.kv: list[KV | None] = [None] * layers

    @property
    def length(self) -> int:
        return 0 if self.kv[0] is None else self.kv[0][0].shape[2]

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> KV:
        if self.kv[i] is not None:
            k = torch.cat([self.kv[i][0], k], dim=2)
            v = torch.cat([self.kv[i][1], v], dim=2)
        self.kv[i] = (k, v)
        return k, v

    def select(self, rows: torch.Tensor) -> None:
        """Keep/reorder/duplicate rows (beam search)."""
        self.kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.kv]


class TextLayer(nn.Module):
    def __init__(self, cfg: TextConfig, cross_width: int | None):
        super().__init__()
        self.self_attn = TextAttention(cfg, cfg.width)
        self.cross_attn = TextAttention(cfg, cross_width) if cross_width else None
        self.mlp = TextMlp(cfg)

    def forward(self, x, self_mask, cross_kv, cross_mask, cache: SelfCache | None, index: int):
        k, v = self.self_attn.project_kv(x)
        if cache is not None:
            k, v = cache.append(index, k, v)
        x = self.self_attn(x, (k, v), self_mask)
        if cross_kv is not None:
            x = self.cross_attn(x, cross_kv, cross_mask)
        return self.mlp(x)


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> tied word embeddings + bias."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.width, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(h))), word_embeddings, self.bias)


def padding_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, N] of 1/0 -> boolean [B, 1, 1, N] (True = attend), or None when nothing is padded."""
    if mask is None or bool(mask.all()):
        return None
    return mask.bool()[:, None, None, :]


def causal_mask(T: int, offset: int, mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """Boolean [B|1, 1, T, offset + T]: query i sees keys <= offset + i (and no padding)."""
    if T == 1 and (mask is None or bool(mask.all())):
        return None  # one new token sees everything before it
    keys = torch.arange(offset + T, device=device)
    causal = keys[None, :] <= (torch.arange(T, device=device)[:, None] + offset)
    causal = causal[None, None]
    pad = padding_mask(mask)
    return causal if pad is None else causal & pad


class TextTransformer(nn.Module):
    """ids [B, T] -> hidden states [B, T, D] in one of the three modes.

    ``cross_width`` is the width of what cross-attention reads (the image for the captioner and the
    question encoder, the question states for the VQA answer decoder); None = no cross-attention.
    ``lm_head`` adds the tied language-modelling head (decoders).
    """

    def __init__(self, cfg: TextConfig, cross_width: int | None, lm_head: bool = False):
        super().__init__()
        self.cfg = cfg
        self.embed = TextEmbeddings(cfg)
        self.layers = nn.ModuleList(TextLayer(cfg, cross_width) for _ in range(cfg.layers))
        self.lm_head = LMHead(cfg) if lm_head else None
        self.grad_checkpointing = False

    def cross_kv(self, states: torch.Tensor) -> list[KV]:
        """Keys/values of every layer's cross-attention over ``states`` [B, N, C]: computed once per
        image (or question) and shared by all decoding steps, beams and follow-up questions."""
        return [layer.cross_attn.project_kv(states) for layer in self.layers]

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        mode: Mode = "text",
        encoder_states: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        cross_kv: list[KV] | None = None,
        cache: SelfCache | None = None,
    ) -> torch.Tensor:
        """ids, mask: [B, T]; encoder_states: [B, N, C] (or precomputed ``cross_kv``);
        ``cache`` makes the call incremental (decoder mode). Returns [B, T, D]."""
        offset = cache.length if cache is not None else 0
        x = self.embed(ids, offset)
        if mode == "decoder":
            self_mask = causal_mask(ids.shape[1], offset, mask, ids.device)
        else:
            self_mask = padding_mask(mask)
        if mode == "text":
            cross_kv, cross_mask = None, None
        else:
            if cross_kv is None:
                if encoder_states is None:
                    raise ValueError(f"mode {mode!r} needs encoder_states or cross_kv")
                cross_kv = self.cross_kv(encoder_states)
            cross_mask = padding_mask(encoder_mask)
        for i, layer in enumerate(self.layers):
            kv = None if cross_kv is None else cross_kv[i]
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, self_mask, kv, cross_mask, None, i, use_reentrant=False
                )
            else:
                x = layer(x, self_mask, kv, cross_mask, cache, i)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> vocabulary logits [..., V]."""
        return self.lm_head(hidden, self.embed.tokens.weight)


class CachedSession:
    """What every torch ``generation.StepDecoder`` shares (the MED decoders, OPT, T5): ``cache``
    holds the self-attention keys/values of every row; a subclass runs new tokens through
    ``_run(ids [R, T]) -> float32 logits [R, V]`` of each row's last position."""

    cache: SelfCache

    def _run(self, ids: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def _grouped(self, logits: np.ndarray, batch: int, group: int) -> np.ndarray:
        """After the prompt: ``group`` rows per input (beams, several sequences) continue the same
        prefix, so its cache rows are copied ``group`` times."""
        if group > 1:
            rows = torch.arange(batch).repeat_interleave(group)
            self.cache.select(rows)
            logits = logits[rows.numpy()]
        return logits

    def step(self, tokens: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """tokens [R] appended to each row (``rows`` [R]: which old row each new one continues)."""
        if rows is not None:
            self.cache.select(torch.as_tensor(rows))
        return self._run(torch.as_tensor(np.asarray(tokens, dtype=np.int64))[:, None])


class DecoderSession(CachedSession):
    """``generation.StepDecoder`` over one of our text decoders, numpy in and out.

    cross_kv: per-layer keys/values [B, h, N, hd] of what the decoder reads (computed once per image
    or question by ``TextTransformer.cross_kv``) and shared by every step and beam; cross_mask:
    [B, N] padding mask or None. Only the self-attention cache grows and is reordered.
    """

    def __init__(self, decoder: TextTransformer, cross_kv: list[KV], cross_mask: torch.Tensor | None = None):
        self.decoder = decoder
        self.cross_kv = cross_kv
        self.cross_mask = cross_mask
        self.cache = SelfCache(len(decoder.layers))

    def _run(self, ids):
        with torch.inference_mode():
            h = self.decoder(torch.as_tensor(ids), mode="decoder", cross_kv=self.cross_kv,
                             encoder_mask=self.cross_mask, cache=self.cache)
            return self.decoder.logits(h[:, -1]).float().numpy()

    def start(self, prompt_ids, group: int):
        return self._grouped(self._run(prompt_ids), len(prompt_ids), group)
