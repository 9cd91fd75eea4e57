"""The exportable forward passes of the int8 engine (``blip_core.int8.convert``), written for few ONNX ops.

A decoding step moves one token through the stack, so its matrix products are small and the
time goes to per-op overhead unless the graph is lean (a step traced from the training modules
had ~1,150 nodes, two thirds of its time outside the matrix products). These modules reuse the
trained weights but lay the computation out for inference:

* the attention scale is folded into the query projection (no Sqrt/Div per layer);
* self-attention projects queries, keys and values with one matrix (one activation
  quantisation instead of three);
* keys are kept transposed, ``[B, h, hd, N]``, so ``q @ k`` needs no Transpose, and a single
  token's ``[R, 1, D]`` is viewed as ``[R, h, 1, hd]`` without one;
* reshapes use constant shapes (no Shape/Gather/Concat chains).

Tensor layouts: cross keys ``[B, h, hd, N]``, cross values ``[B, h, N, hd]``; past keys
``[R, h, hd, P]``, past values ``[R, h, P, hd]``; ``R = g * B`` rows, image-major (beams or
answer candidates of one image are consecutive and share its cross keys/values).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from blip_core.model.blip import BlipModel
from blip_core.model.text import TextAttention, TextTransformer


def _scaled_linear(lin: nn.Linear, scale: float) -> nn.Linear:
    out = nn.Linear(lin.in_features, lin.out_features)
    out.weight.data, out.bias.data = lin.weight.data * scale, lin.bias.data * scale
    return out


class VisionGraph(nn.Module):
    def __init__(self, model: BlipModel):
        super().__init__()
        self.vision = model.vision

    def forward(self, pixels):
        return self.vision(pixels)


class CrossKVGraph(nn.Module):
    """states [B, N, C] -> k0, v0, k1, v1, ...: keys [B, h, hd, N], values [B, h, N, hd]."""

    def __init__(self, stack: TextTransformer):
        super().__init__()
        self.stack = stack

    def forward(self, states):
        return tuple(t for k, v in self.stack.cross_kv(states) for t in (k.transpose(2, 3), v))


def _fused_qkv(attn: TextAttention, scale: float) -> nn.Linear:
    """One projection for queries (pre-scaled), keys and values: x [.., D] -> [.., 3D]."""
    D = attn.query.out_features
    qkv = nn.Linear(D, 3 * D)
    qkv.weight.data = torch.cat([attn.query.weight.data * scale, attn.key.weight.data, attn.value.weight.data])
    qkv.bias.data = torch.cat([attn.query.bias.data * scale, attn.key.bias.data, attn.value.bias.data])
    return qkv


class _Attention(nn.Module):
    """What the lean attention blocks share: sizes, the trained output projection and residual norm."""

    def __init__(self, attn: TextAttention):
        super().__init__()
        self.D = attn.query.out_features
        self.h, self.hd = attn.heads, self.D // attn.heads
        self.scale = 1 / math.sqrt(self.hd)
        self.proj, self.norm = attn.proj, attn.norm

    def out(self, x, ctx):
        """Residual + norm of the projected context; ctx [R, T, D]."""
        return self.norm(x + self.proj(ctx))


class _SelfAttention(_Attention):
    """One new token per row: x [R, 1, D], past keys [R, h, hd, P], values [R, h, P, hd]."""

    def __init__(self, attn: TextAttention):
        super().__init__(attn)
        self.qkv = _fused_qkv(attn, self.scale)

    def forward(self, x, past_k, past_v):
        q, k, v = self.qkv(x).split(self.D, dim=-1)
        k = torch.cat([past_k, k.reshape(-1, self.h, self.hd, 1)], dim=3)
        v = torch.cat([past_v, v.reshape(-1, self.h, 1, self.hd)], dim=2)
        ctx = (q.reshape(-1, self.h, 1, self.hd) @ k).softmax(-1) @ v  # [R, h, 1, hd]
        return self.out(x, ctx.reshape(-1, 1, self.D)), k, v


class _CrossAttention(_Attention):
    """x [R, T, D] with R = g * B rows over cross keys [B, h, hd, N] and values [B, h, N, hd]: the
    g rows of an image become g * T queries of one attention call (no copies of the image's keys).
    ``one_token``: T = 1, so the output shape is a constant."""

    def __init__(self, attn: TextAttention, one_token: bool):
        super().__init__(attn)
        self.query, self.one_token = _scaled_linear(attn.query, self.scale), one_token

    def forward(self, x, k, v):
        q = self.query(x).reshape(k.shape[0], -1, self.h, self.hd).transpose(1, 2)  # [B, h, g*T, hd]
        ctx = ((q @ k).softmax(-1) @ v).transpose(1, 2)  # [B, g*T, h, hd]
        return self.out(x, ctx.reshape((-1, 1, self.D) if self.one_token else x.shape))


class _EncoderSelfAttention(_Attention):
    """Bidirectional: x [R, T, D], bias [R, 1, 1, T] (0 = attend, -1e9 = padding)."""

    def __init__(self, attn: TextAttention):
        super().__init__(attn)
        self.qkv = _fused_qkv(attn, self.scale)

    def forward(self, x, bias):
        q, k, v = self.qkv(x).unflatten(-1, (3 * self.h, self.hd)).split(self.h, dim=2)  # [R, T, h, hd] each
        att = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1) + bias).softmax(-1)
        ctx = (att @ v.transpose(1, 2)).transpose(1, 2)  # [R, T, h, hd]
        return self.out(x, ctx.reshape(x.shape))


class StepGraph(nn.Module):
    """One decoding step: ids [R, 1], position [1], past k/v per layer, cross k/v per layer ->
    logits [R, V], presents (the past grown by one token)."""

    def __init__(self, stack: TextTransformer):
        super().__init__()
        self.stack = stack
        self.self_attn = nn.ModuleList(_SelfAttention(layer.self_attn) for layer in stack.layers)
        self.cross_attn = nn.ModuleList(_CrossAttention(layer.cross_attn, one_token=True) for layer in stack.layers)

    def forward(self, ids, position, *kv):
        L = len(self.stack.layers)
        past, cross = kv[: 2 * L], kv[2 * L:]
        emb = self.stack.embed
        x = emb.norm(emb.tokens(ids) + emb.positions(position))
        presents = []
        for i, layer in enumerate(self.stack.layers):
            x, k, v = self.self_attn[i](x, past[2 * i], past[2 * i + 1])
            presents += [k, v]
            x = self.cross_attn[i](x, cross[2 * i], cross[2 * i + 1])
            x = layer.mlp(x)
        # 3-D into the head: a 2-D input would export as Gemm, which weight-only quantisation skips
        return (self.stack.logits(x).reshape(-1, self.stack.cfg.vocab_size), *presents)


class EncoderGraph(nn.Module):
    """Bidirectional encoder: ids, mask [R, T], use_cross [1] (bool), cross k/v per layer ->
    hidden [R, T, D]. ``use_cross`` False is the unimodal text mode (ITC): the cross-attention
    result is discarded, so one graph (one copy of the weights) serves all modes."""

    def __init__(self, stack: TextTransformer):
        super().__init__()
        self.stack = stack
        self.self_attn = nn.ModuleList(_EncoderSelfAttention(layer.self_attn) for layer in stack.layers)
        self.cross_attn = nn.ModuleList(_CrossAttention(layer.cross_attn, one_token=False) for layer in stack.layers)

    def forward(self, ids, mask, use_cross, *cross):
        x = self.stack.embed(ids)
        bias = (1.0 - mask[:, None, None, :].float()) * -1e9
        for i, layer in enumerate(self.stack.layers):
            x = self.self_attn[i](x, bias)
            x = torch.where(use_cross, self.cross_attn[i](x, cross[2 * i], cross[2 * i + 1]), x)
            x = layer.mlp(x)
        return x


__all__ = ["CrossKVGraph", "EncoderGraph", "StepGraph", "VisionGraph"]
