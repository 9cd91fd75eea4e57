"""Training-only state of the contrastive objective: momentum encoders and feature queues.

Both are ``nn.Module`` s so they live in the training module's ``state_dict`` (and in every
training checkpoint), but they hold no trainable parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blip_core.model.blip import BlipModel


class MomentumModel(nn.Module):
    """An exponential moving average of the online model's ITC parts (ViT, text encoder and the
    two projections), as BLIP's ``visual_encoder_m`` / ``text_encoder_m`` / ``*_proj_m``.

    It is a ``BlipModel`` with task ``match`` so it has the same ``image_features`` /
    ``text_features`` methods; its parameters pair with the online ones by name.
    """

    def __init__(self, online: BlipModel):
        super().__init__()
        self.model = BlipModel(online.cfg.with_tasks("match"))
        ours = dict(self.model.named_parameters())
        theirs = dict(online.named_parameters(remove_duplicate=False))
        missing = [k for k in ours if k not in theirs]
        if missing:
            raise ValueError(f"the online model lacks the ITC parts {missing[:3]} (needs task 'match')")
        self.names = list(ours)
        self.copy_from(online)
        self.model.requires_grad_(False)
        self.model.eval()

    def _pairs(self, online: BlipModel) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        theirs = dict(online.named_parameters(remove_duplicate=False))
        ours = dict(self.model.named_parameters())
        return [ours[k] for k in self.names], [theirs[k].detach() for k in self.names]

    @torch.no_grad()
    def copy_from(self, online: BlipModel) -> None:
        mine, theirs = self._pairs(online)
        torch._foreach_copy_(mine, theirs)

    @torch.no_grad()
    def update(self, online: BlipModel, momentum: float) -> None:
        """p_m = momentum * p_m + (1 - momentum) * p, for every paired parameter."""
        mine, theirs = self._pairs(online)
        torch._foreach_mul_(mine, momentum)
        torch._foreach_add_(mine, theirs, alpha=1.0 - momentum)

    def train(self, mode: bool = True):
        return super().train(False)  # no dropout to switch, but keep it in eval for clarity

    @torch.no_grad()
    def features(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        """-> (image_feat [B, E], text_feat [B, E]) L2-normalised, and image_embeds [B, N, Dv]."""
        embeds = self.model.encode_image(pixels)
        return self.model.image_features(embeds), self.model.text_features(ids, mask), embeds


class FeatureQueue(nn.Module):
    """Ring buffers of the last ``size`` momentum features (and their image ids).

    ``enqueue`` writes at ``ptr`` and wraps around, so any global batch size works (BLIP asserts
    ``queue_size % batch == 0``, its issue #101). Buffers: image, text [K, E]; ids [K]; ptr [].
    """

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)  # identical on every rank
        self.register_buffer("image", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("text", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))  # -1: no image
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.image.shape[0]

    @torch.no_grad()
    def enqueue(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor) -> None:
        """image, text [G, E] and ids [G]: the all-gathered momentum features of one step."""
        K, G = self.size, image.shape[0]
        ptr = int(self.ptr)
        if G > K:  # only the newest K fit; they land where a one-by-one write would put them
            ptr = (ptr + G - K) % K
            image, text, ids, G = image[-K:], text[-K:], ids[-K:], K
        slots = (ptr + torch.arange(G, device=self.image.device)) % K
        self.image[slots] = image.to(self.image.dtype)
        self.text[slots] = text.to(self.text.dtype)
        self.ids[slots] = ids
        self.ptr.fill_((ptr + G) % K)
