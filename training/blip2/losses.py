"""BLIP-2's losses as pure functions of features, logits and labels (no parameters, no state).

Stage 1 reuses BLIP's pieces where they are the same: ITG is ``training.losses.lm_loss`` (next
token, label smoothing 0.1), ITM is ``itm_loss`` over ``sample_hard_negatives``. What is new here:
ITC between every query output and the text ``[CLS]`` keeping the best query per pair, and the
stage-2 losses of the frozen LLM (OPT's causal LM after the soft prompt, Flan-T5's prefix LM).
Everything is computed in float32.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from training.losses import IGNORE


# ---------------------------------------------------------------------------------- ITC
def query_max_similarity(query_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """query_feats [B_img, Q, E], text_feats [B_txt, E] (both L2-normalised) -> [B_img, B_txt]:
    for each (image, text) pair the cosine of the query that matches the text best."""
    return torch.einsum("iqe,te->itq", query_feats.float(), text_feats.float()).amax(-1)


def itc_max_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, image_feats_all: torch.Tensor,
                 text_feats_all: torch.Tensor, temp: torch.Tensor, offset: int = 0,
                 label_smoothing: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BLIP-2's ITC with in-batch negatives (no queue, no momentum model).

    image_feats [B, Q, E] and text_feats [B, E]: this rank's (with gradient); ``*_all`` the same
    gathered over every rank [W*B, ...] (no gradient: each rank's loss trains its own rows, as
    LAVIS's ``concat_all_gather``); row i's positive is column ``offset + i`` (offset = rank * B).
    Returns (loss, sim_i2t [B, W*B], sim_t2i [B, W*B]), the similarities divided by ``temp``
    (for drawing ITM hard negatives).
    """
    sim_i2t = query_max_similarity(image_feats, text_feats_all) / temp
    sim_t2i = query_max_similarity(image_feats_all, text_feats).T / temp
    targets = offset + torch.arange(image_feats.shape[0], device=image_feats.device)
    loss = (F.cross_entropy(sim_i2t, targets, label_smoothing=label_smoothing)
            + F.cross_entropy(sim_t2i, targets, label_smoothing=label_smoothing)) / 2
    return loss, sim_i2t, sim_t2i


# ------------------------------------------------------------------------------ stage 2
def soft_prompt_labels(ids: torch.Tensor, mask: torch.Tensor, num_queries: int,
                       prompt_len: int | torch.Tensor = 0) -> torch.Tensor:
    """Labels of ``[soft prompt (Q rows); ids]`` for a decoder LLM: -100 on the Q soft-prompt
    positions, on padding and on the first ``prompt_len`` text tokens (BOS + an instruction such as
    "a photo of" or "Question: ... Answer:"; an int or one per row [B]), the token ids elsewhere.

    ids, mask [B, T] -> labels [B, Q + T]."""
    text = ids.masked_fill(mask == 0, IGNORE)
    prompt_len = torch.as_tensor(prompt_len, device=ids.device).reshape(-1, 1)  # [B | 1, 1]
    text = text.masked_fill(torch.arange(ids.shape[1], device=ids.device)[None, :] < prompt_len, IGNORE)
    return torch.cat([torch.full((ids.shape[0], num_queries), IGNORE, dtype=ids.dtype, device=ids.device), text], 1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """OPT's language-modelling loss: position t predicts label t + 1 (transformers' internal
    shift), mean cross-entropy over the labels that are not -100, no label smoothing.

    logits [B, S, V], labels [B, S]."""
    logits = logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def seq2seq_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Flan-T5's loss: decoder position t predicts label t (the decoder input is the labels
    shifted right behind the start id), mean over labels that are not -100.

    logits [B, T, V], labels [B, T]."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


def prefix_split(words: list[str], rng: random.Random) -> tuple[str, str]:
    """The stage-2 prefix-LM split of a caption (LAVIS issue #139: "a split point from position 1
    to the midpoint"), in words: (prefix, suffix), the prefix 1 .. max(1, n // 2) words. A one-word
    caption has no prefix: the word is the target, so there is always one."""
    if len(words) < 2:
        return "", " ".join(words)
    cut = rng.randint(1, max(1, len(words) // 2))
    return " ".join(words[:cut]), " ".join(words[cut:])
