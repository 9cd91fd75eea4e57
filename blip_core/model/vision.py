"""The ViT image encoder (BLIP's timm-derived ViT; parameter names follow timm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blip_core.errors import CheckpointError
from blip_core.model.config import VisionConfig


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=not cfg.clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> [B, (H/p)*(W/p), D]"""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, hd)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, T, D))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, quick_gelu: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = QuickGELU() if quick_gelu else nn.GELU()  # exact (erf) GELU, as BLIP and transformers use
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, quick_gelu=cfg.clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Bicubically resample the patch part of ``pos_embed`` [1, 1 + g*g, D] to a new grid
    (CLS position kept), as BLIP's ``interpolate_pos_embed``. Computed in fp32."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    old_grid = int(round(patch_pos.shape[1] ** 0.5))
    if old_grid == new_grid:
        return pos_embed
    if old_grid * old_grid != patch_pos.shape[1]:
        raise CheckpointError(f"the position embedding holds {patch_pos.shape[1]} patches, not a square grid; "
                              "the checkpoint is damaged or not a BLIP ViT")
    dim = patch_pos.shape[-1]
    grid = patch_pos.float().reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


class VisionTransformer(nn.Module):
    """Images [B, 3, S, S] -> token features [B, 1 + (S/p)^2, D], CLS first, final norm applied
    to every token. Other square sizes work too: position embeddings are resampled on the fly."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.width))
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.clip else None  # CLIP's ln_pre
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.grad_checkpointing = False
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        pos = self.pos_embed
        grid = pixels.shape[-1] // self.cfg.patch_size
        if pos.shape[1] != grid * grid + 1:
            pos = resample_pos_embed(pos, grid)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)
