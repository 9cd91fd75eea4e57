"""The BLIP-2 family behind the public API: ``blip_core.load("Salesforce/blip2-opt-2.7b")`` returns
a ``Blip2`` with the same verbs and result types as ``Blip`` (caption, answer, match) plus
``generate`` for free-form, instructed prompts.

Work is done once per image: ``encode_image`` runs the image encoder, the Q-Former and the language
projection and returns ``ImageFeatures`` holding the soft visual prompt [1, Q, D_llm]. With OPT,
the LLM's keys/values over that prefix are computed on first use and cached in the features, so a
follow-up question on the same frame only runs the question's own tokens. Flan-T5 reads the
question in its encoder beside the prefix, so only the prefix itself is shared.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from blip_core.errors import BadInputError, WrongTaskError
from blip_core.generation import DecodingOptions, generate, softmax
from blip_core.loaded import LoadedModel, checked_texts, elapsed_ms, inference
from blip_core.model.limits import MAX_TEXT_TOKENS
from blip_core.results import AnswerResult, CaptionResult, ImageFeatures, MatchResult, Timings
from blip_core.tokenizer import require_text

# the paper's zero-shot VQA templates (BLIP-2 §4.2; LAVIS's eval configs use "Short answer" for both)
ANSWER_TEMPLATES = {"opt": "Question: {} Answer:", "t5": "Question: {} Short answer:"}
# LAVIS's VQA decoding: OPT length_penalty 0, Flan-T5 -1 (favours short answers under beam search)
ANSWER_LENGTH_PENALTY = {"opt": 0.0, "t5": -1.0}
MAX_PROMPT_TOKENS = 256  # an instructed prompt longer than this is not a prompt, it is a document


class Blip2(LoadedModel):
    """A loaded BLIP-2 model: ``caption``/``answer``/``generate`` with an LLM (OPT or Flan-T5),
    ``match`` with the ITM checkpoint (``Salesforce/blip2-itm-vit-g``)."""

    family = "blip2"
    streams_text = True  # caption/answer/generate take on_text, as Blip's do

    def __repr__(self) -> str:
        what = self.cfg.llm_kind or "itm"
        return f"Blip2({self.name!r}, {what}, {self.precision}, {self.image_size}px)"

    @property
    def answer_template(self) -> str:
        return ANSWER_TEMPLATES.get(self.cfg.llm_kind or "", "{}")

    def _encode(self, pixels: np.ndarray):
        """pixels -> the soft visual prompt [1, Q, D_llm] (LLM models) or the image tokens [1, N, Dv]
        the ITM Q-Former cross-attends to (match model)."""
        return self.model.encode_frame(self._in(pixels))

    # -------------------------------------------------------------- decoding
    def _session(self, f: ImageFeatures, prompt: str):
        """A step decoder positioned after the visual prefix and ``prompt``, and the prompt ids."""
        ids = self.tokenizer.prompt_ids(prompt)
        if len(ids) > MAX_PROMPT_TOKENS:
            raise BadInputError(f"the prompt is {len(ids)} tokens long; at most {MAX_PROMPT_TOKENS} are accepted")
        if self.cfg.llm_kind == "opt":
            if "prefix" not in f.cache:  # the LLM's keys/values over the soft prompt: once per image
                f.cache["prefix"] = self.model.llm_prefix(f.embeds)
            return self.model.llm_session(f.cache["prefix"]), np.array([ids], dtype=np.int64), ids
        # Flan-T5: [soft prompt; prompt </s>] through the encoder, then the decoder from its start id
        states = self.model.encode_prompt(f.embeds, self._in(np.array([ids], dtype=np.int64)))
        start = np.array([[self.cfg.llm.decoder_start_id]], dtype=np.int64)
        return self.model.llm_session(states), start, ids

    def _decode(self, image, prompt: str, opts: DecodingOptions, on_text: Callable[[str], None] | None = None):
        """(texts best first, best token ids, timings) of ``prompt`` continued after the image;
        ``on_text`` streams the text so far (see ``Blip.caption``)."""
        require_text(prompt, "the prompt")
        if self.cfg.llm is None:
            raise WrongTaskError(f"{self.name or 'this model'} is BLIP-2's image-text matching model: it matches "
                                 "texts (match) but cannot write; load a BLIP-2 model with a language model, "
                                 "e.g. Salesforce/blip2-opt-2.7b")
        t0 = time.perf_counter()
        f, vt = self._features(image)
        t1 = time.perf_counter()
        session, start, _ = self._session(f, prompt)
        t2 = time.perf_counter()
        eos = self.cfg.llm.eos_id
        stream = None if on_text is None else lambda ids: on_text(self.tokenizer.decode(ids))
        hyps = generate(session, start, opts, eos_id=eos, pad_id=self.cfg.llm.pad_id, on_token=stream)[0]
        texts = tuple(self.tokenizer.decode(h.tokens) for h in hyps)
        timings = Timings(vt.preprocess_ms, vt.vision_ms, (t2 - t1) * 1000, elapsed_ms(t2), elapsed_ms(t0))
        return texts, hyps[0].tokens, timings

    @inference
    def generate(self, image, prompt: str = "", max_new_tokens: int = 20, min_new_tokens: int = 1,
                 num_beams: int = 1, strategy: str | None = None, top_p: float = 0.9, temperature: float = 1.0,
                 repetition_penalty: float = 1.0, length_penalty: float = 1.0, num_return_sequences: int = 1,
                 seed: int | None = None, on_text: Callable[[str], None] | None = None) -> CaptionResult:
        """Continue a free-form ``prompt`` about the image ("Question: what is unusual here? Answer:",
        "Describe the scene in detail."); the text is what follows the prompt. ``on_text`` streams
        it (see ``Blip.caption``)."""
        opts = DecodingOptions.build(strategy, num_beams, max_new_tokens=max_new_tokens,
                                     min_new_tokens=min_new_tokens, top_p=top_p, temperature=temperature,
                                     repetition_penalty=repetition_penalty, length_penalty=length_penalty,
                                     num_return_sequences=num_return_sequences, seed=seed)
        texts, ids, timings = self._decode(image, prompt, opts, on_text)
        return CaptionResult(texts[0], ids, timings, prompt, texts)

    def caption(self, image, prompt: str = "", max_new_tokens: int = 20, min_new_tokens: int = 1,
                **decoding) -> CaptionResult:
        """Caption an image (or features); ``prompt`` ("a photo of") conditions it and is not part of
        the text. The decoding keywords are ``generate``'s."""
        self._require("caption")
        return self.generate(image, prompt, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                             **decoding)

    @inference
    def answer(self, image, question: str, answers: Sequence[str] | None = None, max_new_tokens: int = 10,
               min_new_tokens: int = 1, num_beams: int = 1, strategy: str | None = None,
               template: str | None = None, length_penalty: float | None = None,
               on_text: Callable[[str], None] | None = None, **decoding) -> AnswerResult:
        """Answer an open question zero-shot through the paper's template (``answer_template``:
        "Question: {} Answer:" for OPT, "Question: {} Short answer:" for Flan-T5; ``template``
        changes it and must hold one ``{}``)."""
        self._require("vqa")
        if answers is not None:
            raise WrongTaskError("BLIP-2 answers in free text; choosing from a list of answers (rank mode) is "
                                 "BLIP's VQA model")
        if question is None or not require_text(question, "the question").strip():
            raise BadInputError("the question is empty; type a question about the image")
        template = self.answer_template if template is None else require_text(template, "the template")
        if template.count("{}") != 1:
            raise BadInputError("the answer template must contain exactly one {} where the question goes, "
                                f"e.g. {self.answer_template!r}")
        # (_require("vqa") passed: the model has an LLM)
        lp = ANSWER_LENGTH_PENALTY[self.cfg.llm_kind] if length_penalty is None else length_penalty
        opts = DecodingOptions.build(strategy, num_beams, max_new_tokens=max_new_tokens,
                                     min_new_tokens=min_new_tokens, length_penalty=lp, **decoding)
        texts, ids, timings = self._decode(image, template.format(question.strip()), opts, on_text)
        return AnswerResult(texts[0], question, tuple(ids), timings)

    # -------------------------------------------------------------- matching
    @inference
    def match(self, image, texts: Sequence[str]) -> list[MatchResult]:
        """ITM match probability (queries and text under the bidirectional mask) and ITC cosine (the
        highest of the 32 query similarities) for each text."""
        self._require("match")
        texts = checked_texts(texts)
        f, _ = self._features(image)
        ids, mask = map(self._in, self.tokenizer.arrays(texts, first="cls", max_length=MAX_TEXT_TOKENS))
        itm = softmax(np.asarray(self.model.itm_logits(f.embeds, ids, mask), dtype=np.float32))[:, 1]
        itc = np.asarray(self.model.itc(f.embeds, ids, mask))[0]
        return [MatchResult(t, float(a), float(c)) for t, a, c in zip(texts, itm, itc)]

    # --------------------------------------------------------------- warm-up
    def warmup(self) -> None:
        f = self.encode_image(np.full((self.image_size, self.image_size, 3), 128, dtype=np.uint8))
        if "caption" in self.tasks:
            self.caption(f, max_new_tokens=2, min_new_tokens=0)
        if "match" in self.tasks:
            self.match(f, ["a picture"])
