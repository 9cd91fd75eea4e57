"""Decoding strategies (greedy, beam, nucleus) over any step-wise decoder.

The strategies only see logits: a ``StepDecoder`` turns tokens into next-token logits and owns its
caches. ``DecoderSession`` is the one for our text decoders: cross-attention keys/values are
computed once per image (or question) and shared by every step and every beam; only the
self-attention cache grows and is reordered.

The semantics follow transformers' ``generate`` (our parity oracle): processors (repetition
penalty, minimum length) act on raw logits for greedy/sampling and on log-probabilities for beam
search; beam search keeps ``2 * num_beams`` candidates per step, finalises hypotheses ending in
``[SEP]`` among the top ``num_beams``, scores them by ``sum log p / length ** length_penalty`` and
stops when no running beam can beat the worst finished one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

from .errors import BadInputError
from .text import KV, SelfCache, TextTransformer

STRATEGIES = ("greedy", "beam", "nucleus")


@dataclass(frozen=True)
class DecodingOptions:
    strategy: str = "greedy"  # greedy | beam | nucleus
    num_beams: int = 1
    max_new_tokens: int = 20
    min_new_tokens: int = 0  # [SEP] is forbidden before this many new tokens
    top_p: float = 0.9  # nucleus only
    temperature: float = 1.0  # nucleus only
    repetition_penalty: float = 1.0  # CTRL-style; 1.0 = off
    length_penalty: float = 1.0  # beam only: score = sum log p / length ** length_penalty
    num_return_sequences: int = 1
    seed: int | None = None  # nucleus only; None = non-deterministic

    @classmethod
    def build(cls, strategy: str | None = None, num_beams: int = 1, **kw) -> "DecodingOptions":
        """Resolve the user-facing pair (strategy, num_beams): no strategy means beam search when
        ``num_beams > 1`` else greedy; ``strategy="beam"`` with fewer than 2 beams uses BLIP's 3."""
        if strategy is None:
            strategy = "beam" if num_beams > 1 else "greedy"
        if strategy == "beam" and num_beams < 2:
            num_beams = 3
        if strategy != "beam":
            num_beams = 1
        opts = cls(strategy=strategy, num_beams=num_beams, **kw)
        opts.validate()
        return opts

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise BadInputError(f"unknown decoding strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        checks = [
            (1 <= self.max_new_tokens <= 500, "max_new_tokens must be between 1 and 500"),
            (0 <= self.min_new_tokens <= self.max_new_tokens, "min_new_tokens must be between 0 and max_new_tokens"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (1 <= self.num_beams <= 32, "num_beams must be between 1 and 32"),
            (self.num_return_sequences >= 1, "num_return_sequences must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInputError(message)
        if self.strategy == "greedy" and self.num_return_sequences > 1:
            raise BadInputError("greedy decoding returns one sequence; use beam or nucleus for several")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise BadInputError("num_return_sequences cannot exceed num_beams")


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # new tokens, [SEP] included when the sequence ended
    score: float  # beam: length-normalised log-probability; greedy/nucleus: sum of log-probabilities


class StepDecoder(Protocol):
    def start(self, prompt_ids: torch.Tensor, group: int) -> torch.Tensor:
        """prompt_ids [B, P] -> logits [B * group, V] of the next token, ``group`` rows per image."""

    def step(self, tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """tokens [R]: the token appended to each row; ``rows`` [R]: for each new row, the previous
        row it continues (None = same order). Returns logits [R, V]."""


def generate(decoder: StepDecoder, prompt_ids: torch.Tensor, opts: DecodingOptions, eos_id: int, pad_id: int = 0):
    """Decode after ``prompt_ids`` [B, P] (identical prompt for all images). Returns, per image, a
    list of ``num_return_sequences`` Hypothesis, best first."""
    opts.validate()
    with torch.inference_mode():
        if opts.strategy == "beam":
            return _beam_search(decoder, prompt_ids, opts, eos_id)
        return _sample(decoder, prompt_ids, opts, eos_id, pad_id)


def _apply_repetition_penalty(scores: torch.Tensor, seqs: torch.Tensor, penalty: float) -> torch.Tensor:
    """scores [R, V]; seqs [R, T] every token so far (prompt included). Seen tokens get their score
    divided by ``penalty`` if positive, multiplied if negative."""
    if penalty == 1.0:
        return scores
    seen = scores.gather(1, seqs)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, seqs, seen)


def _process(scores, seqs, new_len, opts, eos_id):
    scores = _apply_repetition_penalty(scores, seqs, opts.repetition_penalty)
    if new_len < opts.min_new_tokens:
        scores = scores.clone()
        scores[:, eos_id] = -float("inf")
    return scores


def _nucleus(logits: torch.Tensor, top_p: float, temperature: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (at least one)."""
    logits = logits / temperature
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum <= (1 - top_p)
    drop[:, -1] = False
    return logits.masked_fill(drop.scatter(1, order, drop), -float("inf"))


def _sample(decoder, prompt_ids, opts, eos_id, pad_id):
    B, P = prompt_ids.shape
    n = opts.num_return_sequences
    generator = None
    if opts.strategy == "nucleus" and opts.seed is not None:
        generator = torch.Generator().manual_seed(opts.seed)
    logits = decoder.start(prompt_ids, group=n)
    seqs = prompt_ids.repeat_interleave(n, dim=0)
    logp_sum = torch.zeros(B * n)
    done = torch.zeros(B * n, dtype=torch.bool)
    for t in range(opts.max_new_tokens):
        scores = _process(logits.float(), seqs, t, opts, eos_id)
        if opts.strategy == "nucleus":
            probs = _nucleus(scores, opts.top_p, opts.temperature).softmax(-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            tok = scores.argmax(-1)
        logp = scores.log_softmax(-1).gather(1, tok[:, None]).squeeze(1)
        logp_sum += torch.where(done, 0.0, logp)
        tok = torch.where(done, pad_id, tok)
        seqs = torch.cat([seqs, tok[:, None]], dim=1)
        done |= tok == eos_id
        if bool(done.all()) or t + 1 == opts.max_new_tokens:
            break
        logits = decoder.step(tok, None)
    out = []
    for b in range(B):
        hyps = []
        for r in range(b * n, (b + 1) * n):
            new = seqs[r, P:].tolist()
            if eos_id in new:
                new = new[: new.index(eos_id) + 1]
            hyps.append(Hypothesis(tuple(new), float(logp_sum[r])))
        out.append(sorted(hyps, key=lambda h: -h.score) if opts.strategy == "nucleus" else hyps)
    return out


def _beam_search(decoder, prompt_ids, opts, eos_id):
    B, P = prompt_ids.shape
    K, lp, max_new = opts.num_beams, opts.length_penalty, opts.max_new_tokens
    NEG = -1.0e9
    logits = decoder.start(prompt_ids, group=K)
    V = logits.shape[-1]
    seqs = prompt_ids.repeat_interleave(K, dim=0)  # [B*K, P + t]
    running = torch.full((B, K), NEG)
    running[:, 0] = 0.0  # all beams start identical: only the first may expand
    fin_scores = torch.full((B, K), NEG)
    fin_tokens: list[list[tuple[int, ...]]] = [[()] * K for _ in range(B)]
    fin_done = torch.zeros(B, K, dtype=torch.bool)
    improvable = torch.ones(B, dtype=torch.bool)
    top_rank = torch.arange(2 * K) < K
    for t in range(max_new):
        logp = _process(logits.float().log_softmax(-1), seqs, t, opts, eos_id)
        cand = (logp.view(B, K, V) + running[:, :, None]).view(B, K * V)
        top_scores, top_idx = cand.topk(2 * K, dim=1)
        beam, tok = top_idx // V, top_idx % V
        hits = (tok == eos_id) | (t + 1 >= max_new)
        # finished hypotheses: candidates that stop, ranked within the top K, while improvement is possible
        just_done = hits & top_rank[None, :]
        norm = top_scores / ((t + 1) ** lp)
        norm = norm + (~just_done | ~improvable[:, None]).float() * NEG
        merged_scores = torch.cat([fin_scores, norm], dim=1)
        keep = merged_scores.topk(K, dim=1).indices
        src_rows = (torch.arange(B)[:, None] * K + beam)  # previous row of each candidate
        new_fin_tokens = []
        for b in range(B):
            pool = fin_tokens[b] + [tuple(seqs[src_rows[b, j], P:].tolist()) + (int(tok[b, j]),) for j in range(2 * K)]
            new_fin_tokens.append([pool[i] for i in keep[b].tolist()])
        fin_tokens = new_fin_tokens
        fin_done = torch.cat([fin_done, just_done], dim=1).gather(1, keep)
        fin_scores = merged_scores.gather(1, keep)
        # running beams: the best K candidates that did not stop
        alive = top_scores + hits.float() * NEG
        nxt = alive.topk(K, dim=1).indices
        running = alive.gather(1, nxt)
        rows = src_rows.gather(1, nxt).view(-1)
        next_tok = tok.gather(1, nxt).view(-1)
        seqs = torch.cat([seqs.index_select(0, rows), next_tok[:, None]], dim=1)
        # early stop: can the best running beam still beat the worst finished one?
        best_possible = running[:, 0] / ((t + 1) ** lp)
        worst = torch.where(fin_done, fin_scores.min(dim=1, keepdim=True).values, NEG)
        improvable &= (best_possible[:, None] > worst).any(dim=1)
        if not bool(improvable.any()) or bool(hits.all()):
            break
        logits = decoder.step(next_tok, rows)
    n = opts.num_return_sequences
    return [[Hypothesis(fin_tokens[b][i], float(fin_scores[b, i])) for i in range(n)] for b in range(B)]


class DecoderSession:
    """A ``StepDecoder`` over one of our text decoders.

    cross_kv: per-layer keys/values [B, h, N, hd] of what the decoder reads (computed once per image
    or question by ``TextTransformer.cross_kv``); cross_mask: [B, N] padding mask or None.
    """

    def __init__(self, decoder: TextTransformer, cross_kv: list[KV], cross_mask: torch.Tensor | None = None):
        self.decoder = decoder
        self.cross_kv = cross_kv
        self.cross_mask = cross_mask
        self.cache = SelfCache(len(decoder.layers))

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.decoder(ids, mode="decoder", cross_kv=self.cross_kv, encoder_mask=self.cross_mask, cache=self.cache)
        return self.decoder.logits(h[:, -1])

    def start(self, prompt_ids: torch.Tensor, group: int) -> torch.Tensor:
        logits = self._run(prompt_ids)
        if group > 1:  # every row of an image starts from the same prefix: copy its cache
            rows = torch.arange(prompt_ids.shape[0]).repeat_interleave(group)
            self.cache.select(rows)
            logits = logits.index_select(0, rows)
        return logits

    def step(self, tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is not None:
            self.cache.select(rows)
        return self._run(tokens[:, None])


def with_overrides(opts: DecodingOptions, **kw) -> DecodingOptions:
    return replace(opts, **kw)
