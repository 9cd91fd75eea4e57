"""The training module: a ``BlipModel`` plus the training-only state, returning losses.

``Objective`` is what DDP wraps. It combines any of three parts, each a few lines over the pure
functions in ``training.losses``:

- ``itc_itm``: ITC with momentum distillation and feature queues (learnable temperature) and ITM
  on ``[ENC]`` with hard negatives (pre-training, retrieval fine-tuning);
- ``lm``: captioning language modelling with label smoothing (prompt tokens masked);
- ``vqa``: answer generation from image-grounded question states, weighted answers.

Every active part runs on every step, so every parameter gets a gradient each step and DDP needs
no ``find_unused_parameters`` (BLIP's ITC-only text pass alone would leave cross-attention unused).
"""

from __future__ import annotations

import torch
from torch import nn

from blip_core.model.blip import BlipModel
from blip_core.model.limits import MAX_QUESTION_TOKENS
from blip_core.model.text import TextTransformer
from blip_core.tokenizer import BlipTokenizer

from . import dist
from .losses import itc_loss, itc_targets, itm_loss, lm_loss, sample_hard_negatives, vqa_loss
from .momentum import FeatureQueue, MomentumModel

PARTS = ("itc_itm", "lm", "vqa")
MAX_ANSWER_TOKENS = 10


def tie_text_stacks(encoder: TextTransformer, decoder: TextTransformer) -> None:
    """BLIP pre-training: the decoder shares every parameter of the encoder except its own
    self-attention (embeddings, cross-attention and MLPs are the same modules; the LM head is the
    decoder's, tied to the shared word embeddings). By identity, so it persists through training."""
    decoder.embed = encoder.embed
    for enc_layer, dec_layer in zip(encoder.layers, decoder.layers):
        dec_layer.cross_attn = enc_layer.cross_attn
        dec_layer.mlp = enc_layer.mlp


class Objective(nn.Module):
    def __init__(self, model: BlipModel, tokenizer: BlipTokenizer, parts: tuple[str, ...], *, max_tokens: int,
                 prompt: str = "", temp: float = 0.07, queue_size: int = 57600, momentum: float = 0.995,
                 negatives_all_ranks: bool = False, seed: int = 0):
        super().__init__()
        unknown = set(parts) - set(PARTS)
        if unknown or not parts:
            raise ValueError(f"parts must be a subset of {PARTS}, got {parts}")
        self.model = model
        self.tokenizer = tokenizer
        self.parts = tuple(p for p in PARTS if p in parts)
        self.max_tokens = max_tokens
        self.prompt = prompt
        self.prompt_len = len(tokenizer.prompt_ids(prompt)) if prompt else 0  # [DEC] + prompt pieces
        self.momentum = momentum
        self.negatives_all_ranks = negatives_all_ranks
        if "itc_itm" in self.parts:
            self.temp = nn.Parameter(torch.tensor(float(temp)))
            self.momentum_model = MomentumModel(model)
            self.queue = FeatureQueue(queue_size, model.cfg.embed_dim, seed)

    # ------------------------------------------------------------------ inputs
    def prepare(self, batches: dict[str, dict], device: torch.device) -> dict[str, torch.Tensor]:
        """Tokenise the batch texts -> a flat dict of tensors on ``device``.

        ``batches["captions"]`` (pixels, caption, image_ids) feeds ITC/ITM and LM;
        ``batches["vqa"]`` (pixels, question, answers, weights) feeds VQA.
        """
        tok, out = self.tokenizer, {}
        if "itc_itm" in self.parts or "lm" in self.parts:
            b = batches["captions"]
            # all-rank negatives gather token ids: every rank must pad to the same length
            padding = "max_length" if self.negatives_all_ranks else "longest"
            ids, mask = tok(b["caption"], first="cls", max_length=self.max_tokens, padding=padding)
            out.update(pixels=b["pixels"], ids=ids, mask=mask, image_ids=b["image_ids"])
            if "lm" in self.parts:
                if self.prompt:
                    out["dec_ids"], out["dec_mask"] = tok([self.prompt + c for c in b["caption"]], first="dec",
                                                          max_length=self.max_tokens)
                else:
                    out["dec_ids"], out["dec_mask"] = ids.clone(), mask
                    out["dec_ids"][:, 0] = tok.dec_id
        if "vqa" in self.parts:
            b = batches["vqa"]
            out["vqa_pixels"] = b["pixels"]
            out["q_ids"], out["q_mask"] = tok(b["question"], first="enc", max_length=MAX_QUESTION_TOKENS)
            out["a_ids"], out["a_mask"] = tok([a for ans in b["answers"] for a in ans], first="dec",
                                              max_length=MAX_ANSWER_TOKENS)
            out["a_counts"] = torch.tensor([len(ans) for ans in b["answers"]])
            out["a_weights"] = torch.tensor([w for ws in b["weights"] for w in ws])
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}

    # ----------------------------------------------------------------- forward
    def forward(self, x: dict[str, torch.Tensor], alpha: float = 0.0) -> dict[str, torch.Tensor]:
        """-> {"loss_itc", "loss_itm", "loss_lm", "loss_vqa"} (those of the active parts)."""
        losses = {}
        if "pixels" in x:
            embeds = self.model.encode_image(x["pixels"])  # one ViT pass for ITC, ITM and LM
            if "itc_itm" in self.parts:
                losses.update(self.itc_itm(embeds, x, alpha))
            if "lm" in self.parts:
                logits = self.model.caption_logits(embeds, x["dec_ids"], x["dec_mask"])
                losses["loss_lm"] = lm_loss(logits, x["dec_ids"], x["dec_mask"], self.prompt_len)
        if "vqa" in self.parts:
            losses["loss_vqa"] = self.vqa(x)
        return losses

    def itc_itm(self, embeds: torch.Tensor, x: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """embeds [B, N, Dv] of x["pixels"]; texts x["ids"], x["mask"] [B, T] with [CLS] first."""
        m, ids, mask, image_ids = self.model, x["ids"], x["mask"], x["image_ids"]
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        image_feat = m.image_features(embeds)  # [B, E]
        text_feat = m.text_features(ids, mask)  # [B, E]
        with torch.no_grad():
            self.momentum_model.update(m, self.momentum)
            image_feat_m, text_feat_m, _ = self.momentum_model.features(x["pixels"], ids, mask)
            image_keys = torch.cat([image_feat_m, self.queue.image])  # [B + K, E]
            text_keys = torch.cat([text_feat_m, self.queue.text])
            positives = image_ids[:, None] == torch.cat([image_ids, self.queue.ids])[None, :]  # [B, B + K]
            targets_i2t = itc_targets(image_feat_m @ text_keys.T / self.temp, positives, alpha)
            targets_t2i = itc_targets(text_feat_m @ image_keys.T / self.temp, positives, alpha)
        loss_itc = itc_loss(image_feat @ text_keys.T / self.temp, text_feat @ image_keys.T / self.temp,
                            targets_i2t, targets_t2i)
        # every rank enqueues the momentum features of the whole global batch: queues stay identical
        self.queue.enqueue(dist.all_gather(image_feat_m), dist.all_gather(text_feat_m), dist.all_gather(image_ids))
        enc_ids = ids.clone()
        enc_ids[:, 0] = self.tokenizer.enc_id
        return {"loss_itc": loss_itc, "loss_itm": self.itm(embeds, image_feat, text_feat, enc_ids, mask, image_ids)}

    def itm(self, embeds, image_feat, text_feat, enc_ids, mask, image_ids) -> torch.Tensor:
        """ITM on B positives + B (negative image, text) + B (image, negative text) pairs, the
        negatives drawn ∝ softmax(similarity) among pairs of other images (this rank's or all)."""
        B = embeds.shape[0]
        everywhere = self.negatives_all_ranks and dist.world() > 1
        with torch.no_grad():
            gather = dist.all_gather if everywhere else (lambda t: t)
            image_feat_all, text_feat_all, ids_all = gather(image_feat), gather(text_feat), gather(image_ids)
            same_image = image_ids[:, None] == ids_all[None, :]  # [B, W*B]
            offset = dist.rank() * B if everywhere else 0
            neg_images = sample_hard_negatives(text_feat @ image_feat_all.T / self.temp, same_image, offset)
            neg_texts = sample_hard_negatives(image_feat @ text_feat_all.T / self.temp, same_image, offset)
        if everywhere:  # image features keep their gradient on the rank that made them
            embeds_all = dist.all_gather_with_grad(embeds)
            ids_all_ranks, mask_all = dist.all_gather(enc_ids), dist.all_gather(mask)
        else:
            embeds_all, ids_all_ranks, mask_all = embeds, enc_ids, mask
        images = torch.cat([embeds, embeds_all[neg_images], embeds])
        texts = torch.cat([enc_ids, enc_ids, ids_all_ranks[neg_texts]])
        masks = torch.cat([mask, mask, mask_all[neg_texts]])
        return itm_loss(self.model.itm_logits(images, texts, masks))

    def vqa(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Question states (image-grounded, [ENC]) repeated once per answer; the answer decoder
        reads them through cross-attention."""
        m = self.model
        embeds = m.encode_image(x["vqa_pixels"])
        states = m.encode_question(embeds, x["q_ids"], x["q_mask"])  # [B, Tq, D]
        counts = x["a_counts"]
        logits = m.answer_logits(states.repeat_interleave(counts, 0), x["q_mask"].repeat_interleave(counts, 0),
                                 x["a_ids"], x["a_mask"])
        per_answer = lm_loss(logits, x["a_ids"], x["a_mask"], per_sequence=True)
        return vqa_loss(per_answer, x["a_weights"], n_questions=counts.shape[0])

    # ------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict[str, torch.Tensor]:
        """Everything but the model: temperature, momentum encoders, queues."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("model.")]
        if missing or unexpected:
            raise ValueError(f"training state does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
