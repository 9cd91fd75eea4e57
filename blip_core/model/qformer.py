"""BLIP-2's Q-Former: a BERT-style post-norm stack whose first ``Q`` rows are learned queries.

Queries and text share the self-attention; only the queries cross-attend to the image (in the
layers ``cfg.has_cross`` names) and each kind of row has its own FFN (``query_mlp`` / ``mlp``).
Which rows see which is decided by the self-attention mask alone:

=========== ================================ ==================================================
pass         rows                              self-attention
=========== ================================ ==================================================
queries      queries                           queries <-> queries (ITC image side, LLM input)
text         text                              bidirectional text, padding masked (ITC text side)
multimodal   queries + text                    everything <-> everything but padding (ITM)
decoder      queries + text                    queries see queries; text sees all queries and
                                               earlier text (stage-1 ITG, UniLM-style)
=========== ================================ ==================================================

The attention blocks and FFNs are the MED text stack's (``TextAttention``, ``TextMlp``); the
config's ``width``/``heads``/``mlp_dim``/``eps`` are all they read.
"""

from __future__ import annotations

import torch
from torch import nn

from blip_core.model.blip2_config import QFormerConfig
from blip_core.model.text import TextAttention, TextMlp, padding_mask

# BERT's hidden_dropout_prob; LAVIS and transformers drop the embedding output with it in training
EMBED_DROPOUT = 0.1


def itg_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """The multimodal causal mask of stage-1 ITG: boolean [B, 1, Q+T, Q+T] (True = attend).

    text_mask: [B, T] of 1/0. Query rows see every query and no text (so their outputs equal the
    query-only pass, whose keys/values LAVIS caches); text row t sees all queries and text
    0..t, padded text columns excluded."""
    B, T = text_mask.shape
    Q, dev = num_queries, text_mask.device
    text_causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
    top = torch.cat([torch.ones(Q, Q, dtype=torch.bool, device=dev), text_causal.new_zeros(Q, T)], 1)
    bottom = torch.cat([torch.ones(T, Q, dtype=torch.bool, device=dev), text_causal], 1)
    square = torch.cat([top, bottom], 0)  # [Q+T, Q+T]
    keys = torch.cat([torch.ones(B, Q, dtype=torch.bool, device=dev), text_mask.bool()], 1)  # [B, Q+T]
    return square[None, None] & keys[:, None, None, :]


def joint_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor | None:
    """The bidirectional mask over queries + text (ITM): [B, 1, 1, Q+T] boolean, or None when no
    text is padded. text_mask: [B, T] of 1/0."""
    ones = torch.ones(text_mask.shape[0], num_queries, dtype=text_mask.dtype, device=text_mask.device)
    return padding_mask(torch.cat([ones, text_mask], 1))


class QFormerLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig, index: int):
        super().__init__()
        self.self_attn = TextAttention(cfg, cfg.width)
        self.cross_attn = TextAttention(cfg, cfg.vision_width) if cfg.has_cross(index) else None
        self.query_mlp = TextMlp(cfg)
        self.mlp = TextMlp(cfg) if cfg.text_input else None

    def forward(self, x: torch.Tensor, num_queries: int, self_mask: torch.Tensor | None,
                image_embeds: torch.Tensor | None) -> torch.Tensor:
        """x: [R, Q'+T, W], its first ``num_queries`` rows the queries (0 in the text pass);
        image_embeds: [B, N, Dv] with R a multiple of B (rows of one image share its keys/values)."""
        x = self.self_attn(x, self.self_attn.project_kv(x), self_mask)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        out = []
        if num_queries:
            if self.cross_attn is not None:
                queries = self.cross_attn(queries, self.cross_attn.project_kv(image_embeds))
            out.append(self.query_mlp(queries))
        if text.shape[1]:
            if self.mlp is None:
                raise ValueError("this Q-Former has no text path (QFormerConfig.text_input is False)")
            out.append(self.mlp(text))
        return out[0] if len(out) == 1 else torch.cat(out, 1)


class QFormer(nn.Module):
    """Learned queries (and, when ``cfg.text_input``, text) -> hidden states, in one of four passes
    (see the module docstring). ``image_embeds`` are the image encoder's normed tokens [B, N, Dv]."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_queries, cfg.width))
        if cfg.text_input:
            self.tokens = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=cfg.pad_id)
            self.positions = nn.Embedding(cfg.max_positions, cfg.width)
        # one norm over cat(queries, text): BERT's embedding LayerNorm, which the queries pass too
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.dropout = nn.Dropout(EMBED_DROPOUT)
        self.layers = nn.ModuleList(QFormerLayer(cfg, i) for i in range(cfg.layers))
        self.grad_checkpointing = False
        nn.init.normal_(self.query_tokens, std=0.02)

    @property
    def width(self) -> int:
        return self.cfg.width

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> word + position embeddings [B, T, W] (positions start at 0 at the first
        text token, whatever precedes it; not normed)."""
        if not self.cfg.text_input:
            raise ValueError("this Q-Former has no text path (QFormerConfig.text_input is False)")
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.tokens(ids) + self.positions(pos)

    def _run(self, x: torch.Tensor, num_queries: int, self_mask: torch.Tensor | None,
             image_embeds: torch.Tensor | None) -> torch.Tensor:
        x = self.dropout(self.norm(x))
        for layer in self.layers:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, num_queries, self_mask, image_embeds,
                                                      use_reentrant=False)
            else:
                x = layer(x, num_queries, self_mask, image_embeds)
        return x

    def _with_queries(self, rows: int, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.query_tokens.expand(rows, -1, -1), self.embed_text(ids)], 1)

    def queries(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds [B, N, Dv] -> query outputs [B, Q, W] (queries see only queries and the image)."""
        x = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        return self._run(x, self.cfg.num_queries, None, image_embeds)

    def text(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Unimodal text: ids, mask [B, T] -> [B, T, W] (no queries, no image)."""
        return self._run(self.embed_text(ids), 0, padding_mask(mask), None)

    def multimodal(self, image_embeds: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Queries and text attending to each other, queries to the image: ids, mask [R, T],
        image_embeds [B, N, Dv] with R a multiple of B (g consecutive rows per image; B = 1 serves
        every text) -> [R, Q+T, W]."""
        Q = self.cfg.num_queries
        mask = torch.ones_like(ids) if mask is None else mask
        return self._run(self._with_queries(ids.shape[0], ids), Q, joint_mask(Q, mask), image_embeds)

    def decoder(self, image_embeds: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced stage-1 ITG pass under ``itg_mask``: ids, mask [R, T] (``[DEC]`` first),
        image_embeds [B, N, Dv] as in ``multimodal`` -> text hidden states [R, T, W]."""
        Q = self.cfg.num_queries
        mask = torch.ones_like(ids) if mask is None else mask
        h = self._run(self._with_queries(ids.shape[0], ids), Q, itg_mask(Q, mask), image_embeds)
        return h[:, Q:]
