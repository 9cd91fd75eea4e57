"""BLIP's losses as pure functions of features and logits (no parameters, no state).

The model returns features/logits (``blip_core.model.blip.BlipModel``); temperature, momentum
encoders and queues live in ``training.objectives`` / ``training.momentum`` and are passed in.
Everything is computed in float32, whatever the autocast dtype of the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


# ---------------------------------------------------------------------------------- ITC
def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [B, K], targets [B, K] (rows sum to 1) -> mean over rows of -sum t * log softmax."""
    return -(F.log_softmax(logits.float(), dim=1) * targets).sum(1).mean()


def itc_targets(sim_m: torch.Tensor, positives: torch.Tensor, alpha: float) -> torch.Tensor:
    """Momentum-distilled targets: ``alpha * softmax(sim_m) + (1 - alpha) * positives``
    (positives normalised per row: several when the same image id appears more than once).

    sim_m: [B, K] momentum-model logits (already divided by the temperature);
    positives: [B, K] bool. Returns [B, K], rows summing to 1.
    """
    pos = positives.float()
    hard = pos / pos.sum(1, keepdim=True).clamp(min=1)
    return alpha * F.softmax(sim_m.float(), dim=1) + (1 - alpha) * hard


def itc_loss(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, targets_i2t: torch.Tensor,
             targets_t2i: torch.Tensor) -> torch.Tensor:
    """Image-text contrastive loss: mean of the image->text and text->image soft cross-entropies.

    sim_i2t: [B, K] = image_feat @ [text keys].T / temp (keys: momentum features of the batch
    then the queue); sim_t2i likewise; targets from ``itc_targets``.
    """
    return (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i)) / 2


# ---------------------------------------------------------------------------------- ITM
@torch.no_grad()
def sample_hard_negatives(sim: torch.Tensor, exclude: torch.Tensor, offset: int = 0,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """One negative per row, drawn with probability proportional to ``softmax(sim) + 1e-4``
    (BLIP), never an excluded column and never the row's own pair.

    sim: [B, M] similarities of B queries to M candidates; row i's own pair is column
    ``offset + i`` (offset = rank * B when the candidates come from every rank);
    exclude: [B, M] bool, True for candidates that must not be drawn (same image id).
    Returns [B] column indices. Vectorised: one ``torch.multinomial`` call for the batch.

    A row with nothing left (every candidate shows the same image) draws uniformly among all
    columns but its own pair, so a degenerate batch never stops a run.
    """
    B, M = sim.shape
    own = torch.zeros(B, M, dtype=torch.bool, device=sim.device)
    own[torch.arange(B, device=sim.device), offset + torch.arange(B, device=sim.device)] = True
    weights = F.softmax(sim.float(), dim=1) + 1e-4
    weights = weights.masked_fill(exclude | own, 0.0)
    dead = weights.sum(1, keepdim=True) == 0
    weights = torch.where(dead, (~own).float(), weights)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itm_labels(batch: int, device=None) -> torch.Tensor:
    """[3B]: B positives (class 1 = match) then 2B negatives (class 0), BLIP's order."""
    return torch.cat([torch.ones(batch, dtype=torch.long, device=device),
                      torch.zeros(2 * batch, dtype=torch.long, device=device)])


def itm_loss(logits: torch.Tensor) -> torch.Tensor:
    """logits [3B, 2] for (positives, negative images, negative texts) -> cross-entropy."""
    return F.cross_entropy(logits.float(), itm_labels(logits.shape[0] // 3, logits.device))


# ----------------------------------------------------------------------------------- LM
def lm_targets(ids: torch.Tensor, mask: torch.Tensor, prompt_len: int = 0) -> torch.Tensor:
    """ids, mask [B, T] -> labels [B, T]: padding and the first ``prompt_len`` tokens (``[DEC]``
    + prompt, BLIP's ``prompt_length``) set to -100."""
    labels = ids.masked_fill(mask == 0, IGNORE)
    if prompt_len:
        labels[:, :prompt_len] = IGNORE
    return labels


def lm_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, prompt_len: int = 0,
            label_smoothing: float = 0.1, per_sequence: bool = False) -> torch.Tensor:
    """Next-token cross-entropy with label smoothing (BLIP hard-codes 0.1).

    logits [B, T, V] from the teacher-forced decoder (position t predicts token t + 1); ids and
    mask [B, T] the decoder input (``[DEC]`` first). Returns the mean over predicted tokens, or
    with ``per_sequence`` the sum over each sequence's tokens [B] (BLIP's ``reduction='none'``).
    """
    labels = lm_targets(ids, mask, prompt_len)[:, 1:]
    logits = logits[:, :-1].float()
    B, T, V = logits.shape
    loss = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE,
                           label_smoothing=label_smoothing, reduction="none" if per_sequence else "mean")
    return loss.view(B, T).sum(1) if per_sequence else loss


def vqa_loss(per_answer: torch.Tensor, weights: torch.Tensor, n_questions: int) -> torch.Tensor:
    """BLIP's VQA loss: sum of ``weight * sequence loss`` over every (question, answer) pair,
    divided by the number of questions. per_answer, weights: [N]."""
    return (weights.float() * per_answer).sum() / n_questions
