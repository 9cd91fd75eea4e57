"""Decoding strategies (greedy, beam, nucleus) over any step-wise decoder.

The strategies only see logits: a ``StepDecoder`` turns tokens into next-token logits and owns its
caches (``text.DecoderSession`` for our torch decoders, ``runtime.OrtDecoderSession`` for the int8
graphs). Arrays are numpy, so an int8 model decodes without loading torch.

The semantics follow transformers' ``generate`` (our parity oracle): processors (repetition
penalty, minimum length) act on raw logits for greedy/sampling and on log-probabilities for beam
search; beam search keeps ``2 * num_beams`` candidates per step, finalises hypotheses ending in
``[SEP]`` among the top ``num_beams``, scores them by ``sum log p / length ** length_penalty`` and
stops when no running beam can beat the worst finished one.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

import numpy as np

from blip_core.errors import BadInputError

STRATEGIES = ("greedy", "beam", "nucleus")
DEFAULT_BEAMS = 3  # BLIP's beam count, used when beam search is asked for with fewer than 2 beams
MAX_NEW_TOKENS = 500
MAX_BEAMS = 32
MAX_RETURN_SEQUENCES = 32  # rows decoded side by side per image


def whole_number(name: str, value: Any, lo: int, hi: int, why: str = "") -> None:
    """A BadInputError unless ``value`` is an int (not a bool) in [lo, hi]; ``why`` explains the bound."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadInputError(f"{name} must be a whole number from {lo} to {hi}{why}, got {reprlib.repr(value)}")


def _real(name: str, value: Any, lo: float, hi: float, lo_open: bool = True) -> None:
    """A BadInputError unless ``value`` is a finite number in (lo, hi] (or [lo, hi])."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (lo < value if lo_open else lo <= value) and value <= hi):
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise BadInputError(f"{name} must be a number in {span}, got {reprlib.repr(value)}")


def beam_count(num_beams: int) -> int:
    """Beams for beam search: ``num_beams``, or ``DEFAULT_BEAMS`` when fewer than 2 are asked for."""
    return num_beams if num_beams >= 2 else DEFAULT_BEAMS


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
        ``num_beams > 1`` else greedy; ``strategy="beam"`` with 1 beam uses BLIP's ``DEFAULT_BEAMS``. A
        ``min_new_tokens`` above ``max_new_tokens`` is capped to it. Every option is checked
        first: a bad one (``num_beams=0``, ``top_p=nan``) is a BadInputError, never a silent
        default."""
        whole_number("num_beams", num_beams, 1, MAX_BEAMS)
        if strategy is None:
            strategy = "beam" if num_beams > 1 else "greedy"
        num_beams = beam_count(num_beams) if strategy == "beam" else 1
        opts = cls(strategy=strategy, num_beams=num_beams, **kw)
        opts._check_values()
        if opts.min_new_tokens > opts.max_new_tokens:
            opts = replace(opts, min_new_tokens=opts.max_new_tokens)
        opts.validate()
        return opts

    def _check_values(self) -> None:
        """Each option on its own: types and ranges."""
        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            raise BadInputError(f"unknown decoding strategy {reprlib.repr(self.strategy)}; use one of "
                                f"{', '.join(STRATEGIES)}")
        whole_number("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        whole_number("min_new_tokens", self.min_new_tokens, 0, MAX_NEW_TOKENS)
        whole_number("num_beams", self.num_beams, 1, MAX_BEAMS)
        whole_number("num_return_sequences", self.num_return_sequences, 1, MAX_RETURN_SEQUENCES)
        _real("top_p", self.top_p, 0.0, 1.0)
        _real("temperature", self.temperature, 0.0, 100.0)
        _real("repetition_penalty", self.repetition_penalty, 0.0, 100.0)
        _real("length_penalty", self.length_penalty, -100.0, 100.0, lo_open=False)
        if self.seed is not None:
            whole_number("seed", self.seed, 0, 2**64 - 1)

    def validate(self) -> None:
        self._check_values()
        if self.min_new_tokens > self.max_new_tokens:
            raise BadInputError("min_new_tokens must be between 0 and max_new_tokens")
        if self.strategy == "greedy" and self.num_return_sequences > 1:
            raise BadInputError("greedy decoding returns one sequence; use beam or nucleus for several")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise BadInputError("num_return_sequences cannot exceed num_beams")


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # new tokens, [SEP] included when the sequence ended
    score: float  # beam: length-normalised log-probability; greedy/nucleus: sum of log-probabilities


class StepDecoder(Protocol):
    def start(self, prompt_ids: np.ndarray, group: int) -> np.ndarray:
        """prompt_ids int64 [B, P] -> float32 logits [B * group, V] of the next token, ``group``
        rows per image."""

    def step(self, tokens: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """tokens [R]: the token appended to each row; ``rows`` [R]: for each new row, the previous
        row it continues (None = same order). Returns logits [R, V]."""


OnToken = Callable[[tuple[int, ...]], None]


def generate(decoder: StepDecoder, prompt_ids, opts: DecodingOptions, eos_id: int, pad_id: int = 0,
             on_token: OnToken | None = None):
    """Decode after ``prompt_ids`` [B, P] (identical prompt for all images; any array, a torch
    tensor included). Returns, per image, a list of ``num_return_sequences`` Hypothesis, best first.

    ``on_token(tokens)``, for streaming, is called after each step with the first image's new
    tokens so far: greedy/nucleus its first sequence (until it ends), beam search the best running
    beam (so a later call need not extend an earlier one). To stop decoding, raise from it: the
    exception propagates out of ``generate`` (how a caller abandons a decode nobody needs).

    The strategies are numpy: an int8 model decodes without loading torch at all."""
    opts.validate()
    prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
    if opts.strategy == "beam":
        return _beam_search(decoder, prompt_ids, opts, eos_id, on_token)
    return _sample(decoder, prompt_ids, opts, eos_id, pad_id, on_token)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis, in x's precision."""
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(x))


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of each row of x [R, N], largest first (ties: lower index first) ->
    (values [R, k], indices [R, k]). A partition, then a sort of only those k."""
    if k < x.shape[1]:
        idx = np.argpartition(-x, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(x.shape[1]), x.shape)
    vals = np.take_along_axis(x, idx, 1)
    order = np.lexsort((idx, -vals), axis=1)
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


def _apply_repetition_penalty(scores: np.ndarray, seqs: np.ndarray, penalty: float) -> np.ndarray:
    """scores [R, V]; seqs [R, T] every token so far (prompt included). Seen tokens get their score
    divided by ``penalty`` if positive, multiplied if negative."""
    if penalty == 1.0:
        return scores
    rows = np.arange(len(seqs))[:, None]
    seen = scores[rows, seqs]
    scores = scores.copy()
    scores[rows, seqs] = np.where(seen < 0, seen * np.float32(penalty), seen / np.float32(penalty))
    return scores


def _process(scores, seqs, new_len, opts, eos_id):
    scores = _apply_repetition_penalty(scores, seqs, opts.repetition_penalty)
    if new_len < opts.min_new_tokens:
        scores = scores.copy()
        scores[:, eos_id] = -np.inf
    return scores


def _nucleus(logits: np.ndarray, top_p: float, temperature: float) -> np.ndarray:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (at least one)."""
    logits = logits / np.float32(temperature)
    if top_p >= 1.0:
        return logits
    order = np.argsort(logits, axis=-1, kind="stable")  # ascending
    cum = softmax(np.take_along_axis(logits, order, -1)).cumsum(-1)
    drop = cum <= (1 - top_p)
    drop[:, -1] = False
    dropped = np.zeros_like(drop)
    np.put_along_axis(dropped, order, drop, -1)
    return np.where(dropped, -np.inf, logits)


def _draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row of probs [R, V] (inverse CDF; a zero-probability token is never drawn)."""
    cum = probs.astype(np.float64).cumsum(-1)
    u = (1.0 - rng.random(len(probs)))[:, None] * cum[:, -1:]  # in (0, total]
    return np.minimum((cum < u).sum(-1), probs.shape[1] - 1)


def _sample(decoder, prompt_ids, opts, eos_id, pad_id, on_token=None):
    B, P = prompt_ids.shape
    n = opts.num_return_sequences
    rng = np.random.default_rng(opts.seed) if opts.strategy == "nucleus" else None
    logits = decoder.start(prompt_ids, group=n)
    seqs = np.repeat(prompt_ids, n, axis=0)
    logp_sum = np.zeros(B * n, np.float32)
    done = np.zeros(B * n, bool)
    for t in range(opts.max_new_tokens):
        scores = _process(logits.astype(np.float32, copy=False), seqs, t, opts, eos_id)
        if opts.strategy == "nucleus":
            tok = _draw(softmax(_nucleus(scores, opts.top_p, opts.temperature)), rng)
        else:
            tok = scores.argmax(-1)
        logp = np.take_along_axis(log_softmax(scores), tok[:, None], 1)[:, 0]
        logp_sum += np.where(done, np.float32(0), logp)
        tok = np.where(done, pad_id, tok)
        seqs = np.concatenate([seqs, tok[:, None]], axis=1)
        if on_token is not None and not done[0]:
            on_token(tuple(seqs[0, P:].tolist()))
        done |= tok == eos_id
        if done.all() or t + 1 == opts.max_new_tokens:
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


def _beam_search(decoder, prompt_ids, opts, eos_id, on_token=None):
    B, P = prompt_ids.shape
    K, lp, max_new = opts.num_beams, opts.length_penalty, opts.max_new_tokens
    NEG = np.float32(-1.0e9)
    logits = decoder.start(prompt_ids, group=K)
    V = logits.shape[-1]
    seqs = np.repeat(prompt_ids, K, axis=0)  # [B*K, P + t]
    running = np.full((B, K), NEG)
    running[:, 0] = 0.0  # all beams start identical: only the first may expand
    fin_scores = np.full((B, K), NEG)
    fin_tokens: list[list[tuple[int, ...]]] = [[()] * K for _ in range(B)]
    fin_done = np.zeros((B, K), bool)
    improvable = np.ones(B, bool)
    top_rank = np.arange(2 * K) < K
    for t in range(max_new):
        logp = _process(log_softmax(logits.astype(np.float32, copy=False)), seqs, t, opts, eos_id)
        cand = (logp.reshape(B, K, V) + running[:, :, None]).reshape(B, K * V)
        top_scores, top_idx = topk(cand, 2 * K)
        beam, tok = top_idx // V, top_idx % V
        hits = (tok == eos_id) | (t + 1 >= max_new)
        # finished hypotheses: candidates that stop, ranked within the top K, while improvement is possible
        just_done = hits & top_rank[None, :]
        norm = top_scores / np.float32((t + 1) ** lp)
        norm = norm + (~just_done | ~improvable[:, None]) * NEG
        merged_scores = np.concatenate([fin_scores, norm], axis=1)
        fin_scores, keep = topk(merged_scores, K)
        src_rows = np.arange(B)[:, None] * K + beam  # previous row of each candidate
        new_fin_tokens = []
        for b in range(B):
            pool = fin_tokens[b] + [tuple(seqs[src_rows[b, j], P:].tolist()) + (int(tok[b, j]),) for j in range(2 * K)]
            new_fin_tokens.append([pool[i] for i in keep[b].tolist()])
        fin_tokens = new_fin_tokens
        fin_done = np.take_along_axis(np.concatenate([fin_done, just_done], axis=1), keep, 1)
        # running beams: the best K candidates that did not stop
        running, nxt = topk(top_scores + hits * NEG, K)
        rows = np.take_along_axis(src_rows, nxt, 1).reshape(-1)
        next_tok = np.take_along_axis(tok, nxt, 1).reshape(-1)
        seqs = np.concatenate([seqs[rows], next_tok[:, None]], axis=1)
        if on_token is not None:
            on_token(tuple(seqs[0, P:].tolist()))  # row 0: the first image's best running beam
        # early stop: can the best running beam still beat the worst finished one?
        best_possible = running[:, 0] / np.float32((t + 1) ** lp)
        worst = np.where(fin_done, fin_scores.min(axis=1, keepdims=True), NEG)
        improvable &= (best_possible[:, None] > worst).any(axis=1)
        if not improvable.any() or hits.all():
            break
        logits = decoder.step(next_tok, rows)
    n = opts.num_return_sequences
    return [[Hypothesis(fin_tokens[b][i], float(fin_scores[b, i])) for i in range(n)] for b in range(B)]
