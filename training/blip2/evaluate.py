"""Evaluation of BLIP-2 runs on held-out scenes: zero-shot VQA through any loaded model (a stage-2
BLIP-2, or BLIP for reference), the frozen LLM alone on text (given a caption, or nothing), and the
stage-1 Q-Former's captions (ITG) and retrieval (ITC).

Every question is asked with the same template the LLM saw in its text pre-training
(``ANSWER_TEMPLATES["opt"]``: "Question: {} Answer:"), answers are decoded greedily and scored with
``blip_core.metrics.vqa_accuracy`` (one gold answer: exact match after VQA normalisation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from blip_core import scenes
from blip_core.api_blip2 import ANSWER_TEMPLATES
from blip_core.checkpoints import load_model
from blip_core.generation import DecodingOptions, generate
from blip_core.loaded import LoadedModel
from blip_core.metrics import caption_scores, recall_at_k, vqa_accuracy
from blip_core.model.blip2 import Blip2Model
from blip_core.model.limits import MAX_TEXT_TOKENS
from blip_core.model.opt import OptLM, OptSession
from blip_core.model.text import LMHead
from blip_core.preprocess import pixel_values_batch
from blip_core.scenes.truth import is_true
from blip_core.tokenizer import BlipTokenizer, LlmTokenizer
from training.data import pre_caption, pre_question
from training.run_state import load_state, resolve_init

from .build import read_llm
from .text_data import caption_text, qa_text

ANSWER_TEMPLATE = ANSWER_TEMPLATES["opt"]
ANSWER_MAX_TOKENS = 5  # the scene world's longest answer is two words ("bottom right")


@dataclass(frozen=True)
class HeldOutScene:
    image: np.ndarray  # H x W x 3 uint8
    captions: tuple[str, ...]  # pre_caption'd
    questions: tuple[str, ...]  # pre_question'd
    answers: tuple[str, ...]
    kinds: tuple[str, ...]
    scene: scenes.Scene  # what the texts are judged against (``scenes.truth.is_true``)


def held_out_scenes(seed: int, count: int, size: int, max_objects: int) -> list[HeldOutScene]:
    """Scenes ``stream_seed(seed, 0 .. count-1)`` with every question each has (about 9)."""
    out = []
    for i in range(count):
        s = scenes.render(scenes.stream_seed(seed, i), size, max_objects)
        out.append(HeldOutScene(np.asarray(s.image.convert("RGB")), tuple(pre_caption(c) for c in s.captions),
                                tuple(pre_question(q) for q, _ in s.qa), tuple(a for _, a in s.qa),
                                tuple(scenes.question_kind(q) for q, _ in s.qa), s))
    return out


def accuracy_report(predictions: list[str], held_out: list[HeldOutScene]) -> dict:
    """{"accuracy", "by_kind", "n_questions", "samples"} of one prediction per question, in order."""
    answers = [a for s in held_out for a in s.answers]
    kinds = [k for s in held_out for k in s.kinds]
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    by_kind: dict[str, list[int]] = {}
    for i, k in enumerate(kinds):
        by_kind.setdefault(k, []).append(i)
    questions = [q for s in held_out for q in s.questions]
    return {"accuracy": vqa_accuracy(predictions, answers), "n_questions": len(answers),
            "by_kind": {k: vqa_accuracy([predictions[i] for i in idx], [answers[i] for i in idx])
                        for k, idx in sorted(by_kind.items())},
            "samples": [{"question": questions[i], "answer": answers[i], "prediction": predictions[i]}
                        for i in range(min(6, len(answers)))]}


def _bar(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="question", disable=not progress, dynamic_ncols=True)


# ------------------------------------------------------------------ with an image
def model_answers(model: LoadedModel, held_out: list[HeldOutScene], desc: str, progress: bool = True) -> list[str]:
    """Each question through ``model.answer`` (greedy; the image encoded once per scene), the
    public API a user calls: a BLIP-2 with ``ANSWER_TEMPLATE``, BLIP with its answer decoder."""
    kw = {"template": ANSWER_TEMPLATE} if model.family == "blip2" else {}
    out = []
    with _bar(sum(len(s.questions) for s in held_out), desc, progress) as bar:
        for s in held_out:
            f = model.encode_image(s.image)
            for q in s.questions:
                out.append(model.answer(f, q, max_new_tokens=ANSWER_MAX_TOKENS, **kw).text)
                bar.update()
    return out


def model_captions(model: LoadedModel, held_out: list[HeldOutScene]) -> dict:
    """Greedy captions through ``model.caption`` (no prompt): BLEU-4 and CIDEr against every
    reference caption, the share that is true of its scene (``is_true``: names an object and
    nothing false), and a few samples. For a stage-2 model: what the soft prompt tells the LLM."""
    predictions = {i: model.caption(s.image, max_new_tokens=20).text for i, s in enumerate(held_out)}
    true = sum(is_true(predictions[i], s.scene) for i, s in enumerate(held_out)) / len(held_out)
    return {**caption_report(predictions, held_out), "true": true}


def caption_report(predictions: dict[int, str], held_out: list[HeldOutScene]) -> dict:
    """BLEU-4 and CIDEr of one caption per scene (keyed by index) against all its references, and
    the first few with their references."""
    refs = {i: list(s.captions) for i, s in enumerate(held_out)}
    return {**caption_scores(predictions, refs),
            "samples": [{"prediction": predictions[i], "references": refs[i][:2]} for i in range(min(4, len(refs)))]}


# ---------------------------------------------------------------- the LLM on text
class TextLlm:
    """The frozen OPT LLM of a BLIP-2 run, alone: greedy continuation of a text prompt."""

    def __init__(self, folder: str | Path):
        cfg, tensors, self.tokenizer = read_llm(folder)
        if not isinstance(self.tokenizer, LlmTokenizer) or self.tokenizer.kind != "opt":
            raise ValueError(f"{folder}: the text-only conditions need an OPT LLM")
        self.lm = OptLM(cfg).eval()
        self.lm.load_state_dict({k: tensors.get(k) for k in self.lm.state_dict()})
        self.opts = DecodingOptions.build(None, 1, max_new_tokens=ANSWER_MAX_TOKENS, min_new_tokens=1)

    def continue_text(self, prompt: str) -> str:
        ids = np.array([self.tokenizer.prompt_ids(prompt)], dtype=np.int64)
        hyp = generate(OptSession(self.lm), ids, self.opts, eos_id=self.lm.cfg.eos_id, pad_id=self.lm.cfg.pad_id)
        return self.tokenizer.decode(hyp[0][0].tokens)

    def answers(self, held_out: list[HeldOutScene], context, desc: str, progress: bool = True) -> list[str]:
        """``context(scene)`` -> the text before the question ("" for none), as the LLM's
        pre-training wrote it: "{caption}. Question: {q} Answer:"."""
        out = []
        with _bar(sum(len(s.questions) for s in held_out), desc, progress) as bar:
            for s in held_out:
                before = context(s)
                for q in s.questions:
                    out.append(self.continue_text(f"{caption_text(before)} {qa_text(q)}" if before else qa_text(q)))
                    bar.update()
        return out


def random_caption(seed: int):
    """context for ``TextLlm.answers``: one of the scene's captions, drawn as the LLM's
    pre-training and stage 2 draw them (uniformly), reproducibly."""
    rng = random.Random(seed)
    return lambda s: rng.choice(s.captions)


# ------------------------------------------------------------------------ stage 1
class _QFormerCaptioner:
    """``generation.StepDecoder`` over the stage-1 Q-Former's ITG pass: no cache, each step re-runs
    the (short) text under the multimodal causal mask."""

    def __init__(self, model: Blip2Model, head: LMHead, embeds: torch.Tensor):
        self.model, self.head, self.embeds = model, head, embeds
        self.ids = torch.zeros(0, 0, dtype=torch.long)

    def _logits(self) -> np.ndarray:
        with torch.inference_mode():
            h = self.model.qformer.decoder(self.embeds, self.ids, None)[:, -1]
            return self.head(h, self.model.qformer.tokens.weight).float().numpy()

    def start(self, prompt_ids: np.ndarray, group: int) -> np.ndarray:
        if group != 1:
            raise ValueError("the Q-Former captioner decodes greedily (group 1)")
        self.ids = torch.as_tensor(prompt_ids)
        return self._logits()

    def step(self, tokens: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        if rows is not None:
            self.ids, self.embeds = self.ids[torch.as_tensor(rows)], self.embeds[torch.as_tensor(rows)]
        self.ids = torch.cat([self.ids, torch.as_tensor(tokens)[:, None]], 1)
        return self._logits()


def load_stage1(path: str | Path) -> tuple[Blip2Model, BlipTokenizer, LMHead]:
    """A stage-1 checkpoint (folder or run directory) with its ITG head, which the run keeps in
    its training state (the model folder holds what inference loads: ITC and ITM)."""
    folder = Path(resolve_init(str(path)))
    model, tokenizer, _ = load_model(folder)
    head = LMHead(model.cfg.qformer)
    state = load_state(folder)["objective"]
    head.load_state_dict({k.removeprefix("lm_head."): v for k, v in state.items() if k.startswith("lm_head.")})
    return model.eval(), tokenizer, head.eval()


@torch.no_grad()
def stage1_metrics(path: str | Path, held_out: list[HeldOutScene], batch_size: int = 50) -> dict:
    """Greedy ITG captions (BLEU-4, CIDEr against every reference caption) and ITC retrieval
    (the best of the queries' cosines; recall@1/5/10 both ways, every caption a text)."""
    model, tokenizer, head = load_stage1(path)
    size = model.cfg.vision.image_size
    opts = DecodingOptions.build(None, 1, max_new_tokens=20, min_new_tokens=1)
    predictions, img_feats = {}, []
    for s0 in range(0, len(held_out), batch_size):
        chunk = held_out[s0:s0 + batch_size]
        pixels = pixel_values_batch(np.stack([s.image for s in chunk]), size)
        embeds = model.encode_image(pixels)
        img_feats.append(model.image_features(embeds))
        start = np.full((len(chunk), 1), tokenizer.dec_id, dtype=np.int64)
        hyps = generate(_QFormerCaptioner(model, head, embeds), start, opts, tokenizer.sep_id, tokenizer.pad_id)
        predictions.update({s0 + j: tokenizer.decode(h[0].tokens) for j, h in enumerate(hyps)})
    texts, txt2img, img2txt = [], [], []
    for i, s in enumerate(held_out):
        img2txt.append(list(range(len(texts), len(texts) + len(s.captions))))
        texts += s.captions
        txt2img += [i] * len(s.captions)
    ids, mask = tokenizer(texts, first="cls", max_length=MAX_TEXT_TOKENS)
    txt = torch.cat([model.text_features(ids[s:s + 256], mask[s:s + 256]) for s in range(0, len(texts), 256)])
    sim = torch.einsum("iqe,te->itq", torch.cat(img_feats), txt).amax(-1)
    return {"caption": caption_report(predictions, held_out),
            "retrieval_itc": recall_at_k(sim, img2txt, txt2img), "n_images": len(held_out), "n_texts": len(texts)}
