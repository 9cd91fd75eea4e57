"""The public API: ``blip_core.load(...)`` returns a ``Blip`` that captions, answers and matches.

Work is done once per image: ``encode_image`` runs the ViT and returns ``ImageFeatures`` in which
the cross-attention keys/values of the caption decoder and of the question/text encoder are cached
on first use, so a second caption, a follow-up question or a match on the same frame skips the
vision encoder and those projections.

Arrays between this module and a model are numpy; a torch model (fp32) gets them as tensors
sharing their memory. An int8 model (``runtime.OrtModel``) never loads torch.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from blip_core.checkpoints import materialize, open_checkpoint
from blip_core.checkpoints.sources import DeferredTensorSource
from blip_core.checkpoints.vocab import tokenizer_for
from blip_core.errors import BadInputError, BlipError, import_torch
from blip_core.generation import DecodingOptions, generate, softmax, whole_number
from blip_core.hub import Progress, fetch, looks_like_hub_id
from blip_core.loaded import LoadedModel, checked_texts, elapsed_ms, inference
from blip_core.model.config import TASKS
from blip_core.model.limits import MAX_QUESTION_TOKENS, MAX_TEXT_TOKENS
from blip_core.ranking import rank_answers
from blip_core.resources import check_memory
from blip_core.results import AnswerResult, CaptionResult, ImageFeatures, MatchResult, Timings
from blip_core.tokenizer import require_text

PRECISIONS = ("fp32", "int8")
MAX_THREADS = 256  # a hard ceiling whatever the CPU count (100000 threads segfaulted libgomp, 16 GB in ORT)
MAX_RANKED = 100_000  # answers scored in full in VQA's rank mode (BLIP: k=128)


def physical_cores() -> int:
    """Physical cores (SMT siblings share FPUs, so extra threads only contend)."""
    try:
        pairs = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                pairs.add((phys, core))
        if pairs:
            return max(1, min(len(pairs), len(os.sched_getaffinity(0))))
    except (OSError, AttributeError):
        pass
    return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The most inference threads worth asking for: 4 per CPU (beyond that they only contend),
    at most :data:`MAX_THREADS`."""
    return min(MAX_THREADS, 4 * (os.cpu_count() or 1))


def _check_threads(threads) -> int | None:
    if threads is not None:
        whole_number("threads", threads, 1, max_threads(), f" (4 per CPU, at most {MAX_THREADS})")
    return threads


def _check_source(source) -> str:
    if not isinstance(source, (str, os.PathLike)):
        raise BadInputError(f"the model source must be a hub id or a path, got {type(source).__name__}")
    text = os.fspath(source)
    if not isinstance(text, str):  # a bytes path
        text = os.fsdecode(text)
    if not text.strip():
        raise BadInputError("the model source is empty: pass a hub id (e.g. Salesforce/blip-image-captioning-base), "
                            "a model folder or a .pth file")
    return text


OnText = Callable[[str], None]


class Blip(LoadedModel):
    """A loaded BLIP model with its tokenizer. Thread-compatible: one call at a time per object."""

    streams_text = True  # caption/answer take on_text (callers test for it: not every model does)

    def __repr__(self) -> str:
        return f"Blip({self.name!r}, tasks={'+'.join(self.cfg.tasks)}, {self.precision}, {self.image_size}px)"

    def _cross_kv(self, f: ImageFeatures, part: str):
        """Per-image cross-attention keys/values of ``part``, cached in the features."""
        if part not in f.cache:
            f.cache[part] = self.model.cross_kv(part, f.embeds)
        return f.cache[part]

    # ------------------------------------------------------------- captions
    @inference
    def caption(self, image, prompt: str = "a picture of ", max_new_tokens: int = 20, min_new_tokens: int = 5,
                num_beams: int = 1, strategy: str | None = None, top_p: float = 0.9,
                repetition_penalty: float = 1.0, num_return_sequences: int = 1,
                seed: int | None = None, on_text: OnText | None = None) -> CaptionResult:
        """Caption an image (or features). ``prompt`` conditions the caption and is not part of the
        returned text; ``strategy`` defaults to beam search when ``num_beams > 1``, else greedy.
        ``on_text(text)`` streams: the caption so far after each token (see ``generation.generate``;
        raising from it abandons the caption)."""
        self._require("caption")
        opts = DecodingOptions.build(strategy, num_beams, max_new_tokens=max_new_tokens,
                                     min_new_tokens=min_new_tokens, top_p=top_p,
                                     repetition_penalty=repetition_penalty,
                                     num_return_sequences=num_return_sequences, seed=seed)
        require_text(prompt, "the prompt")
        prompt_ids = self.tokenizer.prompt_ids(prompt)
        if len(prompt_ids) + max_new_tokens > self.cfg.text.max_positions:
            raise BadInputError(f"prompt too long: {len(prompt_ids)} tokens + {max_new_tokens} new exceed "
                                f"the model's {self.cfg.text.max_positions} positions")
        t0 = time.perf_counter()
        f, vt = self._features(image)
        t1 = time.perf_counter()
        session = self.model.decoder_session("text_decoder", self._cross_kv(f, "text_decoder"))
        stream = None if on_text is None else lambda ids: on_text(self.tokenizer.continuation(prompt_ids, ids))
        hyps = generate(session, np.array([prompt_ids]), opts, eos_id=self.tokenizer.sep_id,
                        pad_id=self.tokenizer.pad_id, on_token=stream)[0]
        texts = tuple(self.tokenizer.continuation(prompt_ids, h.tokens) for h in hyps)
        timings = Timings(vt.preprocess_ms, vt.vision_ms, 0.0, elapsed_ms(t1), elapsed_ms(t0))
        return CaptionResult(texts[0], hyps[0].tokens, timings, prompt, texts)

    # -------------------------------------------------------------- answers
    def _question_states(self, f: ImageFeatures, question: str):
        if question is None or not require_text(question, "the question").strip():
            raise BadInputError("the question is empty; type a question about the image")
        ids, mask = self.tokenizer.arrays(question.strip(), first="enc", max_length=MAX_QUESTION_TOKENS)
        ids, mask = self._in(ids), self._in(mask)
        states = self.model.encode_question(f.embeds, ids, mask, cross_kv=self._cross_kv(f, "text_encoder"))
        return states, mask

    @inference
    def answer(self, image, question: str, answers: Sequence[str] | None = None, max_new_tokens: int = 10,
               min_new_tokens: int = 1, num_beams: int = 1, strategy: str | None = None, k: int = 128,
               on_text: OnText | None = None) -> AnswerResult:
        """Answer a question about an image (or features): generated, or chosen from ``answers``
        (BLIP's rank mode: the ``k`` answers whose first token is likeliest are scored in full).
        ``on_text(text)`` streams a generated answer as ``caption``'s does (rank mode never calls it)."""
        self._require("vqa")
        if answers is None:  # checked before any work is done
            opts = DecodingOptions.build(strategy, num_beams, max_new_tokens=max_new_tokens,
                                         min_new_tokens=min_new_tokens)
        elif isinstance(answers, str) or not hasattr(answers, "__iter__"):
            raise BadInputError("answers must be a list of candidate answers, not one text")
        else:
            whole_number("k", k, 1, MAX_RANKED)
        t0 = time.perf_counter()
        f, vt = self._features(image)
        t1 = time.perf_counter()
        states, mask = self._question_states(f, question)
        t2 = time.perf_counter()
        kv = self.model.cross_kv("answer_decoder", states)
        if answers is not None:
            ranked = rank_answers(self.model, self.tokenizer, kv, mask, answers, k)
            text, ids = ranked[0][0], tuple(self.tokenizer.tokens(ranked[0][0]))
        else:
            session = self.model.decoder_session("answer_decoder", kv, mask)
            stream = None if on_text is None else lambda ids: on_text(self.tokenizer.decode(ids))
            hyp = generate(session, np.array([[self.tokenizer.dec_id]]), opts, eos_id=self.tokenizer.sep_id,
                           pad_id=self.tokenizer.pad_id, on_token=stream)[0][0]
            text, ids, ranked = self.tokenizer.decode(hyp.tokens), hyp.tokens, []
        timings = Timings(vt.preprocess_ms, vt.vision_ms, (t2 - t1) * 1000, elapsed_ms(t2), elapsed_ms(t0))
        return AnswerResult(text, question, tuple(ids), timings, tuple(ranked))

    # -------------------------------------------------------------- matching
    @inference
    def match(self, image, texts: Sequence[str]) -> list[MatchResult]:
        """ITM match probability (``[ENC]`` + cross-attention) and ITC cosine for each text."""
        self._require("match")
        texts = checked_texts(texts)
        f, _ = self._features(image)
        enc = map(self._in, self.tokenizer.arrays(texts, first="enc", max_length=MAX_TEXT_TOKENS))
        cls = map(self._in, self.tokenizer.arrays(texts, first="cls", max_length=MAX_TEXT_TOKENS))
        itm = np.asarray(self.model.itm_logits(f.embeds, *enc, cross_kv=self._cross_kv(f, "text_encoder")))
        itm = softmax(itm.astype(np.float32))[:, 1]
        itc = np.asarray(self.model.text_features(*cls)) @ np.asarray(self.model.image_features(f.embeds))[0]
        return [MatchResult(t, float(a), float(c)) for t, a, c in zip(texts, itm, itc)]

    # --------------------------------------------------------------- warm-up
    def warmup(self) -> None:
        """Run each loaded task once on a grey image so first real calls are not slowed by lazy
        kernel initialisation."""
        f = self.encode_image(np.full((self.image_size, self.image_size, 3), 128, dtype=np.uint8))
        if "caption" in self.tasks:
            self.caption(f, max_new_tokens=2, min_new_tokens=0)
        if "vqa" in self.tasks:
            self.answer(f, "what is this?", max_new_tokens=2)
        if "match" in self.tasks:
            self.match(f, ["a picture"])


def _parse_tasks(task) -> tuple[str, ...] | None:
    if task is None:
        return None
    tasks = (task,) if isinstance(task, str) else tuple(task) if isinstance(task, (list, tuple)) else None
    if tasks is None:
        raise BadInputError(f"task must be one of {', '.join(TASKS)} or a list of them, got {type(task).__name__}")
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise BadInputError(f"unknown task {bad or task!r}; use one or more of {', '.join(TASKS)}")
    return tasks


def _wrap(ck, model, name: str, precision: str) -> LoadedModel:
    """The loaded model of ``ck``'s family with its tokenizer."""
    tokenizer = tokenizer_for(ck)
    if ck.family == "blip2":
        from blip_core.api_blip2 import Blip2

        return Blip2(model, tokenizer, name=name, precision=precision, report=ck.report)
    return Blip(model, tokenizer, name=name, precision=precision, report=ck.report)


def load(source: str | os.PathLike, precision: str = "fp32", threads: int | None = None, task=None,
         progress: Progress | None = None, warmup: bool = True) -> LoadedModel:
    """Load a BLIP or BLIP-2 checkpoint: a Hugging Face hub id (downloaded once, with progress), a
    model folder (Hugging Face layout or ours) or a Salesforce / LAVIS ``.pth``. The family comes
    from the checkpoint: a ``Blip`` or a ``Blip2`` (``blip_core.api_blip2``), with the same verbs.
    A load that cannot fit in the memory available is refused before anything is allocated.

    precision: ``fp32`` or ``int8`` (int8 weights, see ``blip_core.int8.convert``); threads: intra-op
    threads, 1 to :func:`max_threads` (default: physical cores; int8 models in one process share
    one pool, sized by the first); task: restrict to ``caption``/``vqa``/``match`` (or a list).
    """
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    source_str = _check_source(source)
    threads = _check_threads(threads) or physical_cores()
    tasks = _parse_tasks(task)
    if "torch" in sys.modules or precision == "fp32":  # an int8 model alone never loads torch
        import_torch("precision='fp32'").set_num_threads(threads)
    path = fetch(source_str, progress) if looks_like_hub_id(source_str) else Path(source_str).expanduser()
    if progress:
        progress(0.0, f"loading {source_str}")
    ck = open_checkpoint(path)
    if precision == "fp32" or not isinstance(ck.tensors, DeferredTensorSource):
        # a pytorch_model.bin's shapes need torch to read; an int8 load of a converted one never does
        check_memory(source_str, ck.tensors.shapes, precision)
    if precision == "int8":
        from blip_core.int8.cache import materialize_int8

        model = materialize_int8(ck, threads, tasks, progress=progress)
    else:
        model = materialize(ck, tasks)
    blip = _wrap(ck, model, source_str, precision)
    if warmup:
        if progress:
            progress(1.0, "warming up")
        blip.warmup()
    if progress:
        progress(1.0, f"{source_str} loaded")
    return blip


__all__ = ["Blip", "load", "BlipError", "physical_cores", "max_threads"]
