"""BLIP-2's training modules (what DDP wraps): a ``Blip2Model`` plus the training-only state,
returning losses. Same interface as ``training.objectives.Objective`` (``prepare``, ``forward``,
``extra_state``), so ``training.loop`` runs them unchanged.

- ``Stage1Objective``: ITC (best query per pair, in-batch negatives over every rank, learnable
  temperature) + ITG (multimodal causal mask, ``[DEC]`` first, label smoothing 0.1) + ITM
  (bidirectional mask, hard negatives by ITC similarity, head averaged over the queries).
- ``Stage2Objective``: the query outputs, projected, as a soft prompt of a frozen LLM; OPT's LM loss
  on the text after it, or Flan-T5's prefix LM. With ``prompt`` / ``task="vqa"`` the same loss
  serves instruction-free fine-tuning (the prompt masked out of the labels).

The image encoder is frozen in both stages except its final norm (BLIP-2's ``ln_vision``, which
LAVIS trains); the LLM is frozen and kept in eval mode.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch
from torch import nn

from blip_core.checkpoints.saving import write_model
from blip_core.model.blip2 import Blip2Model
from blip_core.model.text import LMHead
from blip_core.tokenizer import BlipTokenizer, LlmTokenizer
from training import dist
from training.data import pre_question
from training.losses import itm_loss, lm_loss, sample_hard_negatives
from training.objectives import Objective

from .losses import causal_lm_loss, itc_max_loss, prefix_split, seq2seq_loss, soft_prompt_labels


def freeze(module: nn.Module, keep: tuple[str, ...] = ()) -> None:
    """No gradient for ``module``'s parameters but those whose names start with one of ``keep``."""
    for name, p in module.named_parameters():
        p.requires_grad_(name.startswith(keep))


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> right-padded ids and 1/0 mask [B, T_max]."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class Stage1Objective(nn.Module):
    def __init__(self, model: Blip2Model, tokenizer: BlipTokenizer, lm_head: LMHead, *, max_tokens: int,
                 temp: float = 0.07):
        super().__init__()
        if model.cfg.llm is not None or not model.cfg.qformer.text_input:
            raise ValueError("stage 1 needs a Blip2Model without LLM whose Q-Former reads text")
        self.model, self.tokenizer, self.lm_head = model, tokenizer, lm_head
        self.max_tokens = max_tokens
        self.temp = nn.Parameter(torch.tensor(float(temp)))
        freeze(model.vision, keep=("norm.",))

    # the non-model state (temperature, ITG head) travels in training_state.pt like BLIP's
    extra_state = Objective.extra_state
    load_extra_state = Objective.load_extra_state

    def prepare(self, batches: dict[str, dict], device: torch.device) -> dict[str, torch.Tensor]:
        b = batches["captions"]
        # ITM negatives gather token ids from every rank: all ranks must pad to the same length
        padding = "max_length" if dist.world() > 1 else "longest"
        ids, mask = self.tokenizer(b["caption"], first="cls", max_length=self.max_tokens, padding=padding)
        out = dict(pixels=b["pixels"], ids=ids, mask=mask, image_ids=b["image_ids"])
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}

    def forward(self, x: dict[str, torch.Tensor], alpha: float = 0.0) -> dict[str, torch.Tensor]:
        """-> {"loss_itc", "loss_itm", "loss_lm"} (LAVIS sums them unweighted)."""
        m, ids, mask = self.model, x["ids"], x["mask"]
        embeds = m.encode_image(x["pixels"])  # [B, N, Dv]: one ViT pass for the three objectives
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)  # LAVIS does not clamp; a tiny run's temperature can run away
        image_feats = m.image_features(embeds)  # [B, Q, E]
        text_feat = m.text_features(ids, mask)  # [B, E]
        offset = dist.rank() * ids.shape[0]  # this rank's rows in the gathered batch
        loss_itc, sim_i2t, sim_t2i = itc_max_loss(image_feats, text_feat, dist.all_gather(image_feats),
                                                  dist.all_gather(text_feat), self.temp, offset)
        losses = {"loss_itc": loss_itc, "loss_itm": self.itm(embeds, x, sim_i2t.detach(), sim_t2i.detach(), offset)}
        dec_ids = ids.clone()
        dec_ids[:, 0] = self.tokenizer.dec_id  # [DEC] replaces [CLS]
        hidden = m.qformer.decoder(embeds, dec_ids, mask)  # [B, T, W] under the multimodal causal mask
        losses["loss_lm"] = lm_loss(self.lm_head(hidden, m.qformer.tokens.weight), dec_ids, mask)
        return losses

    def itm(self, embeds: torch.Tensor, x: dict[str, torch.Tensor], sim_i2t: torch.Tensor, sim_t2i: torch.Tensor,
            offset: int) -> torch.Tensor:
        """B positives, B (negative image, text), B (image, negative text); each text's negative
        image drawn by ITC similarity among every rank's images of another image id, and likewise."""
        ids, mask, image_ids = x["ids"], x["mask"], x["image_ids"]
        with torch.no_grad():
            same_image = image_ids[:, None] == dist.all_gather(image_ids)[None, :]  # [B, W*B]
            neg_images = sample_hard_negatives(sim_t2i, same_image, offset)
            neg_texts = sample_hard_negatives(sim_i2t, same_image, offset)
        embeds_all = dist.all_gather_with_grad(embeds)  # image rows keep their gradient on their rank
        ids_all, mask_all = dist.all_gather(ids), dist.all_gather(mask)
        images = torch.cat([embeds, embeds_all[neg_images], embeds])
        texts = torch.cat([ids, ids, ids_all[neg_texts]])
        masks = torch.cat([mask, mask, mask_all[neg_texts]])
        return itm_loss(self.model.itm_logits(images, texts, masks))


class Stage2Objective(nn.Module):
    """``tokenizer`` is the Q-Former's (saved with the model, for a later stage-1-style use);
    ``llm_tokenizer`` reads the LLM's text. ``task``: caption (``b["caption"]`` after ``prompt``) or
    vqa (``answer_template`` around the question, the first answer the target)."""

    def __init__(self, model: Blip2Model, tokenizer: BlipTokenizer, llm_tokenizer: LlmTokenizer, *, max_tokens: int,
                 prompt: str = "", task: str = "caption", answer_template: str = "Question: {} Answer:",
                 llm_folder: Path | None = None):
        super().__init__()
        if model.cfg.llm is None:
            raise ValueError("stage 2 needs a Blip2Model with an LLM")
        self.model, self.tokenizer, self.llm_tokenizer = model, tokenizer, llm_tokenizer
        self.max_tokens, self.prompt, self.task, self.answer_template = max_tokens, prompt, task, answer_template
        self.llm_folder = llm_folder
        freeze(model.language_model)
        freeze(model.vision, keep=("norm.",))
        model.language_model.eval()

    extra_state = Objective.extra_state
    load_extra_state = Objective.load_extra_state

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.language_model.eval()  # frozen: no dropout, whatever the loop asks
        return self

    def write_model(self, folder: Path, extra: dict) -> None:
        """Our BLIP-2 folder, with the LLM's tokenizer.json, so ``blip_core.load`` reads it whole."""
        write_model(self.model, folder, self.tokenizer, extra=extra)
        if self.llm_folder is not None and (self.llm_folder / "tokenizer.json").is_file():
            shutil.copyfile(self.llm_folder / "tokenizer.json", folder / "tokenizer.json")

    # ------------------------------------------------------------------ inputs
    def pairs(self, batch: dict) -> list[tuple[str, str]]:
        """(prompt, target) per sample."""
        if self.task == "vqa":
            return [(self.answer_template.format(pre_question(q)), a[0])
                    for q, a in zip(batch["question"], batch["answers"])]
        return [(self.prompt, c) for c in batch["caption"]]

    def prepare(self, batches: dict[str, dict], device: torch.device) -> dict[str, torch.Tensor]:
        b = batches["vqa" if self.task == "vqa" else "captions"]
        pairs = self.pairs(b)
        out = self._prepare_opt(pairs) if self.model.cfg.llm_kind == "opt" else self._prepare_t5(pairs)
        out["pixels"] = b["pixels"]
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}

    def _prepare_opt(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """ids = BOS + prompt + target + EOS (right padded), labels on the target and EOS only."""
        tok, rows, prompt_lens = self.llm_tokenizer, [], []
        for prompt, target in pairs:
            head = tok.prompt_ids(prompt)  # BOS + prompt
            room = max(1, self.max_tokens - len(head) - 1)
            rows.append(head + tok.tokens(f" {target}" if prompt else target)[:room] + [tok.eos_id])
            prompt_lens.append(len(head))
        ids, mask = pad_rows(rows, self.model.cfg.llm.pad_id)
        labels = soft_prompt_labels(ids, mask, self.model.cfg.qformer.num_queries, torch.tensor(prompt_lens))
        return dict(ids=ids, mask=mask, labels=labels)

    def _prepare_t5(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Captions: prefix LM (the caption split at a random word, the prefix after the prompt into
        the encoder, the suffix the target); vqa: the templated question in, the answer out."""
        tok, llm = self.llm_tokenizer, self.model.cfg.llm
        # drawn from torch's generator, which checkpoints carry: a resumed run splits the same way
        rng = random.Random(int(torch.randint(0, 2**62, ())))
        enc, dec = [], []
        for prompt, target in pairs:
            if self.task == "caption":
                prefix, target = prefix_split(target.split(), rng)
                prompt = f"{prompt} {prefix}".strip()
            enc.append(tok.prompt_ids(prompt)[-self.max_tokens:] if prompt else [tok.eos_id])
            dec.append(tok.tokens(target)[: self.max_tokens - 1] + [tok.eos_id])
        enc_ids, enc_mask = pad_rows(enc, llm.pad_id)
        dec_ids, dec_mask = pad_rows(dec, llm.pad_id)
        labels = dec_ids.masked_fill(dec_mask == 0, -100)
        # the decoder reads the targets shifted right behind its start id (T5's _shift_right)
        dec_in = torch.cat([torch.full((len(dec), 1), llm.decoder_start_id), dec_ids[:, :-1]], 1)
        return dict(ids=enc_ids, mask=enc_mask, dec_ids=dec_in, labels=labels)

    # ----------------------------------------------------------------- forward
    def forward(self, x: dict[str, torch.Tensor], alpha: float = 0.0) -> dict[str, torch.Tensor]:
        """-> {"loss_lm"}: the frozen LLM's loss on the text after the soft visual prompt."""
        m = self.model
        lm = m.language_model
        soft = m.soft_prompt(m.encode_image(x["pixels"]))  # [B, Q, D_llm]
        ones = torch.ones(soft.shape[:2], dtype=x["mask"].dtype, device=soft.device)
        embeds = torch.cat([soft, lm.embed(x["ids"]).to(soft.dtype)], 1)
        full_mask = torch.cat([ones, x["mask"]], 1)
        if m.cfg.llm_kind == "opt":
            return {"loss_lm": causal_lm_loss(lm.logits(lm(embeds, mask=full_mask)), x["labels"])}
        states = lm.encode(embeds, full_mask)
        return {"loss_lm": seq2seq_loss(lm.logits(lm.decode(x["dec_ids"], states, full_mask)), x["labels"])}
