"""The BLIP-2 model: image encoder -> ``ln_vision`` -> Q-Former -> either a language projection
and a frozen LLM (``cfg.llm`` set) or the ITC/ITM heads (``cfg.llm`` None: the ITM model).

The model returns features and logits, never losses. Like ``BlipModel``, every method after
``encode_image`` takes ``image_embeds`` [B, N, Dv] so one encoded image serves many texts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blip_core.model.blip2_config import Blip2Config
from blip_core.model.qformer import QFormer
from blip_core.model.text import bert_init_
from blip_core.model.vision import VisionTransformer


class Blip2Model(nn.Module):
    def __init__(self, cfg: Blip2Config):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTransformer(cfg.vision)  # its final norm is BLIP-2's ln_vision
        self.qformer = QFormer(cfg.qformer)
        width = cfg.qformer.width
        if cfg.llm is not None:
            self.language_projection = nn.Linear(width, cfg.llm_width)
            # imported here: the LLM modules are only needed by models that carry one
            if cfg.llm_kind == "opt":
                from blip_core.model.opt import OptLM

                self.language_model = OptLM(cfg.llm)
            else:
                from blip_core.model.t5 import T5LM

                self.language_model = T5LM(cfg.llm)
        else:
            self.vision_proj = nn.Linear(width, cfg.embed_dim)
            self.text_proj = nn.Linear(width, cfg.embed_dim)
            self.itm_head = nn.Linear(width, 2)  # class 1 = "matches"
        self.init_weights()

    # ----------------------------------------------------------------- init
    def init_weights(self) -> None:
        """BERT/ViT initialisation of everything but the LLM (which keeps its own and is frozen):
        N(0, 0.02) weights, zero biases, unit LayerNorms, query tokens N(0, 0.02)."""
        for name, m in self.named_modules():
            if not name.startswith("language_model"):
                bert_init_(m)
        nn.init.normal_(self.qformer.query_tokens, std=0.02)

    # --------------------------------------------------------------- vision
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] -> image_embeds [B, N, Dv] (after ln_vision)."""
        return self.vision(pixels)

    def query_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds [B, N, Dv] -> Q-Former query outputs [B, Q, W]."""
        return self.qformer.queries(image_embeds)

    def soft_prompt(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds [B, N, Dv] -> the LLM's soft prompt [B, Q, llm_width]."""
        return self.language_projection(self.query_features(image_embeds))

    # ------------------------------------------------------------ contrastive
    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds [B, N, Dv] -> L2-normalised ITC features of every query [B, Q, E]."""
        return F.normalize(self.vision_proj(self.query_features(image_embeds)), dim=-1)

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """ids with ``[CLS]`` first, mask [B, T] -> L2-normalised ITC features [B, E]."""
        h = self.qformer.text(ids, mask)
        return F.normalize(self.text_proj(h[:, 0]), dim=-1)

    def itc(self, image_embeds: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """image_embeds [B_img, N, Dv], ids/mask [B_txt, T] -> similarity [B_img, B_txt]: the best
        cosine over the queries (no temperature)."""
        img = self.image_features(image_embeds)  # [B_img, Q, E]
        txt = self.text_features(ids, mask)  # [B_txt, E]
        return torch.einsum("iqe,te->itq", img, txt).amax(-1)

    # ---------------------------------------------------------------- matching
    def itm_logits(self, image_embeds: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """ids with ``[CLS]`` first, mask [R, T]; image_embeds [B, N, Dv] with R a multiple of B
        (B = 1: one image against every text) -> match logits [R, 2], the mean over the query rows
        of ``itm_head``."""
        h = self.qformer.multimodal(image_embeds, ids, mask)[:, : self.cfg.qformer.num_queries]
        return self.itm_head(h).mean(1)

    # ------------------------------------------------ what the API drives (api_blip2.Blip2)
    # The int8 engine (int8.runtime_blip2.OrtBlip2Model) has the same five methods on numpy arrays.
    def encode_frame(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] -> per-image features: the soft prompt [B, Q, llm_width] of a model
        with an LLM, the image tokens [B, N, Dv] the ITM model's Q-Former reads."""
        image = self.encode_image(pixels)
        return image if self.cfg.llm is None else self.soft_prompt(image)

    def llm_prefix(self, soft: torch.Tensor):
        """OPT: the LLM's keys/values over the soft prompt [1, Q, D], computed once per image."""
        return self.language_model.prefix(soft)

    def encode_prompt(self, soft: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Flan-T5: [soft prompt; prompt ids [1, T]] through the encoder -> states [1, Q + T, D]."""
        lm = self.language_model
        return lm.encode(torch.cat([soft, lm.embed(ids)], dim=1))

    def llm_session(self, state):
        """A step decoder (``generation.StepDecoder``) after the visual prefix: OPT from its
        ``llm_prefix``, Flan-T5 over its ``encode_prompt`` states."""
        if self.cfg.llm_kind == "opt":
            from blip_core.model.opt import OptSession

            return OptSession(self.language_model, state)
        from blip_core.model.t5 import T5Session

        return T5Session(self.language_model, state)
