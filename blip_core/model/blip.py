"""BLIP task models built from the vision encoder, the MED text stacks and small heads.

The model returns features and logits, never losses (those are pure functions in ``training``).
Which parts exist is decided by ``BlipConfig.tasks``; see ``BlipConfig``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blip_core.model.config import BlipConfig
from blip_core.model.text import KV, DecoderSession, TextTransformer, bert_init_
from blip_core.model.vision import VisionTransformer


class BlipModel(nn.Module):
    """Image features come from ``encode_image``; every other method takes them as
    ``image_embeds`` [B, N, Dv] so one encoded image serves many texts, questions and captions."""

    def __init__(self, cfg: BlipConfig):
        super().__init__()
        self.cfg = cfg
        vw, tw = cfg.vision.width, cfg.text.width
        self.vision = VisionTransformer(cfg.vision)
        if cfg.has_text_encoder:
            self.text_encoder = TextTransformer(cfg.text, cross_width=vw)
        if "caption" in cfg.tasks:
            self.text_decoder = TextTransformer(cfg.text, cross_width=vw, lm_head=True)
        if "vqa" in cfg.tasks:
            self.answer_decoder = TextTransformer(cfg.text, cross_width=tw, lm_head=True)
        if "match" in cfg.tasks:
            self.vision_proj = nn.Linear(vw, cfg.embed_dim)
            self.text_proj = nn.Linear(tw, cfg.embed_dim)
            self.itm_head = nn.Linear(tw, 2)  # class 1 = "matches"
        self.init_weights()

    # ----------------------------------------------------------------- init
    def init_weights(self) -> None:
        """BERT/ViT initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms."""
        for m in self.modules():
            bert_init_(m)

    # --------------------------------------------------------------- vision
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] -> image_embeds [B, 1 + N, Dv]."""
        return self.vision(pixels)

    def cross_kv(self, part: str, states: torch.Tensor) -> list[KV]:
        """Cross-attention keys/values of text stack ``part`` over ``states`` [B, N, C]."""
        return getattr(self, part).cross_kv(states)

    def decoder_session(self, part: str, cross_kv: list[KV], cross_mask: torch.Tensor | None = None) -> DecoderSession:
        """A step-wise decoder over ``text_decoder`` (captions) or ``answer_decoder`` (VQA)."""
        return DecoderSession(getattr(self, part), cross_kv, cross_mask)

    # ------------------------------------------------------------ contrastive
    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """-> L2-normalised ITC features [B, E] from the CLS token."""
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids with ``[CLS]`` first [B, T] -> L2-normalised ITC features [B, E]."""
        h = self.text_encoder(ids, mask, mode="text")
        return F.normalize(self.text_proj(h[:, 0]), dim=-1)

    # ---------------------------------------------------------------- matching
    def itm_logits(self, image_embeds, ids, mask, cross_kv: list[KV] | None = None) -> torch.Tensor:
        """ids with ``[ENC]`` first [B, T] -> match logits [B, 2]. ``cross_kv`` (from one image,
        batch 1) lets many texts share one image's keys/values."""
        h = self.text_encoder(ids, mask, mode="multimodal", encoder_states=image_embeds, cross_kv=cross_kv)
        return self.itm_head(h[:, 0])

    # --------------------------------------------------------------- captioning
    def caption_logits(self, image_embeds, ids, mask) -> torch.Tensor:
        """Teacher-forced: ids with ``[DEC]`` first [B, T] -> logits [B, T, V] (position t predicts t+1)."""
        h = self.text_decoder(ids, mask, mode="decoder", encoder_states=image_embeds)
        return self.text_decoder.logits(h)

    # --------------------------------------------------------------------- VQA
    def encode_question(self, image_embeds, ids, mask, cross_kv: list[KV] | None = None) -> torch.Tensor:
        """ids with ``[ENC]`` first [B, T] -> question states [B, T, Dt] grounded in the image."""
        return self.text_encoder(ids, mask, mode="multimodal", encoder_states=image_embeds, cross_kv=cross_kv)

    def answer_logits(self, question_states, question_mask, ids, mask) -> torch.Tensor:
        """Teacher-forced answers: ids with ``[DEC]`` first [B, T] -> logits [B, T, V]."""
        h = self.answer_decoder(ids, mask, mode="decoder", encoder_states=question_states, encoder_mask=question_mask)
        return self.answer_decoder.logits(h)
