"""The exportable forward passes of the BLIP-2 int8 engine (``blip_core.int8.convert_blip2``): one
module per graph, each wrapping one block of the fp32 model so a block can be filled, exported and
released on its own.

Layouts (numpy side, ``runtime_blip2``): hidden ``[R, T, D]``; keys and values ``[R, h, P, hd]``
(P may be 0); additive attention bias ``[R|1, h|1, T, P + T]`` (0 = attend, -1e9 = hidden), built
in numpy for OPT's causal mask and in a small graph for T5's relative positions. ``R`` are the
rows of one image (beams), which share its cross keys/values ``[1, h, S, hd]`` by broadcasting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blip_core.model.blip2 import Blip2Model
from blip_core.model.opt import OptLayer
from blip_core.model.t5 import T5LM, T5Attention, T5Block, relative_bucket
from blip_core.model.vision import Block, VisionTransformer


def _heads(x: torch.Tensor, h: int, d: int) -> torch.Tensor:
    """[R, T, h*d] -> [R, h, T, d]."""
    return x.reshape(x.shape[0], x.shape[1], h, d).transpose(1, 2)


def _merge(ctx: torch.Tensor) -> torch.Tensor:
    """[R, h, T, d] -> [R, T, h*d]."""
    return ctx.transpose(1, 2).reshape(ctx.shape[0], ctx.shape[2], -1)


def _attend(q, k, v, bias):
    """q [R, h, T, d] over k, v [R|1, h, S, d] (scale folded into q) + bias -> [R, h, T, d]."""
    return ((q @ k.transpose(2, 3) + bias).softmax(-1)) @ v


# ------------------------------------------------------------------ vision
class VisionEmbedGraph(nn.Module):
    """pixels [B, 3, S, S] -> tokens [B, 1 + N, Dv]: patch convolution, CLS, positions (the model's
    grid: fill resampled them to it), and CLIP's norm before the blocks (the ViT-L variant)."""

    def __init__(self, vision: VisionTransformer):
        super().__init__()
        self.patch_embed, self.cls_token, self.pos_embed = vision.patch_embed, vision.cls_token, vision.pos_embed
        self.norm_pre = vision.norm_pre

    def forward(self, pixels):
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return x if self.norm_pre is None else self.norm_pre(x)


class _Blocks(nn.Module):
    def __init__(self, blocks: list[Block]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class VitBlocksGraph(nn.Module):
    """tokens [B, N, Dv] -> tokens [B, N, Dv] through some ViT blocks, the last graph also through
    ``ln_vision`` (``norm``). The blocks sit under ``vision`` so their node names start with
    ``/vision/`` and ``convert.vit_fp32_matmuls`` keeps their attention output projections fp32."""

    def __init__(self, blocks: list[Block], norm: nn.LayerNorm | None):
        super().__init__()
        self.vision = _Blocks(blocks)
        self.norm = norm

    def forward(self, x):
        for block in self.vision.blocks:
            x = block(x)
        return x if self.norm is None else self.norm(x)


# ------------------------------------------------------------------ Q-Former
class SoftPromptGraph(nn.Module):
    """image_embeds [B, N, Dv] (after ln_vision) -> the LLM's soft prompt [B, Q, D_llm]."""

    def __init__(self, model: Blip2Model):
        super().__init__()
        self.qformer, self.language_projection = model.qformer, model.language_projection

    def forward(self, image_embeds):
        return self.language_projection(self.qformer.queries(image_embeds))


class MatchGraph(nn.Module):
    """The ITM model's Q-Former, all three passes over one copy of the weights: image_embeds
    [1, N, Dv], ids and mask [R, T] -> multimodal query rows [R, Q, W] (ITM), query outputs
    [1, Q, W] (ITC image side), text CLS [R, W] (ITC text side). The heads are numpy."""

    def __init__(self, model: Blip2Model):
        super().__init__()
        self.qformer = model.qformer

    def forward(self, image_embeds, ids, mask):
        Q = self.qformer.cfg.num_queries
        itm = self.qformer.multimodal(image_embeds, ids, mask)[:, :Q]
        return itm, self.qformer.queries(image_embeds), self.qformer.text(ids, mask)[:, 0]


# ------------------------------------------------------------------ OPT
class OptLayerGraph(nn.Module):
    """One OPT decoder layer: x [R, T, D], past k/v [R, h, P, hd], bias [R|1, 1, T, P + T] ->
    x, present k/v [R, h, P + T, hd]. Queries (pre-scaled, as OPT scales them), keys and values
    come from one fused projection: one activation quantisation instead of three."""

    def __init__(self, layer: OptLayer):
        super().__init__()
        a = layer.self_attn
        self.layer, self.h, self.hd = layer, a.heads, a.head_dim
        self.D = a.q_proj.out_features
        qkv = nn.Linear(self.D, 3 * self.D)
        qkv.weight.data = torch.cat([a.q_proj.weight.data * a.scaling, a.k_proj.weight.data, a.v_proj.weight.data])
        qkv.bias.data = torch.cat([a.q_proj.bias.data * a.scaling, a.k_proj.bias.data, a.v_proj.bias.data])
        self.qkv = qkv

    def forward(self, x, past_k, past_v, bias):
        L = self.layer
        h = L.self_attn_layer_norm(x) if L.pre_norm else x
        q, k, v = (_heads(t, self.h, self.hd) for t in self.qkv(h).split(self.D, dim=-1))
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        x = x + L.self_attn.out_proj(_merge(_attend(q, k, v, bias)))
        if not L.pre_norm:
            x = L.self_attn_layer_norm(x)
        h = L.final_layer_norm(x) if L.pre_norm else x
        x = x + L.fc2(F.relu(L.fc1(h)))
        return (x if L.pre_norm else L.final_layer_norm(x)), k, v


class HeadGraph(nn.Module):
    """hidden [R, 1, D] -> logits [R, V]: the LM's final norm (and OPT-350m's project_out) and its
    head. 3-D in: a 2-D input exports as Gemm, which weight-only quantisation skips."""

    def __init__(self, norm: nn.Module | None, head):
        super().__init__()
        self.norm, self.head = norm, head

    def forward(self, hidden):
        x = hidden if self.norm is None else self.norm(hidden)
        return self.head(x).reshape(hidden.shape[0], -1)


class OptHead(nn.Module):
    """OPT's project_out (350m) and tied head, as one module for ``HeadGraph``."""

    def __init__(self, lm):
        super().__init__()
        self.project_out, self.embed_tokens = lm.decoder.project_out, lm.decoder.embed_tokens

    def forward(self, x):
        x = x if self.project_out is None else self.project_out(x)
        return F.linear(x, self.embed_tokens.weight)


# ------------------------------------------------------------------ Flan-T5
class T5BiasGraph(nn.Module):
    """query positions [T], key positions [S] (int64) -> relative-position bias [1, h, T, S] of the
    stack's first block (T5's bucketing, exported from ``t5.relative_bucket``)."""

    def __init__(self, attn: T5Attention):
        super().__init__()
        self.attn = attn

    def forward(self, query, key):
        a = self.attn
        bucket = relative_bucket(key[None, :] - query[:, None], a.bidirectional, a.cfg.buckets, a.cfg.max_distance)
        return a.relative_attention_bias(bucket).permute(2, 0, 1)[None]


class T5EncoderLayerGraph(nn.Module):
    """x [1, S, D], bias [1, h, S, S] -> x; the last layer also applies the final norm."""

    def __init__(self, block: T5Block, norm: nn.Module | None):
        super().__init__()
        self.block, self.norm = block, norm

    def forward(self, x, bias):
        x = self.block(x, bias)
        return x if self.norm is None else self.norm(x)


class T5CrossKVGraph(nn.Module):
    """encoder states [1, S, D] -> one decoder layer's cross keys, values [1, h, S, d_kv]: once
    per encoder output, shared by every step and beam."""

    def __init__(self, block: T5Block):
        super().__init__()
        self.attn = block.layer[1].EncDecAttention

    def forward(self, states):
        return self.attn.project_kv(states)


class T5DecoderLayerGraph(nn.Module):
    """x [R, T, D], past k/v [R, h, P, d_kv], bias [1, h, T, P + T] (relative positions + causal
    mask), cross k/v [1, h, S, d_kv] -> x, present k/v [R, h, P + T, d_kv]. T5 does not scale."""

    def __init__(self, block: T5Block):
        super().__init__()
        self.block = block

    def forward(self, x, past_k, past_v, bias, cross_k, cross_v):
        sa, ca, ff = self.block.layer
        a, c = sa.SelfAttention, ca.EncDecAttention
        h = sa.layer_norm(x)
        k = torch.cat([past_k, _heads(a.k(h), a.heads, a.kv_dim)], dim=2)
        v = torch.cat([past_v, _heads(a.v(h), a.heads, a.kv_dim)], dim=2)
        x = x + a.o(_merge(_attend(_heads(a.q(h), a.heads, a.kv_dim), k, v, bias)))
        h = ca.layer_norm(x)
        x = x + c.o(_merge(_attend(_heads(c.q(h), c.heads, c.kv_dim), cross_k, cross_v, 0.0)))
        return ff(x), k, v


class T5Head(nn.Module):
    """T5's head (own, or tied with its optional output scaling): ``T5LM.logits`` over only the
    tensors it reads (the rest of the LM stays on the meta device while this exports)."""

    def __init__(self, lm: T5LM):
        super().__init__()
        self.cfg, self.shared, self.lm_head = lm.cfg, lm.shared, lm.lm_head

    def forward(self, x):
        return T5LM.logits(self, x)


__all__ = ["HeadGraph", "MatchGraph", "OptHead", "OptLayerGraph", "SoftPromptGraph", "T5BiasGraph", "T5CrossKVGraph",
           "T5DecoderLayerGraph", "T5EncoderLayerGraph", "T5Head", "VisionEmbedGraph", "VitBlocksGraph"]
